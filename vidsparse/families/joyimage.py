"""JoyImage Edit (image editing on a Wan-VAE latent): `JoyImageEditTransformer3DModel`.

Self-attention is joint, the text last: `double_blocks[i].attn` attends over [image tokens, text tokens] with no mask
(`JoyImageAttnProcessor` concatenates the two streams and calls `dispatch_attention_fn` with [B, S, H, D] after the
per-stream norms and RoPE). An edit call passes the items [B, N, C, T, H, W] (the reference image(s) and the image
being generated, each one latent frame); the model moves the generated item first and lays the items out as frames
of one [C, N*T, H, W] latent, so the grid is (N*T / patch_t, H / patch_h, W / patch_w) and the reference images are
frames after the generated one (their RoPE time too). A text-to-image call passes a 5-D latent.

`JoyImageEditPlusTransformer3DModel` is not this class and is not supported: it packs images of different sizes as
one padded token list (see vidsparse.support.NOT_APPLICABLE).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Family, register_family, video_grid_from_5d


@register_family
class JoyImageEdit(Family):
    name = "joyimage"
    transformer_class_names = ("JoyImageEditTransformer3DModel",)
    text_position = "suffix"
    kernel_global = "dispatch_attention_fn"

    def attention_modules(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        return [block.attn for block in transformer.double_blocks]

    def processor_types(self) -> tuple[type, ...]:
        from diffusers.models.transformers.transformer_joyimage import JoyImageAttnProcessor

        return (JoyImageAttnProcessor,)

    def head_dim(self, module: torch.nn.Module) -> int:
        # Fused projections: the image stream's q, k and v in one linear layer.
        return module.img_attn_qkv.out_features // (3 * self.num_heads(module))

    def grid(self, transformer: torch.nn.Module, inputs: dict[str, Any]) -> tuple[int, int, int] | None:
        latent = inputs["hidden_states"]
        if latent.dim() == 6:  # items [B, N, C, T, H, W] -> frames [B, C, N*T, H, W]
            latent = latent.transpose(1, 2).flatten(2, 3)
        return video_grid_from_5d(latent, tuple(transformer.config.patch_size))
