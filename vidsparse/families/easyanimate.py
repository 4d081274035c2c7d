"""EasyAnimate V5.1 (T2V, inpaint / I2V, control): `EasyAnimateTransformer3DModel`.

Self-attention is joint with the text first: `transformer_blocks[i].attn1` attends over [text, video] (the Qwen2-VL
or Bert tokens, plus T5 tokens when the model has a second encoder; no mask). `EasyAnimateAttnProcessor2_0` calls
`F.scaled_dot_product_attention` directly with [B, H, S, D], so the runtime rebinds `F` in the processor. Inpaint
and control latents are concatenated as channels, not tokens. Frames are not patchified: the grid is the latent
[B, C, F, H, W] with height and width divided by `config.patch_size`.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Family, register_family, video_grid_from_5d


@register_family
class EasyAnimate(Family):
    name = "easyanimate"
    transformer_class_names = ("EasyAnimateTransformer3DModel",)
    text_position = "prefix"
    kernel_global = "F"

    def attention_modules(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        return [block.attn1 for block in transformer.transformer_blocks]

    def processor_types(self) -> tuple[type, ...]:
        from diffusers.models.transformers.transformer_easyanimate import EasyAnimateAttnProcessor2_0

        return (EasyAnimateAttnProcessor2_0,)

    def grid(self, transformer: torch.nn.Module, inputs: dict[str, Any]) -> tuple[int, int, int] | None:
        p = transformer.config.patch_size
        return video_grid_from_5d(inputs["hidden_states"], (1, p, p))
