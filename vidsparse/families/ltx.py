"""LTX-Video (0.9.x T2V / I2V / condition pipelines): `LTXVideoTransformer3DModel`.

Self-attention is `transformer_blocks[i].attn1` over video tokens only (text is in `attn2`, cross-attention).
`LTXVideoAttnProcessor` calls `dispatch_attention_fn` with [B, S, H, D] after the RMS norms and RoPE. The latent
arrives already packed as [B, S, C]; the pipeline passes the latent grid as the `num_frames`, `height`, `width`
arguments (patch sizes are 1 in every released LTX-Video checkpoint, so those are the token grid).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Family, register_family


@register_family
class LTXVideo(Family):
    name = "ltx"
    transformer_class_names = ("LTXVideoTransformer3DModel",)
    text_position = None
    kernel_global = "dispatch_attention_fn"

    def attention_modules(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        return [block.attn1 for block in transformer.transformer_blocks]

    def processor_types(self) -> tuple[type, ...]:
        from diffusers.models.transformers.transformer_ltx import LTXVideoAttnProcessor

        return (LTXVideoAttnProcessor,)

    def grid(self, transformer: torch.nn.Module, inputs: dict[str, Any]) -> tuple[int, int, int] | None:
        sizes = [inputs.get(name) for name in ("num_frames", "height", "width")]
        if any(size is None for size in sizes):
            return None
        return tuple(int(size) for size in sizes)  # type: ignore[return-value]
