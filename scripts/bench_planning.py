"""Planning overhead of the dynamic strategies vs one dense attention call, at the Wan 2.1 480p geometry.

Wan2.1-1.3B at 480p x 81 frames: 12 heads of 128 channels over a 21 x 30 x 52 latent grid (32,760 tokens). For
each dynamic strategy this times `strategy.plan(layout, q, k)` (pooling, selection and building the BlockPlan)
and divides by the time of one dense attention call (torch scaled_dot_product_attention) on the same device.
The target is at most 5% for the strategies that re-plan at every call (draft, sampled stripe, vmoba).
blockified (AdaSpa) runs an exact full-attention search instead, so its cost is reported per search and per
step amortized over its `refresh_every` steps.

Dense attention and blockified's search cost the same for every head, so on a slow device they can be timed on
`--slow-heads` heads at the full sequence length and scaled linearly to all heads (the JSON says which was done).
The other strategies are always timed with every head.

    .venv/bin/python scripts/bench_planning.py                        # CPU: dense and blockified on 1 head, x12
    .venv/bin/python scripts/bench_planning.py --device cuda --slow-heads 12
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from vidsparse import VideoLayout
from vidsparse import strategies

RESULTS = Path(__file__).resolve().parent / "results"

# (label, name, params, layer): the settings a profile would use; vmoba at three layers covers its 1D/2D/3D cycle.
CHEAP: list[tuple[str, str, dict, int]] = [
    ("draft keep_ratio=0.25", "draft", {"keep_ratio": 0.25}, 0),
    ("draft mass=0.9", "draft", {"mass": 0.9}, 0),
    ("stripe sampled (64 rows, fraction=0.1)", "stripe", {"fraction": 0.1, "samples": 64}, 0),
    ("vmoba 1d (layer 0)", "vmoba", {}, 0),
    ("vmoba 2d (layer 1)", "vmoba", {}, 1),
    ("vmoba 3d (layer 2)", "vmoba", {}, 2),
]
SEARCH = ("blockified recall=0.9 (one search)", "blockified", {"recall": 0.9, "refresh_every": 10})


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall time of fn() in seconds, synchronizing the device around each call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    parser.add_argument("--grid", type=int, nargs=3, default=(21, 30, 52), metavar=("F", "H", "W"))
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--slow-heads", type=int, default=None,
                        help="heads on which dense attention and blockified are timed (default: all on GPU, 1 on CPU)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-blockified", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    slow_heads = args.slow_heads or (args.heads if device.type == "cuda" else 1)
    slow_repeats = args.repeats if device.type == "cuda" else 1
    out = args.out or RESULTS / f"bench_planning_{device.type}.json"
    layout = VideoLayout(*args.grid)
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(1, args.heads, layout.seq_len, args.head_dim, device=device, dtype=dtype, generator=gen)
               for _ in range(3))
    print(f"{layout}, {args.heads} heads x {args.head_dim}, {dtype}, {device}, torch threads {torch.get_num_threads()}")

    dense_s = timed(lambda: F.scaled_dot_product_attention(q[:, :slow_heads], k[:, :slow_heads], v[:, :slow_heads]),
                    device, slow_repeats, warmup=1 if device.type == "cuda" else 0) * args.heads / slow_heads
    print(f"dense attention (SDPA): {dense_s * 1e3:.1f} ms" + (f" (timed on {slow_heads} heads, scaled)" if slow_heads < args.heads else ""))

    rows = []
    for label, name, params, layer in CHEAP:
        strategy = strategies.get(name, **params).at_layer(layer)
        seconds = timed(lambda: strategy.plan(layout, q, k), device, args.repeats, warmup=1)
        plan = strategy.plan(layout, q, k)
        rows.append({"strategy": label, "params": strategy.params(), "plan_ms": seconds * 1e3,
                     "share_of_dense": seconds / dense_s, "density": plan.density(), "timed_heads": args.heads})
    if not args.skip_blockified:
        label, name, params = SEARCH
        strategy = strategies.get(name, **params)
        qs, ks = q[:, :slow_heads], k[:, :slow_heads]
        seconds = timed(lambda: strategy.plan(layout, qs, ks), device, slow_repeats, warmup=0) * args.heads / slow_heads
        rows.append({"strategy": label, "params": strategy.params(), "plan_ms": seconds * 1e3,
                     "share_of_dense": seconds / dense_s, "density": strategy.plan(layout, qs, ks).density(),
                     "timed_heads": slow_heads,
                     "amortized_share_of_dense": seconds / dense_s / strategy.refresh_every})

    print("\n| strategy | planning (ms) | share of one dense call | plan density |\n|---|---|---|---|")
    for r in rows:
        amortized = f" ({r['amortized_share_of_dense']:.1%} per step over {r['params']['refresh_every']} steps)" \
            if "amortized_share_of_dense" in r else ""
        print(f"| {r['strategy']} | {r['plan_ms']:.1f} | {r['share_of_dense']:.2%}{amortized} | {r['density']:.3f} |")
    result = {
        "geometry": {"grid": layout.grid, "tile": layout.tile, "tokens": layout.seq_len, "heads": args.heads,
                     "head_dim": args.head_dim, "dtype": str(dtype).removeprefix("torch.")},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "dense_ms": dense_s * 1e3, "dense_timed_heads": slow_heads, "results": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
