"""Transformer time per denoising step, dense vs vidsparse-patched, on full-size geometries with random weights.

The transformers are built from the real configs (Wan2.1-T2V-1.3B, HunyuanVideo) with random weights in bf16, fed
random latents of the real video geometry, and timed for one forward call (one call = one denoising step without
CFG; Wan runs two per step with CFG, which scales both sides alike). The patched model keeps the first layer dense
(the patch default) and uses one strategy for every other head, with parameters chosen to reach each target
density on that geometry. The 50-step estimate keeps the first 20% of steps dense:

    schedule speed-up = 50 * dense / (10 * dense + 40 * sparse)

    python scripts/bench_pipeline.py                        # CUDA: Wan 480p x 81 frames; --models wan hunyuan
    python scripts/bench_pipeline.py --tiny                 # CPU smoke run of small configs (not a measurement)

Prints a table and writes JSON (default scripts/results/bench_pipeline_<device>.json).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

import vidsparse
from vidsparse.layout import VideoLayout
from vidsparse.strategies import get


@dataclass(frozen=True)
class Geometry:
    """A model config and the latent video it is timed on."""

    name: str
    model_class: str
    config: dict[str, Any]
    latent: tuple[int, int, int, int]  # channels, frames, height, width (before patchify)
    patch: tuple[int, int, int]
    text_tokens: int
    make_inputs: Callable[["Geometry", torch.device, torch.dtype], dict[str, Any]] = field(repr=False)

    @property
    def grid(self) -> tuple[int, int, int]:
        _, f, h, w = self.latent
        return (f // self.patch[0], h // self.patch[1], w // self.patch[2])

    @property
    def tokens(self) -> int:
        return math.prod(self.grid)


def _wan_inputs(g: Geometry, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    return dict(
        hidden_states=torch.randn(1, *g.latent, device=device, dtype=dtype),
        timestep=torch.tensor([500.0], device=device),
        encoder_hidden_states=torch.randn(1, g.text_tokens, g.config["text_dim"], device=device, dtype=dtype),
    )


def _hunyuan_inputs(g: Geometry, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    mask = torch.zeros(1, g.text_tokens, device=device, dtype=torch.bool)
    mask[:, : g.text_tokens * 3 // 4] = True  # a prompt shorter than the padded text length, as in real use
    return dict(
        hidden_states=torch.randn(1, *g.latent, device=device, dtype=dtype),
        timestep=torch.tensor([500.0], device=device),
        encoder_hidden_states=torch.randn(1, g.text_tokens, g.config["text_embed_dim"], device=device, dtype=dtype),
        encoder_attention_mask=mask,
        pooled_projections=torch.randn(1, g.config["pooled_projection_dim"], device=device, dtype=dtype),
        guidance=torch.tensor([6000.0], device=device, dtype=dtype),
    )


# Wan2.1-T2V-1.3B transformer config; 480 x 832 x 81 frames -> latent 16 x 21 x 60 x 104 (VAE 4x8x8).
WAN_1_3B = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    eps=1e-6,
)
# HunyuanVideo transformer config (diffusers defaults = the released model); 720 x 1280 x 129 -> 16 x 33 x 90 x 160.
HUNYUAN = dict(
    in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
    num_single_layers=40, num_refiner_layers=2, patch_size=2, patch_size_t=1, text_embed_dim=4096,
    pooled_projection_dim=768, rope_axes_dim=(16, 56, 56),
)

GEOMETRIES = {
    "wan": Geometry("Wan2.1-T2V-1.3B 480p x 81f", "WanTransformer3DModel", WAN_1_3B, (16, 21, 60, 104), (1, 2, 2),
                    512, _wan_inputs),
    "hunyuan": Geometry("HunyuanVideo 720p x 129f", "HunyuanVideoTransformer3DModel", HUNYUAN, (16, 33, 90, 160),
                        (1, 2, 2), 256, _hunyuan_inputs),
}
# Small configs for a CPU smoke run: same code path, minutes -> seconds.
TINY = {
    "wan": Geometry("tiny Wan (4 layers, 2 heads of 32) 5x16x24 grid", "WanTransformer3DModel",
                    {**WAN_1_3B, "num_attention_heads": 2, "attention_head_dim": 32, "ffn_dim": 128, "num_layers": 4,
                     "text_dim": 64, "freq_dim": 32}, (16, 5, 32, 48), (1, 2, 2), 16, _wan_inputs),
    "hunyuan": Geometry("tiny HunyuanVideo (1+2 layers, 2 heads of 32) 5x16x24 grid", "HunyuanVideoTransformer3DModel",
                        {**HUNYUAN, "num_attention_heads": 2, "attention_head_dim": 32, "num_layers": 1,
                         "num_single_layers": 2, "num_refiner_layers": 1, "text_embed_dim": 64,
                         "pooled_projection_dim": 32, "rope_axes_dim": (8, 12, 12)}, (16, 5, 32, 48), (1, 2, 2), 16,
                        _hunyuan_inputs),
}

#: Neighborhood windows (in tiles, per axis) tried to reach a target density.
WINDOWS = [(t, h, w) for t in range(1, 12) for h in range(1, 6) for w in range(1, 14)]


def neighborhood_for_density(layout: VideoLayout, target: float, candidates: int = 24) -> tuple[dict[str, Any], float]:
    """The neighborhood window whose plan density is closest to `target` (ties: the most cube-like window).

    Windows are ranked by the text-free estimate prod(min(k, n) / n) over the tile axes, and the best `candidates`
    of them are planned exactly (planning all of them takes minutes at 720p).
    """
    def estimate(window: tuple[int, int, int]) -> float:
        return math.prod(min(k, n) / n for k, n in zip(window, layout.tile_grid))

    fitting = [w for w in WINDOWS if all(k <= n for k, n in zip(w, layout.tile_grid))]
    fitting.sort(key=lambda w: (abs(estimate(w) - target), max(w) - min(w)))
    best: tuple[float, int, dict[str, Any], float] | None = None
    for window in fitting[:candidates]:
        density = get("neighborhood", window=window).plan(layout).density()
        key = (abs(density - target), max(window) - min(window))
        if best is None or key < best[:2]:
            best = (*key, {"window": window}, density)
    assert best is not None
    return best[2], best[3]


def build(geometry: Geometry, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    import diffusers

    cls = getattr(diffusers, geometry.model_class)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the target dtype: a 13B model never exists in float32
    try:
        with torch.device(device):
            model = cls(**geometry.config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def time_forward(model: torch.nn.Module, inputs: dict[str, Any], repeats: int, device: torch.device) -> float:
    """Median seconds of one forward call after one warm-up call."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            sync()
            start = time.perf_counter()
            model(**inputs, return_dict=False)
            sync()
            if i:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(geometry: Geometry, densities: list[float], args: argparse.Namespace, device: torch.device,
          dtype: torch.dtype) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build(geometry, device, dtype)
    inputs = geometry.make_inputs(geometry, device, dtype)
    text = geometry.text_tokens if geometry.model_class.startswith("Hunyuan") else 0
    layout = VideoLayout(*geometry.grid, text_tokens=text)
    dense = time_forward(model, inputs, args.repeats, device)
    rows = []
    for target in densities:
        params, density = neighborhood_for_density(layout, target)
        controller = vidsparse.patch(model, strategy=("neighborhood", params), dense_warmup_steps=0,
                                     backend=args.backend)
        try:
            sparse = time_forward(model, inputs, args.repeats, device)
        finally:
            vidsparse.unpatch(model)
        warmup = round(args.warmup * args.steps)
        schedule_dense = args.steps * dense
        schedule_sparse = warmup * dense + (args.steps - warmup) * sparse
        rows.append(dict(
            target_density=target, strategy="neighborhood", params={"window": list(params["window"])},
            plan_density=round(density, 4),
            measured_density=round(controller.stats["density_sum"] / max(1, controller.stats["sparse_calls"]), 4),
            sparse_layers=f"{controller.stats['sparse_calls']} of {controller.stats['sparse_calls'] + controller.stats['dense_calls']} calls",
            dense_step_s=round(dense, 4), sparse_step_s=round(sparse, 4), step_speedup=round(dense / sparse, 3),
            schedule_steps=args.steps, schedule_dense_warmup_steps=warmup,
            schedule_dense_s=round(schedule_dense, 2), schedule_sparse_s=round(schedule_sparse, 2),
            schedule_speedup=round(schedule_dense / schedule_sparse, 3),
        ))
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return dict(model=geometry.name, config=geometry.config, grid=list(geometry.grid), video_tokens=geometry.tokens,
                text_tokens=geometry.text_tokens, tile=list(layout.tile), rows=rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(GEOMETRIES), default=["wan"])
    parser.add_argument("--densities", nargs="+", type=float, default=[0.1, 0.2])
    parser.add_argument("--tiny", action="store_true", help="small configs (CPU smoke run; not a measurement)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default=None,
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per setting (default 3 CUDA, 1 CPU)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=float, default=0.2, help="fraction of dense warm-up steps in the schedule")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    args.repeats = args.repeats or (3 if device.type == "cuda" else 1)
    if device.type == "cpu" and not args.tiny:
        parser.error("full-size geometries need a GPU; use --tiny for a CPU smoke run")

    geometries = TINY if args.tiny else GEOMETRIES
    results = [bench(geometries[name], args.densities, args, device, dtype) for name in args.models]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    report = dict(
        label=("CPU smoke run of tiny configs: exercises the script, NOT a performance measurement" if args.tiny
               else "full-size geometries, random weights"),
        device=device_name, dtype=str(dtype).removeprefix("torch."), backend=args.backend,
        torch=torch.__version__, vidsparse=vidsparse.__version__, repeats=args.repeats, results=results,
    )

    print(f"# {report['label']} | {device_name} | {report['dtype']} | backend {args.backend}")
    print("| model | tokens | window | density | dense step s | sparse step s | step speed-up | 50-step speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for result in results:
        for row in result["rows"]:
            print(f"| {result['model']} | {result['video_tokens']} | {tuple(row['params']['window'])} | "
                  f"{row['plan_density']:.3f} | {row['dense_step_s']:.3f} | {row['sparse_step_s']:.3f} | "
                  f"{row['step_speedup']:.2f}x | {row['schedule_speedup']:.2f}x |")
    suffix = "tiny_cpu" if args.tiny and device.type == "cpu" else device.type + ("_tiny" if args.tiny else "")
    out = args.out or Path(__file__).parent / "results" / f"bench_pipeline_{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
