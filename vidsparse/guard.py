"""The quality guard: sparse attention that measures its own error while generating and falls back per head.

Calibration measures each head's error on a few prompts; a prompt, a resolution or a LoRA it never saw can make a
head's pattern wrong (a spatial head that turns diffuse), and nothing would say so until someone watches the video.
The guard checks, at a cadence, a few query rows of every sparse layer call against exact attention:

- cadence: at the first sparse step of every step bucket (a profile's buckets; one bucket for a single strategy),
  then every `GuardConfig.every`-th step after it;
- rows: `rows_per_block` random video rows in every video query block (stratified, so every tile of the video is
  looked at; drawn on the device from the guard's own generator: no host read, the pipeline's RNG untouched);
- error per head: ||o_sparse - o_exact|| / ||o_exact|| over those rows, per batch entry, then the batch mean, the
  profiler's definition (`vidsparse.profiler.scoring`) on a sample; o_exact is plain float32 attention of the
  rows against every key (a few rows x S x D: `rows / (S * density)` of the sparse call's work);
- budget per head: an explicit number, or the error the profile measured for that (bucket, layer, head), never
  below `min_budget`. A head whose error exceeds budget * (1 + margin) runs dense for the rest of the generation
  (the profile records one choice per head, so dense is the next-denser choice it knows), with one log line; the
  guard never raises because of what it measures. A generation ends when the step goes back (a new
  `set_timesteps`), which clears the switches; `Guard.reset` does so by hand.

Cost on the per-call path: calls that are not checked do only Python bookkeeping (no device work, no host read);
a checked call reads its per-head errors once (one host sync), and builds the denser plan of a head it switches
within that call. `scripts/bench_guard.py` measures the cost at Wan 2.1 480p geometry.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .layout import VideoLayout
from .strategies import Strategy
from .strategies.dense import Dense

logger = logging.getLogger(__name__)

#: Largest float32 score matrix (elements) the exact rows compute at once; heads are taken in chunks below it.
_MAX_SCORE_ELEMENTS = 1 << 27


@dataclass(frozen=True)
class GuardConfig:
    """How often, how many rows, and how much error the guard accepts.

    Args:
        every: after the first sparse step of a step bucket (always checked), check every `every`-th step; an int
            >= 1 (1 = every sparse step).
        rows_per_block: video query rows sampled in each video query block per check; an int >= 1.
        margin: a head switches when its measured error exceeds budget * (1 + margin); a float >= 0. The margin
            absorbs the sampling noise of the estimate and the spread between prompts.
        budget: one relative-error budget for every head (a float > 0), or None for the profile's per-head errors.
        min_budget: floor under per-head budgets from a profile (a head measured at 0.001 is not switched at
            0.003); a float >= 0.
        seed: seed of the guard's row sampler (reseeded at every generation, so runs are reproducible).
    """

    every: int = 10
    rows_per_block: int = 1
    margin: float = 0.5
    budget: float | None = None
    min_budget: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("every", "rows_per_block"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GuardConfig: {name} must be an integer >= 1, got {value!r}")
        for name in ("margin", "min_budget"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"GuardConfig: {name} must be a finite number >= 0, got {value!r}")
        b = self.budget
        if b is not None and (isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 < b < math.inf):
            raise ValueError(f"GuardConfig: budget must be a finite number > 0 or None (the profile's), got {b!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"GuardConfig: seed must be an integer, got {self.seed!r}")


@dataclass(frozen=True)
class Switch:
    """One head switched to dense: when, and what the guard measured."""

    generation: int
    step: int
    layer: int
    head: int
    error: float
    budget: float


@dataclass
class HeadRecord:
    """What the guard measured on one (layer, head) over every check (all generations)."""

    checks: int = 0
    error_sum: float = 0.0
    error_max: float = 0.0
    last_error: float = 0.0
    budget: float = 0.0

    @property
    def mean_error(self) -> float:
        return self.error_sum / self.checks if self.checks else math.nan


class Guard:
    """Checks sampled rows of sparse calls against exact attention and switches heads over budget to dense.

    The SparseController calls `adjust` on every call with sparse heads (switched heads become Dense), then,
    after the sparse kernel ran, `due` and `check` (see the module docstring).

    Args:
        config: the cadence, rows and thresholds.
        budget_of: (bucket, layer, head) -> the head's budget before the margin.
        bucket_of: (step, num_steps) -> the step bucket index (cadence restarts in each bucket).
    """

    def __init__(
        self,
        config: GuardConfig,
        budget_of: Callable[[int, int, int], float],
        bucket_of: Callable[[int, int | None], int] = lambda step, num_steps: 0,
    ) -> None:
        self.config = config
        self.budget_of = budget_of
        self.bucket_of = bucket_of
        self.records: dict[tuple[int, int], HeadRecord] = {}
        self.switches: list[Switch] = []
        self.checked_calls = 0
        self.generation = 0
        self._switched: dict[int, frozenset[int]] = {}  # layer -> heads running dense in this generation
        self._adjusted: dict[tuple, list[Strategy]] = {}
        self._first_step: dict[int, int] = {}  # bucket -> first step a sparse call was seen at, this generation
        self._last_step: int | None = None
        self._samplers: dict[tuple[VideoLayout, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
        self._generators: dict[torch.device, torch.Generator] = {}

    # ----- per call (host bookkeeping only) ------------------------------------------------------------------
    def adjust(self, call: Any, strategies: Sequence[Strategy]) -> Sequence[Strategy]:
        """The call's strategies with the heads switched in this generation made Dense; notes a new generation."""
        if call.step is not None:
            if self._last_step is not None and call.step < self._last_step:
                self.reset()
            self._last_step = call.step
        switched = self._switched.get(call.layer)
        if not switched:
            return strategies
        offset = call.heads.start if call.heads is not None else 0
        key = (tuple(strategies), switched, offset)
        adjusted = self._adjusted.get(key)
        if adjusted is None:
            dense = Dense()
            adjusted = self._adjusted[key] = [dense if offset + h in switched else s for h, s in enumerate(strategies)]
        return adjusted

    def due(self, call: Any) -> bool:
        """Whether this sparse call is checked: the bucket's first sparse step, then every `every`-th step."""
        if call.step is None:
            return False
        first = self._first_step.setdefault(self.bucket_of(call.step, call.num_steps), call.step)
        return (call.step - first) % self.config.every == 0

    def reset(self) -> None:
        """Start a new generation: no head switched, cadence restarted, sampler reseeded (records are kept)."""
        self.generation += 1
        self._switched.clear()
        self._first_step.clear()
        self._last_step = None
        self._generators.clear()

    def clear(self) -> None:
        """Forget what was measured (records, switches, counts), e.g. after warm-up runs; a new generation."""
        self.records.clear()
        self.switches.clear()
        self.checked_calls = 0
        self.generation = -1
        self.reset()

    # ----- a check --------------------------------------------------------------------------------------------
    def check(self, call: Any, strategies: Sequence[Strategy], out: torch.Tensor) -> bool:
        """Measure the call's sparse heads on sampled rows (one host read); True if a head was switched."""
        sparse = [h for h, s in enumerate(strategies) if not isinstance(s, Dense)]
        if not sparse:
            return False
        errors = self.estimate(call.q, call.k, call.v, out, call.layout, call.scale).tolist()  # the one host read
        self.checked_calls += 1
        offset = call.heads.start if call.heads is not None else 0
        bucket = self.bucket_of(call.step, call.num_steps)
        switched = set(self._switched.get(call.layer, ()))
        for h in sparse:
            head, error = offset + h, errors[h]
            budget = self.budget_of(bucket, call.layer, head)
            record = self.records.setdefault((call.layer, head), HeadRecord())
            record.checks += 1
            record.error_sum += error
            record.error_max = max(record.error_max, error)
            record.last_error, record.budget = error, budget
            if not error <= budget * (1 + self.config.margin):  # NaN counts as over budget
                switched.add(head)
                self.switches.append(Switch(self.generation, call.step, call.layer, head, error, budget))
                logger.warning(
                    "vidsparse guard: layer %d head %d measured error %.4f > budget %.4f x (1 + margin %.2f) at step "
                    "%d; this head runs dense for the rest of the generation", call.layer, head, error, budget,
                    self.config.margin, call.step,
                )
        if len(switched) == len(self._switched.get(call.layer, ())):
            return False
        self._switched[call.layer] = frozenset(switched)
        return True

    def estimate(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, layout: VideoLayout,
        scale: float | None,
    ) -> torch.Tensor:
        """float32 [H]: relative L2 error of `out` on sampled video rows against exact attention, batch mean."""
        rows = self.sample_rows(layout, q.device)
        exact = exact_rows(q[:, :, rows], k, v, scale)
        got = out[:, :, rows].float()
        diff = (got - exact).square().sum((-1, -2))
        norm = exact.square().sum((-1, -2)).clamp_min(torch.finfo(torch.float32).tiny)
        return (diff / norm).sqrt().mean(0)

    def sample_rows(self, layout: VideoLayout, device: torch.device) -> torch.Tensor:
        """int64 [num_video_blocks * rows_per_block]: random video rows (model order), `rows_per_block` in every
        video query block, drawn on `device` (with replacement within a block)."""
        sampler = self._samplers.get((layout, device))
        if sampler is None:  # uploaded once per layout
            blocks, size = layout.num_video_blocks, layout.block_size
            tokens = layout.permutation[: blocks * size].view(blocks, size)
            lengths = layout.block_lengths[:blocks].to(torch.float32)
            sampler = self._samplers[(layout, device)] = (tokens.to(device), lengths.to(device))
        tokens, lengths = sampler
        generator = self._generators.get(device)
        if generator is None:
            generator = self._generators[device] = torch.Generator(device=device)
            generator.manual_seed(self.config.seed)
        draw = torch.rand(tokens.shape[0], self.config.rows_per_block, generator=generator, device=device)
        offsets = (draw * lengths[:, None]).long()  # real tokens are the first ones of every block
        return tokens.gather(1, offsets).reshape(-1)

    # ----- what it saw ---------------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """Plain data: per (layer, head) checks, mean / max / last error, budget and switches; every switch."""
        switch_counts: dict[tuple[int, int], int] = {}
        for s in self.switches:
            switch_counts[(s.layer, s.head)] = switch_counts.get((s.layer, s.head), 0) + 1
        heads = [
            {"layer": layer, "head": head, "checks": r.checks, "mean_error": r.mean_error, "max_error": r.error_max,
             "last_error": r.last_error, "budget": r.budget, "switches": switch_counts.get((layer, head), 0)}
            for (layer, head), r in sorted(self.records.items())
        ]
        return {
            "config": {name: getattr(self.config, name) for name in self.config.__dataclass_fields__},
            "checked_calls": self.checked_calls,
            "checked_heads": len(self.records),
            "switched_heads": len(switch_counts),
            "generations": self.generation + 1,
            "heads": heads,
            "switches": [vars(s) for s in self.switches],
        }


def exact_rows(q_rows: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
    """float32 [B, H, R, D]: softmax(q_rows k^T * scale) v over every key, heads in chunks to bound memory."""
    b, h, r, d = q_rows.shape
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    chunk = max(1, _MAX_SCORE_ELEMENTS // max(1, b * r * k.shape[2]))
    parts = []
    for start in range(0, h, chunk):
        heads = slice(start, start + chunk)
        scores = torch.matmul(q_rows[:, heads].float(), k[:, heads].float().transpose(-1, -2)) * scale
        parts.append(torch.matmul(torch.softmax(scores, dim=-1), v[:, heads].float()))
    return torch.cat(parts, dim=1)


def guard_budgets(config: GuardConfig, profile: Any | None) -> Callable[[int, int, int], float]:
    """(bucket, layer, head) -> budget: the config's number, else the profile's per-head error (floored)."""
    if config.budget is not None:
        budget = float(config.budget)
        return lambda bucket, layer, head: budget
    if profile is None:
        raise ValueError(
            "guard needs an error budget: give GuardConfig(budget=...) (a relative error, e.g. 0.05) or patch with a "
            "profile, whose per-head errors are the budgets"
        )
    floor = config.min_budget
    return lambda bucket, layer, head: max(floor, float(getattr(profile.buckets[bucket].heads[layer][head], "error")))


def profile_buckets(profile: Any | None) -> Callable[[int, int | None], int]:
    """(step, num_steps) -> index of the profile's bucket holding the step (the last when num_steps is unknown,
    as `ProfilePolicy` does); always 0 without a profile."""
    if profile is None:
        return lambda step, num_steps: 0
    last = len(profile.buckets) - 1
    return lambda step, num_steps: last if num_steps is None else profile.buckets.index(
        profile.bucket_at(step, num_steps))
