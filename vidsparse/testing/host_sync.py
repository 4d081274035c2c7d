"""Count what the per-call path must not do on a GPU, on any device: host reads (syncs) and host uploads.

A CPU never pays for a device-to-host read, so the per-call path is checked by counting the operations that
force one on a GPU, the way `torch.cuda.set_sync_debug_mode("error")` would catch them there:

- sync: `item`, `tolist`, `bool()` / `int()` / `float()` / `index` of a tensor, `nonzero`, `unique`, `equal`,
  `masked_select`, `cpu`, `numpy` (their results live on the host, or their output size does);
- upload: `torch.tensor` / `torch.as_tensor` of host data, and `.to(...)` / `.cuda()` naming a device (a copy from
  pageable host memory waits for the queue; on a CPU run even a no-op `.to(device)` is counted, conservatively).

The patched attention op is opaque to modes (they are suspended inside an op), so `HostSyncCounter` steps into
`torch.ops.vidsparse.attention` itself and counts what its implementation does.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_SYNCS = {
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__,
    torch.Tensor.__index__, torch.Tensor.nonzero, torch.nonzero, torch.Tensor.unique, torch.unique,
    torch.unique_consecutive, torch.Tensor.equal, torch.equal, torch.masked_select, torch.Tensor.masked_select,
    torch.Tensor.cpu, torch.Tensor.numpy,
}
_UPLOADS = {torch.tensor, torch.as_tensor, torch.Tensor.cuda}


def _names_device(args: tuple, kwargs: dict) -> bool:
    if "device" in kwargs:
        return True
    return any(isinstance(a, (torch.device, str)) or (isinstance(a, torch.Tensor)) for a in args[1:])


class HostSyncCounter(TorchFunctionMode):
    """Counts host syncs and uploads by op name: `with HostSyncCounter() as c: ...`, then `c.syncs`, `c.uploads`.

    With `attention_only` (the default) only what happens inside patched attention calls is counted, not the
    pipeline around them; `calls` counts those calls. The host tensor that names a patched layer (read on purpose,
    never on a device) is not counted.
    """

    def __init__(self, attention_only: bool = True) -> None:
        super().__init__()
        self.syncs: Counter[str] = Counter()
        self.uploads: Counter[str] = Counter()
        self.calls = 0
        self._attention_only = attention_only
        self._inside = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in (torch.ops.vidsparse.attention, torch.ops.vidsparse.attention.default):
            from ..attention_op import run_attention

            self.calls += 1
            self._inside += 1
            try:
                with self:  # step into the op: modes are suspended inside it
                    return run_attention(*args, **kwargs)
            finally:
                self._inside -= 1
        if self._attention_only and not self._inside:
            return func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        layer_token = bool(args) and getattr(args[0], "vidsparse_layer_token", False)
        if func in _SYNCS and not layer_token:
            self.syncs[name] += 1
        elif func in _UPLOADS or (func is torch.Tensor.to and _names_device(args, kwargs)):
            self.uploads[name] += 1
        return func(*args, **kwargs)

    @property
    def total_syncs(self) -> int:
        return sum(self.syncs.values())

    @property
    def total_uploads(self) -> int:
        return sum(self.uploads.values())
