"""Error vs density of every strategy family on every head type of the zoo (the README's strategy table).

For each (strategy setting, zoo head kind): plan the head (dynamic strategies see its q and k), then measure
on sampled query rows, exactly in float64 (vidsparse.metrics):

    error    relative L2 error of the plan's output vs dense attention
    recall   share of the dense softmax mass on the keys the plan keeps
    density  fraction of (query, key) token pairs the plan computes (all rows)

Prints two markdown tables (error @ density, and recall) and saves scripts/results/strategy_table.{json,md}.

    .venv/bin/python scripts/strategy_table.py                      # 8 x 16 x 16 grid, 128-token tiles, D=64
    .venv/bin/python scripts/strategy_table.py --frames 4 --rows 64 # quicker
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from vidsparse import VideoLayout
from vidsparse import strategies
from vidsparse.metrics import attention_recall, relative_l2_error
from vidsparse.testing import HEAD_KINDS, make_heads

RESULTS = Path(__file__).resolve().parent / "results"

# (label, name, params): one or two representative settings per family, in grid units.
SETTINGS: list[tuple[str, str, dict]] = [
    ("dense", "dense", {}),
    ("skip", "skip", {}),
    ("diagonal width=0", "diagonal", {"width": 0}),
    ("diagonal width=1", "diagonal", {"width": 1}),
    ("diagonal temporal (all frames, column=0)", "diagonal", {"width": None, "temporal": 1000, "column": 0}),
    ("stripe first_frames=1", "stripe", {"first_frames": 1}),
    ("stripe sampled mass=0.9", "stripe", {"mass": 0.9}),
    ("draft keep_ratio=0.25", "draft", {"keep_ratio": 0.25}),
    ("draft mass=0.9", "draft", {"mass": 0.9}),
    ("blockified recall=0.9", "blockified", {"recall": 0.9}),
    ("blockified recall=0.95", "blockified", {"recall": 0.95}),
    ("neighborhood window=(3,3,3)", "neighborhood", {"window": (3, 3, 3)}),
    ("neighborhood blocked window=stride=(2,2,2)", "neighborhood", {"window": (2, 2, 2), "stride": (2, 2, 2)}),
    ("vmoba 1d threshold=0.25", "vmoba", {"partition": "1d"}),
    ("vmoba 3d (1,1,1) threshold=0.9", "vmoba", {"partition": "3d", "st_chunk_size": (1, 1, 1), "simsum_threshold": 0.9}),
    ("diagonal width=0 ∪ stripe first_frames=1", "union", {"parts": [
        {"name": "diagonal", "params": {"width": 0}}, {"name": "stripe", "params": {"first_frames": 1}}]}),
]


def measure(layout: VideoLayout, head_dim: int, num_rows: int, seed: int) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    q, k, v = make_heads(layout, HEAD_KINDS, batch=1, head_dim=head_dim, dtype=torch.float32, generator=gen)
    rows = torch.randperm(layout.seq_len, generator=gen)[: min(num_rows, layout.seq_len)].sort().values
    records = []
    for label, name, params in SETTINGS:
        strategy = strategies.get(name, **params)
        start = time.perf_counter()
        plan = strategy.plan(layout, q, k) if strategy.is_dynamic else strategy.plan(layout)
        plan_s = time.perf_counter() - start
        error = relative_l2_error(q, k, v, plan, rows=rows)[0]
        recall = attention_recall(q, k, plan, rows=rows)[0]
        density = plan.density(per_head=True)[0].expand(len(HEAD_KINDS))
        for h, kind in enumerate(HEAD_KINDS):
            records.append({
                "setting": label, "strategy": {"name": name, "params": strategy.params()}, "head": kind,
                "error": float(error[h]), "recall": float(recall[h]), "density": float(density[h]),
            })
        print(f"  {label}: planned in {plan_s * 1e3:.1f} ms", flush=True)
    return records


def markdown(records: list[dict], layout: VideoLayout, head_dim: int, num_rows: int) -> str:
    cell = {(r["setting"], r["head"]): r for r in records}
    labels = list(dict.fromkeys(r["setting"] for r in records))
    head = "| strategy | " + " | ".join(HEAD_KINDS) + " |\n|---|" + "---|" * len(HEAD_KINDS) + "\n"
    error_rows = "".join(
        f"| {label} | " + " | ".join(f"{cell[label, h]['error']:.3f} @ {cell[label, h]['density']:.2f}" for h in HEAD_KINDS) + " |\n"
        for label in labels
    )
    recall_rows = "".join(
        f"| {label} | " + " | ".join(f"{cell[label, h]['recall']:.3f}" for h in HEAD_KINDS) + " |\n" for label in labels
    )
    setup = (f"Layout {layout.grid} (frames, height, width), tile {layout.tile} ({layout.block_size} tokens, tile grid "
             f"{layout.tile_grid}), head_dim {head_dim}, {num_rows} sampled query rows, float64 metrics.")
    return (f"{setup}\n\nRelative L2 error vs dense @ density (fraction of token pairs computed):\n\n{head}{error_rows}"
            f"\nAttention recall (dense softmax mass kept):\n\n{head}{recall_rows}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--height", type=int, default=16)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--rows", type=int, default=512, help="sampled query rows for the metrics")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "strategy_table")
    args = parser.parse_args()

    layout = VideoLayout(args.frames, args.height, args.width)
    print(f"{layout}, head_dim {args.head_dim}", flush=True)
    start = time.perf_counter()
    records = measure(layout, args.head_dim, args.rows, args.seed)
    table = markdown(records, layout, args.head_dim, min(args.rows, layout.seq_len))
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "layout": {"grid": layout.grid, "tile": layout.tile, "tile_grid": layout.tile_grid},
        "head_dim": args.head_dim, "rows": min(args.rows, layout.seq_len), "seed": args.seed,
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "seconds": round(time.perf_counter() - start, 1),
    }
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": records}, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(table)
    print(f"saved {args.out.with_suffix('.json')} and .md ({meta['seconds']} s)")


if __name__ == "__main__":
    main()
