"""Count the ATen ops a call dispatches: about one kernel launch each on a GPU in eager mode.

On a GPU the host time of a patched attention call with many small planning ops is mostly their dispatch (about
20 microseconds each from Python on the H200's host), so the number of ops is the proxy for it that a CPU can
measure. `LaunchCounter` counts, below autograd, every op that writes a tensor:

- every op that is not a view (in place, out=, or a new tensor), tensor results only (`torch.promote_types`
  reaches the dispatcher too, but computes a dtype on the host);
- ops the dispatcher marks as possible aliases that did copy (`Tensor.to(dtype)`, `.float()`, `.contiguous()`
  when they return new storage: a conversion kernel), which a count of non-view ops alone misses.

Views (slices, `expand`, `unsqueeze`, no-op conversions) launch nothing and are not counted.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LaunchCounter(TorchDispatchMode):
    """`with LaunchCounter() as c: ...`, then `c.launches` (total) and `c.by_op` (count per ATen op name)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_op: Counter[str] = Counter()

    @property
    def launches(self) -> int:
        return sum(self.by_op.values())

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        results = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if results and (not func.is_view or _copied(results, args, kwargs)):
            self.by_op[str(func.overloadpacket.__name__)] += 1
        return out


def _copied(results: list[torch.Tensor], args: tuple, kwargs: dict | None) -> bool:
    """Whether a possibly aliasing op returned storage none of its inputs had (it copied)."""
    inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
    return any(t.untyped_storage().data_ptr() not in inputs for t in results)
