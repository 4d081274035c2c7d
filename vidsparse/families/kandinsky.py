"""Kandinsky 5 (T2V, I2V, T2I, I2I) and Kandinsky 6 (TI2VA: video with or without audio).

Both keep text out of the video sequence: the visual self-attention attends over video tokens only, and text comes
in through a separate cross-attention that stays dense, as do the text encoder blocks' self-attention over text.

- `Kandinsky5Transformer3DModel`: self-attention is `visual_transformer_blocks[i].self_attention`
  (`Kandinsky5AttnProcessor`, which calls `dispatch_attention_fn` with [B, S, H, D] after the RMS norms and RoPE).
  The latent arrives channels-last, [B, F, H, W, C], patchified by `config.patch_size`. Checkpoints configured with
  `attention_type="nabla"` are sparse already: their pipelines pass `sparse_params`, the tokens are reordered into
  8x8 spatial blocks (not frame-major) and the processor builds its own flex BlockMask; vidsparse leaves those calls
  to the model (the grid of such a call is reported unknown, so they run the model's kernel with one warning).
- `Kandinsky6Transformer3DModel`: each fused block holds a video and an audio stream; only the video stream's
  self-attention (`visual_transformer_blocks[i].video_dec_block.self_attention`, `Kandinsky6AttnProcessor`) is a
  spatio-temporal grid. The audio self-attention (1-D), the audio-video cross-attention and the text cross-attention
  stay dense. The latent is channels-last [B, F, H, W, C]; the TI2VA pipeline appends the reference frame as one
  more latent frame, which is simply part of the grid.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Family, register_family


def _channels_last_grid(transformer: torch.nn.Module, inputs: dict[str, Any]) -> tuple[int, int, int]:
    """(F, H, W) tokens of a [B, F, H, W, C] latent patchified by the config's (pt, ph, pw)."""
    _, frames, height, width, _ = inputs["hidden_states"].shape
    pt, ph, pw = transformer.config.patch_size
    return (frames // pt, height // ph, width // pw)


class _Kandinsky(Family):
    """What Kandinsky 5 and 6 share: video-only self-attention, heads in `num_heads`, projections named `to_query`."""

    text_position = None
    kernel_global = "dispatch_attention_fn"

    def num_heads(self, module: torch.nn.Module) -> int:
        return int(module.num_heads)

    def head_dim(self, module: torch.nn.Module) -> int:
        return module.to_query.out_features // self.num_heads(module)


@register_family
class Kandinsky5(_Kandinsky):
    name = "kandinsky5"
    transformer_class_names = ("Kandinsky5Transformer3DModel",)

    def attention_modules(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        return [block.self_attention for block in transformer.visual_transformer_blocks]

    def processor_types(self) -> tuple[type, ...]:
        from diffusers.models.transformers.transformer_kandinsky import Kandinsky5AttnProcessor

        return (Kandinsky5AttnProcessor,)

    def grid(self, transformer: torch.nn.Module, inputs: dict[str, Any]) -> tuple[int, int, int] | None:
        if inputs.get("sparse_params") is not None:  # NABLA: tokens in 8x8 blocks, the model's own sparse mask
            return None
        return _channels_last_grid(transformer, inputs)


@register_family
class Kandinsky6(_Kandinsky):
    name = "kandinsky6"
    transformer_class_names = ("Kandinsky6Transformer3DModel",)

    def attention_modules(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        return [block.video_dec_block.self_attention for block in transformer.visual_transformer_blocks]

    def processor_types(self) -> tuple[type, ...]:
        from diffusers.models.transformers.transformer_kandinsky6 import Kandinsky6AttnProcessor

        return (Kandinsky6AttnProcessor,)

    def grid(self, transformer: torch.nn.Module, inputs: dict[str, Any]) -> tuple[int, int, int] | None:
        return _channels_last_grid(transformer, inputs)
