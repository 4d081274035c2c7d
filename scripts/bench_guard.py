"""Cost of the quality guard over one generation at Wan 2.1 480p geometry: FLOPs, and time measured on this CPU.

Geometry (Wan2.1-T2V-1.3B, 480p x 81 frames): latent grid 21 x 30 x 52 = 32,760 tokens, 30 layers of 12 heads of
128, 50 steps, two transformer calls per step (classifier-free guidance, batch 1 each), the default dense schedule
(first 20% of the steps and layer 0 dense). Which calls the guard checks comes from `Guard.due` itself, run over
the generation's sparse calls, for one step bucket (a strategy) and for a three-bucket profile.

Per call and head (2 FLOPs per multiply-add, QK^T and PV; softmax not counted):
    dense  4 S^2 D          sparse  4 S^2 D x density          check  4 R S D,  R = video query blocks x rows
The sparse density is what the kernel computes (padding included): the default strategy's at this geometry, and a
typical profile's 0.15.

Measured (this CPU, float32, process time, one thread so the other jobs on the machine disturb less): one check
call over all 12 heads (`Guard.estimate` on a full-size call: row sampling, exact rows, error, the host read) and one
dense attention call of one head (torch SDPA), scaled to 12 heads. The sparse calls' time is taken as the dense time
x density, the ideal a block-sparse kernel never beats, so the guard's share printed is an upper bound.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/bench_guard.py     # -> scripts/results/bench_guard_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from bench_attention import device_name
from vidsparse.controller import DenseSchedule
from vidsparse.guard import Guard, GuardConfig
from vidsparse.layout import VideoLayout
from vidsparse.patch import default_strategy

RESULTS = Path(__file__).resolve().parent / "results"
LAYOUT = VideoLayout(21, 30, 52)
LAYERS, HEADS, HEAD_DIM, STEPS, BRANCHES = 30, 12, 128, 50, 2
SCHEDULE = DenseSchedule(0.2, frozenset({0}))
PROFILE_DENSITY = 0.15
#: Step buckets of a profile, as fractions of the steps (the profiler's default split is of this kind).
PROFILE_BUCKETS = (0.0, 0.4, 0.7, 1.0)


def generation_calls(config: GuardConfig, buckets: tuple[float, ...]) -> dict[str, int]:
    """Dense, sparse and checked layer calls of one generation, the checked ones decided by `Guard.due`."""

    def bucket_of(step: int, num_steps: int | None) -> int:
        return max(i for i, start in enumerate(buckets[:-1]) if step / STEPS >= start)

    guard = Guard(config, lambda bucket, layer, head: 1.0, bucket_of)
    counts = {"dense": 0, "sparse": 0, "checked": 0}
    checked_steps = set()
    for step in range(STEPS):
        for _ in range(BRANCHES):
            for layer in range(LAYERS):
                if SCHEDULE.is_dense(step, STEPS, layer):
                    counts["dense"] += 1
                    continue
                counts["sparse"] += 1
                if guard.due(SimpleNamespace(step=step, num_steps=STEPS)):
                    counts["checked"] += 1
                    checked_steps.add(step)
    return {**counts, "checked_steps": sorted(checked_steps)}


def cpu_seconds(fn, repeats: int) -> float:
    """Median process time of `fn()` over `repeats` runs, after one untimed run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_guard_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = GuardConfig()
    s, d = LAYOUT.seq_len, HEAD_DIM
    rows = LAYOUT.num_video_blocks * config.rows_per_block
    default_density = default_strategy().plan(LAYOUT).density()

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, s, d, generator=g) for _ in range(3))
    out = torch.randn(1, HEADS, s, d, generator=g)
    guard = Guard(config, lambda bucket, layer, head: 1.0)
    load_before = os.getloadavg()
    check_s = cpu_seconds(lambda: guard.estimate(q, k, v, out, LAYOUT, None).tolist(), args.repeats)
    dense_head_s = cpu_seconds(lambda: F.scaled_dot_product_attention(q[:, :1], k[:, :1], v[:, :1]),
                               max(1, args.repeats - 1))
    load_after = os.getloadavg()
    dense_s = dense_head_s * HEADS

    flops = {"dense": 4 * s * s * d * HEADS, "check": 4 * rows * s * d * HEADS}
    cases = []
    for bucket_name, buckets in (("one bucket (a strategy)", (0.0, 1.0)), ("three-bucket profile", PROFILE_BUCKETS)):
        calls = generation_calls(config, buckets)
        for density_name, density in (("default strategy", default_density), ("profile", PROFILE_DENSITY)):
            attention_flops = (calls["dense"] + calls["sparse"] * density) * flops["dense"]
            attention_s = (calls["dense"] + calls["sparse"] * density) * dense_s
            guard_flops, guard_s = calls["checked"] * flops["check"], calls["checked"] * check_s
            cases.append({
                "buckets": bucket_name, "density": density_name, "sparse_density": density, **calls,
                "attention_tflop": attention_flops / 1e12, "guard_tflop": guard_flops / 1e12,
                "guard_share_flops": guard_flops / attention_flops,
                "attention_cpu_s": attention_s, "guard_cpu_s": guard_s, "guard_share_measured": guard_s / attention_s,
            })

    print(f"Wan2.1 480p: S={s}, {LAYERS} layers x {HEADS} heads of {d}, {STEPS} steps x {BRANCHES} calls; guard "
          f"every={config.every}, rows/block={config.rows_per_block} -> {rows} rows per check")
    print(f"measured: check call {check_s:.3f} s, dense call {dense_s:.1f} s ({dense_head_s:.2f} s per head); "
          f"FLOPs per call: check {flops['check'] / 1e9:.1f} G, dense {flops['dense'] / 1e12:.2f} T")
    header = f"{'buckets':24} {'density':17} {'checked/sparse':>15} {'share (FLOPs)':>14} {'share (CPU time)':>17}"
    print(header)
    for c in cases:
        density = f"{c['density']} {c['sparse_density']:.2f}"
        print(f"{c['buckets']:24} {density:17} "
              f"{c['checked']:>7}/{c['sparse']:<7} {100 * c['guard_share_flops']:>13.2f}% "
              f"{100 * c['guard_share_measured']:>16.2f}%")
    result = {
        "command": "scripts/bench_guard.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(torch.device("cpu")), "clock": "process time, 1 thread",
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "load_average_before": load_before, "load_average_after": load_after,
        "geometry": {"grid": LAYOUT.grid, "tokens": s, "layers": LAYERS, "heads": HEADS, "head_dim": d,
                     "steps": STEPS, "calls_per_step": BRANCHES, "dense_warmup": SCHEDULE.warmup_steps,
                     "dense_layers": sorted(SCHEDULE.dense_layers)},
        "guard": {"every": config.every, "rows_per_block": config.rows_per_block, "rows_per_check": rows},
        "flops_per_call": flops,
        "measured": {"check_call_s": check_s, "dense_call_s": dense_s, "dense_head_s": dense_head_s},
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
