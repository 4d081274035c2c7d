"""HunyuanVideo (T2V and the I2V / SkyReels variants built on the same transformer): `HunyuanVideoTransformer3DModel`.

Self-attention is joint: video tokens then text tokens in one sequence (text last), in the dual-stream
`transformer_blocks[i].attn` and the single-stream `single_transformer_blocks[i].attn`, layers numbered in that
order. Text is padded to `max_sequence_length` and the padded text keys are masked with a boolean key-padding mask
[B, 1, 1, S]; the runtime trims each batch entry to its valid tokens before planning. The token refiner's attention
(text only) is not touched. `HunyuanVideoAttnProcessor2_0` calls `dispatch_attention_fn` after the norms and RoPE.
The grid is the latent [B, C, F, H, W] divided by (patch_size_t, patch_size, patch_size).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Family, register_family, video_grid_from_5d


@register_family
class HunyuanVideo(Family):
    name = "hunyuan"
    transformer_class_names = ("HunyuanVideoTransformer3DModel",)
    text_position = "suffix"
    kernel_global = "dispatch_attention_fn"

    def attention_modules(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        blocks = list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks)
        return [block.attn for block in blocks]

    def processor_types(self) -> tuple[type, ...]:
        from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

        return (HunyuanVideoAttnProcessor2_0,)

    def grid(self, transformer: torch.nn.Module, inputs: dict[str, Any]) -> tuple[int, int, int] | None:
        config = transformer.config
        patch = (config.patch_size_t, config.patch_size, config.patch_size)
        return video_grid_from_5d(inputs["hidden_states"], patch)
