"""PlanCache: reuse dynamic plans across denoising steps when the strategy allows it.

AdaSpa (arXiv 2502.21079) observes that the sparse pattern of each head is stable across denoising steps,
so an expensive, exact search can run at a few steps and its choice be reused in between. The decision is
split in two:

- the strategy says whether a plan made at step `planned_at` still serves step `step`
  (`Strategy.reusable(planned_at, step)`; e.g. blockified: `0 <= step - planned_at < refresh_every`);
- the runtime keeps one cached plan per call site and asks it. A call site is whatever key the runtime
  chooses: `SparseController` uses ((layer, CFG branch), heads) for one patched layer, one branch of
  classifier-free guidance (pipelines that run the conditional and unconditional passes as separate transformer
  calls see different activations in each) and the group of heads sharing the strategy.

    cache = PlanCache()                                   # one per patched pipeline
    plan = cache.plan(strategy, layout, q, k, key=(layer, heads), step=call.step)
    ...
    cache.clear()                                         # e.g. when the pipeline is unpatched

A cached plan is used only for the same key, strategy, layout, batch size, head count and device; anything
else, an unknown step (None), or a step earlier than the plan's (a new generation started) re-plans.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

import torch

from ..layout import VideoLayout
from ..plan import BlockPlan
from .base import Strategy


@dataclass
class _Entry:
    strategy: Strategy
    layout: VideoLayout
    shape: tuple[int, int, torch.device]
    planned_at: int | None
    plan: BlockPlan


class PlanCache:
    """One cached plan per call-site key; see the module docstring. `plans_made` / `plans_reused` count calls."""

    def __init__(self) -> None:
        self._entries: dict[Hashable, _Entry] = {}
        self.plans_made = 0
        self.plans_reused = 0

    def plan(
        self,
        strategy: Strategy,
        layout: VideoLayout,
        q: torch.Tensor,
        k: torch.Tensor,
        *,
        key: Hashable,
        step: int | None,
        heads: torch.Tensor | None = None,
    ) -> BlockPlan:
        """The plan of `strategy` for this call: the cached one if the strategy allows reusing it, else a new one.

        `heads` (int64 indices on q's device) plans for those heads of q and k only; they are selected only when
        a new plan is needed.
        """
        shape = (q.shape[0], q.shape[1] if heads is None else heads.shape[0], q.device)
        entry = self._entries.get(key)
        if (
            entry is not None
            and entry.strategy == strategy
            and entry.layout == layout
            and entry.shape == shape
            and step is not None
            and entry.planned_at is not None
            and step >= entry.planned_at
            and strategy.reusable(entry.planned_at, step)
        ):
            self.plans_reused += 1
            return entry.plan
        if heads is not None:
            q, k = q.index_select(1, heads), k.index_select(1, heads)
        plan = strategy.plan(layout, q, k)
        self._entries[key] = _Entry(strategy, layout, shape, step, plan)
        self.plans_made += 1
        return plan

    def clear(self) -> None:
        """Forget every cached plan (counters are kept)."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
