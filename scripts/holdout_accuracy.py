"""Do a profile's predictions hold on prompts it never saw? Profile a model, check it on held-out prompts and seeds.

    python scripts/holdout_accuracy.py --model tiny-wan --calibration 6 --holdout 4 --target-speedup 1.8
    python scripts/holdout_accuracy.py --model tiny-ltx --steps 10 --target-speedup 1.5 --calibration 4 --holdout 3

Profiles `--model` (anything `vidsparse profile --model` takes: tiny-wan, tiny-<family>, a hub id or a local
folder) on `--calibration` prompts, then runs `--holdout` other prompts with seeds no calibration run used, dense and
patched (`vidsparse.profiler.measure_achieved_error`). Prints the per-head table (mean prediction ± its standard
error, the stated bound, achieved, ratios), the share of heads within 1.2x of the stated prediction, the final
latents' relative error against the stated bound, and the profiling cost in dense generations: measured here
(wall time / one dense generation's) and from the profiler's own work counts (`vidsparse.profiler.accounting`),
for this run and for a Wan 2.1 1.3B 480p profile with the same settings, with the rows / scored steps / prompts
trade-off. Writes everything to JSON (default scripts/results/holdout_accuracy_<model>.json).

Prompts: `--prompts FILE` (one per line), else the built-in tiny-wan prompt list (`vidsparse.tiny_model.
TINY_WAN_PROMPTS`, which any text encoder accepts), shuffled with `--split-seed` (-1: in file order); the first
--calibration are calibrated, the next --holdout held out. The split matters: the built-in list starts with four
one-object prompts, whose attention errors are the lowest, so calibrating on them alone under-predicts the rest
(a profile's predictions hold for prompts like its calibration prompts, no more).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

from vidsparse.cli_arguments import add_geometry_arguments
from vidsparse.layout import VideoLayout
from vidsparse.profiler import measure_achieved_error, profile_pipeline
from vidsparse.profiler.accounting import ProfilingWork, dense_generation_units, predict_work
from vidsparse.profiler.candidates import default_candidates
from vidsparse.profiler.cli import pipeline_and_call, read_prompts
from vidsparse.profiler.report import check_text, summary_text
from vidsparse.tiny_model import TINY_WAN_PROMPTS

RESULTS = Path(__file__).resolve().parent / "results"

#: Wan 2.1 T2V 1.3B at 480 x 832, 81 frames, 50 steps: latent grid 21 x 30 x 52 (32,760 tokens), 30 layers of
#: 12 heads x 128; classifier-free guidance as two transformer calls per step.
WAN = dict(grid=(21, 30, 52), layers=30, heads=12, head_dim=128, steps=50, branches=2)
#: Attention's share of a dense Wan 480p generation (DESIGN.md: 70-90%), the float64 / bfloat16 slowdown of an
#: H100 (about 67 vs 990 dense TFLOP/s: 15x) and the attention speed-up of the profile being made.
WAN_ATTENTION_SHARE = 0.7
WAN_FP64_SLOWDOWN = 15.0
WAN_SPEEDUP = 2.0


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="tiny-wan, tiny-<family>, a hub id or a local pipeline folder")
    p.add_argument("--prompts", type=Path, default=None, help="prompt file (default: the built-in tiny-wan prompts)")
    p.add_argument("--calibration", type=int, default=6, help="calibration prompts (default 6)")
    p.add_argument("--holdout", type=int, default=4, help="held-out prompts checked afterwards (default 4)")
    p.add_argument("--split-seed", type=int, default=0,
                   help="shuffle the prompts with this seed before splitting them (default 0; -1: file order)")
    add_geometry_arguments(p)
    objective = p.add_mutually_exclusive_group()
    objective.add_argument("--budget", type=float, default=None, help="per-head error budget")
    objective.add_argument("--target-speedup", type=float, default=None, help="predicted attention speed-up")
    p.add_argument("--statistic", choices=("mean", "max", "prediction"), default="prediction")
    p.add_argument("--margin", type=float, default=2.0)
    p.add_argument("--calibration-steps", type=int, default=None,
                   help="denoising steps of the calibration runs (default --steps; the check runs --steps)")
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--sample-steps", type=int, default=6)
    p.add_argument("--buckets", type=int, default=2)
    p.add_argument("--refine", type=int, default=None, help="calibration prompts re-run sparse (default: all)")
    p.add_argument("--verify", type=int, default=1)
    p.add_argument("--estimate", type=int, default=0,
                   help="of the --calibration prompts, the last N state the errors without choosing (default 0)")
    p.add_argument("--latent-holdout", type=int, default=0,
                   help="of the --calibration prompts, the last N state the latents' error without choosing")
    p.add_argument("--dense-layers", type=lambda s: [int(x) for x in s.split(",") if x.strip()], default=[],
                   help="layers kept dense (default: none)")
    p.add_argument("--warmup", type=float, default=0.2)
    p.add_argument("--cost", choices=("measured", "ideal"), default="ideal")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu-fp64-slowdown", type=float, default=2.0,
                   help="float64 / float32 slowdown of this machine, for the counted cost of this run (default 2)")
    p.add_argument("--save-profile", type=Path, default=None, help="also write the profile here")
    p.add_argument("--json", type=Path, default=None, help="results file (default scripts/results/...)")
    return p.parse_args(argv)


def wan_cost(prompts: int, refine: int, sampled: int, rows: int, verify_runs: int = 0,
             step_fraction: float = 1.0, estimate: int = 0, latent_holdout: int = 0) -> dict[str, float]:
    """Counted cost of profiling Wan 2.1 1.3B 480p with these settings, in dense generations (`step_fraction`: the
    calibration runs' steps / the generated steps, applied to Wan's 50)."""
    layout = VideoLayout(*WAN["grid"])
    work = predict_work(layout, default_candidates(layout), layers=WAN["layers"], heads=WAN["heads"],
                        head_dim=WAN["head_dim"], steps=WAN["steps"], sampled=sampled, prompts=prompts, refine=refine,
                        verify_runs=verify_runs, rows=rows, branches=WAN["branches"],
                        calibration_steps=round(step_fraction * WAN["steps"]), estimate=estimate,
                        latent_holdout=latent_holdout)
    units = dense_generation_units(work, attention_share=WAN_ATTENTION_SHARE, speedup=WAN_SPEEDUP,
                                   fp64_slowdown=WAN_FP64_SLOWDOWN)
    return {k: round(v, 3) for k, v in units.items()}


def trade_off() -> list[dict]:
    """Wan-sized cost over prompts / refined prompts, scored steps, rows and calibration steps (of 50)."""
    table = []
    for prompts, refine in ((1, 1), (2, 0), (2, 1), (2, 2), (3, 0), (3, 3), (6, 6), (8, 8)):
        for sampled in (4, 6, 10):
            for rows in (64, 256, 1024):
                for calibration_steps in (10, 15, 25, 50):
                    table.append({"prompts": prompts, "refine": refine, "sample_steps": sampled, "rows": rows,
                                  "calibration_steps": calibration_steps,
                                  **wan_cost(prompts, refine, sampled, rows, verify_runs=int(refine == 0),
                                             step_fraction=calibration_steps / WAN["steps"])})
    return table


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.manual_seed(args.seed)
    prompts = read_prompts(args.prompts) if args.prompts else list(TINY_WAN_PROMPTS)
    if args.split_seed >= 0:
        random.Random(args.split_seed).shuffle(prompts)
    if args.calibration < 1 or args.holdout < 1 or args.calibration + args.holdout > len(prompts):
        raise SystemExit(f"--calibration ({args.calibration}) and --holdout ({args.holdout}) must be >= 1 and fit "
                         f"the {len(prompts)} prompts")
    calibration, held_out = prompts[:args.calibration], prompts[args.calibration:args.calibration + args.holdout]
    pipe, name, geometry, call_kwargs, used = pipeline_and_call(args.model, "cpu", None, args.height, args.width,
                                                                args.frames, args.steps)
    print(f"holdout_accuracy: {name}, {used}", flush=True)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    size = dict(height=geometry["height"], width=geometry["width"], frames=geometry["num_frames"],
                steps=geometry["num_inference_steps"])
    profile = profile_pipeline(
        pipe, calibration, **size, budget=args.budget, target_speedup=args.target_speedup, seed=args.seed,
        progress=False, warmup=args.warmup, dense_layers=args.dense_layers, sample_steps=args.sample_steps,
        buckets=args.buckets, rows=args.rows, statistic=args.statistic, margin=args.margin, refine=args.refine,
        verify=args.verify, cost_model=args.cost, name=name, call_kwargs=call_kwargs,
        calibration_steps=args.calibration_steps, estimate=args.estimate,
        latent_holdout=args.latent_holdout)
    print(summary_text(profile, args.save_profile), flush=True)
    if args.save_profile is not None:
        profile.save(args.save_profile)
    # Prompt i of the calibration had seed + i: the held-out prompts get seeds past them.
    check = measure_achieved_error(pipe, profile, held_out, **size, seed=args.seed + len(calibration),
                                   call_kwargs=call_kwargs)
    check["profiling_dense_generations"] = profile.timings["total_s"] / check["dense_s"]
    print(check_text(check))
    # A skipped head's error is 1 by definition (its output is dropped), so its prediction holds trivially.
    scored = [h for h in check["heads"] if h["strategy"] != "skip"]
    check["within_excluding_skip"] = (sum(h["bound_ratio"] <= check["tolerance"] for h in scored) / len(scored)
                                      if scored else None)
    check["heads_excluding_skip"] = len(scored)
    if scored:
        print(f"  without skipped heads: {sum(h['bound_ratio'] <= check['tolerance'] for h in scored)} of "
              f"{len(scored)} within {check['tolerance']:g}x the stated prediction")
    work = ProfilingWork(**profile.work)
    counted = dense_generation_units(work, attention_share=1.0, speedup=profile.summary.predicted_speedup,
                                     fp64_slowdown=args.cpu_fp64_slowdown)
    unseen = args.estimate + args.latent_holdout
    choosing = len(calibration) - unseen
    refine = choosing if args.refine is None else min(args.refine, choosing)
    wan = wan_cost(choosing, refine, len(profile.calibration.sampled_steps), args.rows,
                   verify_runs=work.sparse_generations - refine - unseen, step_fraction=work.step_fraction,
                   estimate=args.estimate, latent_holdout=args.latent_holdout)
    print(f"profiling cost: measured {check['profiling_dense_generations']:.2f} dense generations here; counted "
          f"{counted['total']:.2f} (attention-only model, float64 {args.cpu_fp64_slowdown:g}x); Wan 2.1 1.3B 480p with "
          f"these settings: {wan['total']:.2f} ({wan})")
    result = {
        "model": name, "geometry": size, "calibration_prompts": calibration, "held_out_prompts": held_out,
        "settings": {k: v for k, v in vars(args).items() if k not in ("prompts", "json", "save_profile", "model")},
        "profile": {"mean_density": profile.summary.mean_density,
                    "predicted_speedup": profile.summary.predicted_speedup,
                    "latent_error": profile.summary.latent_error,
                    "latent_error_bound": profile.summary.latent_error_bound,
                    "sampled_steps": list(profile.calibration.sampled_steps)},
        "check": check, "work": profile.work, "timings": profile.timings, "cost_counted_here": counted,
        "cost_wan_480p": wan,
        "wan_assumptions": {**WAN, "attention_share": WAN_ATTENTION_SHARE, "fp64_slowdown": WAN_FP64_SLOWDOWN,
                            "speedup": WAN_SPEEDUP},
        "wan_trade_off": trade_off(),
    }
    out = args.json or RESULTS / f"holdout_accuracy_{name.replace('/', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
