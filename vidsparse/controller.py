"""Policies (which strategy each head uses at a step) and the SparseController that runs them.

A policy answers, for one layer call, a list of one Strategy per head, or None for "this call is dense":

    HeadPolicy.strategies(step, num_steps, layer, num_heads) -> list[Strategy] | None

`StrategyPolicy` applies one strategy to every head after a dense schedule (warm-up steps, dense layers);
profiles bring their own policy (`Profile.policy()`), optionally wrapped in `ScheduledPolicy` to override the
schedule. The dense warm-up default follows the peers: the first ~20% of denoising steps and the first layer dense
(Sparse VideoGen 0.2 / first layers, Radial Attention 12 of 50 steps and 1 layer, STA 12 of 50 steps).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Hashable, Protocol, Sequence

import torch
import torch.nn.functional as F

from .attention import resolve_backend, run_plan
from .guard import Guard
from .layout import VideoLayout
from .plan import BlockPlan
from .runtime import AttentionCall
from .strategies import Strategy
from .strategies.dense import Dense
from .strategies.pooling import (
    HeadInputs,
    MaskPlanner,
    compute_dtype,
    dense_text_mask,
    per_call_plan,
    tile_means,
    video_part,
)
from .strategies.reuse import PlanCache

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
                    f"vidsparse: the number of denoising steps is unknown (a bare transformer, or a pipeline without a "
                    f"scheduler such as Echo's, was patched); the fractional warm-up {self.warmup_steps} assumes "
                    f"{ASSUMED_NUM_STEPS} steps. Patch the pipeline (when it has a scheduler), or give "
                    f"dense_warmup_steps as an int.",
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
    """One strategy for every head of every layer, outside the dense schedule.

    The strategy is specialised to each layer with `Strategy.at_layer` (VMoBA cycles its key partition 1D -> 2D
    -> 3D across layers; most strategies are the same everywhere).
    """

    strategy: Strategy
    schedule: DenseSchedule = field(default_factory=DenseSchedule)

    def strategies(self, step: int | None, num_steps: int | None, layer: int, num_heads: int) -> list[Strategy] | None:
        if self.schedule.is_dense(step, num_steps, layer):
            return None
        return [_at_layer(self.strategy, layer)] * num_heads


@functools.lru_cache(maxsize=1024)
def _at_layer(strategy: Strategy, layer: int) -> Strategy:
    return strategy.at_layer(layer)


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
    """Runs a HeadPolicy: plans each layer call and computes it with the block-sparse backend.

    The per-call path is built for a GPU: it never reads device memory back to the host and never uploads host
    data, so the CPU can queue a whole denoising step ahead of the device.
    - Static heads: one plan per (layout, strategies, device), validated when first built, then cached on the
      device with its density.
    - Dynamic heads: the heads of draft, vmoba and sampled stripe (`MaskPlanner`s) are planned together, in one
      mask and one plan, from their q and k selected and pooled once; the others (blockified, unions) group by
      group, heads sharing a strategy together. Their plans are copied into one preallocated [B, H, Mq, Mk] plan
      per (layout, strategies, batch, device) whose static heads were filled in once. Plans a strategy may reuse
      (`Strategy.reusable`, e.g. blockified for `refresh_every` steps) are kept per call site (layer, CFG branch,
      heads) in `reuse` and searched again only when they expire. Each tensor op is a kernel launch on a GPU (about
      20 microseconds of host time), so the per-call path keeps their number small (tests/test_mixed_layer.py).
    - A call whose heads are all dense runs the model's own dense kernel.

    Attributes:
        stats: counters for reports: "dense_calls", "sparse_calls", "density_sum" (sum over sparse calls of
            the plan's mean density; reading it waits for the device once) and "calls_by_backend": how many calls
            each kernel ran, "vidsparse:<backend>" for sparse calls, the model's own ("diffusers:<its attention
            backend>", "torch:sdpa") for dense ones.
        reuse: the PlanCache of reusable dynamic plans (`plans_made` / `plans_reused` count searches and reuses).
        guard: the quality guard (`vidsparse.guard.Guard`) checking sampled rows of sparse calls, or None.
    """

    def __init__(
        self, policy: HeadPolicy, backend: str = "auto", *, cache_size: int = 128, guard: Guard | None = None
    ) -> None:
        self.policy = policy
        self.backend = backend
        self.guard = guard
        self.cache_size = cache_size
        self.reuse = PlanCache()
        self._assembled: OrderedDict[tuple, _LayerPlan] = OrderedDict()
        self._dense_calls = 0
        self._sparse_calls = 0
        self._density_sum: float | torch.Tensor = 0.0  # a device scalar once a dynamic plan ran
        self._static_density: float | None = None  # of the plan `plan` returned last, if static
        self._backend_calls: Counter[str] = Counter()
        self._resolved: dict[torch.device, str] = {}  # backend name per device

    @property
    def stats(self) -> dict[str, int | float]:
        return {"dense_calls": self._dense_calls, "sparse_calls": self._sparse_calls,
                "density_sum": float(self._density_sum), "calls_by_backend": dict(self._backend_calls)}

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        num_heads = call.q.shape[1]
        strategies = self.policy.strategies(call.step, call.num_steps, call.layer, call.total_heads or num_heads)
        if strategies is not None and call.heads is not None:  # this rank's heads under head-parallel CP
            strategies = strategies[call.heads.start : call.heads.stop]
        if strategies is not None and self.guard is not None:
            strategies = self.guard.adjust(call, strategies)  # heads the guard switched run dense
        if strategies is None or all(isinstance(s, Dense) for s in strategies):
            self._dense_calls += 1
            self._backend_calls[call.dense_backend] += 1
            return call.dense()
        if len(strategies) != num_heads:
            raise ValueError(f"policy gave {len(strategies)} strategies for layer {call.layer} with {num_heads} heads")
        plan = self.plan(call.layout, strategies, call.q, call.k, site=(call.layer, call.branch), step=call.step)
        self._sparse_calls += 1
        # Static plans know their density on the host; a dynamic one adds a device scalar (read when asked).
        density = self._static_density if self._static_density is not None else plan.density(per_head=True).mean()
        self._density_sum = self._density_sum + density
        backend = self._resolved.get(call.q.device)
        if backend is None:
            backend = self._resolved[call.q.device] = resolve_backend(self.backend, call.q.device)
        self._backend_calls[f"vidsparse:{backend}"] += 1
        out = run_plan(call.q, call.k, call.v, plan, scale=call.scale, backend=backend, out=call.out)
        if self.guard is not None and self.guard.due(call) and self.guard.check(call, strategies, out):
            # A head was switched: build the layer's denser plan now, inside the checked call, not in the next one.
            denser = self.guard.adjust(call, strategies)
            if not all(isinstance(s, Dense) for s in denser):
                self._layer_plan(call.layout, tuple(denser), call.q)
        return out

    def plan(
        self,
        layout: VideoLayout,
        strategies: Sequence[Strategy],
        q: torch.Tensor,
        k: torch.Tensor,
        *,
        site: Hashable = None,
        step: int | None = None,
    ) -> BlockPlan:
        """The layer's plan: one head per strategy, on q's device.

        `site` names the call site (layer, CFG branch) for plans a strategy may reuse at later `step`s.
        """
        strategies = tuple(strategies)
        layer_plan = self._layer_plan(layout, strategies, q)
        self._static_density = layer_plan.static_density
        if layer_plan.whole is not None:  # one dynamic strategy on every head: its plan is the layer's
            return self.reuse.plan(layer_plan.whole, layout, q, k, key=(site, "all"), step=step)
        planned = None if layer_plan.masks is None else self._plan_masks(layer_plan.masks, layout, q, k)
        if layer_plan.plan is None:  # the mask planners have every head, in order
            return planned
        counts, indices = layer_plan.plan.kv_counts, layer_plan.plan.kv_indices
        if planned is not None:
            counts.index_copy_(1, layer_plan.masks.heads, planned.kv_counts)
            indices.index_copy_(1, layer_plan.masks.heads, planned.kv_indices)
        for strategy, heads, index in layer_plan.groups:
            group = self.reuse.plan(strategy, layout, q, k, key=(site, heads), step=step, heads=index)
            counts.index_copy_(1, index, group.kv_counts.expand(counts.shape[0], -1, -1))
            group_indices = group.kv_indices
            if group_indices.shape[-1] < indices.shape[-1]:
                group_indices = F.pad(group_indices, (0, indices.shape[-1] - group_indices.shape[-1]))
            indices.index_copy_(1, index, group_indices.expand(indices.shape[0], -1, -1, -1))
        return layer_plan.plan

    def _plan_masks(self, masks: _MaskHeads, layout: VideoLayout, q: torch.Tensor, k: torch.Tensor) -> BlockPlan:
        """The plan of the layer's `MaskPlanner` heads, in `masks.heads` order: every strategy writes its heads'
        video mask into one buffer, from q and k selected and converted once, and tile means pooled once."""
        if masks.select:
            q, k = q.index_select(1, masks.heads), k.index_select(1, masks.heads)
        dtype = compute_dtype(q)
        q, k = q.to(dtype), k.to(dtype)
        pooled = tile_means(layout, q[:, : masks.pooled], k[:, : masks.pooled]) if masks.pooled else None
        video = video_part(masks.buffer, layout)
        for strategy, start, stop in masks.spans:
            tiles = pooled[:, :, start:stop] if stop <= masks.pooled else None
            inputs = HeadInputs(layout, q[:, start:stop], k[:, start:stop], tiles)
            strategy.write_video_mask(inputs, video[:, start:stop])
        return per_call_plan(masks.buffer, layout)

    def _layer_plan(self, layout: VideoLayout, strategies: tuple[Strategy, ...], q: torch.Tensor) -> _LayerPlan:
        dynamic = any(s.is_dynamic for s in strategies)
        key = (layout, strategies, q.device, q.shape[0] if dynamic else None)
        layer_plan = self._assembled.get(key)
        if layer_plan is None:
            layer_plan = self._assembled[key] = _LayerPlan.build(layout, strategies, q.shape[0], q.device)
            if len(self._assembled) > self.cache_size:
                self._assembled.popitem(last=False)
        else:
            self._assembled.move_to_end(key)
        return layer_plan


@dataclass
class _MaskHeads:
    """The heads of one layer planned by `MaskPlanner`s, together (see `SparseController._plan_masks`).

    Attributes:
        heads: int64 indices of those heads on the device, grouped by strategy, the tile-mean readers first.
        select: whether q and k must be reduced to `heads` (False when they are all heads, in order).
        pooled: how many of them (the first ones) read tile means.
        spans: (strategy, start, stop) of each strategy's heads in `heads`.
        buffer: bool [B, len(heads), M, M], text rows and columns True; the strategies overwrite its video part.
    """

    heads: torch.Tensor
    select: bool
    pooled: int
    spans: list[tuple[MaskPlanner, int, int]]
    buffer: torch.Tensor

    @classmethod
    def build(
        cls, layout: VideoLayout, heads_of: dict[MaskPlanner, list[int]], num_heads: int, batch: int,
        device: torch.device,
    ) -> _MaskHeads:
        ordered = sorted(heads_of.items(), key=lambda item: not item[0].reads_tile_means)  # stable: first seen first
        spans, order = [], []
        for strategy, heads in ordered:
            spans.append((strategy, len(order), len(order) + len(heads)))
            order += heads
        pooled = sum(len(heads) for strategy, heads in ordered if strategy.reads_tile_means)
        buffer = dense_text_mask(layout, batch, len(order), device)
        return cls(torch.tensor(order, device=device), order != list(range(num_heads)), pooled, spans, buffer)


@dataclass
class _LayerPlan:
    """The preassembled plan of one (layout, strategies[, batch], device).

    Attributes:
        plan: the layer's plan; for layers with dynamic heads its tensors are the buffers each call fills
            (None with `whole`, and when `masks` has every head in order).
        groups: (dynamic strategy, its heads, their indices on the device) per distinct dynamic strategy that is
            not a `MaskPlanner` (blockified, unions): planned group by group, through the plan cache.
        masks: the heads of `MaskPlanner` strategies (draft, vmoba, sampled stripe), planned together, or None.
        whole: the dynamic strategy when a single one covers every head (no buffer: its plan is the layer's).
        static_density: the plan's mean density when it has no dynamic head (computed once).
    """

    plan: BlockPlan | None
    groups: list[tuple[Strategy, tuple[int, ...], torch.Tensor]]
    masks: _MaskHeads | None = None
    whole: Strategy | None = None
    static_density: float | None = None

    @classmethod
    def build(
        cls, layout: VideoLayout, strategies: tuple[Strategy, ...], batch: int, device: torch.device
    ) -> _LayerPlan:
        heads_of: dict[Strategy, list[int]] = {}
        for head, strategy in enumerate(strategies):
            if strategy.is_dynamic:
                heads_of.setdefault(strategy, []).append(head)
        static = {head: s.plan(layout) for head, s in enumerate(strategies) if not s.is_dynamic}
        if not heads_of:
            plan = BlockPlan.concat_heads([static[h] for h in range(len(strategies))]).to(device)
            return cls(plan, [], static_density=plan.density())
        if len(heads_of) == 1 and not static:
            return cls(None, [], whole=next(iter(heads_of)))
        masked = {s: heads for s, heads in heads_of.items() if isinstance(s, MaskPlanner)}
        masks = _MaskHeads.build(layout, masked, len(strategies), batch, device) if masked else None
        groups = [(s, tuple(heads), torch.tensor(heads, device=device)) for s, heads in heads_of.items()
                  if s not in masked]
        if masks is not None and not masks.select:
            return cls(None, [], masks=masks)
        mq, mk = layout.num_blocks, layout.num_blocks
        counts = torch.zeros(batch, len(strategies), mq, dtype=torch.int32)
        indices = torch.zeros(batch, len(strategies), mq, mk, dtype=torch.int32)
        skip = torch.zeros(len(strategies), dtype=torch.bool)
        for head, p in static.items():
            counts[:, head] = p.kv_counts[0, 0]
            indices[:, head, :, : p.max_kv_blocks] = p.kv_indices[0, 0]
            if p.skip_heads is not None:
                skip[head] = p.skip_heads[0]
        plan = BlockPlan(
            counts.to(device), indices.to(device), layout.block_size, layout.block_size, layout.seq_len,
            layout.seq_len, layout=layout, skip_heads=skip.to(device), check=False,  # filled per call by `plan`
        )
        return cls(plan, groups, masks)
