"""HunyuanVideo (T2V and the I2V / SkyReels variants built on the same transformer), HunyuanVideo 1.5 (T2V, I2V) and
Framepack: `HunyuanVideoTransformer3DModel`, `HunyuanVideo15Transformer3DModel`,
`HunyuanVideoFramepackTransformer3DModel`.

Self-attention is joint: video tokens then conditioning tokens in one sequence (text last), in the dual-stream
`transformer_blocks[i].attn` and, in HunyuanVideo, the single-stream `single_transformer_blocks[i].attn`, layers
numbered in that order. Each batch entry's valid conditioning tokens come first and its padding last: HunyuanVideo
pads the text to `max_sequence_length` and masks the padded keys with a boolean key-padding mask [B, 1, 1, S];
HunyuanVideo 1.5 orders [valid image, ByT5 and Qwen tokens, then every padded one] and its processor builds the
square mask valid(query) & valid(key) [B, 1, S, S]. The runtime trims each batch entry to its valid tokens before
planning. The token refiners' attention (text only) is not touched. `HunyuanVideoAttnProcessor2_0` and
`HunyuanVideo15AttnProcessor2_0` call `dispatch_attention_fn` after the norms and RoPE. The grid is the latent
[B, C, F, H, W] divided by (patch_size_t, patch_size, patch_size).

Framepack runs HunyuanVideo's blocks and processor on [history, video, image + text tokens]: before the video it packs
the clean latents (the start image and the latest history frames, patchified like the video), then 2x- and 4x-
downsampled older history (each padded to whole (2, 4, 4) / (4, 8, 8) patches first), packed 4x first. These
history tokens are the layout's prefix, attended densely: they are several grids at other scales, with no place in
the video's tile grid; every video query keeps all of them, and their own queries keep every key. Their count is
read from the forward's `latents_clean` / `latents_history_2x` / `latents_history_4x` shapes (each packed only when
its `indices_*` argument is given, as the model does). The SigLIP image tokens come first in the conditioning
tokens, which stay last.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Family, HistoryInput, packed_history_tokens, register_family, video_grid_from_5d


@register_family
class HunyuanVideo(Family):
    name = "hunyuan"
    transformer_class_names = (
        "HunyuanVideoTransformer3DModel", "HunyuanVideo15Transformer3DModel", "HunyuanVideoFramepackTransformer3DModel",
    )
    text_position = "suffix"
    kernel_global = "dispatch_attention_fn"

    def attention_modules(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        blocks = list(transformer.transformer_blocks) + list(getattr(transformer, "single_transformer_blocks", ()))
        return [block.attn for block in blocks]

    def processor_types(self) -> tuple[type, ...]:
        from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0
        from diffusers.models.transformers.transformer_hunyuan_video15 import HunyuanVideo15AttnProcessor2_0

        return (HunyuanVideoAttnProcessor2_0, HunyuanVideo15AttnProcessor2_0)

    def grid(self, transformer: torch.nn.Module, inputs: dict[str, Any]) -> tuple[int, int, int] | None:
        config = transformer.config
        patch = (config.patch_size_t, config.patch_size, config.patch_size)
        return video_grid_from_5d(inputs["hidden_states"], patch)

    def prefix_tokens(self, transformer: torch.nn.Module, inputs: dict[str, Any]) -> int:
        return packed_history_tokens(inputs, _FRAMEPACK_HISTORY)


#: Framepack's history inputs (the 2x and 4x latents padded to whole kernels first).
_FRAMEPACK_HISTORY: tuple[HistoryInput, ...] = (
    ("latents_clean", "indices_latents_clean", (1, 2, 2), None),
    ("latents_history_2x", "indices_latents_history_2x", (2, 4, 4), (2, 4, 4)),
    ("latents_history_4x", "indices_latents_history_4x", (4, 8, 8), (4, 8, 8)),
)
