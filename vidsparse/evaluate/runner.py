"""Dense and sparse runs of one pipeline with the same seeds: videos, quality, timings and densities.

    settings = EvalSettings(prompts=["a red circle moving left"], seeds=[0, 1], height=128, width=128,
                            num_frames=61, num_inference_steps=8)
    variants = [Variant("profile", lambda pipe: vidsparse.patch(pipe, profile="profiles/x.json"))]
    result = run_evaluation(pipe, variants, settings, out_dir="out/eval")

For every (prompt, seed) the dense video is generated first, then each variant's video with the same generator
seed; quality is always measured against the dense video of the same prompt and seed (see quality.py). Each
variant is patched once (`Variant.make`), and its controller is then installed around each of its runs wrapped
in a timer and a density recorder, so plan caches live across runs as they would in use. The dense runs go
through the same runtime with a controller that calls the model's own kernel (`AttentionCall.dense`), so their
attention is timed the same way and their output is the unpatched model's.

Before anything is timed, one untimed one-step dense call primes the process (allocator, kernel selection, first
use of every module), so the first timed mode is not charged for it. Warm-up runs (first prompt and seed, not
timed, not compared) then pay for each mode's own one-off costs: kernel compilation, plan building; with
`warmup=0` those costs stay in the first timed run of each mode. Timings are medians over every timed run of a
mode (prompts x seeds x repeats).
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from ..runtime import install, installed_controller, uninstall
from .density import DensityRecorder
from .quality import VideoQuality, compare_videos, find_lpips, mean_quality
from .timing import CLOCKS, ForwardTimer, RunTiming, TimedController, summarize, time_end_to_end
from .video import side_by_side, write_mp4


@dataclass(frozen=True)
class EvalSettings:
    """What to generate: prompts x seeds at one geometry, and how often to run each."""

    prompts: list[str]
    seeds: list[int]
    height: int
    width: int
    num_frames: int
    num_inference_steps: int
    #: further pipeline call arguments (e.g. guidance_scale, max_sequence_length)
    call_kwargs: dict[str, Any] = field(default_factory=dict)
    #: timed runs per (prompt, seed) and mode; the first one's video is the one compared and saved
    repeats: int = 1
    #: untimed runs per mode before timing
    warmup: int = 1
    fps: int = 16
    save_videos: bool = True
    #: CPU timing clock, "wall" or "process" (see timing.py); CUDA always uses events
    clock: str = "wall"

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError("evaluation needs at least one prompt")
        if not self.seeds:
            raise ValueError("evaluation needs at least one seed")
        for name in ("height", "width", "num_frames", "num_inference_steps", "repeats", "fps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, got {self.clock!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be an integer >= 0, got {self.warmup!r}")

    def call(self, prompt: str, seed: int) -> dict[str, Any]:
        return dict(
            prompt=prompt, height=self.height, width=self.width, num_frames=self.num_frames,
            num_inference_steps=self.num_inference_steps, output_type="np",
            # A CPU generator gives the same initial noise on every device.
            generator=torch.Generator("cpu").manual_seed(seed), **self.call_kwargs,
        )


@dataclass
class Variant:
    """One sparse configuration: `make(pipe)` patches the pipeline and returns the installed controller."""

    label: str
    make: Callable[[Any], Any]
    #: the error budget it was selected at (speed-quality curve), None for a single configuration
    budget: float | None = None
    #: what it is (profile path, strategy), for the report
    description: str = ""


@dataclass
class ModeResult:
    """Everything measured for one mode (dense or a variant)."""

    label: str
    timings: list[RunTiming] = field(default_factory=list)
    qualities: list[VideoQuality] = field(default_factory=list)
    videos: list[dict[str, Any]] = field(default_factory=list)
    density: dict[str, Any] | None = None
    #: largest |difference| between a repeated run's video and the first run's (0 = bit-for-bit reproducible)
    repeat_max_abs_diff: float = 0.0
    budget: float | None = None
    description: str = ""
    #: what the quality guard measured over the timed runs (`Guard.report`), None when the variant has no guard
    guard: dict[str, Any] | None = None

    def to_json(self, dense_timing: dict[str, Any] | None) -> dict[str, Any]:
        timing = summarize(self.timings)
        data: dict[str, Any] = {"label": self.label, "description": self.description, "budget": self.budget,
                                "timing": timing, "repeat_max_abs_diff": self.repeat_max_abs_diff}
        if dense_timing is not None:
            data["speedup"] = {
                name: dense_timing[key] / timing[key] if timing[key] > 0 else None
                for name, key in (("end_to_end", "end_to_end_s"), ("transformer", "transformer_s"),
                                  ("attention", "attention_s"))
            }
            data["quality"] = {"mean": mean_quality(self.qualities), "videos": [
                {**video, **asdict(quality)} for video, quality in zip(self.videos, self.qualities)
            ]}
        if self.density is not None:
            data["density"] = self.density
        if self.guard is not None:
            data["guard"] = self.guard
        return data


class _DenseController:
    """Runs every call with the model's own kernel (what the unpatched model computes)."""

    def __call__(self, call: Any) -> torch.Tensor:
        return call.dense()


def _transformers(pipe: Any) -> list[torch.nn.Module]:
    return [m for m in (getattr(pipe, "transformer", None), getattr(pipe, "transformer_2", None)) if m is not None]


def _device(pipe: Any) -> torch.device:
    return torch.device(getattr(pipe, "device", "cpu"))


class _Mode:
    """A controller to install for a mode's runs, with its timer and (for sparse modes) density recorder."""

    def __init__(self, pipe: Any, controller: Any, sparse: bool, clock: str = "wall") -> None:
        self.pipe = pipe
        self.clock = clock
        self.guard = getattr(controller, "guard", None)
        self.timed = TimedController(controller, _device(pipe), clock)
        self.recorder = DensityRecorder(self.timed, controller) if sparse else None
        self.outer = self.recorder if self.recorder is not None else self.timed

    def run(self, settings: EvalSettings, prompt: str, seed: int) -> tuple[np.ndarray, RunTiming]:
        device = _device(self.pipe)
        self.timed.timer.reset()
        forwards = ForwardTimer(_transformers(self.pipe), device, self.clock)
        install(self.pipe, self.outer)
        try:
            output, seconds = time_end_to_end(lambda: self.pipe(**settings.call(prompt, seed)), device, self.clock)
        finally:
            uninstall(self.pipe)
            forwards.remove()
        timing = RunTiming(
            end_to_end_s=seconds, transformer_s=forwards.timer.total_seconds(),
            attention_s=self.timed.timer.total_seconds(), transformer_calls=forwards.timer.count,
            attention_calls=self.timed.timer.count, steps=settings.num_inference_steps,
        )
        return np.asarray(output.frames[0], dtype=np.float32), timing


def _make_controller(pipe: Any, variant: Variant) -> Any:
    """Patch with the variant, keep its controller and take it out again (it is re-installed per run)."""
    controller = variant.make(pipe)
    installed = installed_controller(pipe)
    if installed is None:
        raise ValueError(f"variant {variant.label!r}: make(pipe) did not patch the pipeline")
    uninstall(pipe)
    return installed if controller is None else controller


def _grid(settings: EvalSettings) -> Iterator[tuple[int, str, int]]:
    for index, prompt in enumerate(settings.prompts):
        for seed in settings.seeds:
            yield index, prompt, seed


@dataclass
class EvalResult:
    settings: EvalSettings
    dense: ModeResult
    variants: list[ModeResult]
    lpips_note: str
    out_dir: Path | None

    def to_json(self) -> dict[str, Any]:
        dense_timing = summarize(self.dense.timings)
        return {
            "format": "vidsparse.eval/1",
            "settings": asdict(self.settings),
            "environment": {"torch": torch.__version__, "python": platform.python_version(),
                            "machine": platform.machine(), "threads": torch.get_num_threads()},
            "lpips": self.lpips_note,
            "dense": {"timing": dense_timing, "repeat_max_abs_diff": self.dense.repeat_max_abs_diff,
                      "videos": self.dense.videos},
            "variants": [v.to_json(dense_timing) for v in self.variants],
        }


def run_evaluation(
    pipe: Any, variants: list[Variant], settings: EvalSettings, out_dir: str | Path | None = None,
    *, progress: bool = True,
) -> EvalResult:
    """Generate dense and sparse videos for every prompt and seed, compare them and time them.

    `pipe` must not be patched (the dense runs are the reference). Videos are written under `out_dir/videos` when
    `settings.save_videos` and an `out_dir` are given. Returns the measurements; `report.write_report` turns them
    into files.
    """
    if not variants:
        raise ValueError("evaluation needs at least one sparse variant")
    if installed_controller(pipe) is not None:
        raise ValueError("the pipeline is already patched; evaluation needs the unpatched (dense) pipeline")
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels) or "dense" in labels:
        raise ValueError(f"variant labels must be distinct and not 'dense', got {labels}")
    video_dir = Path(out_dir) / "videos" if out_dir is not None and settings.save_videos else None
    if video_dir is not None:
        video_dir.mkdir(parents=True, exist_ok=True)
    lpips = find_lpips(str(_device(pipe)))

    dense = ModeResult("dense")
    results = [ModeResult(v.label, budget=v.budget, description=v.description) for v in variants]
    modes = [_Mode(pipe, _DenseController(), sparse=False, clock=settings.clock)]
    modes += [_Mode(pipe, _make_controller(pipe, v), sparse=True, clock=settings.clock) for v in variants]

    pairs = list(_grid(settings))
    total = len(modes) * (settings.warmup + len(pairs) * settings.repeats)
    pipe.set_progress_bar_config(disable=True)
    with tqdm(total=total, desc="vidsparse eval", unit="video", disable=not progress) as bar:
        _, first_prompt, first_seed = pairs[0]
        bar.set_postfix_str("priming")
        pipe(**{**settings.call(first_prompt, first_seed), "num_inference_steps": 1})
        for mode, label in zip(modes, ["dense"] + labels):
            for _ in range(settings.warmup):
                bar.set_postfix_str(f"{label} warm-up")
                mode.run(settings, first_prompt, first_seed)
                bar.update()
            if mode.recorder is not None:
                mode.recorder.reset()
            if mode.guard is not None:
                mode.guard.clear()
        for index, prompt, seed in pairs:
            name = f"p{index}_s{seed}"
            bar.set_postfix_str(f"dense {name}")
            reference = _timed_runs(modes[0], dense, settings, prompt, seed, bar)
            dense.videos.append({"prompt": prompt, "seed": seed, "files": _save(video_dir, f"{name}_dense", reference,
                                                                               settings)})
            for mode, result in zip(modes[1:], results):
                bar.set_postfix_str(f"{result.label} {name}")
                video = _timed_runs(mode, result, settings, prompt, seed, bar)
                result.qualities.append(compare_videos(reference, video, lpips.metric))
                files = _save(video_dir, f"{name}_{slug(result.label)}", video, settings)
                if video_dir is not None:
                    path = video_dir / f"{name}_{slug(result.label)}_side_by_side.mp4"
                    write_mp4(path, side_by_side(reference, video, ("dense", result.label)), fps=settings.fps)
                    files["side_by_side"] = str(path.relative_to(video_dir.parent))
                result.videos.append({"prompt": prompt, "seed": seed, "files": files})
    for mode, result in zip(modes[1:], results):
        result.density = mode.recorder.summary()  # type: ignore[union-attr]
        result.guard = mode.guard.report() if mode.guard is not None else None
    return EvalResult(settings, dense, results, lpips.note, Path(out_dir) if out_dir is not None else None)


def _timed_runs(mode: _Mode, result: ModeResult, settings: EvalSettings, prompt: str, seed: int, bar: Any) -> np.ndarray:
    first = None
    for _ in range(settings.repeats):
        video, timing = mode.run(settings, prompt, seed)
        result.timings.append(timing)
        if first is None:
            first = video
        else:
            result.repeat_max_abs_diff = max(result.repeat_max_abs_diff, float(np.abs(video - first).max()))
        bar.update()
    return first  # type: ignore[return-value]


def slug(label: str) -> str:
    """`label` made safe for a file name."""
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in label).strip("_")


def _save(video_dir: Path | None, stem: str, video: np.ndarray, settings: EvalSettings) -> dict[str, str]:
    if video_dir is None:
        return {}
    path = write_mp4(video_dir / f"{stem}.mp4", video, fps=settings.fps)
    return {"video": str(path.relative_to(video_dir.parent))}
