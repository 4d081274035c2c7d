"""Wan 2.1 / 2.2 (T2V, I2V, TI2V-5B, and each expert of the A14B pipelines): `WanTransformer3DModel`.

Self-attention is `blocks[i].attn1` over video tokens only (text and the I2V image tokens are in `attn2`,
cross-attention, which stays dense). `WanAttnProcessor` calls `dispatch_attention_fn` with [B, S, H, D] tensors
after the projections, the across-heads RMSNorm and the 3D RoPE. The grid is the latent [B, C, F, H, W] divided
by `config.patch_size` (1, 2, 2).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Family, register_family, video_grid_from_5d


@register_family
class Wan(Family):
    name = "wan"
    transformer_class_names = ("WanTransformer3DModel",)
    text_position = None
    kernel_global = "dispatch_attention_fn"

    def attention_modules(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        return [block.attn1 for block in transformer.blocks]

    def processor_types(self) -> tuple[type, ...]:
        from diffusers.models.transformers.transformer_wan import WanAttnProcessor

        return (WanAttnProcessor,)

    def grid(self, transformer: torch.nn.Module, inputs: dict[str, Any]) -> tuple[int, int, int] | None:
        return video_grid_from_5d(inputs["hidden_states"], tuple(transformer.config.patch_size))
