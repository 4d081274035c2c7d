"""CogVideoX 1.0 and 1.5 (T2V and I2V): `CogVideoXTransformer3DModel`; ConsisID (identity-preserving image-to-video on
CogVideoX 1.0's blocks): `ConsisIDTransformer3DModel`.

Self-attention is joint with the text first: `transformer_blocks[i].attn1` attends over [text, video]
(`max_sequence_length` text tokens, no mask). `CogVideoXAttnProcessor2_0` calls `F.scaled_dot_product_attention`
directly with [B, H, S, D] tensors, so the runtime rebinds `F` in the processor (a copy of torch.nn.functional
whose `scaled_dot_product_attention` is vidsparse's). The latent comes as [B, F, C, H, W]; CogVideoX 1.0 patchifies
each frame (`patch_size_t` None), 1.5 also pairs frames (`patch_size_t` = 2; the pipeline pads the frame count).
ConsisID's config has no `patch_size_t` (it patchifies each frame); its face perceiver cross-attention, added to the
video tokens between blocks, is a plain module with no attention processor and keeps its own kernel.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Family, register_family, video_grid_from_5d


@register_family
class CogVideoX(Family):
    name = "cogvideox"
    transformer_class_names = ("CogVideoXTransformer3DModel", "ConsisIDTransformer3DModel")
    text_position = "prefix"
    kernel_global = "F"

    def attention_modules(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        return [block.attn1 for block in transformer.transformer_blocks]

    def processor_types(self) -> tuple[type, ...]:
        from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0

        return (CogVideoXAttnProcessor2_0,)

    def grid(self, transformer: torch.nn.Module, inputs: dict[str, Any]) -> tuple[int, int, int] | None:
        config = transformer.config
        patch = (getattr(config, "patch_size_t", None) or 1, config.patch_size, config.patch_size)
        return video_grid_from_5d(inputs["hidden_states"], patch, channels_first=False)
