"""EasyAnimate patched sparse: EasyAnimatePipeline (T2V), EasyAnimateInpaintPipeline (I2V: first frame given) and the
control transformer path.

EasyAnimateControlPipeline itself cannot run in diffusers 0.42.1, patched or not: its `__call__` passes
`text_encoder_index=0` to its own `encode_prompt`, which does not take it (TypeError). Its transformer call differs
from text-to-video only by `control_latents` concatenated as channels, which the bare-transformer test covers.

Expected grids by hand: 9 frames -> (9 - 1) / 4 + 1 = 3 latent frames (inpaint: 5 frames -> 2); 256 px / VAE 8 /
patch 2 = 16. Text is first
in the joint sequence: all 12 prompt-embedding tokens (the transformer takes no text mask).
"""

from __future__ import annotations

import pytest
import torch

from family_checks import check_dense_reproduces, check_pipeline_class
from test_patch import check_against_oracle, sparse_recorder
from vidsparse.patch import install, uninstall
from vidsparse.testing import tiny_call, tiny_pipeline
from vidsparse.testing.pipelines_easyanimate import TEXT_DIM, TEXT_TOKENS


@pytest.mark.parametrize("variant, grid", [("t2v", (3, 16, 16)), ("inpaint", (2, 16, 16))])
def test_easyanimate_pipeline_runs_sparse_and_layers_match_oracle(variant, grid):
    check_pipeline_class("easyanimate", variant, grid=grid, text_tokens={TEXT_TOKENS}, text_position="prefix")


def test_easyanimate_dense_patch_reproduces():
    check_dense_reproduces(tiny_pipeline("easyanimate"), tiny_call("easyanimate"))


@torch.no_grad()  # inference, as in a pipeline
def test_easyanimate_control_transformer_runs_sparse():
    transformer = tiny_pipeline("easyanimate", variant="control").transformer
    generator = torch.Generator().manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(1, 4, 3, 32, 32, generator=generator),
        control_latents=torch.randn(1, 8, 3, 32, 32, generator=generator),
        encoder_hidden_states=torch.randn(1, TEXT_TOKENS, TEXT_DIM, generator=generator),
        timestep=torch.tensor([500]), return_dict=False,
    )
    recorder = sparse_recorder()
    install(transformer, recorder)
    try:
        transformer(**inputs)
    finally:
        uninstall(transformer)
    check_against_oracle(recorder)
    layouts = {(call.layout.grid, call.layout.text_tokens, call.layout.text_position) for call, _ in recorder.calls}
    assert layouts == {((3, 16, 16), TEXT_TOKENS, "prefix")}
    assert [call.layer for call, _ in recorder.calls] == [0, 1]
