"""AnyFlow (flow-map sampling on Wan 2.1's backbone), bidirectional: `AnyFlowTransformer3DModel`.

Self-attention is `blocks[i].attn1` over video tokens only; text (and image tokens, when given) are in `attn2`,
cross-attention, which stays dense. `AnyFlowAttnProcessor` calls `dispatch_attention_fn` with [B, S, H, D] after the
norms and the 3D RoPE, with no mask. The latent arrives per frame, [B, F, C, H, W], divided by `config.patch_size`.
In video-to-video the conditioning frames are the first latent frames of the same grid (their timestep is 0).

The FAR variant (`AnyFlowFARTransformer3DModel`, a separate class) is not supported: its self-attention is
block-causal over frame chunks through a flex BlockMask with a KV cache of compressed past frames (see
vidsparse.support.NOT_APPLICABLE).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Family, register_family, video_grid_from_5d


@register_family
class AnyFlow(Family):
    name = "anyflow"
    transformer_class_names = ("AnyFlowTransformer3DModel",)
    text_position = None
    kernel_global = "dispatch_attention_fn"

    def attention_modules(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        return [block.attn1 for block in transformer.blocks]

    def processor_types(self) -> tuple[type, ...]:
        from diffusers.models.transformers.transformer_anyflow import AnyFlowAttnProcessor

        return (AnyFlowAttnProcessor,)

    def grid(self, transformer: torch.nn.Module, inputs: dict[str, Any]) -> tuple[int, int, int] | None:
        return video_grid_from_5d(inputs["hidden_states"], tuple(transformer.config.patch_size), channels_first=False)
