"""Cosmos Predict 1.0, 2.0 and 2.5 patched sparse, one test per pipeline class.

Not run here: Predict 2.5 given an image or video, and Transfer 2.5 (Cosmos2_5_TransferPipeline), need torchvision
(the pipeline converts the image with it; Transfer's control net takes the padding-mask channel the transformer
resizes with it), which is not a dependency. Transfer's transformer call (controlnet residuals added per block,
the image context in cross-attention) is covered on the bare transformer below.

Expected grids by hand (patch 1 x 2 x 2, 256 px): Predict 1.0's tiny VAE compresses 8x in time and space, 9 frames
-> (9 - 1) / 8 + 1 = 2 latent frames, 256 / 8 / 2 = 16; Predict 2.x uses the Wan VAE (4x in time, 8x in space),
9 frames -> 3; text-to-image is one frame. Text is in cross-attention: no text tokens in the self-attention.
"""

from __future__ import annotations

import pytest
import torch

from family_checks import check_dense_reproduces, check_pipeline_class
from test_patch import check_against_oracle, sparse_recorder
from vidsparse.patch import install, uninstall
from vidsparse.testing import tiny_call, tiny_pipeline

GRIDS = {
    "text2world": (2, 16, 16), "video2world": (2, 16, 16), "2-text2image": (1, 16, 16),
    "2-video2world": (3, 16, 16), "2.5-predict": (3, 16, 16),
}


@pytest.mark.parametrize("variant", list(GRIDS))
def test_cosmos_pipeline_runs_sparse_and_layers_match_oracle(variant):
    check_pipeline_class("cosmos", variant, grid=GRIDS[variant])


def test_cosmos_dense_patch_reproduces():
    check_dense_reproduces(tiny_pipeline("cosmos", variant="2-video2world"), tiny_call("cosmos", "2-video2world"))


@torch.no_grad()  # inference, as in a pipeline
def test_cosmos_transfer_transformer_patches_self_attention_only():
    """Transfer 2.5: the image-context cross-attention (CosmosAttnProcessor2_5) and controlnet residuals stay."""
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(0)
    transformer = CosmosTransformer3DModel(
        in_channels=5, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2, mlp_ratio=2,
        text_embed_dim=32, adaln_lora_dim=4, max_size=(8, 32, 32), patch_size=(1, 2, 2), concat_padding_mask=False,
        controlnet_block_every_n=1, img_context_dim_in=32, img_context_num_tokens=4, img_context_dim_out=32,
    ).eval()
    generator = torch.Generator().manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(1, 4, 3, 32, 32, generator=generator),
        condition_mask=torch.zeros(1, 1, 3, 32, 32), timestep=torch.tensor([0.5]),
        encoder_hidden_states=(torch.randn(1, 12, 32, generator=generator),
                               torch.randn(1, 4, 32, generator=generator)),
        block_controlnet_hidden_states=[torch.randn(1, 768, 32, generator=generator) for _ in range(2)],
        return_dict=False,
    )
    recorder = sparse_recorder()
    install(transformer, recorder)
    try:
        transformer(**inputs)
        kinds = {type(block.attn2.processor).__name__ for block in transformer.transformer_blocks}
    finally:
        uninstall(transformer)
    assert kinds == {"CosmosAttnProcessor2_5"}
    check_against_oracle(recorder)
    assert [(call.layer, call.layout.grid) for call, _ in recorder.calls] == [(0, (3, 16, 16)), (1, (3, 16, 16))]
