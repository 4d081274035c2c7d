"""Benchmark block_sparse_attention backends against dense F.scaled_dot_product_attention.

For each density and backend: median milliseconds, effective TFLOP/s (4 * S^2 * D * H * B * density / time,
density = the plan's real density), speedup over dense SDPA, and fraction of ideal (speedup * density: 1.0 means
the backend turns every skipped block into saved time). Prints a table and writes
scripts/results/bench_attention_<device>.json.

Shapes: CPU B=1, H=4, S=8192 (8 x 32 x 32 grid on 2 x 8 x 8 tiles, 64 blocks of 128), D=64, float32.
CUDA: Wan2.1-1.3B 480p (21 x 30 x 52 grid, H=12, S=32760, D=128, bf16) and HunyuanVideo 720p (33 x 45 x 80,
H=24, S=118800, D=128, bf16).

Plans (same plan for every backend of a row):
    nearest       per head and query tile, the round(density * tiles) key tiles nearest to it in the 3D tile
                  grid (Euclidean distance between tile coordinates, ties broken by per-head random noise):
                  a local window whose shape differs per head and per query tile, equal counts, and mostly
                  distinct key lists per query tile (no sharing for the backend to exploit).
    neighborhood  the `neighborhood` strategy (NATTEN-style clamped 3D window, all heads alike) with the box
                  window whose density is closest to the target; query tiles near the borders and in one stride
                  group share their key list.

Each backend's output is checked on 64 sampled query rows against float64 masked attention (max abs error in
the JSON). Run on an idle machine: the load average before and after is recorded. On a shared, loaded CPU,
`--threads 1 --clock cpu` (process CPU time of one thread) gives steadier ratios than wall time.

    .venv/bin/python scripts/bench_attention.py                  # CPU
    .venv/bin/python scripts/bench_attention.py --plans nearest --densities 0.2 --repeats 9
    .venv/bin/python scripts/bench_attention.py --threads 1 --clock cpu    # loaded CPU
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vidsparse import BlockPlan, VideoLayout, block_sparse_attention, strategies

DENSITIES = (1.0, 0.5, 0.25, 0.2, 0.1, 0.05)
CPU_SHAPES = {"cpu B=1 H=4 S=8192 D=64 fp32": (VideoLayout(8, 32, 32, tile=(2, 8, 8)), 1, 4, 64, torch.float32)}
CUDA_SHAPES = {
    "Wan2.1 480p H=12 S=32760 D=128 bf16": (VideoLayout(21, 30, 52), 1, 12, 128, torch.bfloat16),
    "HunyuanVideo 720p H=24 S=118800 D=128 bf16": (VideoLayout(33, 45, 80), 1, 24, 128, torch.bfloat16),
}


def nearest_plan(layout: VideoLayout, heads: int, density: float, generator: torch.Generator) -> BlockPlan:
    """Every query tile keeps the round(density * tiles) key tiles nearest to it (see the module docstring)."""
    coords = layout.block_tile_coords.double()
    m = layout.num_video_blocks
    keep = min(m, max(1, round(density * m)))
    noise = torch.rand(1, heads, m, m, generator=generator, dtype=torch.float64) * 0.5
    chosen = (torch.cdist(coords, coords) + noise).topk(keep, dim=-1, largest=False).indices
    mask = torch.zeros(1, heads, layout.num_blocks, layout.num_blocks, dtype=torch.bool)
    mask[..., :m, :m].scatter_(-1, chosen, True)
    mask[..., m:, :] = True  # text rows and columns are dense (no text in the benchmark shapes)
    mask[..., :, m:] = True
    return BlockPlan.from_mask(mask, layout=layout)


def neighborhood_plan(layout: VideoLayout, heads: int, density: float, generator: torch.Generator) -> BlockPlan:
    grid = layout.tile_grid
    windows = itertools.product(*(range(1, n + 1) for n in grid))
    # Closest density; among equals the most cube-like window.
    window = min(windows, key=lambda w: (abs(math.prod(w[i] / grid[i] for i in range(3)) - density), max(w) - min(w)))
    plan = strategies.get("neighborhood", window=window).plan(layout)
    return BlockPlan.concat_heads([plan] * heads) if plan.num_heads == 1 else plan


PLANS = {"nearest": nearest_plan, "neighborhood": neighborhood_plan}


def timed(fn, repeats: int, device: torch.device, clock=time.perf_counter) -> float:
    """Median seconds of `repeats` calls after one warm-up call (which also compiles)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        sync()
        times.append(clock() - start)
    return statistics.median(times)


def sampled_error(out: torch.Tensor, q, k, v, plan: BlockPlan, rows: torch.Tensor) -> float:
    """Max abs error of `out` on some query rows against float64 masked attention."""
    scores = (q[:, :, rows].double() @ k.double().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~plan.to_dense_mask(rows), float("-inf"))
    expected = torch.softmax(scores, -1) @ v.double()
    return float((out[:, :, rows].double() - expected).abs().max())


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"{platform.processor() or 'cpu'} ({torch.get_num_threads()} threads)"


def command_line(args: argparse.Namespace) -> str:
    words = ["scripts/bench_attention.py"]
    for name, value in vars(args).items():
        if value is not None:
            words += [f"--{name}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    return " ".join(words)


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    shapes = CUDA_SHAPES if device.type == "cuda" else CPU_SHAPES
    backends = args.backends or (["triton", "flex", "gather"] if device.type == "cuda" else ["gather", "flex"])
    generator = torch.Generator().manual_seed(args.seed)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    results = []
    for shape_name, (layout, batch, heads, head_dim, dtype) in shapes.items():
        s = layout.seq_len
        q, k, v = (torch.randn(batch, heads, s, head_dim, generator=generator).to(device, dtype) for _ in range(3))
        rows = torch.randperm(s, generator=generator)[:64].to(device)
        dense_s = timed(lambda: F.scaled_dot_product_attention(q, k, v), args.repeats, device, clock)
        full_flops = 4.0 * s * s * head_dim * heads * batch
        results.append(dict(shape=shape_name, plan="dense", backend="sdpa", density=1.0, ms=dense_s * 1e3,
                            tflops=full_flops / dense_s / 1e12, speedup=1.0, fraction_of_ideal=1.0, max_error=None))
        print(f"{shape_name}: dense SDPA {dense_s * 1e3:.1f} ms", flush=True)
        for plan_kind, target in itertools.product(args.plans, args.densities):
            plan = PLANS[plan_kind](layout, heads, target, generator).to(device)
            density = plan.density()
            for backend in backends:
                row = dict(shape=shape_name, plan=plan_kind, backend=backend, target_density=target, density=density)
                try:
                    error = sampled_error(block_sparse_attention(q, k, v, plan, backend=backend), q, k, v, plan, rows)
                    seconds = timed(
                        lambda: block_sparse_attention(q, k, v, plan, backend=backend), args.repeats, device, clock
                    )
                except Exception as exc:  # a backend missing on this machine is reported, not fatal
                    row.update(error=f"{type(exc).__name__}: {exc}"[:300])
                    print(f"  {plan_kind:12s} {target:5.2f} {backend:9s} failed: {row['error']}", flush=True)
                    results.append(row)
                    continue
                speedup = dense_s / seconds
                row.update(ms=seconds * 1e3, tflops=full_flops * density / seconds / 1e12, speedup=speedup,
                           fraction_of_ideal=speedup * density, max_error=error)
                results.append(row)
                print(f"  {plan_kind:12s} {target:5.2f} {backend:9s} {seconds * 1e3:9.1f} ms  x{speedup:.2f}", flush=True)
    return dict(results=results)


def table(results: list[dict]) -> str:
    lines = [
        "| shape | plan | density | backend | ms | TFLOP/s | speedup vs SDPA | fraction of ideal | max abs err |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            failed = f"failed: {r['error'][:60]}"
            lines.append(f"| {r['shape']} | {r['plan']} | {r['density']:.3f} | {r['backend']} | {failed} | | | | |")
            continue
        err = "" if r["max_error"] is None else f"{r['max_error']:.1e}"
        lines.append(
            f"| {r['shape']} | {r['plan']} | {r['density']:.3f} | {r['backend']} | {r['ms']:.1f} | {r['tflops']:.3f} "
            f"| {r['speedup']:.2f} | {r['fraction_of_ideal']:.2f} | {err} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--densities", type=float, nargs="+", default=list(DENSITIES))
    parser.add_argument("--plans", nargs="+", choices=sorted(PLANS), default=["nearest", "neighborhood"])
    parser.add_argument(
        "--backends", nargs="+",
        help="default: gather, flex on CPU (add reference for the slow oracle); triton, flex, gather on CUDA",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall",
        help="wall: elapsed time; cpu: process CPU time, steadier on a shared, loaded CPU (use with --threads 1)",
    )
    parser.add_argument("--out", type=Path, help="default: scripts/results/bench_attention_<device>.json")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    report = run(args)
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton

        versions["triton"] = triton.__version__
    except ImportError:
        versions["triton"] = None
    device = torch.device(args.device)
    if device.type == "cuda":
        versions["cuda"] = torch.version.cuda
    report = dict(
        device=device_name(device), threads=torch.get_num_threads(), versions=versions,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), clock=args.clock,
        load_average_before=load_before, load_average_after=os.getloadavg(), repeats=args.repeats,
        command=command_line(args),
        **report,
    )
    print(table(report["results"]))
    tag = "cpu" if device.type == "cpu" else torch.cuda.get_device_name(device).lower().replace(" ", "-")
    out = args.out or Path(__file__).parent / "results" / f"bench_attention_{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
