"""The evaluation report: report.json (all numbers), report.md (for people), plots, and the summary table.

report.json is the source of truth; report.md and the plots are derived from it (`write_report` can be re-run on
a loaded report.json). Speedups are dense time / sparse time of the medians (see timing.py for what each time
covers); quality is against the dense video of the same prompt and seed (see quality.py).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .plots import guard_table, plot_density_heatmap, plot_guard_heatmap, plot_psnr_per_frame, plot_speed_quality
from .runner import slug


def write_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, str]:
    """Write report.json, the plots and report.md into `out_dir`; returns {what: path relative to out_dir}."""
    out_dir = Path(out_dir)
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for variant in report["variants"]:
        name = slug(variant["label"])
        variant["plots"] = {
            "psnr_per_frame": _rel(plot_psnr_per_frame(variant, plot_dir / f"psnr_per_frame_{name}.png"), out_dir),
            "density_heatmap": _rel(plot_density_heatmap(variant, plot_dir / f"density_{name}.png"), out_dir),
        }
        if variant.get("guard"):
            variant["plots"]["guard_heatmap"] = _rel(plot_guard_heatmap(variant, plot_dir / f"guard_{name}.png"),
                                                     out_dir)
    if len(report["variants"]) > 1:
        files["speed_quality"] = _rel(plot_speed_quality(report["variants"], plot_dir / "speed_quality.png"), out_dir)
    report["plots"] = files
    _atomic_write(out_dir / "report.json", json.dumps(report, indent=1, allow_nan=True) + "\n")
    _atomic_write(out_dir / "report.md", markdown(report))
    return {"report.json": "report.json", "report.md": "report.md", **files}


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root))


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(text)
    os.replace(temporary, path)


def _num(value: float | None, digits: int = 2, unit: str = "") -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}{unit}"


def summary_rows(report: dict[str, Any]) -> list[list[str]]:
    """Rows of the summary table: header, dense, then one per variant."""
    header = ["run", "end-to-end", "transformer", "attention", "attn share", "density", "PSNR dB", "SSIM", "LPIPS",
              "guard"]
    dense = report["dense"]["timing"]
    rows = [header, ["dense", _num(dense["end_to_end_s"], 2, " s"), _num(dense["transformer_s"], 2, " s"),
                     _num(dense["attention_s"], 2, " s"), _num(100 * dense["attention_share"], 0, "%"), "1.00",
                     "-", "-", "-", "-"]]
    for v in report["variants"]:
        t, s, q = v["timing"], v["speedup"], v["quality"]["mean"]
        rows.append([
            v["label"],
            f"{_num(t['end_to_end_s'], 2, ' s')} ({_num(s['end_to_end'], 2, 'x')})",
            f"{_num(t['transformer_s'], 2, ' s')} ({_num(s['transformer'], 2, 'x')})",
            f"{_num(t['attention_s'], 2, ' s')} ({_num(s['attention'], 2, 'x')})",
            _num(100 * t["attention_share"], 0, "%"),
            _num(v["density"]["mean_density"]),
            _num(q["psnr"]),
            _num(q["ssim"], 4),
            _num(q["lpips"], 4),
            _guard_cell(v.get("guard")),
        ])
    return rows


def _guard_cell(guard: dict[str, Any] | None) -> str:
    if not guard:
        return "off"
    return f"{guard['checked_heads']} checked, {guard['switched_heads']} switched"


def _guard_lines(variant: dict[str, Any]) -> list[str]:
    """The quality guard's paragraph and its per-(layer, head) table of mean error / budget."""
    guard = variant.get("guard")
    if not guard:
        return ["Quality guard: off.", ""]
    config = guard["config"]
    lines = [
        f"Quality guard (every {config['every']} steps after each bucket's first sparse step, {config['rows_per_block']} "
        f"row(s) per query block, margin {config['margin']:g}): {guard['checked_calls']} layer calls checked, "
        f"{guard['checked_heads']} heads checked, {guard['switched_heads']} switched to dense.",
        "",
    ]
    for s in guard["switches"]:
        lines.append(f"- generation {s['generation']}, step {s['step']}: layer {s['layer']} head {s['head']} "
                     f"error {s['error']:.4f} > budget {s['budget']:.4f}")
    table, _ = guard_table(variant)
    lines += ["", "Guard: mean measured error / budget per layer (rows) and head (columns), - = not checked:", "",
              "| layer | " + " | ".join(f"h{h}" for h in range(table.shape[1])) + " |",
              "|---|" + "---|" * table.shape[1]]
    for layer, row in enumerate(table):
        lines.append(f"| {layer} | " + " | ".join("-" if math.isnan(x) else _num(x) for x in row) + " |")
    return lines + [""]


def summary_table(report: dict[str, Any]) -> str:
    """The summary as aligned plain text (what the CLI prints at the end)."""
    rows = summary_rows(report)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    """report.md: settings, the summary table, per-video quality, densities and links to videos and plots."""
    settings = report["settings"]
    dense = report["dense"]["timing"]
    lines = [
        "# vidsparse evaluation",
        "",
        f"- model: {report.get('model', '-')}",
        f"- geometry: {settings['num_frames']} frames x {settings['height']} x {settings['width']}, "
        f"{settings['num_inference_steps']} steps; prompts: {len(settings['prompts'])}, seeds: {settings['seeds']}",
        f"- timing: median of {dense['num_runs']} runs per mode ({settings['repeats']} per prompt and seed, after "
        f"{settings['warmup']} warm-up run(s)); clock: {settings['clock']}; device: {report.get('device', '-')}",
        f"- {report['lpips']}",
    ]
    if report.get("command"):
        lines.append(f"- command: `{report['command']}`")
    lines += ["", "## Summary", "", "Speedups in brackets are dense / sparse medians. Attention share = attention /"
              " transformer time. Density: fraction of query-key pairs computed, dense calls included.", "",
              _markdown_table(summary_rows(report)), ""]
    if report.get("plots", {}).get("speed_quality"):
        lines += [f"![speed-quality]({report['plots']['speed_quality']})", ""]
    for v in report["variants"]:
        lines += [f"## {v['label']}", ""]
        if v.get("description"):
            lines += [v["description"], ""]
        density = v["density"]
        lines += [
            f"Mean density {_num(density['mean_density'], 3)} over {density['attention_calls']} attention calls "
            f"({density['sparse_calls']} sparse; density in sparse calls "
            f"{_num(density['mean_density_sparse_calls'], 3)}). Largest difference between repeated runs: "
            f"{v['repeat_max_abs_diff']:.3g}.",
            "",
            "Kernels that ran the calls (all runs): " + (", ".join(
                f"{name} {count}" for name, count in sorted(density.get("calls_by_backend", {}).items())) or "none"),
            "",
            "| prompt | seed | PSNR dB | SSIM | LPIPS | worst frame PSNR dB | videos |",
            "|---|---|---|---|---|---|---|",
        ]
        for video in v["quality"]["videos"]:
            links = " ".join(f"[{k}]({p})" for k, p in video["files"].items())
            lines.append(
                f"| {video['prompt']} | {video['seed']} | {_num(video['psnr'])} | {_num(video['ssim'], 4)} | "
                f"{_num(video['lpips'], 4)} | {_num(min(video['psnr_per_frame']))} | {links} |"
            )
        lines.append("")
        heads = len(density["per_layer_head"][0]) if density["per_layer_head"] else 0
        lines += ["Density per layer (rows) and head (columns):", "",
                  "| layer | " + " | ".join(f"h{h}" for h in range(heads)) + " |", "|---|" + "---|" * heads]
        for layer, row in enumerate(density["per_layer_head"]):
            lines.append(f"| {layer} | " + " | ".join(_num(x) for x in row) + " |")
        lines.append("")
        lines += _guard_lines(v)
        for name, path in v.get("plots", {}).items():
            lines.append(f"![{name}]({path})")
        lines.append("")
    return "\n".join(lines)
