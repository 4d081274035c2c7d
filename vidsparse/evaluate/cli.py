"""`vidsparse eval` and `vidsparse demo`.

    vidsparse eval --model tiny-wan --profile profiles/tiny-wan.json --prompts prompts.txt --seeds 0 1 --out out/eval
    vidsparse eval --model tiny-wan --strategy dense --prompt "a red circle moving right" --steps 10
    vidsparse eval --model tiny-wan --budgets 0.02 0.05 0.1 --prompts prompts.txt ...   (speed-quality curve)
    vidsparse demo                                                                       (no arguments, offline)

Sparse configurations, any combination, at least one: `--profile FILE` (a saved profile), `--strategy SPEC` (one
strategy for every head: `NAME` or `NAME:{json params}`), `--budgets B ...` (profile this model at each error
budget with `vidsparse.profiler.profile_pipeline`, then evaluate each profile: the speed-quality curve).

--height, --width, --frames and --steps default to what the model generates by itself (the tiny models' native
call, a hub pipeline's own `__call__` defaults: see `vidsparse.call_defaults`); so do the tiny models' text
arguments (--max-sequence-length, --guidance-scale).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from ..call_defaults import GEOMETRY_FLAGS, fill_geometry, native_call
from ..cli_arguments import add_geometry_arguments, backend_name, positive_int
from ..patch import patch, resolve_strategy
from .models import load_pipeline
from .report import summary_table, write_report
from .runner import EvalSettings, Variant, run_evaluation
from .timing import CLOCKS


def register(subparsers: Any) -> None:
    """Add the evaluation subcommands to the `vidsparse` parser."""
    evaluate = subparsers.add_parser(
        "eval", help="compare a patched pipeline with the dense one: quality, speed, density, videos, report",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_eval_arguments(evaluate)
    evaluate.set_defaults(func=run_eval_command)
    demo = subparsers.add_parser("demo", help="profile and evaluate the built-in tiny model (no network)")
    demo.add_argument("--out", default="demo_out", help="output folder (default: ./demo_out)")
    demo.set_defaults(func=_demo)


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="tiny-wan, tiny-<family>, a local pipeline folder or hub id")
    parser.add_argument("--profile", help="profile JSON to evaluate")
    parser.add_argument("--strategy", action="append", default=[],
                        help='one strategy for all heads: NAME or NAME:{"param": value} (repeatable)')
    parser.add_argument("--budgets", type=float, nargs="+", default=[],
                        help="profile at each error budget and evaluate each (speed-quality curve)")
    parser.add_argument("--prompts", help="text file, one prompt per line (blank lines and # comments skipped)")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable; added to --prompts)")
    parser.add_argument("--calibration-prompts", help="prompts file for --budgets profiling (default: the prompts)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    add_geometry_arguments(parser)
    parser.add_argument("--guidance-scale", type=float, help="pipeline guidance_scale (default: the pipeline's)")
    parser.add_argument("--max-sequence-length", type=int, help="pipeline max_sequence_length (text tokens)")
    parser.add_argument("--dense-warmup-steps", type=float, help="override the dense warm-up (count if >= 1)")
    parser.add_argument("--dense-layers", type=int, nargs="*", help="override the dense layers")
    parser.add_argument("--repeats", type=positive_int, default=1,
                        help="timed runs per prompt, seed and mode (default 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per mode first (default 1)")
    parser.add_argument("--backend", type=backend_name, default="auto",
                        help="sparse attention backend (default auto)")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--clock", choices=CLOCKS, default="wall",
                        help="CPU timing clock: wall, or process CPU time (steadier on a loaded machine)")
    parser.add_argument("--fps", type=positive_int, default=16)
    parser.add_argument("--no-videos", action="store_true", help="do not write mp4 files")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--out", default="out/eval", help="output folder (default out/eval)")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def read_prompts(path: str | None, extra: list[str]) -> list[str]:
    prompts: list[str] = []
    if path is not None:
        lines = Path(path).read_text().splitlines()
        prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not prompts:
            raise ValueError(f"{path} holds no prompt")
    prompts += extra
    if not prompts:
        raise ValueError("give prompts with --prompts FILE or --prompt TEXT")
    return prompts


def parse_strategy(spec: str) -> tuple[str, dict[str, Any]]:
    """'NAME' or 'NAME:{json}' -> (name, params); JSON lists become tuples (strategies take (t, h, w) tuples)."""
    name, _, params = spec.partition(":")
    if not params:
        return name, {}
    try:
        values = json.loads(params)
    except json.JSONDecodeError as error:
        raise ValueError(f"--strategy {spec!r}: parameters must be a JSON object ({error})") from None
    if not isinstance(values, dict):
        raise ValueError(f"--strategy {spec!r}: parameters must be a JSON object")
    return name, {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def strategy_label(name: str, params: dict[str, Any]) -> str:
    """A short label for a strategy variant, e.g. `neighborhood(window=1)`; 'dense' is reserved for the reference."""
    label = name + ("(" + ",".join(f"{k}={_compact(v)}" for k, v in params.items()) + ")" if params else "")
    return "dense-strategy" if label == "dense" else label


def _compact(value: Any) -> str:
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _schedule_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if args.dense_warmup_steps is not None:
        w = args.dense_warmup_steps
        overrides["dense_warmup_steps"] = int(w) if w >= 1 or w == 0 else w
    if args.dense_layers is not None:
        overrides["dense_layers"] = args.dense_layers
    return overrides


def build_variants(args: argparse.Namespace, pipe: Any, settings: EvalSettings) -> list[Variant]:
    """The sparse configurations the arguments name (profiling at each budget happens here)."""
    schedule = _schedule_overrides(args)
    variants: list[Variant] = []
    if args.profile:
        path = args.profile
        variants.append(Variant("profile", lambda p: patch(p, path, backend=args.backend, **schedule),
                                description=f"profile `{path}`"))
    for spec in args.strategy:
        name, params = parse_strategy(spec)
        variants.append(Variant(strategy_label(name, params), lambda p, s=(name, params): patch(
            p, strategy=s, backend=args.backend, **schedule), description=f"strategy `{spec}` on every head"))
    if args.budgets:
        variants += budget_variants(args, pipe, settings, schedule)
    return variants


def budget_variants(args: argparse.Namespace, pipe: Any, settings: EvalSettings, schedule: dict[str, Any]) -> list[Variant]:
    """Profile the pipeline at each error budget (on the calibration prompts); one variant per profile."""
    from ..profiler import profile_pipeline

    prompts = read_prompts(args.calibration_prompts, []) if args.calibration_prompts else settings.prompts
    out = Path(args.out) / "profiles"
    out.mkdir(parents=True, exist_ok=True)
    variants = []
    for budget in sorted(set(args.budgets)):
        profile = profile_pipeline(
            pipe, prompts, height=settings.height, width=settings.width, frames=settings.num_frames,
            steps=settings.num_inference_steps, budget=budget, backend=args.backend,
            progress=not args.no_progress, call_kwargs=settings.call_kwargs,
        )
        path = out / f"budget-{budget:g}.json"
        profile.save(path)
        variants.append(Variant(f"budget-{budget:g}", lambda p, prof=profile: patch(
            p, prof, backend=args.backend, **schedule), budget=budget,
            description=f"profiled at error budget {budget:g}, saved to `{path.relative_to(args.out)}`"))
    return variants


def settings_from_args(args: argparse.Namespace, prompts: list[str], native: dict[str, Any]) -> EvalSettings:
    """What to generate: flags given win; the rest is the model's `native` call (`call_defaults.native_call`)."""
    geometry, used = fill_geometry(dict(height=args.height, width=args.width, num_frames=args.frames,
                                        num_inference_steps=args.steps), native, args.model)
    print(f"vidsparse eval: {used}")
    call_kwargs = {k: v for k, v in native.items() if k not in GEOMETRY_FLAGS}
    if args.guidance_scale is not None:
        call_kwargs["guidance_scale"] = args.guidance_scale
    if args.max_sequence_length is not None:
        call_kwargs["max_sequence_length"] = args.max_sequence_length
    return EvalSettings(
        prompts=prompts, seeds=list(args.seeds), **geometry, call_kwargs=call_kwargs, repeats=args.repeats,
        warmup=args.warmup, fps=args.fps, save_videos=not args.no_videos, clock=args.clock,
    )


def evaluate_from_args(args: argparse.Namespace, pipe: Any | None = None, command: str | None = None) -> dict[str, Any]:
    """Run `vidsparse eval` for parsed arguments; returns the report (also written to args.out)."""
    # Before loading the model: a typo costs nothing.
    prompts = read_prompts(args.prompts, args.prompt)
    if not (args.profile or args.strategy or args.budgets):
        raise ValueError("give at least one of --profile, --strategy, --budgets")
    for spec in args.strategy:
        resolve_strategy(parse_strategy(spec))
    if args.profile and not Path(args.profile).is_file():
        raise FileNotFoundError(f"--profile {args.profile}: no such file")
    if pipe is None:
        pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype)
    settings = settings_from_args(args, prompts, native_call(args.model, pipe))
    variants = build_variants(args, pipe, settings)
    result = run_evaluation(pipe, variants, settings, args.out, progress=not args.no_progress)
    report = result.to_json()
    report.update(model=args.model, device=str(getattr(pipe, "device", args.device)),
                  command=command if command is not None else _command_line())
    write_report(report, args.out)
    return report


def _command_line() -> str:
    return "vidsparse " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def run_eval_command(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    report = evaluate_from_args(args)
    _print_summary(report, args.out, time.perf_counter() - started)
    return 0


def _print_summary(report: dict[str, Any], out: str, seconds: float) -> None:
    print()
    print(summary_table(report))
    print()
    print(f"{report['lpips']}")
    print(f"report: {Path(out) / 'report.md'} (numbers: {Path(out) / 'report.json'}); videos and plots under {out}/")
    print(f"wall time: {seconds:.0f} s")


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.out)
