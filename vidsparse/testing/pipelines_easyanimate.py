"""Tiny EasyAnimate pipelines: text-to-video, inpaint (image-to-video) and control (random weights).

The Qwen2-VL text encoder is left out (its tokenizer's chat template and vocabulary files cannot be built offline):
the calls pass `prompt_embeds` and `prompt_attention_mask`, what the encoder would hand the transformer.

    pipe = tiny_pipeline("easyanimate", variant="control")     # EasyAnimateControlPipeline
"""

from __future__ import annotations

from typing import Any

import torch

from .pipelines import check_variant, register_builder

TEXT_DIM, TEXT_TOKENS = 32, 12

#: variant -> (pipeline class name, transformer input channels: noise latents + what the variant concatenates).
EASYANIMATE_VARIANTS = {
    "t2v": ("EasyAnimatePipeline", 4),
    "inpaint": ("EasyAnimateInpaintPipeline", 4 + 4 + 4),  # + mask latents + masked-video latents
    "control": ("EasyAnimateControlPipeline", 4 + 4 + 4),  # + control-video latents + reference-image latents
}


def easyanimate_call(variant: str | None) -> dict[str, Any]:
    """9 frames at 256 px: latent 3 x 32 x 32 (VAE 4x in time, 8x in space), patch 2 -> a 3 x 16 x 16 grid.

    inpaint: 5 frames (a 2 x 16 x 16 grid: the VAE encodes the video and its mask on every call), the first one
    given, the rest to generate (image-to-video); control: a control video."""
    variant = check_variant("easyanimate", variant, tuple(EASYANIMATE_VARIANTS))
    generator = torch.Generator().manual_seed(7)
    call = dict(num_frames=5 if variant == "inpaint" else 9, height=256, width=256, num_inference_steps=2,
                guidance_scale=1.0,
                prompt_embeds=torch.randn(1, TEXT_TOKENS, TEXT_DIM, generator=generator),
                prompt_attention_mask=torch.ones(1, TEXT_TOKENS, dtype=torch.long))
    video = torch.rand(1, 3, call["num_frames"], call["height"], call["width"], generator=generator)
    if variant == "inpaint":
        mask = torch.ones(1, 1, call["num_frames"], call["height"], call["width"])
        mask[:, :, 0] = 0  # keep the first frame
        call.update(video=video, mask_video=mask * 255)
    elif variant == "control":
        call.update(control_video=video)
    return call


@register_builder("easyanimate", easyanimate_call)
def _easyanimate(variant: str | None, overrides: dict[str, Any]) -> Any:
    import diffusers
    from diffusers import AutoencoderKLMagvit, EasyAnimateTransformer3DModel, FlowMatchEulerDiscreteScheduler

    variant = check_variant("easyanimate", variant, tuple(EASYANIMATE_VARIANTS))
    pipeline_class, in_channels = EASYANIMATE_VARIANTS[variant]
    # The first block is MMDiT-style (separate text projections), the second shares them with the video.
    # The mask is VAE-encoded like the video (resize_inpaint_mask_directly=False): diffusers 0.42.1's inpaint
    # pipeline reads a `cache_mag_vae` VAE setting AutoencoderKLMagvit does not have on the direct-resize path.
    config = dict(num_attention_heads=2, attention_head_dim=16, in_channels=in_channels, out_channels=4,
                  patch_size=2, sample_width=8, sample_height=8, num_layers=2, mmdit_layers=1, time_embed_dim=16,
                  text_embed_dim=TEXT_DIM, enable_text_attention_mask=True, resize_inpaint_mask_directly=False)
    config.update(overrides)
    vae = AutoencoderKLMagvit(
        latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
        spatial_group_norm=False,
    )
    return getattr(diffusers, pipeline_class)(
        vae=vae.eval(), text_encoder=None, tokenizer=None,
        transformer=EasyAnimateTransformer3DModel(**config).eval(), scheduler=FlowMatchEulerDiscreteScheduler(),
    )
