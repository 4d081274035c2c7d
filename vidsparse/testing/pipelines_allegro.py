"""Tiny Allegro pipeline (random weights, T5 from a tiny config with a character tokenizer, nothing downloaded)."""

from __future__ import annotations

from typing import Any

from .pipelines import _no_variant, _t5_encoder, _t5_tokenizer, register_builder


def allegro_call(variant: str | None) -> dict[str, Any]:
    """9 frames at 256 px: latent 3 x 32 x 32 (VAE 4x in time, 8x in space), patch 2 -> a 3 x 16 x 16 grid."""
    _no_variant("allegro", variant)
    # clean_caption needs bs4 and ftfy, which are not dependencies.
    return dict(num_frames=9, height=256, width=256, num_inference_steps=2, max_sequence_length=32,
                clean_caption=False)


@register_builder("allegro", allegro_call)
def _allegro(variant: str | None, overrides: dict[str, Any]) -> Any:
    from diffusers import AllegroPipeline, AllegroTransformer3DModel, AutoencoderKLAllegro, DDIMScheduler

    _no_variant("allegro", variant)
    # Allegro splits each head into three equal RoPE axes of even size: 24 = 3 x 8.
    config = dict(num_attention_heads=2, attention_head_dim=24, in_channels=4, out_channels=4, num_layers=2,
                  cross_attention_dim=48, caption_channels=32, sample_width=8, sample_height=8, sample_frames=3)
    config.update(overrides)
    vae = AutoencoderKLAllegro(
        down_block_types=("AllegroDownBlock3D",) * 4, up_block_types=("AllegroUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2,
        temporal_compression_ratio=4,
    )
    return AllegroPipeline(
        tokenizer=_t5_tokenizer(64), text_encoder=_t5_encoder(), vae=vae.eval(),
        transformer=AllegroTransformer3DModel(**config).eval(), scheduler=DDIMScheduler(),
    )
