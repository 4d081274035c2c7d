"""What did tiny-wan's self-attention learn? Per layer and head: the share of softmax mass that is spatial, temporal,
on sinks, or diffuse, averaged over dense denoising runs of the model's evaluation prompts (its
recipe's `eval_prompts` in train_tiny_wan.py: TINY_WAN_PROMPTS, or the textures' HELD_OUT_PROMPTS), and how
concentrated it is.

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

Concentration (issue 20): `top10` is the share of a query's softmax mass held by its 10% most attended keys,
averaged per call over sampled rows (uniform attention: 0.10). A head counts as `structured` when its spatial or
temporal share is at least STRUCTURED_RATIO times chance. The summary gives the median top10 over heads, the
number of structured heads, and with --random-baseline the same for random weights. --trend FILE keeps one
summary row per exported training step (training.json's flow_steps), to follow a run across its snapshots.

How sparse a head could be (--oracle-error E): at every recorded call, the least density at which the best
block-sparse plan of vidsparse's tiles (`DEFAULT_TILE`, 128 tokens, or --oracle-tile) keeps the sampled rows'
output within relative L2 error E: per query tile, its key tiles ranked by the mass its sampled rows put on them,
added most first until the error of the sampled rows is at most E. An oracle (it ranks tiles by the exact
attention, which the dynamic strategies estimate), so it is what a profile at error budget E can hope for on this
model, before its dense warm-up.

What a head is worth (--ablation-clips N): the flow loss (MSE of the predicted velocity) on N fresh clips of the
model's training distribution, at N noise levels spread over the training schedule, when that one head's
self-attention output is replaced by uniform attention (the mean of its values) or by zero, minus the intact
model's loss. A diffuse head whose uniform replacement costs nothing is dormant or a plain global mean; one whose
replacement costs as much as a local head's is doing content-dependent long-range work.

    python scripts/analyze_tiny_wan_attention.py --prompts 4 --json scripts/results/tiny_wan_attention.json \
        --markdown scripts/results/tiny_wan_attention.md --random-baseline
    python scripts/analyze_tiny_wan_attention.py --model-dir .cache/next_500 --prompts 2 --steps 10 \
        --trend scripts/results/tiny_wan_next_attention_trend.json
    python scripts/analyze_tiny_wan_attention.py --model-dir models/tiny-wan-next --ablation-clips 8 ...
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]  # vidsparse, train_tiny_wan

import diffusers.models.transformers.transformer_wan as wan_module  # noqa: E402

from vidsparse.layout import VideoLayout  # noqa: E402
from vidsparse.tiny_model import TINY_MODEL_DIR, TINY_WAN_CALL  # noqa: E402

from train_tiny_wan import RECIPES  # noqa: E402  (beside this script)

SPATIAL_RADIUS = 2
TEMPORAL_RADIUS = 1
SINKS = 8
CLASSES = ("spatial", "temporal", "sink", "diffuse")
TOP_SHARE = 0.1  # top10: mass on the 10% most attended keys
STRUCTURED_RATIO = 3.0


def grid_coords(frames: int, height: int, width: int) -> torch.Tensor:
    """[S, 3] (f, y, x) of every token in Wan's frame-major order."""
    f, y, x = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([f.flatten(), y.flatten(), x.flatten()], dim=1)


class SelfAttentionHook:
    """Replaces the Wan module's `dispatch_attention_fn` with `self._dispatch` (calling `self.original` inside),
    with `self.layer` set to the index of the transformer block running; `remove` restores both."""

    def __init__(self, transformer, seq: int):
        self.seq, self.layer = seq, 0  # seq: tokens of the video self-attention calls
        self.hooks = [block.register_forward_pre_hook(self._enter(i)) for i, block in enumerate(transformer.blocks)]
        self.original = wan_module.dispatch_attention_fn
        wan_module.dispatch_attention_fn = self._dispatch

    def _enter(self, layer: int):
        def hook(module, args):
            self.layer = layer
        return hook

    def _dispatch(self, query, key, value, *args, **kwargs):
        raise NotImplementedError

    def remove(self) -> None:
        wan_module.dispatch_attention_fn = self.original
        for hook in self.hooks:
            hook.remove()


class HeadAblation(SelfAttentionHook):
    """Replaces one self-attention head's output (`target`: layer, head, "uniform" or "zero"; None: none)."""

    target: tuple[int, int, str] | None = None

    def _dispatch(self, query, key, value, *args, **kwargs):
        out = self.original(query, key, value, *args, **kwargs)  # [B, S, H, D]
        if self.target is None or not query.shape[1] == key.shape[1] == self.seq or self.layer != self.target[0]:
            return out
        _, head, how = self.target
        out = out.clone()
        out[:, :, head] = value[:, :, head].mean(1, keepdim=True) if how == "uniform" else 0.0
        return out


@torch.no_grad()
def head_ablation(pipe, recipe: str, clips: int, seq: int, seed: int) -> dict:
    """Flow loss of the intact model on `clips` fresh training-distribution clips, and per layer and head its
    increase with the head's output made uniform or zero (see the module docstring)."""
    import numpy as np
    from train_tiny_wan import FLOW_SHIFT, FRAMES, SIZE, clip_tensor

    rng, draw = np.random.default_rng(seed), RECIPES[recipe].draw_clip
    prompts, videos = zip(*(draw(rng)[:2] for _ in range(clips)))
    vae = pipe.vae
    stats = [torch.tensor(vae.config[name]).view(1, -1, 1, 1, 1) for name in ("latents_mean", "latents_std")]
    x0 = (vae.encode(torch.stack([clip_tensor(v) for v in videos])).latent_dist.mean - stats[0]) / stats[1]
    text = pipe.encode_prompt(list(prompts), do_classifier_free_guidance=False,
                              max_sequence_length=TINY_WAN_CALL["max_sequence_length"])[0]
    u = (torch.arange(clips) + 0.5) / clips
    sigma = FLOW_SHIFT * u / (1 + (FLOW_SHIFT - 1) * u)  # the training schedule's noise levels, evenly spread
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    xt = (1 - sigma.view(-1, 1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1, 1) * noise

    def loss() -> float:
        prediction = pipe.transformer(xt, sigma * 1000, text, return_dict=False)[0]
        return float((prediction - (noise - x0)).pow(2).mean())

    ablation = HeadAblation(pipe.transformer, seq)
    try:
        base = loss()
        table = []
        for layer in range(len(pipe.transformer.blocks)):
            heads = []
            for head in range(pipe.transformer.config.num_attention_heads):
                row = {}
                for how in ("uniform", "zero"):
                    ablation.target = (layer, head, how)
                    row[how] = loss() - base
                heads.append(row)
            table.append(heads)
    finally:
        ablation.remove()
    return dict(clips=clips, frames=FRAMES, size=SIZE, loss=base, increase=table)


class AttentionRecorder(SelfAttentionHook):
    """Averages the softmax rows of sampled queries per layer and head of the self-attention calls."""

    def __init__(self, transformer, grid: tuple[int, int, int], rows: torch.Tensor, oracle_error: float | None = None,
                 oracle_tile: tuple[int, int, int] | None = None):
        self.grid, self.rows, self.oracle_error = grid, rows, oracle_error
        self.num_layers = len(transformer.blocks)
        self.sum: torch.Tensor | None = None  # [layers, heads, rows, keys]
        self.top_sum: torch.Tensor | None = None  # [layers, heads]: per call, mean top10 over batch and rows
        self.oracle_sum: torch.Tensor | None = None  # [layers, heads]: per call, the oracle density
        self.calls = torch.zeros(self.num_layers)
        layout = VideoLayout(*grid, tile=oracle_tile)
        self.tile_of_token = layout.inverse_permutation[: layout.num_video_tokens] // layout.block_size  # -> tile
        tiles = int(self.tile_of_token.max()) + 1
        self.key_tile = F.one_hot(self.tile_of_token, tiles).double()  # [S, T]
        self.query_tile = F.one_hot(self.tile_of_token[rows], tiles).double()  # [R, T]
        super().__init__(transformer, layout.num_video_tokens)

    def _dispatch(self, query, key, value, *args, **kwargs):
        if query.shape[1] == key.shape[1] == self.seq:  # self-attention over the video grid ([B, S, H, D])
            q = query[:, self.rows].transpose(1, 2).double()
            k = key.transpose(1, 2).double()
            full = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)  # [B, H, R, S]
            probs = full.mean(0)
            if self.sum is None:
                self.sum = torch.zeros(self.num_layers, *probs.shape, dtype=torch.float64)
                self.top_sum = torch.zeros(self.num_layers, probs.shape[0], dtype=torch.float64)
            self.sum[self.layer] += probs
            top = full.topk(math.ceil(TOP_SHARE * self.seq), dim=-1).values.sum(-1)  # [B, H, R]
            self.top_sum[self.layer] += top.mean(dim=(0, 2))
            if self.oracle_error is not None:
                if self.oracle_sum is None:
                    self.oracle_sum = torch.zeros_like(self.top_sum)
                self.oracle_sum[self.layer] += self._oracle_density(full, value.transpose(1, 2).double())
            self.calls[self.layer] += 1
        return self.original(query, key, value, *args, **kwargs)

    def _oracle_density(self, probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """[H]: per head, the mean over the batch of the least density of a tile plan whose error on the sampled
        rows is at most `oracle_error` (probs: [B, H, R, S] softmax rows, v: [B, H, S, D])."""
        mass = self.query_tile.T @ (probs @ self.key_tile)  # [B, H, T query tiles, T key tiles], over their rows
        order = mass.argsort(-1, descending=True)
        reference = probs @ v
        best = torch.ones(probs.shape[:2], dtype=probs.dtype)
        found = torch.zeros(probs.shape[:2], dtype=torch.bool)
        row_tiles = self.tile_of_token[self.rows]
        for keep in range(1, mass.shape[-1] + 1):
            kept = torch.zeros_like(mass, dtype=torch.bool).scatter_(-1, order[..., :keep], True)
            rows_kept = kept[..., row_tiles, :][..., self.tile_of_token]  # [B, H, R, S]
            sparse = probs * rows_kept
            out = (sparse / sparse.sum(-1, keepdim=True)) @ v
            error = (out - reference).flatten(2).norm(dim=-1) / reference.flatten(2).norm(dim=-1)
            newly = (error <= self.oracle_error) & ~found
            best[newly] = rows_kept[newly].double().mean(dim=(-1, -2)).to(best)
            found |= newly
            if bool(found.all()):
                break
        return best.mean(0)

    def oracle_density(self) -> torch.Tensor:
        """Mean oracle density [L, H] over the recorded calls (needs `oracle_error`)."""
        return self.oracle_sum / self.calls.to(self.oracle_sum).view(-1, 1)

    def mean(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean probability rows [L, H, R, S] and mean top10 [L, H] over the recorded calls."""
        calls = self.calls.to(self.sum)
        return self.sum / calls.view(-1, 1, 1, 1), self.top_sum / calls.view(-1, 1)


def class_masks(coords: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool [R, S] spatial-window and temporal-line masks for the sampled query rows."""
    delta = (coords[rows][:, None, :] - coords[None, :, :]).abs()
    same_frame = delta[..., 0] == 0
    spatial = same_frame & (delta[..., 1] <= SPATIAL_RADIUS) & (delta[..., 2] <= SPATIAL_RADIUS)
    temporal = ~same_frame & (delta[..., 1] <= TEMPORAL_RADIUS) & (delta[..., 2] <= TEMPORAL_RADIUS)
    return spatial, temporal


def shares(probs: torch.Tensor, top10: torch.Tensor, oracle: torch.Tensor | None, spatial: torch.Tensor,
           temporal: torch.Tensor) -> list[list[dict[str, float]]]:
    """Per layer and head, the mean share of each class over the sampled rows (probs: [L, H, R, S]), its top10
    ([L, H]) and its oracle density ([L, H], when measured)."""
    result = []
    for index, (layer, layer_top) in enumerate(zip(probs, top10)):
        heads = []
        for head, (p, top) in enumerate(zip(layer, layer_top)):
            sinks = torch.zeros(p.shape[1], dtype=torch.bool)
            sinks[p.mean(0).topk(SINKS).indices] = True
            sink = sinks[None, :] & ~spatial & ~temporal
            values = {"spatial": (p * spatial).sum(1).mean(), "temporal": (p * temporal).sum(1).mean(),
                      "sink": (p * sink).sum(1).mean()}
            values = {k: float(v) for k, v in values.items()}
            values["diffuse"] = 1.0 - sum(values.values())
            values["top10"] = float(top)
            if oracle is not None:
                values["oracle_density"] = float(oracle[index, head])
            heads.append(values)
        result.append(heads)
    return result


def run(pipe, prompts: list[str], rows: torch.Tensor, grid: tuple[int, int, int], call: dict,
        oracle_error: float | None = None,
        oracle_tile: tuple[int, int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Mean probability rows [L, H, R, S], mean top10 [L, H] and, with `oracle_error`, mean oracle density [L, H]
    over dense runs of `prompts`."""
    recorder = AttentionRecorder(pipe.transformer, grid, rows, oracle_error, oracle_tile)
    try:
        for i, prompt in enumerate(prompts):
            pipe(prompt, **call, output_type="latent", generator=torch.Generator().manual_seed(i))
    finally:
        recorder.remove()
    return *recorder.mean(), (recorder.oracle_density() if oracle_error is not None else None)


def dominant(values: dict[str, float], uniform: dict[str, float]) -> str:
    """The structured class with the most mass above chance, or "diffuse" when none exceeds chance by 0.05."""
    excess = {c: values[c] - uniform[c] for c in ("spatial", "temporal", "sink")}
    best = max(excess, key=excess.get)
    return best if excess[best] >= 0.05 else "diffuse"


def structured(values: dict[str, float], uniform: dict[str, float]) -> bool:
    """Spatial or temporal share at least STRUCTURED_RATIO times chance."""
    return max(values["spatial"] / uniform["spatial"], values["temporal"] / uniform["temporal"]) >= STRUCTURED_RATIO


def summary(table: list[list[dict[str, float]]], uniform: dict[str, float]) -> dict[str, float]:
    """Median top10 over heads and how many heads are structured (local or temporal at 3x chance)."""
    heads = [values for layer in table for values in layer]
    result = dict(median_top10=statistics.median(v["top10"] for v in heads), heads=len(heads),
                  structured_heads=sum(structured(v, uniform) for v in heads),
                  median_spatial_over_chance=statistics.median(v["spatial"] / uniform["spatial"] for v in heads),
                  median_temporal_over_chance=statistics.median(v["temporal"] / uniform["temporal"] for v in heads))
    if "oracle_density" in heads[0]:
        result["mean_oracle_density"] = statistics.mean(v["oracle_density"] for v in heads)
    return result


def markdown(table: list[list[dict[str, float]]], uniform: dict[str, float], title: str,
             ablation: dict | None = None) -> str:
    columns = (*CLASSES, "top10") + (("oracle_density",) if "oracle_density" in table[0][0] else ())
    extra = " loss +uniform / +zero |" if ablation else ""
    lines = [f"**{title}**", "", "| layer | head | " + " | ".join(columns) + " | dominant | structured |" + extra,
             "|---|---|" + "---|" * (len(columns) + 2 + bool(ablation))]
    for l, heads in enumerate(table):
        for h, values in enumerate(heads):
            cells = " | ".join(f"{values[c]:.2f}" for c in columns)
            mark = "yes" if structured(values, uniform) else "no"
            cost = ""
            if ablation:
                increase = ablation["increase"][l][h]
                cost = f" {increase['uniform']:+.4f} / {increase['zero']:+.4f} |"
            lines.append(f"| {l} | {h} | {cells} | {dominant(values, uniform)} | {mark} |{cost}")
    lines.append("| uniform | - | " + " | ".join(f"{uniform[c]:.3f}" for c in CLASSES) + f" | {TOP_SHARE:.2f} |"
                 + " |" * (len(columns) - len(CLASSES) - 1 + 2 + bool(ablation)))
    s = summary(table, uniform)
    lines += ["", f"median top10 over heads {s['median_top10']:.3f}; structured heads (spatial or temporal >= "
              f"{STRUCTURED_RATIO:g}x chance) {s['structured_heads']} of {s['heads']}"]
    if "mean_oracle_density" in s:
        lines.append(f"mean oracle tile density over heads {s['mean_oracle_density']:.3f}")
    if ablation:
        lines.append(f"flow loss of the intact model on {ablation['clips']} fresh clips: {ablation['loss']:.4f}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", default=str(TINY_MODEL_DIR), help="an exported WanPipeline folder")
    parser.add_argument("--prompts", type=int, default=4, help="how many of the model's evaluation prompts to run")
    parser.add_argument("--steps", type=int, default=TINY_WAN_CALL["num_inference_steps"], help="denoising steps")
    parser.add_argument("--trend", default=None, help="JSON file of summary rows by training step, updated")
    parser.add_argument("--rows", type=int, default=256, help="sampled query tokens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--random-baseline", action="store_true")
    parser.add_argument("--oracle-error", type=float, default=None,
                        help="also measure each head's oracle tile density at this error (e.g. 0.05)")
    parser.add_argument("--oracle-tile", type=lambda text: tuple(int(n) for n in text.split(",")), default=None,
                        help="frames,rows,columns of the oracle's tiles (default: vidsparse's, 1,8,16)")
    parser.add_argument("--ablation-clips", type=int, default=0, help="also measure each head's worth on N clips")
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(args.model_dir)
    pipe.set_progress_bar_config(disable=True)
    training_file = Path(args.model_dir) / "training.json"
    training = json.loads(training_file.read_text()) if training_file.exists() else {}
    recipe = training.get("recipe", "tiny-wan")
    call = dict(TINY_WAN_CALL, num_inference_steps=args.steps)
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
    prompts = list(RECIPES[recipe].eval_prompts[: args.prompts])
    oracle = (args.oracle_error, args.oracle_tile)

    result = dict(model=recipe, model_dir=str(args.model_dir), training=training, call=call, grid=grid,
                  prompts=prompts, rows=args.rows,
                  definition=dict(spatial_radius=SPATIAL_RADIUS, temporal_radius=TEMPORAL_RADIUS, sinks=SINKS,
                                  top_share=TOP_SHARE, structured_ratio=STRUCTURED_RATIO),
                  uniform=uniform,
                  trained=shares(*run(pipe, prompts, rows, grid, call, *oracle), spatial, temporal))
    result["summary"] = dict(trained=summary(result["trained"], uniform))
    if args.ablation_clips:
        result["ablation"] = head_ablation(pipe, recipe, args.ablation_clips, seq, args.seed)
    text = markdown(result["trained"], uniform, f"{recipe} (trained), grid {grid[0]}x{grid[1]}x{grid[2]}",
                    result.get("ablation"))
    if args.random_baseline:
        from diffusers import WanTransformer3DModel

        torch.manual_seed(args.seed)
        pipe.transformer = WanTransformer3DModel.from_config(pipe.transformer.config)
        result["random_init"] = shares(*run(pipe, prompts, rows, grid, call, *oracle), spatial, temporal)
        result["summary"]["random_init"] = summary(result["random_init"], uniform)
        text += "\n" + markdown(result["random_init"], uniform, "same architecture, random initialisation")
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.trend:
        update_trend(Path(args.trend), result)
    return 0


def update_trend(path: Path, result: dict) -> None:
    """Add (or replace) the summary row of `result`'s training step in the trend file at `path`."""
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    step = result["training"].get("flow_steps")
    row = dict(flow_steps=step, train_elapsed_s=result["training"].get("train_elapsed_s"),
               prompts=len(result["prompts"]), steps=result["call"]["num_inference_steps"], **result["summary"])
    rows = sorted([r for r in rows if r["flow_steps"] != step] + [row], key=lambda r: r["flow_steps"] or 0)
    path.write_text(json.dumps(dict(model=result["model"], definition=result["definition"], uniform=result["uniform"],
                                    rows=rows), indent=1) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
