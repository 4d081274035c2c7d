"""How well the guard's sampled error estimates the full error it stands for, on tiny-wan and on zoo heads.

For every sparse (layer call, head): the guard's estimate (`Guard.estimate`: one random video row per query block
at the default config, float32 exact attention) and the full error (every video row, float64, against the
model's own dense attention for tiny-wan and float64 SDPA for the zoo), both the relative L2 error with the batch
mean. Reported per source and pattern: the Pearson correlation of estimate and full error, and the ratio estimate /
full (median, 10th and 90th percentile) over the pairs whose full error is at least 0.01 (below that a head is far
within any budget and a few rows carry its error).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/guard_accuracy.py   # -> results/guard_accuracy.json
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vidsparse.controller import DenseSchedule, SparseController, StrategyPolicy
from vidsparse.guard import Guard, GuardConfig
from vidsparse.layout import VideoLayout
from vidsparse.patch import default_strategy, install, uninstall
from vidsparse.runtime import AttentionCall
from vidsparse.strategies import get
from vidsparse.testing.zoo import HEAD_KINDS, make_heads
from vidsparse.tiny_model import TINY_WAN_CALL, TINY_WAN_PROMPTS, load_tiny_wan

RESULTS = Path(__file__).resolve().parent / "results"
PATTERNS = {"default": default_strategy(), "neighborhood [3,1,1]": get("neighborhood", window=[3, 1, 1]),
            "diagonal width 1": get("diagonal", width=1)}
MIN_FULL_ERROR = 0.01


def full_error(out: torch.Tensor, dense: torch.Tensor, layout: VideoLayout) -> list[float]:
    video = slice(layout.video_offset, layout.video_offset + layout.num_video_tokens)
    o, r = out[:, :, video].double(), dense[:, :, video].double()
    return ((o - r).square().sum((-1, -2)) / r.square().sum((-1, -2))).sqrt().mean(0).tolist()


class Probe:
    """Runs a strategy on every call and records (estimate, full error) per head."""

    def __init__(self, strategy, seed: int) -> None:
        self.controller = SparseController(StrategyPolicy(strategy, DenseSchedule(0, frozenset())))
        self.guard = Guard(GuardConfig(seed=seed), lambda bucket, layer, head: 1.0)
        self.pairs: list[tuple[float, float]] = []

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        out = self.controller(call)
        estimate = self.guard.estimate(call.q, call.k, call.v, out, call.layout, call.scale).tolist()
        self.pairs += zip(estimate, full_error(out, call.dense(), call.layout))
        return out


def summarize(pairs: list[tuple[float, float]]) -> dict:
    est, full = np.array(pairs).T
    kept = full >= MIN_FULL_ERROR
    ratio = est[kept] / full[kept]
    return {
        "pairs": len(pairs), "pairs_full_error_at_least_0.01": int(kept.sum()),
        "correlation": float(np.corrcoef(est, full)[0, 1]),
        "ratio_median": float(np.median(ratio)) if kept.any() else None,
        "ratio_p10": float(np.percentile(ratio, 10)) if kept.any() else None,
        "ratio_p90": float(np.percentile(ratio, 90)) if kept.any() else None,
        "full_error_median": float(np.median(full)), "full_error_max": float(full.max()),
    }


def tiny_wan(steps: int) -> dict:
    pipe = load_tiny_wan()
    pipe.set_progress_bar_config(disable=True)
    results = {}
    for name, strategy in PATTERNS.items():
        probe = Probe(strategy, seed=0)
        install(pipe, probe)
        try:
            pipe(TINY_WAN_PROMPTS[0], **{**TINY_WAN_CALL, "num_inference_steps": steps}, output_type="latent",
                 generator=torch.Generator().manual_seed(0))
        finally:
            uninstall(pipe)
        results[name] = summarize(probe.pairs)
    return results


def zoo(seeds: int) -> dict:
    layout = VideoLayout(8, 30, 52)  # edge tiles as at Wan 480p (30 rows, 52 columns): packed, partly filled blocks
    results = {}
    for name, strategy in PATTERNS.items():
        probe = Probe(strategy, seed=0)
        for seed in range(seeds):
            q, k, v = make_heads(layout, HEAD_KINDS, generator=torch.Generator().manual_seed(seed))
            dense = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
            call = AttentionCall(layer=1, step=0, num_steps=1, q=q, k=k, v=v, layout=layout, scale=None,
                                 _dense=lambda dense=dense: dense)
            probe(call)
        results[name] = summarize(probe.pairs)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="tiny-wan denoising steps (2 calls x 3 layers each)")
    parser.add_argument("--seeds", type=int, default=4, help="zoo draws per pattern (5 head kinds each)")
    parser.add_argument("--out", type=Path, default=RESULTS / "guard_accuracy.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    result = {
        "command": f"scripts/guard_accuracy.py --steps {args.steps} --seeds {args.seeds}",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "guard": {"rows_per_block": GuardConfig().rows_per_block}, "min_full_error_for_ratio": MIN_FULL_ERROR,
        "zoo (grid 8 x 30 x 52, 5 head kinds)": zoo(args.seeds),
        "tiny-wan (grid 9 x 16 x 16, 3 layers x 2 heads)": tiny_wan(args.steps),
    }
    print(f"{'source':48} {'pattern':22} {'pairs':>6} {'corr':>6} {'ratio median [p10, p90]':>26}")
    for source, patterns in result.items():
        if not isinstance(patterns, dict) or "default" not in patterns:
            continue
        for pattern, s in patterns.items():
            ratio = "-" if s["ratio_median"] is None else \
                f"{s['ratio_median']:.2f} [{s['ratio_p10']:.2f}, {s['ratio_p90']:.2f}]"
            print(f"{source:48} {pattern:22} {s['pairs']:>6} {s['correlation']:>6.3f} {ratio:>26}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
