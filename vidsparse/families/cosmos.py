"""Cosmos Predict 1 / 2 / 2.5 (text-to-world, video-to-world, text-to-image, Predict 2.5 and Transfer 2.5):
`CosmosTransformer3DModel`.

Self-attention is `transformer_blocks[i].attn1` over video tokens only (`CosmosAttnProcessor2_0`, which calls
`dispatch_attention_fn` with [B, S, H, D] after the QK norms and 3D RoPE); text (and Predict 2.5's image context)
is in `attn2`, cross-attention, which stays dense. The conditioning and padding masks are concatenated as channels,
not tokens, so the grid is the latent [B, C, F, H, W] divided by `config.patch_size`. Transfer 2.5's
`CosmosControlNetModel` is a separate module with its own blocks: it stays dense.

Cosmos 3 (`Cosmos3OmniTransformer`, the cosmos3 module) is not supported: its generation pathway is attention from
the generated tokens over [understanding tokens, generated tokens] (queries and keys of different lengths, packed
items, grouped-query heads) and its understanding pathway is causal, neither of which is one self-attention over a
token grid.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Family, register_family, video_grid_from_5d


@register_family
class Cosmos(Family):
    name = "cosmos"
    transformer_class_names = ("CosmosTransformer3DModel",)
    text_position = None
    kernel_global = "dispatch_attention_fn"

    def attention_modules(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        return [block.attn1 for block in transformer.transformer_blocks]

    def processor_types(self) -> tuple[type, ...]:
        from diffusers.models.transformers.transformer_cosmos import CosmosAttnProcessor2_0

        return (CosmosAttnProcessor2_0,)

    def grid(self, transformer: torch.nn.Module, inputs: dict[str, Any]) -> tuple[int, int, int] | None:
        return video_grid_from_5d(inputs["hidden_states"], tuple(transformer.config.patch_size))
