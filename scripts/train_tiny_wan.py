"""Train vidsparse's tiny text-to-video models on procedural clips and export them as WanPipeline folders.

Two recipes (`RECIPES`, --recipe): "tiny-wan" (issue 9, the shipped models/tiny-wan) on flat shapes from
`vidsparse.testing.shapes`, and "tiny-wan-next" (issue 20) on textured scenes from `vidsparse.testing.textures`
that drift, zoom and turn under a textured moving object, with a wider transformer (4 layers of 4 heads x 32)
and a VAE that starts from tiny-wan's and is fine-tuned on textures. The text below describes tiny-wan; the
next recipe differs only where `RECIPES` says so. One seeded run in two phases:

1. VAE: an `AutoencoderKLWan` with one down-sampling stage (spatial x2, temporal x2, 16 latent channels) learns
   to reconstruct 64 x 64 clips in VAE_STAGES: single frames, then 5, then 9 frames (it is fully convolutional,
   so it then encodes whole clips). The Wan VAE is causal and runs the first frame, then chunks of 4 frames,
   carrying convolution caches between chunks: a VAE trained on 5 frames only decodes frames 5 onwards as grey
   noise, and one trained on 9 frames drifts in colour and position from frame 9 on, hence the longer stages.
   It is trained as a plain autoencoder on the posterior mean (no sampling, no KL): with so few steps the
   initial unit posterior noise would drown the signal; the pipeline only ever decodes, so nothing else changes.
   The loss is weighted 10x on the shapes (`shape_mask`, `mask_weight`), which cover a few percent of the
   pixels: unweighted, a VAE first learns to paint the background and drops every shape.
2. Transformer: a narrow `WanTransformer3DModel` (patch 1 x 2 x 2 as in Wan, 3 layers, 2 heads of 32) learns
   rectified flow on the normalised VAE latents of 17-frame 64 x 64 clips (latents 9 x 32 x 32, patches
   9 x 16 x 16 = 2304 tokens, so attention is most of a step), conditioned on a frozen, randomly initialised
   UMT5 encoder over a word-level tokenizer built from `prompt_vocabulary()`. Flow convention of diffusers'
   flow-matching schedulers: x_t = (1 - s) x_0 + s noise, timestep = 1000 s, the model predicts
   v = noise - x_0 (so x_0 = x_t - s v, as `UniPCMultistepScheduler` with `prediction_type="flow_prediction"`
   assumes). s is drawn uniformly and shifted by FLOW_SHIFT, the same shift the exported scheduler applies at
   inference. 10% of prompts are dropped to "" for CFG. The loss is weighted --shape-weight times on latent
   pixels over a shape (`latent_mask`, ~9% of them) and normalised by the mean weight: with plain MSE the
   first 2011 steps learned the prompted background and no shape. Per-pixel weights leave the optimum (the
   conditional mean velocity) unchanged; they only say where the model's capacity goes first.

Latents of freshly drawn clips stream into a ring-buffer pool (one new clip per step) from which batches are
sampled, so the VAE encoder costs a fraction of a step. Clip i of the run is drawn from
`np.random.default_rng([seed, 1, i])` (VAE clips use stream 0, latent statistics stream 2); every other random
number comes from one `torch.Generator`, saved in the checkpoint with the models, optimizers, EMA and pool, so
`--resume` continues the same run.

    python scripts/train_tiny_wan.py train --out .cache/tiny_wan_train            # runs until --steps
    python scripts/train_tiny_wan.py train --out .cache/tiny_wan_train --resume
    python scripts/train_tiny_wan.py train --out .cache/tiny_wan_train --resume models/tiny-wan/training_state.pt
    python scripts/train_tiny_wan.py check-vae --out .cache/tiny_wan_train --json scripts/results/tiny_wan_vae.json
    python scripts/train_tiny_wan.py export --out .cache/tiny_wan_train --to models/tiny-wan
    python scripts/train_tiny_wan.py summarize --out .cache/tiny_wan_train --json scripts/results/tiny_wan_train.json
    python scripts/train_tiny_wan.py evaluate --model-dir models/tiny-wan --json scripts/results/tiny_wan_adherence.json
    python scripts/train_tiny_wan.py train --recipe tiny-wan-next --out .cache/tiny_wan_next --threads 1 \
        --pool-size 1000 --snapshot-every 100 --checkpoint-minutes 10 --resume [models/tiny-wan-next/training_state.pt]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vidsparse.testing import shapes, textures  # noqa: E402
from vidsparse.tiny_model import TINY_WAN_PROMPTS  # noqa: E402

LATENT_CHANNELS = 16
VAE_CONFIG = dict(base_dim=16, z_dim=LATENT_CHANNELS, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[True],
                  scale_factor_temporal=2, scale_factor_spatial=2)  # what WanPipeline reads; must match the stages
TRANSFORMER_CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    text_dim=64, freq_dim=64, ffn_dim=256, num_layers=3, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
)
TEXT_CONFIG = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, relative_attention_num_buckets=16,
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")
FLOW_SHIFT = 2.0
FRAMES, SIZE = 17, 64  # training clips: 17 frames of 64 x 64 -> latents 9 x 32 x 32 -> 2304 tokens
TEXT_LENGTHS = (16, 512)  # padded prompt lengths seen in training: TINY_WAN_CALL's 16 and the pipeline default 512
PROMPT_DROPOUT = 0.1
#: VAE stages (frames, batch, steps): single frames train every 2D path cheaply, 5 frames the first frame -> chunk
#: transition, 9 frames the chunk -> chunk transition; whole 17-frame clips then stop the colour and position drift
#: of chunks 3 and 4 (a VAE that has only seen 9 frames carries earlier frames forward there).
VAE_STAGES = ((1, 4, 1500), (5, 2, 500), (9, 2, 400), (17, 1, 500))




def shapes_clip(rng: np.random.Generator) -> tuple[str, np.ndarray, np.ndarray]:
    """A shapes clip: prompt, uint8 video [F, H, W, 3] and the pixels off its plain background [F, H, W]."""
    spec = shapes.sample_clip_spec(rng)
    video = shapes.render_clip(spec, frames=FRAMES, height=SIZE, width=SIZE)
    return spec.prompt, video, shape_mask(clip_tensor(video)[None])[0, 0].numpy()


def textures_clip(rng: np.random.Generator) -> tuple[str, np.ndarray, np.ndarray]:
    """A textures clip (never a held-out prompt): prompt, uint8 video [F, H, W, 3] and its object's pixels."""
    spec = textures.sample_clip_spec(rng)
    video, mask = textures.render_clip(spec, frames=FRAMES, height=SIZE, width=SIZE, with_mask=True)
    return spec.prompt, video, mask


@dataclass(frozen=True)
class Recipe:
    """What differs between the built-in models: data (clips, vocabulary, scorer, evaluation prompts), the
    transformer, the VAE stages and where the VAE starts from, and the default weight of the flow loss on the
    clip's mask (the shapes, or the textured object)."""

    draw_clip: Callable[[np.random.Generator], tuple[str, np.ndarray, np.ndarray]]
    vocabulary: Callable[[], list[str]]
    score_clip: Callable[[np.ndarray, str], dict]
    eval_prompts: tuple[str, ...]
    transformer_config: dict
    vae_stages: tuple[tuple[int, int, int], ...]
    vae_init: str | None  # a diffusers AutoencoderKLWan folder to start the VAE from, or None (random)
    default_mask_weight: float  # the VAE loss's, and the flow loss's unless --shape-weight is given


#: "tiny-wan": the shipped model (models/tiny-wan), flat shapes. "tiny-wan-next" (issue 20): textured scenes that
#: drift, zoom and turn, with a textured object moving over them; 4 layers of 4 heads x 32 (dim 128, FFN 512); the
#: VAE starts from tiny-wan's (same config) and is fine-tuned on textures (tiny-wan's reconstructs them at ~13 dB).
RECIPES: dict[str, Recipe] = {
    "tiny-wan": Recipe(shapes_clip, shapes.prompt_vocabulary, shapes.score_clip, TINY_WAN_PROMPTS,
                       TRANSFORMER_CONFIG, VAE_STAGES, None, 10.0),
    "tiny-wan-next": Recipe(textures_clip, textures.prompt_vocabulary, textures.score_clip, textures.HELD_OUT_PROMPTS,
                            dict(TRANSFORMER_CONFIG, num_attention_heads=4, ffn_dim=512, num_layers=4),
                            ((1, 4, 400), (5, 2, 200), (17, 1, 300)), "models/tiny-wan/vae", 3.0),
}
#: "tiny-wan-next-2x64": the same data and width in 2 heads of 64 per layer (nearer real DiTs' 128-wide heads), to
#: test whether fewer, wider heads leave fewer of them dormant; trained with --vae-from tiny-wan-next's state.
RECIPES["tiny-wan-next-2x64"] = Recipe(**dict(
    vars(RECIPES["tiny-wan-next"]),
    transformer_config=dict(RECIPES["tiny-wan-next"].transformer_config, num_attention_heads=2, attention_head_dim=64)))


def vae_stage(step: int, stages: tuple[tuple[int, int, int], ...] = VAE_STAGES) -> tuple[int, int]:
    """(frames, batch) of VAE step `step`."""
    for frames, batch, steps in stages:
        if step < steps:
            return frames, batch
        step -= steps
    return stages[-1][:2]


# ------------------------------------------------------------------------------------------- components

def build_tokenizer(vocabulary: list[str]):
    """Word-level fast tokenizer over a prompt vocabulary, T5-style: lower-cased words, then "</s>"."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *vocabulary])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=512)


def build_components(recipe: Recipe, seed: int, latents_mean=None, latents_std=None) -> dict:
    """Fresh, seeded components of the pipeline (the text encoder stays as initialised)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(recipe.vocabulary())
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), **TEXT_CONFIG)).eval()
    z = VAE_CONFIG["z_dim"]
    vae = AutoencoderKLWan(**VAE_CONFIG, latents_mean=list(latents_mean or [0.0] * z),
                           latents_std=list(latents_std or [1.0] * z))
    transformer = WanTransformer3DModel(**recipe.transformer_config)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        flow_shift=FLOW_SHIFT, num_train_timesteps=1000)
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler)


def clip_tensor(video: np.ndarray) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float [3, F, H, W] in [-1, 1] (the Wan VAE's pixel range)."""
    return torch.from_numpy(video).permute(3, 0, 1, 2).float().div(127.5).sub(1.0)


def shape_mask(x: torch.Tensor) -> torch.Tensor:
    """Where the shapes are in a clip batch [B, 3, F, H, W] -> bool [B, 1, F, H, W]: pixels away from the plain
    background (each clip's median colour)."""
    background = x.flatten(2).median(dim=2).values[:, :, None, None, None]
    return (x - background).abs().amax(dim=1, keepdim=True) > 0.1


def mask_weight(mask: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-pixel loss weight: `weight` where `mask` is set (on a shape), 1 elsewhere. Shapes cover a few percent
    of the pixels: unweighted, the VAE first learns to paint the background and drops them, and the transformer
    learns the background and draws no shape."""
    return 1.0 + (weight - 1.0) * mask.float()


def latent_mask(mask: torch.Tensor) -> torch.Tensor:
    """A pixel mask bool [B, 1, F, H, W] at the latent grid of the VAE [B, 1, 1 + (F - 1) / 2, H / 2, W / 2]:
    latent frame 0 is frame 0 and latent frame k frames 2k - 1 and 2k (the causal Wan VAE), a latent pixel is set
    when any pixel of its 2 x 2 patch is."""
    mask = mask.float()
    first, rest = mask[:, :, :1], mask[:, :, 1:]
    pooled = torch.cat([F.max_pool3d(first, (1, 2, 2)), F.max_pool3d(rest, (2, 2, 2))], dim=2)
    return pooled > 0


def pool_clip(recipe: Recipe, seed: int, index: int, stream: int = 1) -> tuple[str, np.ndarray, np.ndarray]:
    """Clip `index` of random stream `stream` (0: VAE steps, 1: the latent pool, 2: latent statistics, 3: held-out
    checks): prompt, uint8 video and pixel mask."""
    return recipe.draw_clip(np.random.default_rng([seed, stream, index]))


# ------------------------------------------------------------------------------------------- training

class Run:
    """All state of one training run; `state_dict` / `load_state_dict` make it resumable."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.recipe = RECIPES[args.recipe]
        self.flow_mask_weight = self.recipe.default_mask_weight if args.shape_weight is None else args.shape_weight
        self.device = torch.device(args.device)
        self.parts = build_components(self.recipe, args.seed)
        self.vae, self.transformer = self.parts["vae"], self.parts["transformer"]
        if self.recipe.vae_init is not None:
            from diffusers import AutoencoderKLWan

            start = AutoencoderKLWan.from_pretrained(Path(__file__).resolve().parents[1] / self.recipe.vae_init)
            self.vae.load_state_dict(start.state_dict())
        # The text encoder, the pool and the random draws stay on the CPU: a run moves between devices unchanged.
        self.vae.to(self.device)
        self.transformer.to(self.device)
        self.ema = {k: v.detach().clone() for k, v in self.transformer.state_dict().items()}
        self.vae_opt = torch.optim.Adam(self.vae.parameters(), lr=args.vae_lr)
        self.opt = torch.optim.AdamW(self.transformer.parameters(), lr=args.lr, weight_decay=0.01)
        self.gen = torch.Generator().manual_seed(args.seed)
        self.phase, self.step, self.elapsed = "vae", 0, 0.0
        self.stats: tuple[list[float], list[float]] | None = None
        self.pool = torch.zeros(args.pool_size, LATENT_CHANNELS, (FRAMES - 1) // 2 + 1, SIZE // 2, SIZE // 2,
                                dtype=torch.float16)
        self.pool_masks = torch.zeros(args.pool_size, 1, *self.pool.shape[2:], dtype=torch.bool)
        self.pool_prompts: list[str] = [""] * args.pool_size
        self.clips_seen = 0
        self._embeds: dict[tuple[str, int], torch.Tensor] = {}

    def state_dict(self) -> dict:
        """On the CPU, whatever device the run trains on."""
        return on_cpu(dict(phase=self.phase, step=self.step, elapsed=self.elapsed, stats=self.stats,
                    vae=self.vae.state_dict(), vae_opt=self.vae_opt.state_dict(),
                    transformer=self.transformer.state_dict(), ema=self.ema, opt=self.opt.state_dict(),
                    gen=self.gen.get_state(), pool=self.pool, pool_masks=self.pool_masks,
                    pool_prompts=self.pool_prompts, clips_seen=self.clips_seen,
                    args={k: v for k, v in vars(self.args).items() if k != "func"}))

    def take_vae(self, state: dict) -> None:
        """Start from the trained VAE of another run on the same data, skipping the VAE phase: the transformer
        phase then measures the same latent statistics and encodes the same pool as that run did."""
        recipe = RECIPES[state["args"].get("recipe", "tiny-wan")]
        if state["phase"] != "flow":
            raise SystemExit("--vae-from: that state has not finished its VAE phase")
        if recipe.draw_clip is not self.recipe.draw_clip:
            raise SystemExit(f"--vae-from: that state's VAE was trained on other data than {self.args.recipe!r}'s")
        self.vae.load_state_dict(state["vae"])
        self.step = sum(steps for _, _, steps in self.recipe.vae_stages)

    def load_state_dict(self, state: dict) -> None:
        recipe = state["args"].get("recipe", "tiny-wan")
        if recipe != self.args.recipe:
            raise SystemExit(f"the checkpoint is of recipe {recipe!r}, not {self.args.recipe!r}: "
                             f"pass --recipe {recipe}")
        self.phase, self.step, self.elapsed, self.stats = state["phase"], state["step"], state["elapsed"], state["stats"]
        self.vae.load_state_dict(state["vae"])
        self.transformer.load_state_dict(state["transformer"])
        self.ema = {k: v.to(self.device) for k, v in state["ema"].items()}
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])
        self.clips_seen = state["clips_seen"]
        if "vae_opt" in state:
            self.vae_opt.load_state_dict(state["vae_opt"])
        if self.phase == "flow":
            self.vae.eval().requires_grad_(False)
        if "pool_masks" in state:
            self.pool, self.pool_masks, self.pool_prompts = state["pool"], state["pool_masks"], state["pool_prompts"]
        elif self.phase == "flow":  # a slim state, or one saved before the masks were pooled
            self.refill_pool()

    @torch.no_grad()
    def refill_pool(self) -> None:
        """Re-encode the clips the pool held (clip i sits in slot i % pool_size): the same pool as before."""
        seen, self.clips_seen = self.clips_seen, max(0, self.clips_seen - self.args.pool_size)
        while self.clips_seen < seen:
            self.add_clip()

    # ----- VAE
    def vae_step(self) -> tuple[float, float]:
        """One step of the VAE stage the step count is in; returns (loss, mean absolute error on the shapes)."""
        stages = self.recipe.vae_stages
        frames, batch_size = vae_stage(self.step, stages)
        batch, masks = [], []
        for b in range(batch_size):
            _, video, mask = self.recipe.draw_clip(np.random.default_rng([self.args.seed, 0, self.step, b]))
            f0 = int(torch.randint(0, FRAMES - frames + 1, (1,), generator=self.gen))
            batch.append(clip_tensor(video)[:, f0:f0 + frames])
            masks.append(torch.from_numpy(mask)[None, f0:f0 + frames])
        x = torch.stack(batch).to(self.device)
        recon = self.vae.decode(self.vae.encode(x).latent_dist.mean).sample
        on_shape = torch.stack(masks).to(self.device)
        weight = mask_weight(on_shape, self.recipe.default_mask_weight)
        loss = (((recon - x).pow(2) + (recon - x).abs()) * weight).mean()
        self.vae_opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in self.vae_opt.param_groups:  # halved for the last stage
            group["lr"] = self.args.vae_lr * (0.5 if frames == stages[-1][0] else 1.0)
        self.vae_opt.step()
        return float(loss.detach()), float((recon - x).detach().abs()[on_shape.expand_as(x)].mean())

    # ----- transformer
    @torch.no_grad()
    def encode(self, clip: torch.Tensor) -> torch.Tensor:
        """Latent mean of clips [B, 3, F, H, W]."""
        return self.vae.encode(clip.to(self.device)).latent_dist.mean.cpu()

    @torch.no_grad()
    def start_flow(self) -> None:
        """Freeze the VAE, measure latent statistics and fill the first part of the pool."""
        self.vae.eval().requires_grad_(False)
        first = [self.encode(clip_tensor(pool_clip(self.recipe, self.args.seed, i, stream=2)[1])[None])[0]
                 for i in range(32)]
        stacked = torch.stack(first).transpose(0, 1).flatten(1)
        self.stats = (stacked.mean(1).tolist(), stacked.std(1).tolist())
        for _ in range(self.args.pool_init):
            self.add_clip()

    @torch.no_grad()
    def add_clip(self) -> None:
        prompt, video, mask = pool_clip(self.recipe, self.args.seed, self.clips_seen)
        mean, std = (torch.tensor(s).view(-1, 1, 1, 1) for s in self.stats)
        slot = self.clips_seen % self.args.pool_size
        clip = clip_tensor(video)[None]
        self.pool[slot] = ((self.encode(clip)[0] - mean) / std).half()
        self.pool_masks[slot] = latent_mask(torch.from_numpy(mask)[None, None])[0]
        self.pool_prompts[slot] = prompt
        self.clips_seen += 1

    @torch.no_grad()
    def embed(self, prompts: list[str], length: int) -> torch.Tensor:
        from diffusers import WanPipeline

        missing = [p for p in dict.fromkeys(prompts) if (p, length) not in self._embeds]
        if missing:
            pipe = WanPipeline(**self.parts)
            embeds, _ = pipe.encode_prompt(missing, do_classifier_free_guidance=False, max_sequence_length=length,
                                           device=torch.device("cpu"))
            self._embeds.update({(p, length): e for p, e in zip(missing, embeds)})
        return torch.stack([self._embeds[(p, length)] for p in prompts])

    def lr_factor(self) -> float:
        """100 warm-up steps, then constant; over the last --lr-decay-steps before --steps, linear down to 0.1."""
        left = self.args.steps - self.step
        decay = 1.0 if left > self.args.lr_decay_steps else 0.1 + 0.9 * left / self.args.lr_decay_steps
        return min(1.0, (self.step + 1) / 100) * decay

    def flow_step(self) -> tuple[float, float]:
        """One transformer step; returns (plain MSE, the shape-weighted loss it optimises)."""
        self.add_clip()
        filled = min(self.clips_seen, self.args.pool_size)
        idx = torch.randint(0, filled, (self.args.batch,), generator=self.gen)
        x0 = self.pool[idx].float().to(self.device)
        drop = torch.rand(self.args.batch, generator=self.gen) < PROMPT_DROPOUT
        prompts = ["" if d else self.pool_prompts[i] for i, d in zip(idx.tolist(), drop.tolist())]
        length = TEXT_LENGTHS[int(torch.rand(1, generator=self.gen) < 0.25)]
        text = self.embed(prompts, length).to(self.device)
        u = torch.rand(self.args.batch, generator=self.gen)
        sigma = FLOW_SHIFT * u / (1 + (FLOW_SHIFT - 1) * u)
        sigma = sigma.to(self.device)
        noise = torch.randn(x0.shape, generator=self.gen).to(self.device)
        s = sigma.view(-1, 1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        pred = self.transformer(xt, sigma * 1000, text, return_dict=False)[0]
        error = (pred - (noise - x0)).pow(2)
        weight = mask_weight(self.pool_masks[idx].to(self.device), self.flow_mask_weight)
        loss = (error * weight).mean() / weight.mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.transformer.parameters(), 1.0)
        for group in self.opt.param_groups:
            group["lr"] = self.args.lr * self.lr_factor()
        self.opt.step()
        decay = min(self.args.ema, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for k, v in self.transformer.state_dict().items():
                self.ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
        return float(error.detach().mean()), float(loss.detach())


def on_cpu(tree: Any) -> Any:
    """`tree` (tensors in dicts and lists) with every tensor on the CPU."""
    if isinstance(tree, torch.Tensor):
        return tree.cpu()
    if isinstance(tree, dict):
        return {k: on_cpu(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [on_cpu(v) for v in tree]
    return tree


def slim_state(state: dict) -> dict:
    """A transformer-phase state without what `Run.load_state_dict` can rebuild or no longer needs: the latent pool
    (re-encoded from the same clips) and the VAE optimizer. A few MB instead of ~600."""
    return {k: v for k, v in state.items() if k not in ("pool", "pool_masks", "pool_prompts", "vae_opt")}


def save_checkpoint(run: Run, out: Path) -> None:
    tmp = out / "checkpoint.pt.tmp"
    torch.save(run.state_dict(), tmp)
    os.replace(tmp, out / "checkpoint.pt")


def train(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = Run(args)
    if args.vae_from is not None and args.resume is None:
        run.take_vae(torch.load(args.vae_from, weights_only=False))
    if args.resume is not None:
        run.load_state_dict(torch.load(args.resume or out / "checkpoint.pt", weights_only=False))
        print(f"resumed at phase {run.phase} step {run.step}", flush=True)
    log = open(out / "log.jsonl", "a")
    last_save = began = time.time()
    while args.max_minutes is None or time.time() - began < 60 * args.max_minutes:
        if run.phase == "vae" and run.step >= sum(steps for _, _, steps in run.recipe.vae_stages):
            torch.save(run.state_dict(), out / "vae_done.pt")  # to restart the transformer phase from
            run.start_flow()
            run.phase, run.step = "flow", 0
        if run.phase == "flow" and run.step >= args.steps:
            break
        start = time.time()
        row = dict(phase=run.phase, step=run.step + 1)
        if run.device.type != "cpu":
            row["device"] = run.device.type
        if run.phase == "vae":
            row["loss"], row["shape_l1"] = run.vae_step()
        else:
            row["loss"], row["weighted_loss"] = run.flow_step()
        run.step += 1
        run.elapsed += time.time() - start
        log.write(json.dumps(dict(row, elapsed_s=round(run.elapsed, 2))) + "\n")
        log.flush()
        if run.phase == "flow" and args.snapshot_every and run.step % args.snapshot_every == 0:
            torch.save(slim_state(run.state_dict()), out / f"snapshot_{run.step}.pt")
        if time.time() - last_save > 60 * args.checkpoint_minutes:
            save_checkpoint(run, out)
            last_save = time.time()
    save_checkpoint(run, out)
    return 0


# ------------------------------------------------------------------------------------------- export, evaluate

def export(args: argparse.Namespace) -> int:
    from diffusers import WanPipeline

    state = torch.load(Path(args.out) / args.checkpoint, weights_only=False)
    if state["phase"] != "flow":
        raise SystemExit("the checkpoint has not reached the transformer phase yet")
    recipe = state["args"].get("recipe", "tiny-wan")
    parts = build_components(RECIPES[recipe], state["args"]["seed"], *state["stats"])
    parts["vae"].load_state_dict(state["vae"])
    parts["transformer"].load_state_dict(state["ema"] if args.weights == "ema" else state["transformer"])
    WanPipeline(**parts).save_pretrained(args.to, safe_serialization=True)
    torch.save(slim_state(state), Path(args.to) / "training_state.pt")  # to continue training from
    meta = dict(flow_steps=state["step"], train_elapsed_s=round(state["elapsed"], 1), weights=args.weights,
                seed=state["args"]["seed"], clips_seen=state["clips_seen"])
    if recipe != "tiny-wan":  # the shipped model's file stays as it was
        meta["recipe"] = recipe
    (Path(args.to) / "training.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"exported {meta} to {args.to}")
    return 0


def model_recipe(model_dir: str | Path) -> Recipe:
    """The recipe an exported model was trained with (its training.json; tiny-wan when it names none)."""
    training = Path(model_dir) / "training.json"
    meta = json.loads(training.read_text()) if training.exists() else {}
    return RECIPES[meta.get("recipe", "tiny-wan")]


def evaluate(args: argparse.Namespace) -> int:
    from diffusers import WanPipeline

    from vidsparse.tiny_model import TINY_WAN_CALL

    torch.set_num_threads(args.threads)
    pipe = WanPipeline.from_pretrained(args.model_dir).to("cpu")
    pipe.set_progress_bar_config(disable=True)
    recipe = model_recipe(args.model_dir)
    prompts = recipe.eval_prompts[: args.num_prompts]
    rows, seconds = [], []
    # Clip (prompt i, repeat r) uses seed r * len(prompts) + i: repeat 0 is the demo's seeds.
    for r in range(args.seeds):
        for i, prompt in enumerate(prompts):
            seed = r * len(prompts) + i
            start = time.perf_counter()
            generator = torch.Generator().manual_seed(seed)
            video = pipe(prompt, **TINY_WAN_CALL, output_type="np", generator=generator).frames[0]
            seconds.append(time.perf_counter() - start)
            rows.append(dict(seed=seed, **recipe.score_clip(video, prompt)))
            print(json.dumps(rows[-1]), f"{seconds[-1]:.1f}s", flush=True)
    summary = {}
    for key in score_keys(rows[0]):
        values = np.array([row[key] for row in rows], dtype=float)
        summary[key] = float(values.mean())
        summary[f"{key}_stderr"] = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
    result = dict(model_dir=str(args.model_dir), call=TINY_WAN_CALL, threads=args.threads, clips_scored=len(rows),
                  summary=summary, seconds_per_clip=dict(mean=float(np.mean(seconds)), max=float(np.max(seconds))),
                  clips=rows)
    training = Path(args.model_dir) / "training.json"
    if training.exists():
        result["training"] = json.loads(training.read_text())
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary))
    return 0


@torch.no_grad()
def check_vae(args: argparse.Namespace) -> int:
    """The checkpoint's VAE on whole 17 x 64 x 64 held-out clips (stream 3): PSNR per frame (every frame must
    reconstruct, not only the first chunk) and the prompt-adherence score of the reconstructions, the ceiling of
    what the generator can score."""
    torch.set_num_threads(args.threads)
    state = torch.load(Path(args.out) / args.checkpoint, weights_only=False)
    recipe = RECIPES[state["args"].get("recipe", "tiny-wan")]
    vae = build_components(recipe, state["args"]["seed"])["vae"]
    vae.load_state_dict(state["vae"])
    vae.eval()
    psnr, scores = [], []
    for i in range(args.clips):
        prompt, video, _ = pool_clip(recipe, state["args"]["seed"], i, stream=3)
        x = clip_tensor(video)[None]
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        mse = (recon - x).pow(2).mean(dim=(0, 1, 3, 4)) / 4.0  # pixel range [-1, 1] -> [0, 1]
        psnr.append((-10 * torch.log10(mse)).tolist())
        scores.append(recipe.score_clip(recon[0].permute(1, 2, 3, 0).add(1).div(2).numpy(), prompt))
    per_frame = np.mean(psnr, axis=0)
    result = dict(phase=state["phase"], step=state["step"], clips=args.clips,
                  psnr_per_frame_db=[round(float(v), 2) for v in per_frame],
                  psnr_mean_db=round(float(per_frame.mean()), 2), psnr_worst_frame_db=round(float(per_frame.min()), 2),
                  reconstruction_adherence={key: float(np.mean([s[key] for s in scores]))
                                            for key in score_keys(scores[0])})
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def score_keys(score: dict) -> list[str]:
    """The scores of a `score_clip` result: its booleans, then the adherence."""
    return [key for key in score if key.endswith("_ok")] + ["adherence"]


def summarize(args: argparse.Namespace) -> int:
    """Loss curve summary of a run's log (the last entry wins for steps repeated after a resume)."""
    steps: dict[tuple[str, int], dict] = {}
    for line in open(Path(args.out) / "log.jsonl"):
        row = json.loads(line)
        steps[(row["phase"], row["step"])] = row
    result = {}
    for phase in ("vae", "flow"):
        rows = [steps[k] for k in sorted(k for k in steps if k[0] == phase)]
        if not rows:
            continue
        window = max(1, len(rows) // 10)
        curve = []
        for i in range(0, len(rows), window):
            chunk = rows[i:i + window]
            point = dict(steps=f"{chunk[0]['step']}-{chunk[-1]['step']}",
                         mean_loss=round(float(np.mean([r["loss"] for r in chunk])), 4))
            weighted = [r["weighted_loss"] for r in chunk if "weighted_loss" in r]
            if weighted:  # shape-weighted steps (the optimised loss; "loss" stays the plain MSE)
                point["mean_weighted_loss"] = round(float(np.mean(weighted)), 4)
            curve.append(point)
        result[phase] = dict(steps=len(rows), compute_s=rows[-1]["elapsed_s"] - (rows[0]["elapsed_s"] if phase == "flow" else 0.0),
                             curve=curve)
    result["total_compute_s"] = max(r["elapsed_s"] for r in steps.values())
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="tiny-wan")
    p.add_argument("--out", default=".cache/tiny_wan_train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=100_000, help="transformer steps (the run can be stopped any time)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-decay-steps", type=int, default=0, help="decay the learning rate over these last steps")
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--shape-weight", type=float, default=None,
                   help="flow loss weight of latent pixels on the recipe's mask (tiny-wan: the shapes, default 10; "
                        "1: plain MSE, as its first 2011 steps; tiny-wan-next: the object, default 3)")
    p.add_argument("--pool-size", type=int, default=2000)
    p.add_argument("--pool-init", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--checkpoint-minutes", type=float, default=4.0)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after this much wall time")
    p.add_argument("--device", default="cpu", help="where the VAE and the transformer train (e.g. cuda)")
    p.add_argument("--snapshot-every", type=int, default=0,
                   help="also keep the slim state of every N-th flow step (snapshot_<step>.pt), to measure later")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="STATE",
                   help="continue from --out's checkpoint, or from STATE (e.g. models/tiny-wan/training_state.pt)")
    p.add_argument("--vae-from", default=None, metavar="STATE",
                   help="skip the VAE phase: take the VAE of STATE, a run on the same data (ignored with --resume)")
    p.set_defaults(func=train)
    p = sub.add_parser("export")
    p.add_argument("--out", default=".cache/tiny_wan_train")
    p.add_argument("--checkpoint", default="checkpoint.pt", help="or a snapshot_<step>.pt (--snapshot-every)")
    p.add_argument("--to", default="models/tiny-wan")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema")
    p.set_defaults(func=export)
    p = sub.add_parser("evaluate")
    p.add_argument("--model-dir", default="models/tiny-wan")
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--seeds", type=int, default=3, help="clips per prompt (16 clips alone score in steps of 0.06)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    p.set_defaults(func=evaluate)
    p = sub.add_parser("check-vae")
    p.add_argument("--out", default=".cache/tiny_wan_train")
    p.add_argument("--checkpoint", default="checkpoint.pt", help="or vae_done.pt, saved when the VAE phase ends")
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    p.set_defaults(func=check_vae)
    p = sub.add_parser("summarize")
    p.add_argument("--out", default=".cache/tiny_wan_train")
    p.add_argument("--json", default=None)
    p.set_defaults(func=summarize)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
