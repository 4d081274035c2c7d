"""Motif-Video (T2V and I2V): `MotifVideoTransformer3DModel`.

Self-attention is joint, video first and conditioning tokens last, like HunyuanVideo: the dual-stream
`transformer_blocks[i].attn` and the single-stream `single_transformer_blocks[i].attn`, layers numbered in that
order. The suffix is [image tokens (I2V), text tokens]; padded text keys are masked by a boolean key-padding mask
[B, 1, 1, S] (the runtime trims each batch entry to its valid tokens). `MotifVideoAttnProcessor2_0` calls
`dispatch_attention_fn` with [B, S, H, D] after the norms and RoPE. The optional text cross-attention
(`cross_attn`, `MotifVideoCrossAttnProcessor2_0`) stays dense. In checkpoints with decoder layers
(`num_decoder_layers` > 0) the last single blocks attend over [video, the encoder's copy of the video]; the copy
is treated as suffix tokens there, so those layers keep its rows and columns dense.
The grid is the latent [B, C, F, H, W] divided by (patch_size_t, patch_size, patch_size).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Family, register_family, video_grid_from_5d


@register_family
class MotifVideo(Family):
    name = "motif"
    transformer_class_names = ("MotifVideoTransformer3DModel",)
    text_position = "suffix"
    kernel_global = "dispatch_attention_fn"

    def attention_modules(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        blocks = list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks)
        return [block.attn for block in blocks]

    def processor_types(self) -> tuple[type, ...]:
        from diffusers.models.transformers.transformer_motif_video import MotifVideoAttnProcessor2_0

        return (MotifVideoAttnProcessor2_0,)

    def grid(self, transformer: torch.nn.Module, inputs: dict[str, Any]) -> tuple[int, int, int] | None:
        config = transformer.config
        return video_grid_from_5d(inputs["hidden_states"], (config.patch_size_t, config.patch_size, config.patch_size))
