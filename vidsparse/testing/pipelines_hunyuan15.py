"""Tiny HunyuanVideo 1.5 pipelines (random weights, nothing downloaded).

The Qwen2.5-VL and ByT5 text encoders are left out (Qwen's tokenizer files cannot be built offline): the calls pass
their outputs, padded, with masks (`prompt_embeds`, `prompt_embeds_2` and their masks), the path every call takes
after encoding. The VAE compresses 4x in space and 2x in time (the real one 16x and 4x) so that a small frame still
gives a grid of several tiles: 9 frames of 64 x 64 pixels -> 5 x 16 x 16 tokens.

    pipe = tiny_pipeline("hunyuan15", variant="i2v")     # HunyuanVideo15ImageToVideoPipeline
    pipe(**tiny_call("hunyuan15", "i2v"), output_type="latent")
"""

from __future__ import annotations

from typing import Any

import torch

from .pipelines import conditioning_image, register_builder

QWEN_DIM, BYT5_DIM, IMAGE_DIM = 16, 32, 16

#: variant -> pipeline class name.
HUNYUAN15_VARIANTS = {"t2v": "HunyuanVideo15Pipeline", "i2v": "HunyuanVideo15ImageToVideoPipeline"}


def _call(variant: str | None) -> dict[str, Any]:
    """Sizes, 2 steps, and padded text-encoder outputs: Qwen 12 tokens (5 valid; negative 3), ByT5 6 (2; 1)."""
    generator = torch.Generator().manual_seed(0)
    call: dict[str, Any] = dict(num_frames=9, num_inference_steps=2)
    for prefix, (qwen, byt5) in (("", (5, 2)), ("negative_", (3, 1))):
        call[f"{prefix}prompt_embeds"] = torch.randn(1, 12, QWEN_DIM, generator=generator)
        call[f"{prefix}prompt_embeds_mask"] = (torch.arange(12) < qwen)[None].long()
        call[f"{prefix}prompt_embeds_2"] = torch.randn(1, 6, BYT5_DIM, generator=generator)
        call[f"{prefix}prompt_embeds_mask_2"] = (torch.arange(6) < byt5)[None].long()
    if (variant or "t2v") == "i2v":
        call["image"] = conditioning_image(64, 64)  # the frame size follows the image (target_size 64)
    else:
        call.update(height=64, width=64)
    return call


@register_builder("hunyuan15", _call)
def _hunyuan15(variant: str | None, overrides: dict[str, Any]) -> Any:
    import diffusers
    from diffusers import AutoencoderKLHunyuanVideo15, FlowMatchEulerDiscreteScheduler, HunyuanVideo15Transformer3DModel
    from diffusers.guiders import ClassifierFreeGuidance

    variant = variant or "t2v"
    if variant not in HUNYUAN15_VARIANTS:
        raise ValueError(f"hunyuan15 variant must be one of {tuple(HUNYUAN15_VARIANTS)}, got {variant!r}")
    # Input: noise latents + condition latents + a mask channel (zeros and a zero mask for text-to-video).
    config = dict(in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
                  num_refiner_layers=1, mlp_ratio=2.0, text_embed_dim=QWEN_DIM, text_embed_2_dim=BYT5_DIM,
                  image_embed_dim=IMAGE_DIM, rope_axes_dim=(4, 6, 6), target_size=64, task_type=variant)
    config.update(overrides)
    vae = AutoencoderKLHunyuanVideo15(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8), layers_per_block=1,
        spatial_compression_ratio=4, temporal_compression_ratio=2, downsample_match_channel=False,
        upsample_match_channel=False,
    )
    components: dict[str, Any] = dict(
        transformer=HunyuanVideo15Transformer3DModel(**config).eval(), vae=vae.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder=None, tokenizer=None,
        text_encoder_2=None, tokenizer_2=None, guider=ClassifierFreeGuidance(guidance_scale=3.0),
    )
    if variant == "i2v":
        from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

        components["image_encoder"] = SiglipVisionModel(SiglipVisionConfig(
            hidden_size=IMAGE_DIM, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
            patch_size=8,
        )).eval()
        components["feature_extractor"] = SiglipImageProcessor(size={"height": 32, "width": 32})
    return getattr(diffusers, HUNYUAN15_VARIANTS[variant])(**components)
