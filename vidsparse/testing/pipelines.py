"""Tiny runnable diffusers pipelines for every supported family, built from configs with random weights.

Nothing is downloaded: text encoders are built from tiny configs (UMT5, T5, Llama, CLIP) and tokenizers are
character-level `tokenizers` models built in memory, so `pipe("a prompt", ...)` works like with a real model.
Sizes are chosen so that one pipeline call with 2-3 steps takes well under a second of transformer time on CPU
while the latent grid still spans several 128-token tiles (so sparse plans differ from dense ones).

    pipe = tiny_pipeline("wan")                       # WanPipeline, 2 layers, 2 heads of 16
    pipe = tiny_pipeline("wan", variant="a14b")       # Wan 2.2 A14B-like: transformer + transformer_2
    pipe = tiny_pipeline("cogvideox", variant="1.5")  # patch_size_t=2, rotary embeddings
    pipe = tiny_pipeline("hunyuan", num_layers=1)     # keyword overrides go to the transformer config

`TINY_CALL[family]` holds call arguments (frames, height, width, steps) that suit each tiny pipeline.
"""

from __future__ import annotations

import string
from typing import Any, Callable

import torch

_BUILDERS: dict[str, Callable[..., Any]] = {}

#: Arguments for a quick call of each tiny pipeline (latent grids of several tiles, 2 denoising steps).
TINY_CALL: dict[str, dict[str, Any]] = {}


#: family -> call arguments of each variant, for families whose variants are separate pipeline classes.
_VARIANT_CALLS: dict[str, Callable[[str | None], dict[str, Any]]] = {}


def _builder(family: str, call: dict[str, Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        _BUILDERS[family] = fn
        TINY_CALL[family] = call
        return fn

    return register


def register_builder(
    family: str, variant_call: Callable[[str | None], dict[str, Any]]
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for a builder `fn(variant, overrides) -> pipeline` defined in another module (pipelines_<family>.py);
    `variant_call(variant)` gives the call arguments of each variant (None: the default one)."""
    _VARIANT_CALLS[family] = variant_call
    return _builder(family, variant_call(None))


def tiny_pipeline(family: str, *, variant: str | None = None, seed: int = 0, **overrides: Any) -> Any:
    """A runnable tiny pipeline of `family` (any of `vidsparse.families.available_families()`) on CPU, float32.

    Args:
        variant: family-specific flavour (wan: "t2v", "a14b", "i2v", "ti2v"; cogvideox: "1.0" or "1.5"; for the
            families built in `pipelines_<family>.py`, one per pipeline class, listed there); None = the first.
        seed: seed of the random weights (the global RNG state is left as it was).
        overrides: transformer config entries to change (e.g. num_layers=1).
    """
    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}; tiny pipelines exist for {', '.join(sorted(_BUILDERS))}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = _BUILDERS[family](variant, overrides)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _char_tokenizer(*, specials: dict[str, str], max_length: int, template: str | None = None) -> Any:
    """A character-level fast tokenizer: every printable character is a token; specials first in the vocab.

    Args:
        specials: role -> token, roles among "pad", "eos", "bos", "unk" (unk required).
        template: post-processing template, e.g. "$A </s>" (T5) or "<s> $A" (Llama); None adds nothing.
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokens = list(dict.fromkeys(specials.values())) + [c for c in string.printable if not c.isspace()] + [" "]
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=specials["unk"]))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    if template is not None:
        used = [t for t in specials.values() if t in template.split()]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[(t, vocab[t]) for t in used]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=max_length, **{f"{role}_token": t for role, t in specials.items()}
    )


def _t5_tokenizer(max_length: int) -> Any:
    return _char_tokenizer(specials={"pad": "<pad>", "eos": "</s>", "unk": "<unk>"}, max_length=max_length,
                           template="$A </s>")


# ----- Wan ------------------------------------------------------------------------------------------------------
_WAN_TRANSFORMER = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
    text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    rope_max_seq_len=64,
)


def _wan_vae(*, residual: bool = False) -> Any:
    """Wan 2.1 VAE (8x spatial), or with `residual` the Wan 2.2 VAE layout (2x2 patchify + 8x = 16x spatial)."""
    from diffusers import AutoencoderKLWan

    extra = dict(is_residual=True, patch_size=2, in_channels=12, out_channels=12, scale_factor_spatial=16) if residual else {}
    return AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4, **extra,
    )


def _umt5_encoder() -> Any:
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1)
    return UMT5EncoderModel(config).eval()


@_builder("wan", dict(num_frames=9, height=256, width=256, num_inference_steps=2, max_sequence_length=16))
def _wan(variant: str | None, overrides: dict[str, Any]) -> Any:
    """Wan 2.1 / 2.2 variants with the same tiny transformer.

    t2v:  WanPipeline (Wan 2.1 T2V).
    a14b: WanPipeline with `transformer` (high noise) and `transformer_2` (low noise), boundary 0.875 (Wan 2.2 T2V-A14B).
    i2v:  WanImageToVideoPipeline with two experts and no image encoder, the condition latents concatenated to the
          input channels (Wan 2.2 I2V-A14B).
    ti2v: WanPipeline with per-token timesteps (`expand_timesteps`) and a VAE compressing 16x spatially with
          patchified residual blocks (Wan 2.2 TI2V-5B).
    """
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline, WanTransformer3DModel

    variant = variant or "t2v"
    if variant not in WAN_VARIANTS:
        raise ValueError(f"wan variant must be one of {WAN_VARIANTS}, got {variant!r}")
    config = dict(_WAN_TRANSFORMER)
    if variant == "i2v":
        # noise latents + condition latents + the 4-channel first-frame mask (vae temporal factor 4)
        config["in_channels"] = 2 * config["in_channels"] + 4
    config.update(overrides)
    experts = 2 if variant in ("a14b", "i2v") else 1
    transformers = [WanTransformer3DModel(**config).eval() for _ in range(experts)]
    components = dict(
        tokenizer=_t5_tokenizer(64),
        text_encoder=_umt5_encoder(),
        vae=_wan_vae(residual=variant == "ti2v").eval(),
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0),
        transformer=transformers[0],
        transformer_2=transformers[1] if experts == 2 else None,
        # Wan 2.2 A14B switches from the high-noise to the low-noise expert at 0.875 * 1000 timesteps.
        boundary_ratio=0.875 if experts == 2 else None,
    )
    if variant == "i2v":
        return WanImageToVideoPipeline(**components)
    return WanPipeline(**components, expand_timesteps=variant == "ti2v")


WAN_VARIANTS = ("t2v", "a14b", "i2v", "ti2v")


def tiny_call(family: str, variant: str | None = None) -> dict[str, Any]:
    """Call arguments for the tiny pipeline of (family, variant): TINY_CALL plus the inputs a variant needs
    (the conditioning image of image-to-video variants)."""
    if family in _VARIANT_CALLS:
        return _VARIANT_CALLS[family](variant)
    call = dict(TINY_CALL[family])
    if (family, variant) == ("wan", "i2v"):
        # The VAE encodes the conditioning video on every call: a smaller frame keeps that cheap (grid 3 x 8 x 8).
        call.update(height=128, width=128)
        call["image"] = conditioning_image(call["height"], call["width"])
    return call


def conditioning_image(height: int, width: int) -> Any:
    """A conditioning image (PIL, RGB) with colour gradients along both axes."""
    from PIL import Image

    ramp_w = torch.linspace(0, 255, width).to(torch.uint8).expand(height, -1)
    ramp_h = torch.linspace(0, 255, height).to(torch.uint8)[:, None].expand(-1, width)
    return Image.fromarray(torch.stack([ramp_w, ramp_w.flip(1), ramp_h], -1).numpy())


# ----- HunyuanVideo ---------------------------------------------------------------------------------------------
@_builder(
    "hunyuan",
    # Prompt template without the system prompt (the real one is ~95 Llama tokens, hundreds of characters here).
    dict(num_frames=9, height=256, width=256, num_inference_steps=2, max_sequence_length=40,
         prompt_template={"template": "{}", "crop_start": 0}),
)
def _hunyuan(variant: str | None, overrides: dict[str, Any]) -> Any:
    from diffusers import (
        AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    _no_variant("hunyuan", variant)
    config = dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
        num_single_layers=2, num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=32,
        pooled_projection_dim=16, rope_axes_dim=(4, 6, 6),
    )
    config.update(overrides)
    llama_tokenizer = _char_tokenizer(
        specials={"bos": "<s>", "eos": "</s>", "unk": "<unk>", "pad": "<pad>"}, max_length=256, template="<s> $A"
    )
    clip_tokenizer = _char_tokenizer(
        specials={"bos": "<|startoftext|>", "eos": "<|endoftext|>", "unk": "<unk>", "pad": "<|endoftext|>"},
        max_length=77, template="<|startoftext|> $A <|endoftext|>",
    )
    # hidden_states[-3] is used (two layers skipped), so the encoder needs at least 2 layers.
    llama = LlamaModel(LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=256,
    )).eval()
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=128, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=77, eos_token_id=clip_tokenizer.eos_token_id, bos_token_id=clip_tokenizer.bos_token_id,
    )).eval()
    vae = AutoencoderKLHunyuanVideo(latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                                    norm_num_groups=4)
    return HunyuanVideoPipeline(
        text_encoder=llama, tokenizer=llama_tokenizer, transformer=HunyuanVideoTransformer3DModel(**config).eval(),
        vae=vae.eval(), scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=clip,
        tokenizer_2=clip_tokenizer,
    )


# ----- CogVideoX ------------------------------------------------------------------------------------------------
def _t5_encoder() -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                      relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1)
    return T5EncoderModel(config).eval()


@_builder("cogvideox", dict(num_frames=9, height=256, width=256, num_inference_steps=2, max_sequence_length=32))
def _cogvideox(variant: str | None, overrides: dict[str, Any]) -> Any:
    """CogVideoX 1.0 (sin-cos positions, frames not patchified) or 1.5 (3D RoPE, frames patchified by 2)."""
    from diffusers import (
        AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXDPMScheduler, CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    variant = variant or "1.0"
    if variant not in ("1.0", "1.5"):
        raise ValueError(f"cogvideox variant must be '1.0' or '1.5', got {variant!r}")
    config = dict(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=32, num_layers=2, sample_width=32, sample_height=32, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=32,
    )
    if variant == "1.5":
        config.update(patch_size_t=2, use_rotary_positional_embeddings=True)
    config.update(overrides)
    vae = AutoencoderKLCogVideoX(block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1,
                                 norm_num_groups=2, temporal_compression_ratio=4)
    scheduler = (CogVideoXDPMScheduler if variant == "1.5" else CogVideoXDDIMScheduler)(timestep_spacing="trailing")
    return CogVideoXPipeline(
        tokenizer=_t5_tokenizer(64), text_encoder=_t5_encoder(), vae=vae.eval(),
        transformer=CogVideoXTransformer3DModel(**config).eval(), scheduler=scheduler,
    )


# ----- LTX-Video ------------------------------------------------------------------------------------------------
@_builder("ltx", dict(num_frames=17, height=512, width=512, num_inference_steps=2, max_sequence_length=32))
def _ltx(variant: str | None, overrides: dict[str, Any]) -> Any:
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel

    _no_variant("ltx", variant)
    config = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32,
                  num_layers=2, caption_channels=32)
    config.update(overrides)
    # Compression 32x spatially and 8x in time, like the real VAE (patch 4, three 2x down-sampling stages).
    vae = AutoencoderKLLTXVideo(
        latent_channels=4, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
    )
    return LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae.eval(), text_encoder=_t5_encoder(),
        tokenizer=_t5_tokenizer(64), transformer=LTXVideoTransformer3DModel(**config).eval(),
    )


# ----- Mochi ----------------------------------------------------------------------------------------------------
@_builder("mochi", dict(num_frames=13, height=256, width=256, num_inference_steps=2, max_sequence_length=32))
def _mochi(variant: str | None, overrides: dict[str, Any]) -> Any:
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel

    _no_variant("mochi", variant)
    config = dict(patch_size=2, num_attention_heads=2, attention_head_dim=16, num_layers=2, pooled_projection_dim=16,
                  in_channels=4, text_embed_dim=32, time_embed_dim=4, max_sequence_length=32)
    config.update(overrides)
    vae = AutoencoderKLMochi(
        # Group norms of 32 groups are hard-coded in the Mochi VAE: 32 channels is the smallest width.
        encoder_block_out_channels=(32, 32, 32, 32), decoder_block_out_channels=(32, 32, 32, 32), latent_channels=4,
        layers_per_block=(1, 1, 1, 1, 1), latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4,
    )
    return MochiPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae.eval(), text_encoder=_t5_encoder(),
        tokenizer=_t5_tokenizer(32), transformer=MochiTransformer3DModel(**config).eval(),
    )


def check_variant(family: str, variant: str | None, variants: tuple[str, ...]) -> str:
    """`variant`, or the first of `variants` when it is None (ValueError naming the accepted ones otherwise)."""
    if variant is None:
        return variants[0]
    if variant not in variants:
        raise ValueError(f"{family} variant must be one of {variants}, got {variant!r}")
    return variant


def _no_variant(family: str, variant: str | None) -> None:
    if variant is not None:
        raise ValueError(f"{family} has no variants, got {variant!r}")


# Families whose builders live in their own modules register on import.
from . import (  # noqa: E402,F401
    pipelines_allegro, pipelines_anyflow, pipelines_cosmos, pipelines_easyanimate, pipelines_helios,
    pipelines_hunyuan15, pipelines_kandinsky, pipelines_motif,
)
