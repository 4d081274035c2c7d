"""Text and image views of a profile: the closing summary of `vidsparse profile` and `vidsparse inspect`."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from ..profile import Profile
from ..strategies import Strategy

#: One letter per family for the layer x head maps.
CODES = {"dense": "D", "skip": "-", "diagonal": "g", "stripe": "s", "neighborhood": "n", "draft": "d",
         "blockified": "b", "vmoba": "v", "union": "u"}


def code(strategy: Strategy) -> str:
    return CODES.get(strategy.name, "?")


def label(strategy: Strategy) -> str:
    """name(params that differ from the defaults), e.g. diagonal(width=1)."""
    if strategy.name == "union":
        return " | ".join(label(part) for part in strategy.parts)  # type: ignore[attr-defined]
    changed = []
    for f in dataclasses.fields(strategy):  # type: ignore[arg-type]
        default = f.default if f.default is not dataclasses.MISSING else None
        value = getattr(strategy, f.name)
        if value != default:
            changed.append(f"{f.name}={value}")
    return f"{strategy.name}({', '.join(changed)})"


def layer_density(profile: Profile) -> list[float]:
    """Mean token-pair density of each layer over the sparse steps (buckets weighted by their step span)."""
    spans = [b.stop - b.start for b in profile.buckets]
    out = []
    for layer in range(profile.model.num_layers):
        if layer in profile.schedule.dense_layers:
            out.append(1.0)
            continue
        total = sum(span * sum(c.density for c in b.heads[layer]) / len(b.heads[layer])
                    for span, b in zip(spans, profile.buckets))
        out.append(total / sum(spans))
    return out


def summary_text(profile: Profile, out: str | Path | None = None) -> str:
    """The closing table of `vidsparse profile`: density per layer, predicted speed-up, time spent."""
    m, c, h, s = profile.model, profile.calibration, profile.hardware, profile.summary
    lines = [
        f"profile{f' {out}' if out else ''}: {m.family} '{m.name}', {m.num_layers} layers x {m.num_heads} heads; "
        f"{c.prompts} prompt(s) x {c.steps} steps at {c.width}x{c.height}, {c.frames} frames (latent grid "
        f"{'x'.join(map(str, c.grid))}); objective {_objective(profile)}",
        f"{'layer':>5}  {'density':>7}  strategies (heads)",
    ]
    densities = layer_density(profile)
    for layer in range(m.num_layers):
        if layer in profile.schedule.dense_layers:
            lines.append(f"{layer:>5}  {1.0:7.3f}  dense (schedule)")
            continue
        counts: dict[str, int] = {}
        for bucket in profile.buckets:
            for choice in bucket.heads[layer]:
                counts[label(choice.strategy)] = counts.get(label(choice.strategy), 0) + 1
        text = ", ".join(f"{name} x{n}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        lines.append(f"{layer:>5}  {densities[layer]:7.3f}  {text}")
    latent = "not measured" if s.latent_error is None else f"{s.latent_error:.4f}" + (
        "" if s.latent_error_bound is None else f" (bound for a new prompt {s.latent_error_bound:.4f})")
    lines.append(
        f"dense warm-up {profile.schedule.dense_warmup_steps} of the steps; mean density over the run "
        f"{s.mean_density:.3f} (computed share of dense attention work, padding included); mean predicted head "
        f"error {s.predicted_error:.4f}; final latents' relative error {latent}"
    )
    lines.append(f"predicted attention speed-up: {s.predicted_speedup:.2f}x (cost model: {h.cost}, {h.device}, "
                 f"backend {h.backend}, dense call {h.dense_ms:.3g} ms)")
    if profile.timings:
        t = profile.timings
        lines.append(f"time: calibration {t['calibration_s']:.1f} s, cost model {t['cost_model_s']:.1f} s, selection "
                     f"{t['selection_s']:.2f} s, verification {t['verify_s']:.1f} s, total {t['total_s']:.1f} s")
    return "\n".join(lines)


def _objective(profile: Profile) -> str:
    (key, value), = profile.calibration.objective.items()
    selection = profile.calibration.selection
    budgeted = {"max": "largest error of a scored call",
                "prediction": f"mean error + {selection['margin']:g} spreads of a new prompt's error"}.get(
        selection["statistic"], f"mean error + {selection['margin']:g} standard errors")
    return (f"{budgeted} <= {value:g}" if key == "error" else f"speed-up {value:g}x, least {budgeted}")


def check_text(result: dict) -> str:
    """The report of `vidsparse profile --check`: per-head predicted vs achieved errors on held-out prompts."""
    lines = [f"check on {len(result['latent_errors'])} held-out prompt(s) (seeds the calibration did not use):",
             f"  {'bucket':>6} {'layer':>5} {'head':>4}  {'strategy':<12} {'mean':>14} {'bound':>7} {'achieved':>9} "
             f"{'/mean':>6} {'/bound':>6}"]
    for h in result["heads"]:
        se = "" if h["predicted_se"] is None else f" ±{h['predicted_se']:.4f}"
        bound = "-" if h["bound"] is None else f"{h['bound']:.4f}"
        lines.append(f"  {h['bucket']:>6} {h['layer']:>5} {h['head']:>4}  {h['strategy']:<12} "
                     f"{h['predicted']:>7.4f}{se:>7} {bound:>7} {h['achieved']:>9.4f} {h['ratio']:>6.2f} "
                     f"{h['bound_ratio']:>6.2f}")
    stated, bound = result["stated_latent_error"], result["stated_latent_error_bound"]
    lines.append(
        f"  {100 * result['within']:.0f}% of {len(result['heads'])} sparse heads achieved <= {result['tolerance']:g} x "
        f"the stated prediction (the bound where stated; {100 * result['within_per_generation']:.0f}% of single "
        f"generations; {100 * result['within_mean']:.0f}% against the mean); mean head error predicted "
        f"{result['predicted_error']:.4f}, achieved {result['achieved_error']:.4f}")
    states = ("nothing" if stated is None
              else f"{stated:.4f} largest" + ("" if bound is None else f", {bound:.4f} bound"))
    lines.append(f"  final latents' relative error {', '.join(f'{e:.4f}' for e in result['latent_errors'])} (profile "
                 f"states {states}); dense generation "
                 f"{result['dense_s']:.2f} s; "
                 f"profiling cost {result.get('profiling_dense_generations', math.nan):.2f} dense generations")
    return "\n".join(lines)


def inspect_text(profile: Profile) -> str:
    """Per bucket: layer x head maps of strategy codes, densities (%) and errors (x1000), then the groups."""
    m = profile.model
    lines = [summary_text(profile), "", "legend: " + "  ".join(f"{v}={k}" for k, v in CODES.items())]
    width = max(4, len(str(m.num_heads - 1)) + 1)
    header = "layer " + "".join(f"{h:>{width}}" for h in range(m.num_heads))
    for index, bucket in enumerate(profile.buckets):
        lines.append("")
        lines.append(f"bucket {index}: steps {bucket.start:.0%} to {bucket.stop:.0%} of the run")
        for title, cell in (("strategy", lambda c: code(c.strategy)), ("density %", lambda c: f"{100 * c.density:.0f}"),
                            ("error x1000", lambda c: f"{1000 * c.error:.0f}")):
            lines.append(f"  {title}")
            lines.append("  " + header)
            for layer, heads in enumerate(bucket.heads):
                dense_layer = layer in profile.schedule.dense_layers
                row = "".join(f"{('D' if title == 'strategy' else '.') if dense_layer else cell(c):>{width}}"
                              for c in heads)
                lines.append(f"  {layer:>5}" + row)
        lines.append("  groups (heads sharing one plan):")
        for layer in range(m.num_layers):
            if layer in profile.schedule.dense_layers:
                continue
            groups = profile.groups(index, layer)
            lines.append(f"  {layer:>5}  " + "; ".join(f"{label(s)}: {heads}" for s, heads in groups))
    return "\n".join(lines)


def plot(profile: Profile, path: str | Path) -> None:
    """A PNG heatmap per bucket: density of every (layer, head), annotated with the strategy code."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = profile.model
    n = len(profile.buckets)
    fig, axes = plt.subplots(1, n, figsize=(1.2 + 0.45 * m.num_heads * n + 1.5, 1.2 + 0.35 * m.num_layers),
                             squeeze=False, layout="constrained")
    image = None
    for index, (ax, bucket) in enumerate(zip(axes[0], profile.buckets)):
        grid = [[1.0 if layer in profile.schedule.dense_layers else c.density for c in heads]
                for layer, heads in enumerate(bucket.heads)]
        image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        for layer, heads in enumerate(bucket.heads):
            for head, c in enumerate(heads):
                letter = "D" if layer in profile.schedule.dense_layers else code(c.strategy)
                ax.text(head, layer, letter, ha="center", va="center", color="w" if grid[layer][head] < 0.6 else "k",
                        fontsize=8)
        ax.set_title(f"steps {bucket.start:.0%}-{bucket.stop:.0%}")
        ax.set_xticks(range(m.num_heads))
        ax.set_yticks(range(m.num_layers))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
    fig.colorbar(image, ax=axes[0].tolist(), label="density")
    fig.suptitle(f"{m.name}: predicted speed-up {profile.summary.predicted_speedup:.2f}x")
    fig.savefig(path, dpi=120)
    plt.close(fig)
