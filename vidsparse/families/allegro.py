"""Allegro: `AllegroTransformer3DModel`.

Self-attention is `transformer_blocks[i].attn1` over video tokens only; text is in `attn2`, cross-attention, which
stays dense. `AllegroAttnProcessor2_0` calls `F.scaled_dot_product_attention` directly with [B, H, S, D] after the
3D RoPE, so the runtime rebinds `F` in the processor. The pipeline passes no video attention mask (a user-given one
is a float bias, which runs the model's kernel with a warning). The grid is the latent [B, C, F, H, W] divided by
(patch_size_t, patch_size, patch_size).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Family, register_family, video_grid_from_5d


@register_family
class Allegro(Family):
    name = "allegro"
    transformer_class_names = ("AllegroTransformer3DModel",)
    text_position = None
    kernel_global = "F"

    def attention_modules(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        return [block.attn1 for block in transformer.transformer_blocks]

    def processor_types(self) -> tuple[type, ...]:
        from diffusers.models.attention_processor import AllegroAttnProcessor2_0

        return (AllegroAttnProcessor2_0,)

    def grid(self, transformer: torch.nn.Module, inputs: dict[str, Any]) -> tuple[int, int, int] | None:
        config = transformer.config
        return video_grid_from_5d(inputs["hidden_states"], (config.patch_size_t, config.patch_size, config.patch_size))
