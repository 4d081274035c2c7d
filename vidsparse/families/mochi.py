"""Mochi 1: `MochiTransformer3DModel`.

Self-attention is joint, video first and text last, in `transformer_blocks[i].attn1`. `MochiAttnProcessor2_0`
handles the text padding itself: per batch entry it keeps only the valid text tokens and calls
`F.scaled_dot_product_attention` ([B=1, H, S, D], no mask) on [video, valid text], so every call reaching vidsparse
is one batch entry with its own text length (the runtime rebinds `F` in the processor). The grid is the latent
[B, C, F, H, W] with frames unpatched and height, width divided by `patch_size`.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Family, register_family, video_grid_from_5d


@register_family
class Mochi(Family):
    name = "mochi"
    transformer_class_names = ("MochiTransformer3DModel",)
    text_position = "suffix"
    kernel_global = "F"

    def attention_modules(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        return [block.attn1 for block in transformer.transformer_blocks]

    def processor_types(self) -> tuple[type, ...]:
        from diffusers.models.attention_processor import MochiAttnProcessor2_0

        return (MochiAttnProcessor2_0,)

    def grid(self, transformer: torch.nn.Module, inputs: dict[str, Any]) -> tuple[int, int, int] | None:
        p = transformer.config.patch_size
        return video_grid_from_5d(inputs["hidden_states"], (1, p, p))
