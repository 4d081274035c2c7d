"""The report's figures (matplotlib, Agg backend, PNG): per-frame PSNR, density heatmap, speed-quality curve.

Each function takes the plain data of `report.json` (so a report can be re-plotted from its JSON alone) and
writes one PNG.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _finite(values: list[float], cap: float = 100.0) -> list[float]:
    """PSNR is inf for identical frames; plot those at `cap` dB so they stay on the chart."""
    return [cap if math.isinf(v) else v for v in values]


def plot_psnr_per_frame(variant: dict[str, Any], path: Path) -> Path:
    """One line per video: PSNR (dB) of each frame against the dense video."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for video in variant["quality"]["videos"]:
        ax.plot(_finite(video["psnr_per_frame"]), marker=".", label=f"{video['prompt'][:32]} (seed {video['seed']})")
    ax.set_xlabel("frame")
    ax.set_ylabel("PSNR vs dense (dB)")
    ax.set_title(f"per-frame PSNR: {variant['label']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_density_heatmap(variant: dict[str, Any], path: Path) -> Path:
    """Layers x heads of the achieved density (dense calls count 1)."""
    table = np.array([[np.nan if x is None else x for x in row] for row in variant["density"]["per_layer_head"]],
                     dtype=float)
    layers, heads = table.shape
    fig, ax = plt.subplots(figsize=(max(3.2, 0.5 * heads + 2), max(2.4, 0.3 * layers + 1.2)), dpi=100)
    image = ax.imshow(table, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto", interpolation="nearest")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(heads))
    ax.set_yticks(range(layers))
    ax.set_title(f"achieved density: {variant['label']}")
    fig.colorbar(image, ax=ax, label="fraction of query-key pairs computed")
    return _save(fig, path)


def guard_table(variant: dict[str, Any]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(float64 [layers, heads] of the guard's mean measured error / budget, NaN where unchecked; switched heads)."""
    heads = variant["guard"]["heads"]
    shape = np.array(variant.get("density", {}).get("per_layer_head") or [[0]], dtype=object).shape
    layers = max([shape[0]] + [h["layer"] + 1 for h in heads])
    width = max([shape[1]] + [h["head"] + 1 for h in heads])
    table = np.full((layers, width), np.nan)
    for h in heads:
        table[h["layer"], h["head"]] = h["mean_error"] / h["budget"] if h["budget"] > 0 else np.inf
    return table, [(h["layer"], h["head"]) for h in heads if h["switches"]]


def plot_guard_heatmap(variant: dict[str, Any], path: Path) -> Path:
    """Layers x heads of the quality guard's mean measured error over its budget; x marks the switched heads."""
    table, switched = guard_table(variant)
    layers, heads = table.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * heads + 2.5), max(2.8, 0.3 * layers + 1.2)), dpi=100)
    limit = 1 + variant["guard"]["config"]["margin"]
    image = ax.imshow(np.minimum(table, 2 * limit), vmin=0.0, vmax=2 * limit, cmap="magma", aspect="auto",
                      interpolation="nearest")
    for layer, head in switched:
        ax.text(head, layer, "x", ha="center", va="center", color="cyan", fontsize="large")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(heads))
    ax.set_yticks(range(layers))
    ax.set_title(f"guard: {variant['label']} (x: switched)", fontsize="medium")
    fig.colorbar(image, ax=ax, label=f"error / budget (switch > {limit:g})")
    return _save(fig, path)


def plot_speed_quality(variants: list[dict[str, Any]], path: Path) -> Path:
    """Speedup (transformer time, dense / sparse) against mean PSNR, one point per variant, labelled by budget."""
    fig, ax = plt.subplots(figsize=(5.6, 4.0), dpi=100)
    points = sorted(variants, key=lambda v: (v["budget"] is None, v["budget"] or 0.0))
    speed = [v["speedup"]["transformer"] or 0.0 for v in points]
    psnr = _finite([v["quality"]["mean"]["psnr"] for v in points])
    ax.plot(speed, psnr, marker="o")
    for v, x, y in zip(points, speed, psnr):
        ax.annotate(v["label"] if v["budget"] is None else f"budget {v['budget']:g}", (x, y), fontsize="small",
                    textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("transformer speedup vs dense (x)")
    ax.set_ylabel("mean PSNR vs dense (dB)")
    ax.set_title("speed-quality")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
