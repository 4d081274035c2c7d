"""Tiny AnyFlow pipelines (random weights; Wan's tiny tokenizer, UMT5 encoder and VAE; nothing downloaded).

    pipe = tiny_pipeline("anyflow", variant="v2v")      # AnyFlowPipeline continuing a given video
    pipe(**tiny_call("anyflow", "v2v"), output_type="latent")

The calls pass random prompt embeddings (the pipeline cleans prompts with ftfy, which is not a dependency): 9 frames
at 256 px, grid 3 x 16 x 16, 2 flow-map steps with classifier-free guidance. "v2v" gives 5 conditioning frames,
encoded to the first 2 latent frames, which the pipeline holds at timestep 0.
"""

from __future__ import annotations

from typing import Any

import torch

from .pipelines import _WAN_TRANSFORMER, _t5_tokenizer, _umt5_encoder, _wan_vae, check_variant, register_builder

ANYFLOW_VARIANTS = ("t2v", "v2v")


def anyflow_call(variant: str | None) -> dict[str, Any]:
    variant = check_variant("anyflow", variant, ANYFLOW_VARIANTS)
    generator = torch.Generator().manual_seed(0)
    call: dict[str, Any] = {key: torch.randn(1, 16, _WAN_TRANSFORMER["text_dim"], generator=generator)
                            for key in ("prompt_embeds", "negative_prompt_embeds")}
    call.update(height=256, width=256, num_frames=9, num_inference_steps=2, guidance_scale=3.0)
    if variant == "v2v":
        call["video"] = torch.rand(1, 5, 3, 256, 256, generator=generator)  # [B, F, C, H, W] in [0, 1]
    return call


@register_builder("anyflow", anyflow_call)
def _anyflow(variant: str | None, overrides: dict[str, Any]) -> Any:
    from diffusers import AnyFlowPipeline, AnyFlowTransformer3DModel, FlowMapEulerDiscreteScheduler

    check_variant("anyflow", variant, ANYFLOW_VARIANTS)
    config = dict(_WAN_TRANSFORMER)
    config.pop("qk_norm")  # AnyFlow's attention always normalises q and k
    config.update(overrides)
    return AnyFlowPipeline(
        tokenizer=_t5_tokenizer(64), text_encoder=_umt5_encoder(), vae=_wan_vae().eval(),
        scheduler=FlowMapEulerDiscreteScheduler(), transformer=AnyFlowTransformer3DModel(**config).eval(),
    )
