"""Checking a profile on its pipeline: the attention errors the patched pipeline achieves vs the predicted ones.

The patched pipeline runs with the profile's policy (the same `SparseController` that `vidsparse.patch` builds);
at every sparse call the controller's output is compared with the model's dense kernel on the same q/k/v, per
head, over the video query rows (the rows the profiler samples). Inputs of later layers already carry the
sparse error of earlier ones, so this is the error in the running pipeline, not on dense activations. The final
latents are also compared with a dense run of the same seed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from ..controller import SparseController
from ..profile import Profile
from ..runtime import AttentionCall, install, uninstall
from .calibrate import _generate


class _ErrorProbe:
    """Runs the profile's SparseController and records per-head output errors against the dense kernel."""

    def __init__(self, profile: Profile, backend: str) -> None:
        self.profile = profile
        self.inner = SparseController(profile.policy(), backend)
        # (bucket, layer, head) -> [(prompt, step, error)]: per generation, and the calibration's sampled steps vs
        # the whole bucket.
        self.errors: dict[tuple[int, int, int], list[tuple[int, int, float]]] = {}
        self.prompt = 0  # index of the generation running
        self.grids: set[tuple[int, int, int]] = set()

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        if call.layout.grid not in self.grids:
            self.grids.add(call.layout.grid)
            self.profile.note_grid(call.layout.grid)
        out = self.inner(call)
        num_heads = call.q.shape[1]
        if call.step is None or call.num_steps is None:
            return out
        if self.profile.policy().strategies(call.step, call.num_steps, call.layer, num_heads) is None:
            return out
        dense = call.dense()
        video = slice(call.layout.video_offset, call.layout.video_offset + call.layout.num_video_tokens)
        diff = (out[:, :, video].double() - dense[:, :, video].double()).square().sum((-1, -2))
        norm = dense[:, :, video].double().square().sum((-1, -2))
        error = (diff / norm).sqrt().mean(0)  # [H], mean over the batch like the profiler
        bucket = self.profile.buckets.index(self.profile.bucket_at(call.step, call.num_steps))
        for head in range(num_heads):
            self.errors.setdefault((bucket, call.layer, head), []).append((self.prompt, call.step, float(error[head])))
        return out


#: The check's tolerance: a head's achieved error is "as predicted" when at most this times its stated prediction.
TOLERANCE = 1.2


def measure_achieved_error(
    pipe: Any,
    profile: Profile,
    prompts: Sequence[str],
    *,
    height: int,
    width: int,
    frames: int,
    steps: int,
    seed: int = 0,
    backend: str = "auto",
    call_kwargs: dict[str, Any] | None = None,
    tolerance: float = TOLERANCE,
) -> dict[str, Any]:
    """Predicted vs achieved per-head attention error of `pipe` patched with `profile`, prompt i with seed + i.

    To measure on data the profile never saw, give prompts that were not calibration prompts and a `seed` past
    the calibration's seeds (the profiler used seed + i for its prompt i; `vidsparse profile --holdout N` does this).

    A head's stated prediction for prompts the calibration never saw is its `error_bound` (the upper prediction
    bound for one new generation), or its mean `error` where the profile states no bound (one calibration prompt,
    older files).

    Returns a dict: "predicted_error" and "achieved_error" (means over the sparse (bucket, layer, head) entries
    that ran), "heads" (a list of {bucket, layer, head, strategy, predicted (the mean), predicted_se, bound,
    stated (the stated prediction), achieved (mean over all prompts), achieved_per_prompt, achieved_sampled_steps
    (the mean over the calibration's sampled steps only; None at another step count), ratio (achieved /
    predicted), bound_ratio (achieved / stated)}), "within" (share of those heads with achieved <= tolerance x
    stated prediction), "within_mean" (the same against the mean), "within_per_generation" (share of (head,
    prompt) pairs whose achieved error in that one generation is <= tolerance x stated), "tolerance", "latent_errors"
    (relative L2 error of the final latents vs a dense run with the same seed, per prompt), "latent_error" (their
    mean), "stated_latent_error" and "stated_latent_error_bound" (the profile's `summary.latent_error` and
    `latent_error_bound`, None if unstated), "latent_within" (share of the prompts whose latent error is within the
    stated bound, or the stated largest error where no bound is stated; None if neither) and "dense_s" (wall
    seconds of one dense generation to latents, mean over prompts: the unit of profiling cost).
    """
    if not tolerance >= 1.0:
        raise ValueError(f"tolerance must be a ratio >= 1, got {tolerance!r}")
    probe = _ErrorProbe(profile, backend)
    latent_errors, dense_s = [], []
    for index, prompt in enumerate(prompts):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        dense = _generate(pipe, prompt, height, width, frames, steps, seed + index, call_kwargs).frames
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        dense_s.append(time.perf_counter() - started)
        probe.prompt = index
        latent_errors.append(sparse_latent_error(pipe, probe, dense, prompt, height, width, frames, steps,
                                                 seed + index, call_kwargs))
    heads = []
    sampled = set(profile.calibration.sampled_steps) if steps == profile.calibration.steps else set()
    for (bucket, layer, head), values in sorted(probe.errors.items()):
        choice = profile.buckets[bucket].heads[layer][head]
        if choice.strategy.name == "dense":
            continue
        stated = choice.error if choice.error_bound is None else choice.error_bound
        per_prompt = [_mean([e for p, _, e in values if p == index]) for index in range(len(prompts))]
        achieved = _mean([e for _, _, e in values])
        heads.append({"bucket": bucket, "layer": layer, "head": head, "strategy": choice.strategy.name,
                      "predicted": choice.error, "predicted_se": choice.error_se, "bound": choice.error_bound,
                      "stated": stated, "achieved": achieved, "achieved_per_prompt": per_prompt,
                      "achieved_sampled_steps": _mean([e for _, step, e in values if step in sampled]),
                      "ratio": _ratio(achieved, choice.error), "bound_ratio": _ratio(achieved, stated)})
    share = lambda flags: sum(flags) / len(flags) if flags else 1.0  # noqa: E731
    stated_latent = profile.summary.latent_error_bound or profile.summary.latent_error
    return {"predicted_error": _mean([h["predicted"] for h in heads]) or 0.0,
            "achieved_error": _mean([h["achieved"] for h in heads]) or 0.0, "heads": heads,
            "within": share([h["bound_ratio"] <= tolerance for h in heads]),
            "within_mean": share([h["ratio"] <= tolerance for h in heads]),
            "within_per_generation": share([e <= tolerance * h["stated"] for h in heads
                                            for e in h["achieved_per_prompt"] if e is not None]),
            "tolerance": tolerance, "latent_errors": latent_errors,
            "latent_error": sum(latent_errors) / len(latent_errors),
            "stated_latent_error": profile.summary.latent_error,
            "stated_latent_error_bound": profile.summary.latent_error_bound,
            "latent_within": None if stated_latent is None else share([e <= stated_latent for e in latent_errors]),
            "dense_s": sum(dense_s) / len(dense_s)}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _ratio(achieved: float, predicted: float) -> float:
    return achieved / predicted if predicted > 0 else (0.0 if achieved == 0 else math.inf)


def sparse_latent_error(pipe: Any, controller: Any, dense: torch.Tensor, prompt: str, height: int, width: int,
                        frames: int, steps: int, seed: int, call_kwargs: dict[str, Any] | None) -> float:
    """Relative L2 error of the final latents of `pipe` run under `controller` vs `dense` (same prompt and seed)."""
    install(pipe, controller)
    try:
        sparse = _generate(pipe, prompt, height, width, frames, steps, seed, call_kwargs).frames
    finally:
        uninstall(pipe)
    return float((sparse.double() - dense.double()).norm() / dense.double().norm())
