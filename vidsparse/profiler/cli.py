"""`vidsparse profile` and `vidsparse inspect`.

    vidsparse profile --model tiny-wan --prompts prompts.txt --budget error=0.05 --out profiles/tiny-wan.json
    vidsparse profile --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers --prompts prompts.txt --frames 33 --out wan.json
    vidsparse inspect profiles/tiny-wan.json --plot tiny-wan.png

`--model` takes a hub id or a local diffusers folder (`DiffusionPipeline.from_pretrained`), `tiny-wan` (the
built-in trained tiny Wan model, `vidsparse.tiny_model`; falls back to the random tiny Wan pipeline with a
message when its weights are missing), or `tiny-<family>` / `tiny-<family>-random` (a random tiny pipeline from
`vidsparse.testing.tiny_pipeline`).

On several processes (`accelerate launch --num_processes 2 -m vidsparse profile ...`), each rank calibrates on its
share of the prompts, the score statistics are merged, and rank 0 writes the profile.

--height, --width, --frames and --steps default to what the model generates by itself
(`vidsparse.call_defaults`: the tiny models' native call, a hub pipeline's own `__call__` defaults).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from ..cli_arguments import add_geometry_arguments, backend_name


def register(subparsers: Any) -> None:
    """Add the profiler's subcommands to the `vidsparse` parser."""
    p = subparsers.add_parser("profile", help="profile a pipeline: choose a strategy per layer, head and step bucket",
                              description="Run the pipeline densely on calibration prompts, score every candidate "
                                          "strategy per head, and write a profile JSON.")
    p.add_argument("--model", required=True, help="hub id, local pipeline folder, tiny-wan or tiny-<family>")
    p.add_argument("--prompts", required=True, type=Path, help="text file, one calibration prompt per line")
    add_geometry_arguments(p, steps_help="denoising steps the profile is made for (and of --holdout's check)")
    p.add_argument("--calibration-steps", type=int, default=None,
                   help="denoising steps of the calibration runs (default --steps): buckets are fractions of the run, "
                        "so 10-step runs profile a 50-step model at a fifth of the cost per prompt")
    objective = p.add_mutually_exclusive_group()
    objective.add_argument("--budget", type=_budget, default=None,
                           help="per-head error budget, e.g. error=0.05 (default 0.05)")
    objective.add_argument("--target-speedup", type=float, default=None,
                           help="predicted attention speed-up to reach with the least error")
    p.add_argument("--out", required=True, type=Path, help="profile JSON to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=_warmup, default=0.2,
                   help="dense warm-up: a step count (3) or a fraction of the steps (0.2, default)")
    p.add_argument("--dense-layers", type=_int_list, default=None,
                   help="comma-separated layers kept dense (default: the first layer of each transformer)")
    p.add_argument("--sample-steps", type=int, default=6,
                   help="denoising steps scored, spread over the buckets (default 6: 3 per bucket)")
    p.add_argument("--buckets", type=int, default=2, help="step buckets with their own choices (default 2)")
    p.add_argument("--rows", type=int, default=256,
                   help="query rows sampled per call, stratified: at least one per query block (default 256)")
    p.add_argument("--statistic", choices=("mean", "max", "prediction"), default="mean",
                   help="error held within the budget: mean + --margin standard errors (default), the largest "
                        "error of a scored call, or the upper prediction bound for a new prompt (mean + --margin "
                        "spreads of one prompt's error; what holds on prompts the calibration never saw)")
    p.add_argument("--margin", type=float, default=2.0,
                   help="standard errors (or spreads, for --statistic prediction and the stated bounds) added to "
                        "the mean error (default 2)")
    p.add_argument("--refine", type=int, default=None,
                   help="calibration prompts re-run with the profile chosen on the dense runs, scoring again on that "
                        "sparse generation's activations; the final choice uses these scores (default: all; 0: none)")
    p.add_argument("--verify", type=int, default=1,
                   help="calibration prompts re-run sparse to state the final latents' error (default 1; 0: none)")
    p.add_argument("--estimate", type=int, default=0,
                   help="of the calibration prompts, the last N take no part in the choice: run afterwards with the "
                        "final profile, they alone state the heads' errors and the final latents' (sample splitting: "
                        "no winner's bias; --verify then adds no run; default 0)")
    p.add_argument("--latent-holdout", type=int, default=0,
                   help="like --estimate for the final latents only: the last N calibration prompts take no part in "
                        "the choice and state the latents' error and bound; the heads' errors come from the others")
    p.add_argument("--families", type=lambda s: [x for x in s.split(",") if x], default=None,
                   help="comma-separated strategy families to consider (default: all)")
    p.add_argument("--cost", choices=("measured", "ideal"), default="measured",
                   help="cost model: this device's kernel timings, or blocks at the dense kernel's speed")
    p.add_argument("--backend", type=backend_name, default="auto", help="attention backend the cost model times (default auto)")
    p.add_argument("--device", default=None, help="device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="weights dtype for hub models (default bfloat16 on cuda, float32 on cpu)")
    p.add_argument("--save-qkv", type=Path, default=None, help="also save q/k/v of --save-qkv-layers (safetensors)")
    p.add_argument("--save-qkv-layers", type=_int_list, default=[0], help="layers for --save-qkv (default 0)")
    p.add_argument("--holdout", type=int, default=None,
                   help="keep the last N prompts of --prompts out of calibration and check the profile on them "
                        "afterwards (implies --check)")
    p.add_argument("--check", action="store_true",
                   help="afterwards, run held-out prompts (--holdout, default 1) dense and patched, with seeds the "
                        "calibration did not use: print the achieved vs predicted head errors, the final latents' "
                        "error and the profiling cost in dense generations")
    p.add_argument("--check-json", type=Path, default=None, help="also write the check's per-head table here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_profile)

    i = subparsers.add_parser("inspect", help="show a profile: layer x head map of strategies, densities, errors")
    i.add_argument("profile", type=Path)
    i.add_argument("--plot", type=Path, default=None, help="also write a PNG heatmap here")
    i.set_defaults(func=run_inspect)


def _budget(text: str) -> float:
    value = text.split("=", 1)[1] if text.startswith("error=") else text
    try:
        budget = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected error=<number>, e.g. error=0.05, got {text!r}") from None
    if not budget >= 0:
        raise argparse.ArgumentTypeError(f"the error budget must be >= 0, got {text!r}")
    return budget


def _warmup(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def read_prompts(path: Path) -> list[str]:
    """Non-empty lines of the file that do not start with '#'."""
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise ValueError(f"{path}: no prompts (one per line; '#' starts a comment)")
    return prompts


def load_pipeline(model: str, device: str, dtype: str | None) -> tuple[Any, str]:
    """The pipeline for a --model argument and the name to record."""
    from ..testing import tiny_pipeline

    if model == "tiny-wan":
        try:
            from ..tiny_model import load_tiny_wan

            return load_tiny_wan(device=device), model
        except (ImportError, FileNotFoundError, OSError, ValueError) as error:
            print(f"vidsparse profile: the trained tiny Wan model is not available ({error}); using the random "
                  f"tiny Wan pipeline (vidsparse.testing.tiny_pipeline('wan')) instead", file=sys.stderr)
            return tiny_pipeline("wan").to(device), "tiny-wan-random"
    if model.startswith("tiny-"):
        family = model[len("tiny-"):].removesuffix("-random")
        return tiny_pipeline(family).to(device), f"tiny-{family}-random"
    from diffusers import DiffusionPipeline

    chosen = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    pipe = DiffusionPipeline.from_pretrained(model, torch_dtype=getattr(torch, chosen))
    return pipe.to(device), model


def pipeline_and_call(model: str, device: str, dtype: str | None, height: int | None, width: int | None,
                      frames: int | None, steps: int | None) -> tuple[Any, str, dict[str, int], dict[str, Any], str]:
    """(pipeline, recorded name, geometry {height, width, num_frames, num_inference_steps}, the other call
    arguments, a line saying what is used) for a --model argument; unset geometry is the model's own."""
    from ..call_defaults import GEOMETRY_FLAGS, fill_geometry, native_call

    pipe, name = load_pipeline(model, device, dtype)
    native = native_call(name, pipe)
    geometry, used = fill_geometry(dict(height=height, width=width, num_frames=frames, num_inference_steps=steps),
                                   native, name)
    return pipe, name, geometry, {k: v for k, v in native.items() if k not in GEOMETRY_FLAGS}, used


def run_profile(args: argparse.Namespace) -> int:
    from .calibrate import profile_pipeline
    from .report import summary_text

    prompts = read_prompts(args.prompts)
    holdout = args.holdout if args.holdout is not None else (1 if args.check else 0)
    if holdout < 0 or holdout >= len(prompts):
        raise ValueError(f"--holdout must be in [0, {len(prompts) - 1}] (the prompts file has {len(prompts)} "
                         f"prompts and calibration needs one), got {holdout}")
    prompts, held_out = prompts[:len(prompts) - holdout], prompts[len(prompts) - holdout:]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # `accelerate launch` / `torchrun`: one process per device
        from accelerate import PartialState

        state = PartialState(cpu=device == "cpu")  # initializes the process group
        device = args.device or str(state.device)
    pipe, name, geometry, call_kwargs, used = pipeline_and_call(args.model, device, args.dtype, args.height,
                                                                args.width, args.frames, args.steps)
    if _rank() == 0:
        print(f"vidsparse profile: {used}")
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)  # one bar: the profiler's
    profile = profile_pipeline(
        pipe, prompts, height=geometry["height"], width=geometry["width"], frames=geometry["num_frames"],
        steps=geometry["num_inference_steps"], budget=args.budget, target_speedup=args.target_speedup, seed=args.seed, progress=not args.no_progress,
        warmup=args.warmup, dense_layers=args.dense_layers, sample_steps=args.sample_steps, buckets=args.buckets,
        rows=args.rows, statistic=args.statistic, margin=args.margin, refine=args.refine, verify=args.verify,
        families=args.families, backend=args.backend, cost_model=args.cost, name=name,
        save_qkv=(args.save_qkv, args.save_qkv_layers) if args.save_qkv else None, call_kwargs=call_kwargs,
        calibration_steps=args.calibration_steps, estimate=args.estimate,
        latent_holdout=args.latent_holdout,
    )
    if _rank() != 0:  # several processes: rank 0 writes the one profile and reports
        return 0
    profile.save(args.out)
    print(summary_text(profile, args.out))
    if held_out:
        from .report import check_text
        from .validate import measure_achieved_error

        # Prompt i of the file has seed + i: the held-out prompts get seeds no calibration run used.
        result = measure_achieved_error(
            pipe, profile, held_out, height=geometry["height"], width=geometry["width"],
            frames=geometry["num_frames"], steps=geometry["num_inference_steps"], seed=args.seed + len(prompts),
            backend=args.backend, call_kwargs=call_kwargs)
        result["profiling_dense_generations"] = profile.timings["total_s"] / result["dense_s"]
        print(check_text(result))
        if args.check_json is not None:
            args.check_json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def run_inspect(args: argparse.Namespace) -> int:
    from ..profile import Profile
    from .report import inspect_text, plot

    profile = Profile.load(args.profile)
    print(inspect_text(profile))
    if args.plot is not None:
        plot(profile, args.plot)
        print(f"heatmap: {args.plot}")
    return 0
