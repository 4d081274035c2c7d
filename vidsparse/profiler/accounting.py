"""What profiling costs, in dense generations: the work the profiler does, counted, and converted.

The profiler records its work as counts (`ProfilingWork`, on `Profile.work` after `profile_pipeline`): dense and
sparse generations, attention calls per generation, scored calls, the float64 multiply-adds of scoring them and the
dynamic candidates it planned. `predict_work` gives the same counts for any model and geometry without running
anything (a test checks it against a recorded run), so the cost of profiling a Wan-sized model can be stated from
the profiler's own accounting on a machine that cannot run one. `dense_generation_units` converts the counts:

    units = f x dense generations                                   f: calibration steps / generated steps
          + f x sparse generations x (1 - a + a / x)                  a: attention's share of a dense generation,
          + a x (scored-call work in dense attention calls) / calls      x: the profile's attention speed-up
            per generation

The unit is one dense generation at the step count the profile is made for: calibrating a 50-step model with
10-step runs (`calibration_steps`) makes each calibration run 0.2 of one (f), while a scored call costs the same
whatever the step count (the scored steps are a fixed number), and the calls per generation are the full run's.

A scored call adds (`scoring.score_call`): the float64 scores of its sampled rows against every key and their
value sums (4 x rows x tokens x head_dim multiply-adds per head and batch element, against 4 x tokens^2 x head_dim
for the dense call, times the device's float64 / bfloat16 slowdown), the per-mask combinations (2 x masks x rows x
key blocks x head_dim), and the planning of each dynamic candidate: blockified's exact block importance is one
dense attention's scores (counted as one dense call); draft and vmoba plan on pooled tiles (counted as nothing).
The cost-model timing (a few kernel calls) is not counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..layout import VideoLayout
from ..strategies import Strategy
from .scoring import sample_rows

#: Dynamic candidate families whose planning costs one dense attention call per scored call.
DENSE_PLANNING = ("blockified",)


@dataclass
class ProfilingWork:
    """Counts of one profiling run. `scoring_flops` are float64 multiply-add pairs (x2 for flops); `dense_call_flops`
    is one dense attention call's (bfloat16 on a GPU), the unit the scoring is compared with; `calls_per_generation`
    counts a generation at the generated step count, and `step_fraction` is the calibration runs' share of its
    steps (1: calibrated at the generated step count)."""

    dense_generations: int = 0
    sparse_generations: int = 0
    calls_per_generation: int = 0
    step_fraction: float = 1.0
    scored_calls: int = 0
    scored_rows: int = 0
    scoring_flops: float = 0.0
    dense_call_flops: float = 0.0
    dense_plans: int = 0
    plans: dict[str, int] = field(default_factory=dict)

    def merge(self, other: "ProfilingWork") -> None:
        """Add the scored calls of another pass (generation counts are set by the profiler)."""
        self.scored_calls += other.scored_calls
        self.scored_rows += other.scored_rows
        self.scoring_flops += other.scoring_flops
        self.dense_call_flops = max(self.dense_call_flops, other.dense_call_flops)
        self.dense_plans += other.dense_plans
        for name, count in other.plans.items():
            self.plans[name] = self.plans.get(name, 0) + count

    def add_scored_call(self, batch: int, heads: int, tokens: int, head_dim: int, rows: int, masks: int,
                        key_blocks: int, dynamic: Iterable[str]) -> None:
        """Count one scored call (`masks`: the distinct block masks of each head, summed over heads and batch)."""
        self.scored_calls += 1
        self.scored_rows += rows
        self.scoring_flops += (4.0 * batch * heads * rows * tokens * head_dim
                               + 2.0 * masks * rows * key_blocks * head_dim)
        self.dense_call_flops = 4.0 * batch * heads * tokens * tokens * head_dim
        for name in dynamic:
            self.plans[name] = self.plans.get(name, 0) + 1
            self.dense_plans += name in DENSE_PLANNING


def dense_generation_units(work: ProfilingWork, *, attention_share: float, speedup: float,
                           fp64_slowdown: float) -> dict[str, float]:
    """The run's cost in dense generations (module docstring), by part: "dense", "sparse", "scoring" and "total".

    Args:
        attention_share: attention's share of a dense generation's time, in (0, 1].
        speedup: the profile's attention speed-up (sparse generations' attention time is 1 / speedup of dense).
        fp64_slowdown: how many times slower the device runs float64 than the model's dense attention (about 15
            for an H100's float64 vs bfloat16 tensor-core throughput; about 2 on a CPU against float32).
    """
    if not 0 < attention_share <= 1:
        raise ValueError(f"attention_share must be in (0, 1], got {attention_share!r}")
    if not speedup > 0:
        raise ValueError(f"speedup must be > 0, got {speedup!r}")
    if not fp64_slowdown > 0:
        raise ValueError(f"fp64_slowdown must be > 0, got {fp64_slowdown!r}")
    sparse = work.step_fraction * work.sparse_generations * (1 - attention_share + attention_share / speedup)
    calls = work.scoring_flops / max(work.dense_call_flops, 1.0) * fp64_slowdown + work.dense_plans
    scoring = attention_share * calls / max(work.calls_per_generation, 1)
    dense = work.step_fraction * work.dense_generations
    return {"dense": dense, "sparse": sparse, "scoring": scoring, "total": dense + sparse + scoring}


def predict_work(
    layout: VideoLayout,
    candidates: Sequence[Strategy],
    *,
    layers: int,
    heads: int,
    head_dim: int,
    steps: int,
    sampled: int,
    prompts: int,
    refine: int,
    verify_runs: int = 0,
    dense_layers: int = 0,
    rows: int = 256,
    branches: int = 2,
    masks: int | None = None,
    calibration_steps: int | None = None,
    estimate: int = 0,
    latent_holdout: int = 0,
) -> ProfilingWork:
    """The counts `profile_pipeline` records for this model, geometry and settings, without running it.

    Args:
        sampled: denoising steps scored (`sampled_steps`' length); prompts: calibration prompts that choose;
        refine: prompts re-run sparse while scoring again; verify_runs: extra sparse runs for the latent error
        (0 when the refinement ran the final choice); dense_layers: layers not scored; branches: transformer
        calls per step (2 with classifier-free guidance run as two calls, as Wan does); masks: distinct block
        masks per head and call (default: one per candidate, the most); steps: the generated step count;
        calibration_steps: the calibration runs' (default `steps`); estimate: prompts kept out of the choice, each
        run dense (not scored) and sparse (scored) afterwards; latent_holdout: the same, neither run scored.
    """
    r = int(sample_rows(layout, rows).numel())
    unseen = estimate + latent_holdout
    work = ProfilingWork(dense_generations=prompts + unseen, sparse_generations=refine + verify_runs + unseen,
                         calls_per_generation=steps * layers * branches,
                         step_fraction=(calibration_steps or steps) / steps)
    dynamic = [c.name for c in candidates if c.is_dynamic]
    for _ in range((prompts + refine + estimate) * sampled * (layers - dense_layers) * branches):
        work.add_scored_call(1, heads, layout.seq_len, head_dim, r, heads * (masks or len(candidates)),
                             layout.num_blocks, dynamic)
    return work
