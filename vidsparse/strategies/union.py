"""union: several strategies at once; a block pair is computed when any part computes it.

Sparse-vDiT (arXiv 2506.03065) and Radial Attention combine a local pattern with stripes (e.g. a diagonal band
plus the first frame as a sink). `a | b` on any two strategies gives `Union((a, b))`; nested unions are
flattened. A profile stores it as {"name": "union", "params": {"parts": [{"name": ..., "params": ...}, ...]}},
and `strategies.get("union", parts=[...])` takes strategies or such dicts.

Definition: plan = the union of the parts' plans (BlockPlan `|`). Static parts (batch 1, one head) are
broadcast against dynamic parts' batch and heads. A head is skipped only if every part skips it. The union is
dynamic when any part is.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

import torch

from ..layout import VideoLayout
from ..plan import BlockPlan
from .base import Strategy, get, register_strategy
from .pooling import per_call_plan


def _as_strategy(part: Strategy | Mapping[str, Any]) -> Strategy:
    if isinstance(part, Strategy):
        return part
    if isinstance(part, Mapping) and "name" in part and set(part) <= {"name", "params"}:
        params = part.get("params") or {}
        if not isinstance(params, Mapping):
            raise ValueError(f"union: params of part {part['name']!r} must be a mapping, got {params!r}")
        return get(part["name"], **params)
    raise ValueError(f"union: each part must be a Strategy or a {{'name': ..., 'params': {{...}}}} dict, got {part!r}")


@register_strategy
@dataclass(frozen=True)
class Union(Strategy):
    """Every block pair kept by any of `parts` (see module doc)."""

    name = "union"

    parts: tuple[Strategy, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.parts, (Strategy, Mapping)) or not isinstance(self.parts, (list, tuple)):
            raise ValueError(f"union: parts must be a list of strategies or strategy dicts, got {self.parts!r}")
        flat: list[Strategy] = []
        for part in map(_as_strategy, self.parts):
            flat.extend(part.parts if isinstance(part, Union) else (part,))
        if not flat:
            raise ValueError("union: parts must hold at least one strategy")
        object.__setattr__(self, "parts", tuple(flat))

    @classmethod
    def of(cls, *parts: Strategy) -> "Union":
        return cls(parts)

    @property
    def is_dynamic(self) -> bool:  # type: ignore[override]
        return any(part.is_dynamic for part in self.parts)

    def plan(self, layout: VideoLayout, q: torch.Tensor | None = None, k: torch.Tensor | None = None) -> BlockPlan:
        if not self.is_dynamic:
            return _cached_static_union(self, layout)
        if q is None or k is None:
            raise ValueError("union: a part is dynamic, so the union needs q and k")
        return union_of_plans(
            [
                part.plan(layout, q, k) if part.is_dynamic else _static_plan_on(part, layout, q.device)
                for part in self.parts
            ]
        )

    def block_mask(self, layout: VideoLayout) -> torch.Tensor:
        if self.is_dynamic:
            return super().block_mask(layout)
        return self.plan(layout).to_block_mask()[0, 0]

    def estimate_density(self, layout: VideoLayout) -> float:
        static = [p for p in self.parts if not p.is_dynamic]
        kept = union_of_plans([p.plan(layout) for p in static]).density() if static else 0.0
        # Dynamic parts: their own estimates, assumed independent of the rest (exact when all parts are static).
        for part in self.parts:
            if part.is_dynamic:
                kept = 1.0 - (1.0 - kept) * (1.0 - part.estimate_density(layout))
        return kept

    def reusable(self, planned_at: int | None, step: int | None) -> bool:
        return all(part.reusable(planned_at, step) for part in self.parts)

    def at_layer(self, layer: int) -> "Strategy":
        return Union(tuple(part.at_layer(layer) for part in self.parts))

    def retiled(self, measured_tile: tuple[int, int, int], tile: tuple[int, int, int]) -> "Strategy":
        return Union(tuple(part.retiled(measured_tile, tile) for part in self.parts))


def union_of_plans(plans: list[BlockPlan]) -> BlockPlan:
    """One plan keeping every block pair of any of `plans`; batch-1 and one-head plans are broadcast."""
    first = plans[0]
    if len(plans) == 1:
        return first
    batch = max(p.batch for p in plans)
    heads = max(p.num_heads for p in plans)
    mask = torch.zeros(batch, heads, first.num_q_blocks, first.num_kv_blocks, dtype=torch.bool, device=first.device)
    skipped = torch.ones(heads, dtype=torch.bool, device=first.device)
    for p in plans:
        if p.layout != first.layout or p.num_heads not in (1, heads) or p.batch not in (1, batch):
            raise ValueError(
                f"union: part plans must share the layout and have batch 1 or {batch} and heads 1 or {heads}"
            )
        if p.device != first.device:
            raise ValueError(f"union: part plans must be on one device, got {p.device} and {first.device}")
        mask |= p.to_block_mask()
        if p.skip_heads is None:
            skipped[:] = False
        else:
            skipped &= p.skip_heads.expand(heads)
    # Plans of valid parts union to a valid plan; skip_heads stays a tensor (all False is the same as None, and
    # asking which it is would read it back to the host).
    return per_call_plan(mask, first.layout, skip_heads=skipped)


@lru_cache(maxsize=256)
def _cached_static_union(strategy: Union, layout: VideoLayout) -> BlockPlan:
    return union_of_plans([part.plan(layout) for part in strategy.parts])


@lru_cache(maxsize=256)
def _static_plan_on(strategy: Strategy, layout: VideoLayout, device: torch.device) -> BlockPlan:
    """A static part's plan on the device of the dynamic parts, moved there once (not on every call)."""
    return strategy.plan(layout).to(device)
