"""Tiny Kandinsky 5 and Kandinsky 6 pipelines (random weights, nothing downloaded).

The Qwen2.5-VL and CLIP text encoders are left out: their tokenizers are Qwen's processor files, which cannot be
built offline. The calls pass the encoders' outputs instead (`prompt_embeds_qwen`, `prompt_embeds_clip` and the
per-prompt sequence lengths), which is the path every pipeline takes after encoding, so the transformer sees what
it sees with real encoders.

    pipe = tiny_pipeline("kandinsky5", variant="i2v")     # Kandinsky5I2VPipeline
    pipe(**tiny_call("kandinsky5", "i2v"), output_type="latent")
"""

from __future__ import annotations

from typing import Any

import torch

from .pipelines import check_variant, conditioning_image, register_builder

TEXT_DIM, POOLED_DIM, TEXT_TOKENS = 32, 16, 7

_KANDINSKY5_TRANSFORMER = dict(
    in_visual_dim=4, out_visual_dim=4, in_text_dim=TEXT_DIM, in_text_dim2=POOLED_DIM, time_dim=16,
    patch_size=(1, 2, 2), model_dim=32, ff_dim=64, num_text_blocks=1, num_visual_blocks=2, axes_dims=(4, 6, 6),
)

#: variant -> pipeline class name; video variants first.
KANDINSKY5_VARIANTS = {
    "t2v": "Kandinsky5T2VPipeline", "i2v": "Kandinsky5I2VPipeline",
    "t2i": "Kandinsky5T2IPipeline", "i2i": "Kandinsky5I2IPipeline",
}


def _video_vae() -> Any:
    from diffusers import AutoencoderKLHunyuanVideo

    return AutoencoderKLHunyuanVideo(latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                                     norm_num_groups=4).eval()


def _image_vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    ).eval()


def kandinsky_text_inputs(batch: int = 1) -> dict[str, torch.Tensor]:
    """What the Qwen2.5-VL / CLIP encoders hand the transformer: TEXT_TOKENS tokens per prompt, a pooled vector."""
    generator = torch.Generator().manual_seed(7)
    cu_seqlens = torch.arange(batch + 1, dtype=torch.int32) * TEXT_TOKENS
    return dict(
        prompt_embeds_qwen=torch.randn(batch, TEXT_TOKENS, TEXT_DIM, generator=generator),
        prompt_embeds_clip=torch.randn(batch, POOLED_DIM, generator=generator),
        prompt_cu_seqlens=cu_seqlens,
    )


def kandinsky5_call(variant: str | None) -> dict[str, Any]:
    """Call arguments: a 5 x 16 x 16 token grid for video variants, the text inputs.

    Image-to-video renormalizes the first 4 latent frames against the next ones, so videos need 5 latent frames.
    The image variants resize any size to a supported one (1024 x 1024 at least: a 1 x 64 x 64 grid)."""
    variant = check_variant("kandinsky5", variant, tuple(KANDINSKY5_VARIANTS))
    call = dict(num_inference_steps=2, guidance_scale=1.0, **kandinsky_text_inputs())
    if variant.endswith("v"):
        call.update(num_frames=17, height=256, width=256)
    else:
        call.update(height=256, width=256)
    if variant.startswith("i"):
        call["image"] = conditioning_image(call["height"], call["width"])
    return call


@register_builder("kandinsky5", kandinsky5_call)
def _kandinsky5(variant: str | None, overrides: dict[str, Any]) -> Any:
    import diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler, Kandinsky5Transformer3DModel

    variant = check_variant("kandinsky5", variant, tuple(KANDINSKY5_VARIANTS))
    # Image-conditioned variants take the image as channels: noise, condition latents, condition mask.
    config = dict(_KANDINSKY5_TRANSFORMER, visual_cond=variant.startswith("i"), **overrides)
    return getattr(diffusers, KANDINSKY5_VARIANTS[variant])(
        transformer=Kandinsky5Transformer3DModel(**config).eval(),
        vae=_video_vae() if variant.endswith("v") else _image_vae(),
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
    )


_KANDINSKY6_TRANSFORMER = dict(
    in_visual_dim=4, out_visual_dim=4, in_text_dim=TEXT_DIM, in_text_dim2=POOLED_DIM, time_dim=16,
    patch_size=(1, 2, 2), model_dim=32, ff_dim=64, num_text_blocks=1, num_visual_blocks=2, axes_dims=(4, 6, 6),
    in_audio_dim=4, out_audio_dim=4, visual_token_type_num_embeddings=2,
)


def kandinsky6_call(variant: str | None) -> dict[str, Any]:
    """Video only (no audio VAE in the tiny pipeline): "t2v" or "i2v" (reference image appended as a frame)."""
    variant = check_variant("kandinsky6", variant, ("t2v", "i2v"))
    text = kandinsky_text_inputs()
    call = dict(num_frames=9, height=256, width=256, num_inference_steps=2, guidance_scale=1.0, sample_audio=False,
                prompt_embeds=text["prompt_embeds_qwen"], pooled_prompt_embeds=text["prompt_embeds_clip"])
    if variant == "i2v":
        call["image"] = conditioning_image(call["height"], call["width"])
    return call


@register_builder("kandinsky6", kandinsky6_call)
def _kandinsky6(variant: str | None, overrides: dict[str, Any]) -> Any:
    """Kandinsky6TI2VAPipeline; the variants ("t2v", "i2v") differ only in the call (an image or not)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Kandinsky6TI2VAPipeline, Kandinsky6Transformer3DModel

    check_variant("kandinsky6", variant, ("t2v", "i2v"))
    return Kandinsky6TI2VAPipeline(
        transformer=Kandinsky6Transformer3DModel(**dict(_KANDINSKY6_TRANSFORMER, **overrides)).eval(),
        vae=_video_vae(), text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
    )
