"""`profile_pipeline`: run a pipeline densely on calibration prompts, score candidates, measure costs, select.

    from vidsparse.profiler import profile_pipeline
    profile = profile_pipeline(pipe, ["a red fox running in snow"], height=480, width=832, frames=81, steps=50,
                               budget=0.05)            # or target_speedup=3.0
    profile.save("profiles/my-model.json")
    vidsparse.patch(pipe, profile=profile)

Every attention call of the calibration runs the model's own dense kernel (`call.dense()`), so the generation is
exactly the dense one. At the sampled steps, for every layer outside the dense schedule, the call's q/k/v are
scored against every candidate (`scoring.score_call`) and only running sums are kept; memory stays bounded by
one call's scores. Three passes: the dense calibration and a first choice; the refinement, where the calibration
prompts run with that choice (the pipeline gets the sparse outputs) while every candidate is scored again on
those activations, and the final choice from these scores; the verification of the final latents' error (skipped
when the refinement already ran the final choice). Launched on several processes (`accelerate launch` / `torchrun`, torch.distributed
initialized), each rank generates its share of the prompts and the score tables are all-reduced, so every rank
selects from the statistics of all prompts (`profiler.distributed`); the caller saves on rank 0. With `save_qkv`, the q/k/v of the chosen layers at the sampled steps are written with
safetensors for offline re-search (that is the one thing that grows with the run, and only for those layers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist

from ..controller import DenseSchedule, SparseController
from ..layout import VideoLayout
from ..profile import Bucket, Calibration, Hardware, HeadChoice, ModelSpec, Profile, Schedule, Summary
from ..runtime import AttentionCall, inspect_model, install, uninstall
from ..strategies import Strategy
from .accounting import ProfilingWork
from .candidates import default_candidates
from .cost import backend_name, ideal_cost_model, measure_cost_model
from .distributed import all_reduce_score_table, split_prompts
from .scoring import ScoreTable, sample_rows, score_call
from .select import (
    LayerScores,
    Selection,
    layer_ms,
    pool_relative_spread,
    select_for_speedup,
    select_within_budget,
)

logger = logging.getLogger(__name__)

DEFAULT_BUDGET = 0.05


def sampled_steps(steps: int, warmup: int, count: int) -> list[int]:
    """`count` steps spread evenly over the sparse steps [warmup, steps) (all of them if fewer), first and last
    included."""
    sparse = list(range(warmup, steps))
    if len(sparse) <= count:
        return sparse
    if count == 1:
        return [sparse[len(sparse) // 2]]
    return sorted({sparse[round(i * (len(sparse) - 1) / (count - 1))] for i in range(count)})


def bucket_edges(steps: int, warmup: int, samples: Sequence[int], buckets: int) -> list[float]:
    """Step-fraction edges [0, ..., 1] of at most `buckets` buckets splitting the sparse steps evenly, each holding
    at least one sampled step (the first bucket also covers the warm-up)."""
    sparse = steps - warmup
    edges = [0.0]
    for i in range(1, buckets):
        edge = (warmup + round(i * sparse / buckets)) / steps
        inside = [s for s in samples if edges[-1] <= s / steps < edge]
        if inside and any(s / steps >= edge for s in samples):
            edges.append(edge)
    edges.append(1.0)
    return edges


def _bucket_index(edges: Sequence[float], step: int, steps: int) -> int:
    fraction = step / steps
    for i in range(len(edges) - 1):
        if edges[i] <= fraction < edges[i + 1]:
            return i
    return len(edges) - 2


class CalibrationController:
    """AttentionController of the calibration run: dense output always; scoring at sampled steps."""

    def __init__(
        self,
        families: Iterable[str] | None,
        num_heads: int,
        *,
        steps: int,
        samples: Sequence[int],
        edges: Sequence[float],
        dense_layers: Iterable[int],
        rows: int,
        generator: torch.Generator,
        save_layers: Iterable[int] = (),
        on_step: Any = None,
        inner: Any = None,
    ) -> None:
        self.families, self.num_heads, self.steps = families, num_heads, steps
        self.samples, self.edges = set(samples), list(edges)
        self.dense_layers = set(dense_layers)
        self.rows, self.generator = rows, generator
        self.save_layers = set(save_layers)
        self.saved: dict[str, torch.Tensor] = {}
        # Set at the first call: the candidate grid depends on the layout.
        self.layout: VideoLayout | None = None
        self.candidates: list[Strategy] = []
        self.table: ScoreTable | None = None
        self.head_dim, self.dtype, self.device = 0, torch.float32, torch.device("cpu")
        self.on_step, self.last_step = on_step, None
        self.calls = 0
        self.work = ProfilingWork()  # what the scoring did, counted (`accounting`)
        self.attention_calls = 0
        # None: the generation is the dense one. A controller (a chosen profile's SparseController): the pipeline
        # runs its outputs, so candidates are scored on the activations that profile's generation produces.
        self.inner = inner

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        out = call.dense() if self.inner is None else self.inner(call)
        self.attention_calls += 1
        if call.step != self.last_step:
            self.last_step = call.step
            if self.on_step is not None:
                self.on_step()
        if self.layout is None:
            self.layout, self.head_dim = call.layout, call.q.shape[-1]
            self.dtype, self.device = call.q.dtype, call.q.device
            self.candidates = default_candidates(call.layout, self.families)
            self.table = ScoreTable(self.candidates, self.num_heads)
        elif call.layout.grid != self.layout.grid:  # text lengths may differ (key-padding masks); the grid may not
            raise ValueError(f"calibration calls have different latent grids ({self.layout.grid} and "
                             f"{call.layout.grid}); profile one geometry at a time")
        if call.step in self.samples and call.layer not in self.dense_layers:
            rows = sample_rows(call.layout, self.rows, self.generator)
            scores = score_call(self.candidates, call.q, call.k, call.v, call.layout, rows=rows, scale=call.scale,
                                layer=call.layer)
            self.table.add(_bucket_index(self.edges, call.step, self.steps), call.layer, scores)
            b, h, s, d = call.q.shape
            self.work.add_scored_call(b, h, s, d, rows.numel(), scores.masks, call.layout.num_blocks,
                                      [c.name for c in self.candidates if c.is_dynamic])
            if call.layer in self.save_layers:
                prefix = f"step{call.step}.layer{call.layer}.call{self.calls}"
                for name in ("q", "k", "v"):
                    self.saved[f"{prefix}.{name}"] = getattr(call, name).detach().to("cpu").contiguous()
            self.calls += 1
        return out


def config_hash(pipe: Any) -> str | None:
    """sha256 (first 16 hex digits) of the transformer config: identifies the architecture when there is no
    hub revision."""
    transformer = getattr(pipe, "transformer", pipe)
    config = getattr(transformer, "config", None)
    if config is None:
        return None
    text = json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def profile_pipeline(
    pipe: Any,
    prompts: Sequence[str],
    *,
    height: int,
    width: int,
    frames: int,
    steps: int,
    budget: float | None = None,
    target_speedup: float | None = None,
    seed: int = 0,
    progress: bool = True,
    warmup: int | float = 0.2,
    dense_layers: Iterable[int] | None = None,
    sample_steps: int = 6,
    buckets: int = 2,
    rows: int = 256,
    statistic: str = "mean",
    margin: float = 2.0,
    refine: int | None = None,
    verify: int = 1,
    families: Iterable[str] | None = None,
    backend: str = "auto",
    cost_model: str = "measured",
    name: str | None = None,
    save_qkv: tuple[str, Iterable[int]] | None = None,
    call_kwargs: dict[str, Any] | None = None,
    calibration_steps: int | None = None,
    estimate: int = 0,
    latent_holdout: int = 0,
) -> Profile:
    """Profile `pipe` at this geometry and return the Profile (not saved; call `.save(path)`).

    Args:
        prompts: calibration prompts; each is one dense generation (seed + index).
        budget: per-head error budget (relative L2 error of the attention output); default 0.05 when no
            target_speedup is given.
        target_speedup: predicted attention speed-up to reach with the least error instead of a budget.
        warmup: dense warm-up steps (int count or fraction of `steps` in [0, 1)); not scored.
        dense_layers: layers kept dense and not scored; default: the first layer of each transformer.
        sample_steps: denoising steps scored (spread over the sparse steps; buckets are merged until each holds
            some, so give several per bucket: the standard errors come from the spread over scored calls).
        buckets: step buckets (each gets its own choice per head).
        rows: query rows sampled per call for the error and recall, stratified by query block (at least one per
            block, so the count can be higher; `scoring.sample_rows`).
        statistic: the error held within the budget (or minimized for a speed target): "mean" (the mean over
            scored calls plus `margin` standard errors), "max" (the largest error of a scored call) or "prediction"
            (the upper prediction bound for one new generation: the mean plus `margin` times the spread of the
            per-prompt means x sqrt(1 + 1 / prompts); what holds on prompts the calibration never saw).
        margin: standard errors (statistic "mean") or spreads (the heads' stated `error_bound`, statistic
            "prediction", the latent error bound) added to the mean error.
        refine: calibration prompts (default: all) re-run with the profile chosen on the dense runs, scoring every
            candidate again on the activations of that sparse generation; the final choice and its predicted errors
            come from these scores (later layers and steps of a sparse generation see inputs that already carry the
            error of earlier ones, and their errors are larger than on the dense trajectory). 0: dense scores only.
        verify: calibration prompts run with the final profile (one sparse generation each, same seed) to
            measure the final latents' relative error against their dense run; the refinement's runs count when
            they already ran the final choice. The largest is the profile's `summary.latent_error`, and with two
            runs or more their upper prediction bound (mean + margin x spread, `prediction_bound`) is
            `summary.latent_error_bound`; when the refinement ran another (first) choice on more prompts than
            that, the level is these runs' mean error and the spread relative to the mean is the first choice's
            (the larger sample), `scaled_prediction_bound`. 0: no extra run.
        families: strategy families to consider (default: all registered).
        backend: attention backend the cost model times ("auto" = what `vidsparse.patch` uses).
        cost_model: "measured" (this device's kernel timings) or "ideal" (cost proportional to computed blocks at
            the dense kernel's speed: for profiling on another machine than the target).
        name: model name recorded in the profile (default: the pipeline's name_or_path or class).
        save_qkv: (path, layers): also write q/k/v of these layers at the sampled steps to a safetensors file.
        call_kwargs: extra arguments of the pipeline call (e.g. guidance_scale, max_sequence_length).
        calibration_steps: denoising steps of every calibration run (default `steps`, the step count the profile is
            made for). Buckets are fractions of the run, so a profile measured on shorter runs applies to `steps`;
            fewer steps make each calibration run cheaper (counted in `work` as that share of a generation at
            `steps`), so more prompts fit the same cost. The profile records the steps it was measured at.
        estimate: the last `estimate` prompts take no part in the choice (sample splitting): after it, each runs
            dense (its reference latents) and with the final profile while every candidate is scored, and the
            heads' stated errors (mean, standard error, largest, bound) and the final latents' error and bound come
            from these runs alone. The choice favours candidates whose error its own prompts under-estimated;
            prompts it never saw measure the chosen heads without that bias. `verify` then adds no run.
        latent_holdout: like `estimate` for the final latents only: the last `latent_holdout` prompts take no part
            in the choice and each runs dense and with the final profile, unscored, to state the latents' error
            and bound (when the refinement ran more prompts, the level is these runs' mean error and the spread
            relative to the mean the refinement runs', `scaled_prediction_bound`); the heads' errors still come
            from the choosing prompts. Give one of the two.
    """
    selection = Selection(statistic, margin)
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ValueError(f"rows must be an integer >= 1, got {rows!r}")
    for argument, value in (("refine", 0 if refine is None else refine), ("verify", verify), ("estimate", estimate),
                            ("latent_holdout", latent_holdout)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{argument} must be an integer >= 0 (calibration prompts re-run sparse), got {value!r}")
    if isinstance(sample_steps, bool) or not isinstance(sample_steps, int) or sample_steps < 1:
        raise ValueError(f"sample_steps must be an integer >= 1, got {sample_steps!r}")
    if cost_model not in ("measured", "ideal"):
        raise ValueError(f"cost_model must be 'measured' or 'ideal', got {cost_model!r}")
    if budget is not None and target_speedup is not None:
        raise ValueError("give either budget or target_speedup, not both")
    if budget is None and target_speedup is None:
        budget = DEFAULT_BUDGET
    if budget is not None and not budget >= 0:
        raise ValueError(f"budget must be a relative error >= 0, got {budget!r}")
    if target_speedup is not None and not target_speedup > 0:
        raise ValueError(f"target_speedup must be > 0, got {target_speedup!r}")
    prompts = list(prompts)
    if estimate and latent_holdout:
        raise ValueError(f"give estimate ({estimate}) or latent_holdout ({latent_holdout}), not both")
    unseen = estimate or latent_holdout  # prompts kept out of the choice
    if not 0 <= unseen < len(prompts):
        raise ValueError(f"estimate and latent_holdout must be in [0, {len(prompts) - 1}] (the choice needs one of the "
                         f"{len(prompts)} prompts), got {unseen}")
    if unseen and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        raise ValueError("estimate and latent_holdout are not supported on several processes: profile on one")
    if calibration_steps is not None and (isinstance(calibration_steps, bool) or not isinstance(calibration_steps, int)
                                          or not 2 <= calibration_steps <= steps):
        raise ValueError(f"calibration_steps must be an integer in [2, steps={steps}], got {calibration_steps!r}")
    if calibration_steps not in (None, steps) and isinstance(warmup, int) and warmup > 0:
        raise ValueError(f"with calibration_steps, give warmup as a fraction of the steps in [0, 1) (a count of "
                         f"{warmup} steps is another share of a {calibration_steps}-step and a {steps}-step run)")
    generated_steps, steps = steps, calibration_steps or steps  # from here on, `steps` is every calibration run's
    started = time.perf_counter()
    info = inspect_model(pipe)
    schedule = DenseSchedule(warmup, frozenset(info.first_layers if dense_layers is None else dense_layers))
    warm = min(schedule.warmup_count(steps), steps - 1)
    samples = sampled_steps(steps, warm, sample_steps)
    edges = bucket_edges(steps, warm, samples, buckets)
    table_layers = [layer for layer in range(info.num_layers) if layer not in schedule.dense_layers]

    if families is not None:
        families = list(families)
        default_candidates(VideoLayout(1, 1, 1), families)  # unknown names fail now, not after a generation
    mine = _this_rank_prompts(prompts[:len(prompts) - unseen])
    held = list(enumerate(prompts))[len(prompts) - unseen:]
    generator = torch.Generator().manual_seed(seed)
    refine = len(mine) if refine is None else min(refine, len(mine))
    bar = _progress((len(mine) + refine + estimate) * steps, progress)

    def calibrate(runs: list[tuple[int, str]], inner: Any = None) -> tuple[CalibrationController, list]:
        """Score candidates over `runs` (dense, or under `inner`); the final latents of each run."""
        controller = CalibrationController(
            families, info.num_heads, steps=steps, samples=samples, edges=edges, dense_layers=schedule.dense_layers,
            rows=rows, generator=generator, save_layers=() if save_qkv is None or inner else save_qkv[1],
            on_step=bar.update if bar is not None else None, inner=inner,
        )
        install(pipe, controller)
        latents = []
        try:
            for index, prompt in runs:
                controller.last_step = None
                latents.append(_generate(pipe, prompt, height, width, frames, steps, seed + index, call_kwargs).frames)
                if controller.table is not None:
                    controller.table.end_prompt()
        finally:
            uninstall(pipe)
        if controller.layout is None or controller.table is None:
            raise RuntimeError("the pipeline made no self-attention call that vidsparse could intercept")
        all_reduce_score_table(controller.table)  # several processes: every rank now has the statistics of all
        return controller, latents

    try:
        controller, dense_latents = calibrate(mine)
    finally:
        if bar is not None and not refine and not estimate:
            bar.close()
    calibration_s = time.perf_counter() - started
    layout, candidates, table = controller.layout, controller.candidates, controller.table
    if save_qkv is not None:
        from safetensors.torch import save_file

        save_file(controller.saved, str(save_qkv[0]))

    cost_started = time.perf_counter()
    cost = measure_cost_model(layout, info.num_heads, controller.head_dim, device=controller.device,
                              dtype=controller.dtype, backend=backend, generator=generator)
    if cost_model == "ideal":
        cost = ideal_cost_model(cost, layout)
    planning = _planning_ms(candidates, table)
    cost_s = time.perf_counter() - cost_started

    weights = _bucket_weights(edges, steps, warm)

    def scores_of(table: ScoreTable, spread_from: ScoreTable | None = None) -> list[LayerScores]:
        """The scores of every (bucket, layer) of `table`. With `spread_from`, a table of more prompts, the spread
        between prompts (and the standard error) comes from it where `table` has a single prompt (a refinement on
        one prompt knows its means but not how they move between prompts)."""
        scored = []
        for b in range(len(edges) - 1):
            for layer in table_layers:
                means = table.mean(b, layer)
                if means is None:
                    raise RuntimeError(f"no call of layer {layer} was scored in step bucket {b}")
                if spread_from is not None and bool(torch.isnan(means["error_spread"]).all()):
                    other = spread_from.mean(b, layer)
                    means.update(error_spread=other["error_spread"], error_se=other["error_se"])
                scored.append(LayerScores(b, layer, weights[b], **means))
        return pool_relative_spread(scored)

    dense_total = steps * info.num_layers * cost.dense_ms

    def choose(scored: list[LayerScores]) -> list[torch.Tensor]:
        """Per (bucket, layer), each head's candidate index under the objective."""
        fixed = dense_total - sum(s.weight for s in scored) * cost.dense_ms
        if target_speedup is not None:
            return select_for_speedup(candidates, scored, cost, target_ms=dense_total / target_speedup,
                                      fixed_ms=fixed, selection=selection)
        return select_within_budget(candidates, scored, cost, budget, selection)  # type: ignore[arg-type]

    def build(scored: list[LayerScores], choices: list[torch.Tensor]) -> Profile:
        """The profile of these choices, stating the errors, densities and speed-up of `scored`."""
        fixed = dense_total - sum(s.weight for s in scored) * cost.dense_ms
        predicted = fixed + sum(s.weight * layer_ms(candidates, c, s, cost) for s, c in zip(scored, choices))

        per_bucket = _choices(candidates, scored, choices, len(edges) - 1, info.num_layers, info.num_heads, margin)
        always_dense = [layer for layer in table_layers if all(
            all(c.strategy.name == "dense" for c in per_bucket[b][layer]) for b in range(len(edges) - 1))]
        dense_density = _mean_density(per_bucket, weights, steps, info.num_layers, info.num_heads)
        errors = [float(s.error[c, torch.arange(c.numel())].mean()) for s, c in zip(scored, choices)]
        summary = Summary(
            mean_density=dense_density,
            predicted_speedup=dense_total / max(predicted, 1e-9 * dense_total),  # finite even if every head is skipped
            predicted_error=sum(errors) / len(errors) if errors else 0.0,
        )
        return Profile(
            model=ModelSpec(info.family, name or _model_name(pipe), config_hash(pipe), info.num_layers, info.num_heads,
                            info.head_dim),
            calibration=Calibration(len(prompts), steps, frames, height, width, layout.grid, seed, tuple(samples), rows,
                                    {"error": float(budget)} if target_speedup is None
                                    else {"target_speedup": float(target_speedup)},
                                    round(time.perf_counter() - started, 3), tile=layout.tile,
                                    selection={"statistic": statistic, "margin": float(margin)}),
            schedule=Schedule(warmup, tuple(sorted(set(schedule.dense_layers) | set(always_dense)))),
            hardware=Hardware(cost_model, _device_name(controller.device), backend_name(backend, controller.device),
                              str(controller.dtype).replace("torch.", ""), layout.seq_len, info.num_heads,
                              controller.head_dim, layout.block_size, cost.dense_ms, cost.fixed_ms, cost.ms_per_block,
                              cost.points, planning),
            buckets=tuple(Bucket(edges[b], edges[b + 1], per_bucket[b]) for b in range(len(edges) - 1)),
            summary=summary,
        )

    scored = scores_of(table)
    choices = choose(scored)
    profile = build(scored, choices)
    work = controller.work
    work.dense_generations = len(mine)
    work.calls_per_generation = controller.attention_calls * generated_steps // (steps * max(len(mine), 1))
    work.step_fraction = steps / generated_steps
    refine_started = time.perf_counter()
    if refine:
        try:
            refined, sparse_latents = calibrate(mine[:refine], SparseController(profile.policy(), backend))
        finally:
            if bar is not None and not estimate:
                bar.close()
        work.merge(refined.work)
        work.sparse_generations += refine
        chosen = _strategies(profile)
        scored = scores_of(refined.table, spread_from=table)
        choices = choose(scored)
        profile = build(scored, choices)
        first = [_relative_error(sparse, dense) for sparse, dense in zip(sparse_latents, dense_latents)]
        verified = first if _strategies(profile) == chosen else []  # the same choice: those runs were the verification
    else:
        verified, first = [], []
    refine_s = time.perf_counter() - refine_started
    selection_s = time.perf_counter() - started - calibration_s - cost_s - refine_s
    estimate_started = time.perf_counter()
    if held:  # sample splitting: the chosen profile measured on prompts the choice never saw
        from .validate import sparse_latent_error  # validate imports this module

        references = [_generate(pipe, prompt, height, width, frames, steps, seed + index, call_kwargs).frames
                      for index, prompt in held]
        work.dense_generations += len(held)
        work.sparse_generations += len(held)
        if estimate:
            try:
                estimated, held_latents = calibrate(held, SparseController(profile.policy(), backend))
            finally:
                if bar is not None:
                    bar.close()
            work.merge(estimated.work)
            profile = build(scores_of(estimated.table, spread_from=refined.table if refine else table), choices)
            verified = [_relative_error(sparse, dense) for sparse, dense in zip(held_latents, references)]
        else:
            verified = [sparse_latent_error(pipe, SparseController(profile.policy(), backend), dense, prompt, height,
                                            width, frames, steps, seed + index, call_kwargs)
                        for (index, prompt), dense in zip(held, references)]
    estimate_s = time.perf_counter() - estimate_started
    verify_started = time.perf_counter()
    if verify or verified:
        from .validate import sparse_latent_error  # validate imports this module

        # The refinement's runs (when they ran the final choice) are kept, all of them: they cost nothing more.
        extra = [] if held else list(zip(mine, dense_latents))[len(verified):verify]
        verified = verified + [
            sparse_latent_error(pipe, SparseController(profile.policy(), backend), dense, prompt, height, width,
                                frames, steps, seed + index, call_kwargs) for (index, prompt), dense in extra]
        work.sparse_generations += len(extra)
        bound = prediction_bound(verified, margin)
        if len(first) > max(len(verified), 1) and sum(first) > 0:  # more runs of the first choice: their spread
            bound = scaled_prediction_bound(verified, first, margin)
        profile = dataclasses.replace(profile, summary=dataclasses.replace(
            profile.summary, latent_error=_round(max(verified)),
            latent_error_bound=None if bound is None else _round(bound)))
    profile.work.update(dataclasses.asdict(work))
    profile.timings.update(calibration_s=calibration_s, cost_model_s=cost_s, refine_s=refine_s,
                           selection_s=selection_s, estimate_s=estimate_s, verify_s=time.perf_counter() - verify_started,
                           total_s=time.perf_counter() - started)
    return profile


def prediction_bound(values: Sequence[float], margin: float) -> float | None:
    """Upper prediction bound for one new sample of a few: mean + q x sample standard deviation x sqrt(1 + 1 / n),
    q the Student t quantile (n - 1 degrees of freedom) of the normal tail beyond `margin` (so margin 2 bounds
    97.7% of new samples whatever n; two samples give q = 14: their spread says little). None with fewer than two
    values. The heads' `error_bound` uses `margin` itself: their spread is pooled over many heads."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean + _t_quantile(margin, n - 1) * math.sqrt(variance * (1 + 1 / n))


def scaled_prediction_bound(level: Sequence[float], spread: Sequence[float], margin: float) -> float | None:
    """Upper prediction bound for one new generation whose level comes from the runs `level` and whose spread from
    other runs `spread` (of another choice, or on prompts the choice was tuned on: their mean is biased, their
    spread relative to their mean is not): mean(level) x (1 + q x s x sqrt(1 + 1 / len(level))), s the sample
    standard deviation of `spread` over its mean, q the Student t quantile (len(spread) - 1 degrees of freedom) of
    the normal tail beyond `margin`. The new generation and the mean of the level runs both move by the spread,
    so the factor counts the level runs (one unseen prompt: sqrt(2)), not the spread runs: scaling by the spread
    runs' own bound / mean took the level as known as their mean and held in 15 of 18 tiny-wan held-out
    generations. None with fewer than two spread runs, no level run, or a zero spread mean."""
    n = len(spread)
    if n < 2 or not level or sum(spread) <= 0:
        return None
    mean = sum(spread) / n
    relative = math.sqrt(sum((v - mean) ** 2 for v in spread) / (n - 1)) / mean
    return sum(level) / len(level) * (1 + _t_quantile(margin, n - 1) * relative * math.sqrt(1 + 1 / len(level)))


def _t_quantile(margin: float, degrees: int) -> float:
    """The Student t quantile with `degrees` degrees of freedom of the normal tail beyond `margin`."""
    from scipy.stats import norm, t  # scipy comes with scikit-image, a dependency

    return float(t.ppf(norm.cdf(margin), degrees))


def _strategies(profile: Profile) -> list[Strategy]:
    return [c.strategy for bucket in profile.buckets for layer in bucket.heads for c in layer]


def _relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    return float((output.double() - reference.double()).norm() / reference.double().norm())


def _this_rank_prompts(prompts: list[str]) -> list[tuple[int, str]]:
    """(global index, prompt) of this process: all prompts, or its share when torch.distributed runs several."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(enumerate(prompts))
    if len(prompts) < dist.get_world_size():
        raise ValueError(f"profiling on {dist.get_world_size()} processes needs at least as many calibration prompts, "
                         f"got {len(prompts)}")
    return split_prompts(prompts)


def _generate(pipe, prompt, height, width, frames, steps, seed, call_kwargs) -> Any:
    device = getattr(pipe, "device", torch.device("cpu"))
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        return pipe(prompt=prompt, height=height, width=width, num_frames=frames, num_inference_steps=steps,
                    generator=generator, output_type="latent", **(call_kwargs or {}))


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="calibration steps", unit="step")


def _planning_ms(candidates: list[Strategy], table: ScoreTable) -> dict[str, float]:
    """Mean planning time per call of each dynamic family over all scored calls."""
    totals: dict[str, list[float]] = {}
    for key, sums in table.sums.items():
        count = table.counts[key]
        for i, candidate in enumerate(candidates):
            if candidate.is_dynamic:
                totals.setdefault(candidate.name, []).append(float(sums["plan_ms"][i].mean()) / count)
    return {name: round(sum(v) / len(v), 4) for name, v in sorted(totals.items())}


def _bucket_weights(edges: Sequence[float], steps: int, warmup: int) -> list[float]:
    """Sparse denoising steps in each bucket."""
    counts = [0.0] * (len(edges) - 1)
    for step in range(warmup, steps):
        counts[_bucket_index(edges, step, steps)] += 1
    return counts


def _choices(candidates, scored, choices, num_buckets, num_layers, num_heads,
             margin: float) -> list[tuple[tuple[HeadChoice, ...], ...]]:
    dense = next(c for c in candidates if c.name == "dense")
    dense_heads = tuple(HeadChoice(dense, 0.0, 1.0, 1.0) for _ in range(num_heads))
    grid = [[dense_heads for _ in range(num_layers)] for _ in range(num_buckets)]
    for scores, choice in zip(scored, choices):
        bound = scores.bound(margin)
        heads = []
        for head, index in enumerate(choice.tolist()):
            strategy = candidates[index].at_layer(scores.layer)
            heads.append(HeadChoice(strategy, _round(scores.error[index, head]), min(_round(scores.recall[index, head]), 1.0),
                                    min(_round(scores.density[index, head]), 1.0),
                                    _optional_round(scores.error_se[index, head]),
                                    _round(scores.error_max[index, head]),
                                    _optional_round(bound[index, head])))
        grid[scores.bucket][scores.layer] = tuple(heads)
    return [tuple(layers) for layers in grid]


def _round(value: torch.Tensor | float) -> float:
    return float(f"{float(value):.5g}")


def _optional_round(value: torch.Tensor) -> float | None:
    """None for NaN (a standard error or spread from a single prompt is unknown)."""
    return None if torch.isnan(value) else _round(value)


def _mean_density(per_bucket, weights, steps, num_layers, num_heads) -> float:
    """Token-pair density over the whole run: warm-up steps and dense layers count as 1."""
    warm = steps - sum(weights)
    total = warm * num_layers * num_heads
    for bucket, weight in zip(per_bucket, weights):
        total += weight * sum(c.density for layer in bucket for c in layer)
    return min(total / (steps * num_layers * num_heads), 1.0)


def _model_name(pipe: Any) -> str:
    path = getattr(getattr(pipe, "config", None), "_name_or_path", None)
    return str(path) if path else type(pipe).__name__


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type
