"""`vidsparse demo`: profile the built-in tiny model and evaluate the profile, offline, in a few CPU minutes.

Steps: load the trained tiny Wan model (`tiny-wan`: 3 layers, 2 heads of 32, a 9 x 16 x 16 token grid = 2304
tokens per attention call, so attention is most of a step); profile it on a calibration prompt for the predicted
attention speed-up of one fixed window strategy; evaluate the saved profile and that window with `vidsparse eval`
on another prompt and two seeds, so the report compares the profiler's per-head choice with a uniform pattern of
the same cost; print the summary and where the files are. The command line of that evaluation is printed and
recorded in the report, so the numbers can be reproduced with `vidsparse eval` alone. The profile runs with the
quality guard on (`vidsparse.guard`, the default with a profile): the summary's guard column says how many heads it
checked and switched to dense on the evaluation prompt, which is not the calibration prompt.

When the trained weights or the profiler are not part of this build, the demo says so and falls back to a
random-weight tiny Wan pipeline with the same token geometry and/or one fixed strategy on every head.
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path
from typing import Any

from ..patch import inspect_model

#: Evaluation and calibration prompts for the random fallback model (the trained model brings its own).
_FALLBACK_PROMPTS = ("a red circle moving left", "a green triangle moving up")
SEEDS = (0, 1)
#: The ideal attention speed-up of FIXED_STRATEGY at this geometry (density 0.56). An error budget (0.05) leaves
#: the tiny model dense: most of its heads attend diffusely, so no pattern stays within it.
TARGET_SPEEDUP = 1.8
#: Cost of a plan = its blocks at the dense kernel's speed: on a busy 2-core CPU the measured kernel timings are
#: noisy enough to make every sparse plan look slower than dense (the report still measures the real speed).
COST_MODEL = "ideal"
#: Denoising steps of the demo (the tiny model's default is 20): one prompt, two seeds, no warm-up run and 10
#: steps keep profiling and evaluation within 3 minutes on a 2-core CPU.
DEMO_STEPS = 10
#: No layer is kept dense: the profiler's default (the first layer) suits a 30-40 layer model, but here it would
#: be a third of the attention and would hide the tiny model's one spatial head (layer 0, head 1).
DENSE_LAYERS: tuple[int, ...] = ()
#: Evaluated beside the profile (alone when the profiler is not available): a 3D window of tiles around each query
#: tile, the same sparsity on every head.
FIXED_STRATEGY = 'neighborhood:{"window": [3, 1, 1]}'
#: Geometry of the random fallback model: 33 frames of 128 x 128 -> 9 x 16 x 16 latent tokens with patch 1.
_FALLBACK_CALL = dict(num_frames=33, height=128, width=128, max_sequence_length=16)
_FALLBACK_CONFIG = dict(patch_size=(1, 1, 1), num_attention_heads=2, attention_head_dim=32, num_layers=3,
                        ffn_dim=256)


def _load_model() -> tuple[str, Any, dict[str, Any], tuple[str, str], list[str]]:
    """(model id, pipeline, call geometry, (evaluation prompt, calibration prompt), notes)."""
    try:
        from ..tiny_model import TINY_WAN_CALL, TINY_WAN_PROMPTS, load_tiny_wan

        pipe, call = load_tiny_wan(), dict(TINY_WAN_CALL)
        prompts, notes = (TINY_WAN_PROMPTS[0], TINY_WAN_PROMPTS[2]), []
    except (ImportError, FileNotFoundError, OSError) as error:
        from ..testing import tiny_pipeline

        pipe, call, prompts = tiny_pipeline("wan", **_FALLBACK_CONFIG), dict(_FALLBACK_CALL), _FALLBACK_PROMPTS
        notes = [f"the trained tiny model is not available ({error}); using a random-weight tiny Wan pipeline with "
                 f"the same token geometry: its attention is nearly uniform, so quality numbers mean little"]
    pipe.set_progress_bar_config(disable=True)
    call["num_inference_steps"] = DEMO_STEPS
    model = "tiny-wan" if not notes else "tiny-wan-random"
    return model, pipe, call, prompts, notes


def _profile(pipe: Any, call: dict[str, Any], prompt: str, path: Path) -> tuple[list[str], list[str]]:
    """Profile the pipeline into `path`; returns (eval arguments for the sparse configuration, notes)."""
    try:
        from ..profiler import profile_pipeline
    except ImportError as error:
        return ["--strategy", FIXED_STRATEGY], [
            f"the profiler is not available ({error}); evaluating the fixed strategy {FIXED_STRATEGY}"
        ]
    started = time.perf_counter()
    profile = profile_pipeline(
        pipe, [prompt], height=call["height"], width=call["width"], frames=call["num_frames"],
        steps=call["num_inference_steps"], target_speedup=TARGET_SPEEDUP, dense_layers=DENSE_LAYERS,
        cost_model=COST_MODEL, call_kwargs=_extra(call),
    )
    profile.save(path)
    summary = profile.summary
    return ["--profile", str(path), "--strategy", FIXED_STRATEGY], [
        f"profiled in {time.perf_counter() - started:.0f} s at predicted speed-up {TARGET_SPEEDUP}x: mean density "
        f"{summary.mean_density:.2f}, predicted attention speedup {summary.predicted_speedup:.2f}x -> {path}"
    ]


def _extra(call: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in call.items() if k not in ("num_frames", "height", "width", "num_inference_steps")}


def eval_argv(model: str, sparse: list[str], call: dict[str, Any], prompt: str, out: Path) -> list[str]:
    """The `vidsparse eval` arguments of the demo's evaluation."""
    argv = ["--model", model, *sparse, "--prompt", prompt]
    argv += ["--seeds", *map(str, SEEDS), "--height", str(call["height"]), "--width", str(call["width"]),
             "--frames", str(call["num_frames"]), "--steps", str(call["num_inference_steps"])]
    for key, value in _extra(call).items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv + ["--warmup", "0", "--device", "cpu", "--out", str(out)]


def run_demo(out: str | Path = "demo_out") -> int:
    from .cli import _print_summary, add_eval_arguments, evaluate_from_args

    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, pipe, call, (prompt, calibration_prompt), notes = _load_model()
    info = inspect_model(pipe)
    print(f"vidsparse demo: {model}, {info.num_layers} layers x {info.num_heads} heads of {info.head_dim}; "
          f"{call['num_frames']} frames of {call['height']} x {call['width']}, {call['num_inference_steps']} steps")
    for note in notes:
        print(f"note: {note}")
    sparse, profile_notes = _profile(pipe, call, calibration_prompt, out / "profile.json")
    for note in profile_notes:
        print(note)
    argv = eval_argv(model, sparse, call, prompt, out)
    parser = argparse.ArgumentParser(prog="vidsparse eval")
    add_eval_arguments(parser)
    command = "vidsparse eval " + " ".join(shlex.quote(a) for a in argv)
    print(f"evaluating: {command}")
    report = evaluate_from_args(parser.parse_args(argv), pipe=pipe, command=command)
    _print_summary(report, str(out), time.perf_counter() - started)
    return 0
