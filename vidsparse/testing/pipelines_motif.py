"""Tiny Motif-Video pipelines: text-to-video and image-to-video (random weights, nothing downloaded).

The T5Gemma2 text encoder (whose vision tower also embeds the I2V first frame as image tokens) is left out: its
tokenizer files cannot be built offline. The calls pass `prompt_embeds` with a padding mask instead (valid tokens
first, as a tokenizer pads), and classifier-free guidance runs with negative embeddings of another valid length, so
the batch carries two text lengths. Without the encoder the I2V pipeline conditions on the first-frame latents only;
the image tokens are exercised on the bare transformer (see tests/test_family_motif.py).
"""

from __future__ import annotations

from typing import Any

import torch

from .pipelines import _wan_vae, check_variant, conditioning_image, register_builder

TEXT_DIM, TEXT_TOKENS = 32, 12
#: Valid tokens of the prompt and of the negative prompt (the rest is padding).
VALID_TEXT = (9, 5)

MOTIF_VARIANTS = {"t2v": "MotifVideoPipeline", "i2v": "MotifVideoImage2VideoPipeline"}


def _text(valid: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.zeros(1, TEXT_TOKENS, dtype=torch.long)
    mask[:, :valid] = 1
    return torch.randn(1, TEXT_TOKENS, TEXT_DIM, generator=generator), mask


def motif_call(variant: str | None) -> dict[str, Any]:
    """9 frames at 256 px: latent 3 x 32 x 32 (Wan VAE 4x in time, 8x in space), patch 2 -> a 3 x 16 x 16 grid."""
    variant = check_variant("motif", variant, tuple(MOTIF_VARIANTS))
    generator = torch.Generator().manual_seed(7)
    (embeds, mask), (negative, negative_mask) = (_text(valid, generator) for valid in VALID_TEXT)
    call = dict(num_frames=9, height=256, width=256, num_inference_steps=2, prompt_embeds=embeds,
                prompt_attention_mask=mask, negative_prompt_embeds=negative,
                negative_prompt_attention_mask=negative_mask)
    if variant == "i2v":
        call.update(image=conditioning_image(call["height"], call["width"]), prompt=None)
    return call


@register_builder("motif", motif_call)
def _motif(variant: str | None, overrides: dict[str, Any]) -> Any:
    import diffusers
    from diffusers import ClassifierFreeGuidance, FlowMatchEulerDiscreteScheduler, MotifVideoTransformer3DModel

    variant = check_variant("motif", variant, tuple(MOTIF_VARIANTS))
    # Input channels: noise latents, first-frame condition latents, condition mask (zeros for text-to-video).
    config = dict(in_channels=4 + 4 + 1, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
                  num_single_layers=2, patch_size=2, patch_size_t=1, text_embed_dim=TEXT_DIM, rope_axes_dim=(4, 6, 6))
    config.update(overrides)
    return getattr(diffusers, MOTIF_VARIANTS[variant])(
        scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), vae=_wan_vae().eval(),
        text_encoder=None, tokenizer=None, transformer=MotifVideoTransformer3DModel(**config).eval(),
        guider=ClassifierFreeGuidance(guidance_scale=3.0), feature_extractor=None,
    )
