"""Tiny Cosmos Predict pipelines (1.0, 2.0 and 2.5; random weights, nothing downloaded).

Cosmos pipelines refuse to run without NVIDIA's guardrail (`cosmos_guardrail`, a large model): the tiny pipelines
carry `PassThroughSafetyChecker`, which lets every prompt and video through. Predict 2.5's Qwen2.5-VL text encoder is
left out (its processor files cannot be built offline): its calls pass `prompt_embeds` instead.

    pipe = tiny_pipeline("cosmos", variant="2-video2world")     # Cosmos2VideoToWorldPipeline
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from .pipelines import _t5_encoder, _t5_tokenizer, _wan_vae, check_variant, conditioning_image, register_builder

#: variant -> pipeline class name.
COSMOS_VARIANTS = {
    "text2world": "CosmosTextToWorldPipeline",
    "video2world": "CosmosVideoToWorldPipeline",
    "2-text2image": "Cosmos2TextToImagePipeline",
    "2-video2world": "Cosmos2VideoToWorldPipeline",
    "2.5-predict": "Cosmos2_5_PredictBasePipeline",  # text-to-world (image / video inputs need torchvision)
}
TEXT_DIM = 32


class PassThroughSafetyChecker(ModelMixin, ConfigMixin):
    """Stands in for the Cosmos guardrail in tests: every prompt is safe, every video is returned unchanged."""

    @register_to_config
    def __init__(self) -> None:
        super().__init__()
        # diffusers reads a pipeline's device from its modules' parameters or buffers.
        self.register_buffer("anchor", torch.zeros(()), persistent=False)

    def check_text_safety(self, prompt: str) -> bool:
        return True

    def check_video_safety(self, video: Any) -> Any:
        return video


def cosmos_call(variant: str | None) -> dict[str, Any]:
    """Latent grids of several tiles: 1.0 (VAE 8x in time, 8x in space here) 9 frames at 256 px -> 2 x 16 x 16
    tokens; 2.x (Wan VAE 4x, 8x) 9 frames at 256 px -> 3 x 16 x 16; text-to-image 1 x 16 x 16."""
    variant = check_variant("cosmos", variant, tuple(COSMOS_VARIANTS))
    call = dict(height=256, width=256, num_inference_steps=2, guidance_scale=1.0)
    if variant != "2-text2image":
        call["num_frames"] = 9
    if variant.endswith("video2world"):
        call["image"] = conditioning_image(call["height"], call["width"])
    if variant.startswith("2.5"):
        generator = torch.Generator().manual_seed(7)
        call["prompt_embeds"] = torch.randn(1, 12, TEXT_DIM, generator=generator)
    else:
        call["max_sequence_length"] = 32
    return call


@register_builder("cosmos", cosmos_call)
def _cosmos(variant: str | None, overrides: dict[str, Any]) -> Any:
    import diffusers
    from diffusers import (
        AutoencoderKLCosmos, CosmosTransformer3DModel, EDMEulerScheduler, FlowMatchEulerDiscreteScheduler,
        UniPCMultistepScheduler,
    )

    variant = check_variant("cosmos", variant, tuple(COSMOS_VARIANTS))
    # Video-to-world and Predict 2.x videos condition through a mask channel (+1). The released models also
    # concatenate a padding-mask channel, resized with torchvision (not a vidsparse dependency): off here (a channel,
    # not a token, so the token grid is the same).
    conditioned = variant not in ("text2world", "2-text2image")
    config = dict(in_channels=4 + conditioned, out_channels=4, num_attention_heads=2, attention_head_dim=16,
                  num_layers=2, mlp_ratio=2, text_embed_dim=TEXT_DIM, adaln_lora_dim=4, max_size=(8, 32, 32),
                  patch_size=(1, 2, 2), rope_scale=(2.0, 1.0, 1.0), concat_padding_mask=False,
                  extra_pos_embed_type="learnable")
    config.update(overrides)
    components = dict(transformer=CosmosTransformer3DModel(**config).eval(), safety_checker=PassThroughSafetyChecker())
    if variant in ("text2world", "video2world"):
        vae = AutoencoderKLCosmos(
            latent_channels=4, encoder_block_out_channels=(8, 8, 8, 8), decode_block_out_channels=(8, 8, 8, 8),
            attention_resolutions=(8,), resolution=64, num_layers=2, patch_size=4, patch_type="haar",
            scaling_factor=1.0, spatial_compression_ratio=8, temporal_compression_ratio=8,
        )
        scheduler = EDMEulerScheduler(sigma_min=0.002, sigma_max=80, sigma_data=0.5, sigma_schedule="karras",
                                      prediction_type="epsilon", rho=7.0, final_sigmas_type="sigma_min")
    else:
        vae = _wan_vae()
        scheduler = (UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction")
                     if variant.startswith("2.5") else FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True))
    components.update(vae=vae.eval(), scheduler=scheduler)
    if variant.startswith("2.5"):
        components.update(text_encoder=None, tokenizer=None)
    else:
        components.update(text_encoder=_t5_encoder(), tokenizer=_t5_tokenizer(64))
    return getattr(diffusers, COSMOS_VARIANTS[variant])(**components)
