"""Policies (which strategy each head uses at a step) and the SparseController that runs them.

A policy answers, for one layer call, a list of one Strategy per head, or None for "this call is dense":

    HeadPolicy.strategies(step, num_steps, layer, num_heads) -> list[Strategy] | None

`StrategyPolicy` applies one strategy to every head after a dense schedule (warm-up steps, dense layers);
profiles bring their own policy (`Profile.policy()`), optionally wrapped in `ScheduledPolicy` to override the
schedule. The dense warm-up default follows the peers: the first ~20% of denoising steps and the first layer dense
(Sparse VideoGen 0.2 / first layers, Radial Attention 12 of 50 steps and 1 layer, STA 12 of 50 steps).
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch

from .attention import block_sparse_attention
from .layout import VideoLayout
from .plan import BlockPlan
from .runtime import AttentionCall
from .strategies import Strategy
from .strategies.dense import Dense

#: Step count assumed for a fractional warm-up when the number of steps is unknown (bare transformer).
ASSUMED_NUM_STEPS = 50


class HeadPolicy(Protocol):
    def strategies(self, step: int | None, num_steps: int | None, layer: int, num_heads: int) -> list[Strategy] | None:
        """One strategy per head for this layer call, or None to run the model's dense attention."""


@dataclass(frozen=True)
class DenseSchedule:
    """When to stay dense regardless of the strategy.

    Args:
        warmup_steps: dense denoising steps at the start: an int is a step count, a float in [0, 1) a fraction of
            the number of steps (rounded up). Unknown step -> dense while any warm-up is set.
        dense_layers: layer indices always run dense.
    """

    warmup_steps: int | float = 0.2
    dense_layers: frozenset[int] = frozenset({0})

    def __post_init__(self) -> None:
        w = self.warmup_steps
        if isinstance(w, bool) or not isinstance(w, (int, float)):
            raise ValueError(f"dense_warmup_steps must be an int >= 0 or a float in [0, 1), got {w!r}")
        if isinstance(w, int) and w < 0 or isinstance(w, float) and not 0.0 <= w < 1.0:
            raise ValueError(f"dense_warmup_steps must be an int >= 0 or a float in [0, 1), got {w!r}")
        layers = frozenset(self.dense_layers)
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers):
            raise ValueError(f"dense_layers must be non-negative layer indices, got {sorted(self.dense_layers)!r}")
        object.__setattr__(self, "dense_layers", layers)

    def warmup_count(self, num_steps: int | None) -> int:
        """Number of dense warm-up steps for a run of `num_steps` steps."""
        if isinstance(self.warmup_steps, int):
            return self.warmup_steps
        if num_steps is None:
            if self.warmup_steps > 0:
                warnings.warn(
                    f"vidsparse: the number of denoising steps is unknown (a bare transformer was patched); the "
                    f"fractional warm-up {self.warmup_steps} assumes {ASSUMED_NUM_STEPS} steps. Patch the pipeline, "
                    f"or give dense_warmup_steps as an int.",
                    stacklevel=3,
                )
            num_steps = ASSUMED_NUM_STEPS
        return math.ceil(self.warmup_steps * num_steps)

    def is_dense(self, step: int | None, num_steps: int | None, layer: int) -> bool:
        if layer in self.dense_layers:
            return True
        warmup = self.warmup_steps > 0
        if step is None:
            return bool(warmup)
        return warmup and step < self.warmup_count(num_steps)


@dataclass(frozen=True)
class StrategyPolicy:
    """One strategy for every head of every layer, outside the dense schedule."""

    strategy: Strategy
    schedule: DenseSchedule = field(default_factory=DenseSchedule)

    def strategies(self, step: int | None, num_steps: int | None, layer: int, num_heads: int) -> list[Strategy] | None:
        if self.schedule.is_dense(step, num_steps, layer):
            return None
        return [self.strategy] * num_heads


@dataclass(frozen=True)
class ScheduledPolicy:
    """Another policy (e.g. a profile's) with its dense schedule overridden."""

    inner: HeadPolicy
    schedule: DenseSchedule

    def strategies(self, step: int | None, num_steps: int | None, layer: int, num_heads: int) -> list[Strategy] | None:
        if self.schedule.is_dense(step, num_steps, layer):
            return None
        return self.inner.strategies(step, num_steps, layer, num_heads)


class SparseController:
    """Runs a HeadPolicy: plans each layer call and computes it with `block_sparse_attention`.

    Static per-head plans are concatenated into one plan per (layout, strategies, device) and cached; dynamic
    strategies are planned on every call from the call's q and k (heads sharing one dynamic strategy are planned
    together). A call whose heads are all dense runs the model's own dense kernel.

    Attributes:
        stats: counters of this controller's calls: "dense_calls", "sparse_calls", and "density_sum" (sum over
            sparse calls of the plan's mean density), for reports.
    """

    def __init__(self, policy: HeadPolicy, backend: str = "auto", *, cache_size: int = 128) -> None:
        self.policy = policy
        self.backend = backend
        self.cache_size = cache_size
        self._plans: OrderedDict[tuple, BlockPlan] = OrderedDict()
        self.stats = {"dense_calls": 0, "sparse_calls": 0, "density_sum": 0.0}

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        num_heads = call.q.shape[1]
        strategies = self.policy.strategies(call.step, call.num_steps, call.layer, call.total_heads or num_heads)
        if strategies is not None and call.heads is not None:  # this rank's heads under head-parallel CP
            strategies = strategies[call.heads.start : call.heads.stop]
        if strategies is None or all(isinstance(s, Dense) for s in strategies):
            self.stats["dense_calls"] += 1
            return call.dense()
        if len(strategies) != num_heads:
            raise ValueError(f"policy gave {len(strategies)} strategies for layer {call.layer} with {num_heads} heads")
        plan = self.plan(call.layout, strategies, call.q, call.k)
        self.stats["sparse_calls"] += 1
        self.stats["density_sum"] += plan.density()
        return block_sparse_attention(call.q, call.k, call.v, plan, scale=call.scale, backend=self.backend)

    def plan(
        self, layout: VideoLayout, strategies: Sequence[Strategy], q: torch.Tensor, k: torch.Tensor
    ) -> BlockPlan:
        """The layer's plan: one head per strategy, on q's device."""
        strategies = tuple(strategies)
        if not any(s.is_dynamic for s in strategies):
            key = (layout, strategies, str(q.device))
            if key in self._plans:
                self._plans.move_to_end(key)
                return self._plans[key]
            plan = BlockPlan.concat_heads([s.plan(layout) for s in strategies]).to(q.device)
            self._plans[key] = plan
            if len(self._plans) > self.cache_size:
                self._plans.popitem(last=False)
            return plan
        per_head: list[BlockPlan | None] = [None] * len(strategies)
        groups: dict[Strategy, list[int]] = {}
        for head, strategy in enumerate(strategies):
            if strategy.is_dynamic:
                groups.setdefault(strategy, []).append(head)
            else:
                per_head[head] = strategy.plan(layout)
        for strategy, heads in groups.items():
            index = torch.tensor(heads, device=q.device)
            group_plan = strategy.plan(layout, q.index_select(1, index), k.index_select(1, index))
            for position, head in enumerate(heads):
                per_head[head] = group_plan.select_heads([position])
        return BlockPlan.concat_heads([p.to(q.device) for p in per_head])  # type: ignore[union-attr]
