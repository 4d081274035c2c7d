"""LTX-Video (0.9.x: T2V, I2V, condition and long multi-prompt pipelines) and LTX-2's video stream:
`LTXVideoTransformer3DModel`, `LTX2VideoTransformer3DModel`.

Self-attention over video is `transformer_blocks[i].attn1`; text is in `attn2`, cross-attention, which stays dense.
LTX-2 runs a second, audio stream beside the video one: its audio self-attention (`audio_attn1`, a 1-D sequence of
audio latent frames with no spatial grid), the audio-video cross-attentions (`audio_to_video_attn`,
`video_to_audio_attn`) and the text cross-attentions all stay dense; only the video `attn1` is sparse. The
processors (`LTXVideoAttnProcessor`, `LTX2AudioVideoAttnProcessor`, `LTX2PerturbedAttnProcessor`) call
`dispatch_attention_fn` with [B, S, H, D] after the RMS norms and RoPE; LTX-2's per-head output gates and STG
perturbation act on the attention output, outside the kernel.

The latent arrives packed as [B, S, C], so the grid comes from the call's arguments: `num_frames`, `height`,
`width` (the token grid: patch sizes are 1 in every released checkpoint) when their product is the sequence length,
otherwise the token coordinates `video_coords` ([B, 3, S] or LTX-2's [B, 3, S, 2] start/end bounds) that the
condition and long multi-prompt pipelines pass instead (the latter passes num_frames = height = width = 1). The
coordinates give the grid when the tokens are whole frames of one height x width raster in row-major order:
LTXConditionPipeline's extra conditioning latents (a condition video placed at a frame index > 0) are such frames,
prepended to the sequence, and LTX2ConditionPipeline's keyframes are such frames appended to it, so they are planned
as the first or last frames of the grid (their RoPE time is their own).
Coordinates that do not form such a grid leave it unknown and the call runs dense with a warning. Reading them is
one host read per coordinate tensor: pipelines build it once per call (and do not change it in place), so the
result is kept for that tensor object.
LTX-2's IC-LoRA `video_self_attention_mask` is an additive mask the sparse path cannot represent: those calls run
dense with a warning.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from .base import Family, register_family


def grid_from_token_coords(coords: torch.Tensor) -> tuple[int, int, int] | None:
    """(F, H, W) if the tokens' coordinates ([B, 3, S] or [B, 3, S, 2], axes (frame, height, width)) are whole
    frames of one H x W raster in row-major order, consecutive frames one after another; else None."""
    start = coords[0, :, :, 0] if coords.dim() == 4 else coords[0]
    _, row = torch.unique(start[1], return_inverse=True)
    _, col = torch.unique(start[2], return_inverse=True)
    height, width = int(row.max()) + 1, int(col.max()) + 1
    seq_len = start.shape[1]
    if seq_len % (height * width):
        return None
    frames = seq_len // (height * width)
    raster = torch.arange(height * width, device=coords.device).repeat(frames)
    time = start[0].view(frames, height * width)
    if not torch.equal(row * width + col, raster) or not bool((time == time[:, :1]).all()):
        return None
    return (frames, height, width)


@register_family
class LTXVideo(Family):
    name = "ltx"
    transformer_class_names = ("LTXVideoTransformer3DModel", "LTX2VideoTransformer3DModel")
    text_position = None
    kernel_global = "dispatch_attention_fn"

    def __init__(self) -> None:
        # The last coordinate tensor read and its grid (see the module docstring). Not keyed on the tensor's version
        # counter: inference-mode tensors have none.
        self._coords: tuple[weakref.ref, tuple[int, int, int] | None] | None = None

    def attention_modules(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        return [block.attn1 for block in transformer.transformer_blocks]

    def processor_types(self) -> tuple[type, ...]:
        from diffusers.models.transformers.transformer_ltx import LTXVideoAttnProcessor
        from diffusers.models.transformers.transformer_ltx2 import (
            LTX2AudioVideoAttnProcessor, LTX2PerturbedAttnProcessor,
        )

        return (LTXVideoAttnProcessor, LTX2AudioVideoAttnProcessor, LTX2PerturbedAttnProcessor)

    def grid(self, transformer: torch.nn.Module, inputs: dict[str, Any]) -> tuple[int, int, int] | None:
        seq_len = inputs["hidden_states"].shape[1]
        sizes = [inputs.get(name) for name in ("num_frames", "height", "width")]
        if all(size is not None for size in sizes):
            grid = tuple(int(size) for size in sizes)
            if grid[0] * grid[1] * grid[2] == seq_len:
                return grid  # type: ignore[return-value]
        coords = inputs.get("video_coords")
        if coords is None or coords.shape[2] != seq_len:
            return None
        cached = self._coords
        if cached is None or cached[0]() is not coords:
            self._coords = cached = (weakref.ref(coords), grid_from_token_coords(coords))
        return cached[1]
