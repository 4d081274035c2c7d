"""MiniMax-H3 (joint video + audio, modular pipelines only): `MiniMaxH3Transformer3DModel`.

One stack of blocks attends over one packed 1-D sequence; `transformer_blocks[i].attn` is its only attention (no
cross-attention), and the text token refiner's attention (text only) is not touched. The modular pipelines pack
`[text | conditioning rows (keyframes or references) | target audio | target video]`, so the generated video is the
sequence's last rows, frame after frame, each frame one row-major raster. Everything before it (text, conditioning
images and videos, audio) is the layout's prefix, attended densely: every video query keeps all of it and its queries
keep every key. The grid is read from the call's `video_indices` (the trailing run of consecutive video rows, ending
at the sequence's end) and `position_ids` (those rows' (t, h, w) rotary coordinates must form whole frames of one
raster, as `vidsparse.families.ltx.grid_from_token_coords` checks); a layout where they do not (no video rows at the
end) leaves the grid unknown, and the call runs dense with a warning. Reading them is a few host reads per forward
call: the modular denoise loop passes the same index tensor at every step, so the result is kept for that tensor.

`MiniMaxH3AttnProcessor` calls `dispatch_attention_fn` with [B, S, H, D] tensors after the per-head norms and the
RoPE, with no mask (the sequence carries no padding).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from .base import Family, register_family
from .ltx import grid_from_token_coords


def target_video(video_indices: torch.Tensor, position_ids: torch.Tensor) -> tuple[int, int, int] | None:
    """(F, H, W) of the video rows that end the packed sequence, from their rotary coordinates; None if the sequence
    does not end with whole frames of video rows."""
    seq_len = position_ids.shape[0]
    if video_indices.numel() == 0 or int(video_indices[-1]) != seq_len - 1:
        return None
    breaks = torch.nonzero(torch.diff(video_indices) != 1)
    rows = video_indices.numel() - (int(breaks[-1]) + 1 if breaks.numel() else 0)
    return grid_from_token_coords(position_ids[seq_len - rows :].T[None])


@register_family
class MiniMaxH3(Family):
    name = "minimax_h3"
    transformer_class_names = ("MiniMaxH3Transformer3DModel",)
    text_position = None
    kernel_global = "dispatch_attention_fn"

    def __init__(self) -> None:
        # The last `video_indices` tensor read and the grid found for it (see the module docstring).
        self._read: tuple[weakref.ref, tuple[int, int, int] | None] | None = None

    def attention_modules(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        return [block.attn for block in transformer.transformer_blocks]

    def processor_types(self) -> tuple[type, ...]:
        from diffusers.models.transformers.transformer_minimax_h3 import MiniMaxH3AttnProcessor

        return (MiniMaxH3AttnProcessor,)

    def grid(self, transformer: torch.nn.Module, inputs: dict[str, Any]) -> tuple[int, int, int] | None:
        indices = inputs["video_indices"]
        read = self._read
        if read is None or read[0]() is not indices:
            self._read = read = (weakref.ref(indices), target_video(indices, inputs["position_ids"]))
        return read[1]

    def prefix_tokens(self, transformer: torch.nn.Module, inputs: dict[str, Any]) -> int:
        grid = self.grid(transformer, inputs)
        video = grid[0] * grid[1] * grid[2] if grid is not None else 0
        return inputs["position_ids"].shape[0] - video
