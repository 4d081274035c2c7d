"""Tiny Helios pipelines (random weights; Wan's tiny tokenizer, UMT5 encoder and VAE; nothing downloaded).

Helios denoises a long video chunk by chunk, each chunk after the history latents packed before it. The calls pass
random prompt embeddings (the pipelines clean prompts with ftfy, which is not a dependency) and generate two chunks
of 3 latent frames at 256 px (grid 3 x 16 x 16) with a history of 3 long, 1 mid and 1 short latent frame (plus the
first-frame slot): 1 x 4 x 4 + 1 x 8 x 8 + 2 x 16 x 16 = 592 history tokens before the video, the long and mid
history padded to whole patches by the model.

    pipe = tiny_pipeline("helios", variant="i2v")      # HeliosPipeline from an image
    pipe(**tiny_call("helios", "i2v"), output_type="latent")
"""

from __future__ import annotations

from typing import Any

import torch

from .pipelines import (
    _WAN_TRANSFORMER, _t5_tokenizer, _umt5_encoder, _wan_vae, check_variant, conditioning_image, register_builder,
)

#: variant -> pipeline class name.
HELIOS_VARIANTS = {"t2v": "HeliosPipeline", "i2v": "HeliosPipeline", "pyramid": "HeliosPyramidPipeline"}


def helios_call(variant: str | None) -> dict[str, Any]:
    """Two chunks of 9 frames (3 latent frames) at 256 px, 2 steps (the pyramid: one step at each of its 2 stages)."""
    variant = check_variant("helios", variant, tuple(HELIOS_VARIANTS))
    generator = torch.Generator().manual_seed(0)
    text = {key: torch.randn(1, 16, _WAN_TRANSFORMER["text_dim"], generator=generator)
            for key in ("prompt_embeds", "negative_prompt_embeds")}
    call: dict[str, Any] = dict(height=256, width=256, num_frames=18, num_latent_frames_per_chunk=3,
                                history_sizes=[3, 1, 1], guidance_scale=3.0, **text)
    if variant == "pyramid":
        call["pyramid_num_inference_steps_list"] = [1, 1]
    else:
        call["num_inference_steps"] = 2
    if variant == "i2v":
        call["image"] = conditioning_image(256, 256)
    return call


@register_builder("helios", helios_call)
def _helios(variant: str | None, overrides: dict[str, Any]) -> Any:
    import diffusers
    from diffusers import HeliosScheduler, HeliosTransformer3DModel

    variant = check_variant("helios", variant, tuple(HELIOS_VARIANTS))
    config = {key: value for key, value in _WAN_TRANSFORMER.items() if key != "rope_max_seq_len"}
    config.update(rope_dim=(4, 6, 6))  # RoPE channels per axis (frames, height, width) of a 16-channel head
    config.update(overrides)
    # HeliosPipeline: one stage (Helios-Base); the pyramid denoises each chunk at 2 scales, 2x upsampling between them.
    # (The pyramid's block noise has covariance (1 + gamma) I - gamma 11^T over a 2 x 2 patch: gamma < 1/3.)
    stages = dict(stages=2, stage_range=[0, 0.5, 1], gamma=0.25) if variant == "pyramid" else dict(
        stages=1, stage_range=[0, 1])
    scheduler = HeliosScheduler(**stages)
    return getattr(diffusers, HELIOS_VARIANTS[variant])(
        tokenizer=_t5_tokenizer(64), text_encoder=_umt5_encoder(), vae=_wan_vae().eval(), scheduler=scheduler,
        transformer=HeliosTransformer3DModel(**config).eval(),
    )
