"""What did tiny-wan's self-attention learn? Per layer and head: the share of softmax mass that is spatial, temporal,
on sinks, or diffuse, averaged over dense denoising runs of TINY_WAN_PROMPTS.

For sampled query tokens at latent position (f, y, x), each key's softmax probability goes to exactly one class:

    spatial   same frame, |dy| <= SPATIAL_RADIUS and |dx| <= SPATIAL_RADIUS (a 5 x 5 window)
    temporal  another frame, |dy| <= TEMPORAL_RADIUS and |dx| <= TEMPORAL_RADIUS (a 3 x 3 line through time)
    sink      one of the head's SINKS keys with the largest mean probability over all sampled queries,
              when not already spatial or temporal for that query
    diffuse   everything else

Because the classes are linear in the probabilities, averaging the probability rows over calls (steps, CFG
branches, prompts) first gives exactly the average shares. `uniform` is what attention spread evenly over all
keys would give, the chance level of each class; a head's `dominant` class is the one with the most mass
above chance (diffuse when no class exceeds chance by 0.05). With --random-baseline, the same analysis runs on a
transformer of the same config with freshly initialised weights, which shows what is learned rather than built
in (RoPE alone gives a random model a slight bias to nearby keys).

    python scripts/analyze_tiny_wan_attention.py --prompts 4 --json scripts/results/tiny_wan_attention.json \
        --markdown scripts/results/tiny_wan_attention.md --random-baseline
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import diffusers.models.transformers.transformer_wan as wan_module  # noqa: E402

from vidsparse.tiny_model import TINY_WAN_CALL, TINY_WAN_PROMPTS, load_tiny_wan  # noqa: E402

SPATIAL_RADIUS = 2
TEMPORAL_RADIUS = 1
SINKS = 8
CLASSES = ("spatial", "temporal", "sink", "diffuse")


def grid_coords(frames: int, height: int, width: int) -> torch.Tensor:
    """[S, 3] (f, y, x) of every token in Wan's frame-major order."""
    f, y, x = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([f.flatten(), y.flatten(), x.flatten()], dim=1)


class AttentionRecorder:
    """Wraps the Wan module's `dispatch_attention_fn` to average softmax rows of sampled queries per layer and head."""

    def __init__(self, transformer, grid: tuple[int, int, int], rows: torch.Tensor):
        self.grid, self.rows = grid, rows
        self.seq = grid[0] * grid[1] * grid[2]
        self.layer = 0
        self.sum: torch.Tensor | None = None  # [layers, heads, rows, keys]
        self.calls = torch.zeros(len(transformer.blocks))
        self.hooks = [block.register_forward_pre_hook(self._enter(i)) for i, block in enumerate(transformer.blocks)]
        self.original = wan_module.dispatch_attention_fn
        wan_module.dispatch_attention_fn = self._dispatch
        self.num_layers = len(transformer.blocks)

    def _enter(self, layer: int):
        def hook(module, args):
            self.layer = layer
        return hook

    def _dispatch(self, query, key, value, *args, **kwargs):
        if query.shape[1] == key.shape[1] == self.seq:  # self-attention over the video grid ([B, S, H, D])
            q = query[:, self.rows].transpose(1, 2).double()
            k = key.transpose(1, 2).double()
            probs = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1).mean(0)  # [H, R, S]
            if self.sum is None:
                self.sum = torch.zeros(self.num_layers, *probs.shape, dtype=torch.float64)
            self.sum[self.layer] += probs
            self.calls[self.layer] += 1
        return self.original(query, key, value, *args, **kwargs)

    def remove(self) -> None:
        wan_module.dispatch_attention_fn = self.original
        for hook in self.hooks:
            hook.remove()

    def mean(self) -> torch.Tensor:
        return self.sum / self.calls.view(-1, 1, 1, 1).to(self.sum)


def class_masks(coords: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool [R, S] spatial-window and temporal-line masks for the sampled query rows."""
    delta = (coords[rows][:, None, :] - coords[None, :, :]).abs()
    same_frame = delta[..., 0] == 0
    spatial = same_frame & (delta[..., 1] <= SPATIAL_RADIUS) & (delta[..., 2] <= SPATIAL_RADIUS)
    temporal = ~same_frame & (delta[..., 1] <= TEMPORAL_RADIUS) & (delta[..., 2] <= TEMPORAL_RADIUS)
    return spatial, temporal


def shares(probs: torch.Tensor, spatial: torch.Tensor, temporal: torch.Tensor) -> list[list[dict[str, float]]]:
    """Per layer and head, the mean share of each class over the sampled rows (probs: [L, H, R, S])."""
    result = []
    for layer in probs:
        heads = []
        for p in layer:
            sinks = torch.zeros(p.shape[1], dtype=torch.bool)
            sinks[p.mean(0).topk(SINKS).indices] = True
            sink = sinks[None, :] & ~spatial & ~temporal
            values = {"spatial": (p * spatial).sum(1).mean(), "temporal": (p * temporal).sum(1).mean(),
                      "sink": (p * sink).sum(1).mean()}
            values = {k: float(v) for k, v in values.items()}
            values["diffuse"] = 1.0 - sum(values.values())
            heads.append(values)
        result.append(heads)
    return result


def run(pipe, prompts: list[str], rows: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    recorder = AttentionRecorder(pipe.transformer, grid, rows)
    try:
        for i, prompt in enumerate(prompts):
            pipe(prompt, **TINY_WAN_CALL, output_type="latent", generator=torch.Generator().manual_seed(i))
    finally:
        recorder.remove()
    return recorder.mean()


def dominant(values: dict[str, float], uniform: dict[str, float]) -> str:
    """The structured class with the most mass above chance, or "diffuse" when none exceeds chance by 0.05."""
    excess = {c: values[c] - uniform[c] for c in ("spatial", "temporal", "sink")}
    best = max(excess, key=excess.get)
    return best if excess[best] >= 0.05 else "diffuse"


def markdown(table: list[list[dict[str, float]]], uniform: dict[str, float], title: str) -> str:
    lines = [f"**{title}**", "", "| layer | head | " + " | ".join(CLASSES) + " | dominant |",
             "|---|---|" + "---|" * (len(CLASSES) + 1)]
    for l, heads in enumerate(table):
        for h, values in enumerate(heads):
            cells = " | ".join(f"{values[c]:.2f}" for c in CLASSES)
            lines.append(f"| {l} | {h} | {cells} | {dominant(values, uniform)} |")
    lines.append("| uniform | - | " + " | ".join(f"{uniform[c]:.3f}" for c in CLASSES) + " | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=4, help="how many of TINY_WAN_PROMPTS to run")
    parser.add_argument("--rows", type=int, default=256, help="sampled query tokens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--random-baseline", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    pipe = load_tiny_wan()
    pipe.set_progress_bar_config(disable=True)
    p = pipe.transformer.config.patch_size
    grid = ((TINY_WAN_CALL["num_frames"] - 1) // pipe.vae_scale_factor_temporal // p[0] + 1,
            TINY_WAN_CALL["height"] // pipe.vae_scale_factor_spatial // p[1],
            TINY_WAN_CALL["width"] // pipe.vae_scale_factor_spatial // p[2])
    seq = grid[0] * grid[1] * grid[2]
    rows = torch.randperm(seq, generator=torch.Generator().manual_seed(args.seed))[: args.rows]
    coords = grid_coords(*grid)
    spatial, temporal = class_masks(coords, rows)
    uniform = {"spatial": float(spatial.float().mean(1).mean()), "temporal": float(temporal.float().mean(1).mean()),
               "sink": SINKS / seq}
    uniform["diffuse"] = 1.0 - sum(uniform.values())
    prompts = list(TINY_WAN_PROMPTS[: args.prompts])

    result = dict(model="tiny-wan", call=TINY_WAN_CALL, grid=grid, prompts=prompts, rows=args.rows,
                  definition=dict(spatial_radius=SPATIAL_RADIUS, temporal_radius=TEMPORAL_RADIUS, sinks=SINKS),
                  uniform=uniform, trained=shares(run(pipe, prompts, rows, grid), spatial, temporal))
    text = markdown(result["trained"], uniform, f"tiny-wan (trained), grid {grid[0]}x{grid[1]}x{grid[2]}")
    if args.random_baseline:
        from diffusers import WanTransformer3DModel

        torch.manual_seed(args.seed)
        pipe.transformer = WanTransformer3DModel.from_config(pipe.transformer.config)
        result["random_init"] = shares(run(pipe, prompts, rows, grid), spatial, temporal)
        text += "\n" + markdown(result["random_init"], uniform, "same architecture, random initialisation")
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
