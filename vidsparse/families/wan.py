"""Wan 2.1 / 2.2 and the models built on its blocks: `WanTransformer3DModel` (T2V, I2V, TI2V-5B, V2V, each expert
of the A14B pipelines), `WanVACETransformer3DModel` (VACE control), `WanAnimateTransformer3DModel` (Wan 2.2
Animate), `SkyReelsV2Transformer3DModel` (SkyReels V2 T2V / I2V / diffusion forcing) and
`ChronoEditTransformer3DModel` (ChronoEdit image editing: the input image and the edit are two latent frames, after
optional temporal-reasoning frames between them that the pipeline drops part-way through).

Self-attention is `attn1` of every block, over video tokens only: text and the I2V / Animate reference-image CLIP
tokens are in `attn2`, cross-attention, which stays dense, as do Animate's face-adapter cross-attention blocks.
Every processor (`WanAttnProcessor`, the copies diffusers keeps in the Animate, SkyReels and ChronoEdit modules) calls
`dispatch_attention_fn` with [B, S, H, D] tensors after the projections, the across-heads RMSNorm and the 3D RoPE.
The grid is the latent [B, C, F, H, W] divided by `config.patch_size` (1, 2, 2); Animate's reference frame is the
first latent frame of that grid, so it is an ordinary frame of the plan. ChronoEdit's two-frame calls place the edit at
RoPE time `rope_temporal_skip_len - 1`; the plan still sees it as the frame after the input image.

VACE runs its control branch (`vace_blocks`) over the control latents, patch-embedded to the same grid (padded with
zeros to the video's token count), with the same RoPE: those self-attentions are sparse too. Layers are numbered
`blocks` first, then `vace_blocks`, so layer i < num_layers is the same base block as in a plain Wan model.

SkyReels V2 diffusion forcing with `causal_block_size` > 1 masks attention block-causally over frames; that mask is
not a key-padding mask, so those calls run dense with a DenseFallbackWarning (the synchronous default, causal block
1, has no mask and runs sparse).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Family, register_family, video_grid_from_5d


@register_family
class Wan(Family):
    name = "wan"
    transformer_class_names = (
        "WanTransformer3DModel", "WanVACETransformer3DModel", "WanAnimateTransformer3DModel",
        "SkyReelsV2Transformer3DModel", "ChronoEditTransformer3DModel",
    )
    text_position = None
    kernel_global = "dispatch_attention_fn"

    def attention_modules(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        blocks = list(transformer.blocks) + list(getattr(transformer, "vace_blocks", ()))
        return [block.attn1 for block in blocks]

    def processor_types(self) -> tuple[type, ...]:
        from diffusers.models.transformers import (
            transformer_chronoedit, transformer_skyreels_v2, transformer_wan, transformer_wan_animate,
        )

        return (
            transformer_wan.WanAttnProcessor, transformer_wan_animate.WanAttnProcessor,
            transformer_skyreels_v2.SkyReelsV2AttnProcessor, transformer_chronoedit.WanAttnProcessor,
        )

    def grid(self, transformer: torch.nn.Module, inputs: dict[str, Any]) -> tuple[int, int, int] | None:
        return video_grid_from_5d(inputs["hidden_states"], tuple(transformer.config.patch_size))
