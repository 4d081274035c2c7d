"""Helios (chunk-by-chunk long video on Wan-like blocks): `HeliosTransformer3DModel`.

Self-attention is `blocks[i].attn1` over [history, video]: text is in `attn2`, cross-attention, which stays dense
(with `guidance_cross_attn` only the video tokens query it). Before the chunk being denoised the model packs its
history latents, long first: the 4x-compressed long history (padded to whole (4, 8, 8) latents, kernel 4 x patch), the
2x-compressed mid history (padded to (2, 4, 4), kernel 2 x patch), then the short history at the video's own patch
(the first frame and the latest frames). Like Framepack's, these tokens are the layout's prefix, attended densely:
grids at other scales with no place in the chunk's tiles; every video query keeps all of them and their queries keep
every key. Each is packed only when its `indices_latents_history_*` argument is given. With `is_amplify_history` the
processor scales the history keys first, which the dense prefix keeps as they are.

`HeliosAttnProcessor` calls `dispatch_attention_fn` with [B, S, H, D] tensors after the RMSNorms and the RoPE, with no
mask. The grid is the chunk's latent [B, C, F, H, W] divided by `config.patch_size`. The pipeline restarts its
scheduler for every chunk, so the step index counts the steps of the current chunk.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Family, HistoryInput, packed_history_tokens, register_family, video_grid_from_5d


@register_family
class Helios(Family):
    name = "helios"
    transformer_class_names = ("HeliosTransformer3DModel",)
    text_position = None
    kernel_global = "dispatch_attention_fn"

    def attention_modules(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        return [block.attn1 for block in transformer.blocks]

    def processor_types(self) -> tuple[type, ...]:
        from diffusers.models.transformers.transformer_helios import HeliosAttnProcessor

        return (HeliosAttnProcessor,)

    def grid(self, transformer: torch.nn.Module, inputs: dict[str, Any]) -> tuple[int, int, int] | None:
        return video_grid_from_5d(inputs["hidden_states"], tuple(transformer.config.patch_size))

    def prefix_tokens(self, transformer: torch.nn.Module, inputs: dict[str, Any]) -> int:
        patch = tuple(transformer.config.patch_size)
        history: tuple[HistoryInput, ...] = (
            ("latents_history_short", "indices_latents_history_short", patch, None),
            ("latents_history_mid", "indices_latents_history_mid", tuple(2 * p for p in patch), (2, 4, 4)),
            ("latents_history_long", "indices_latents_history_long", tuple(4 * p for p in patch), (4, 8, 8)),
        )
        return packed_history_tokens(inputs, history)
