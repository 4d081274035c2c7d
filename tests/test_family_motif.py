"""Motif-Video patched sparse: MotifVideoPipeline and MotifVideoImage2VideoPipeline, and on the bare transformer the
I2V image tokens and the decoder layers.

Expected grid by hand: 9 frames -> (9 - 1) / 4 + 1 = 3 latent frames; 256 px / VAE 8 / patch 2 = 16. Text follows
the video; its padded keys are trimmed per batch entry, so the calls carry the valid lengths of the prompt and of
the negative prompt (classifier-free guidance).
"""

from __future__ import annotations

import pytest
import torch

from family_checks import check_dense_reproduces, check_pipeline_class
from test_patch import check_against_oracle, sparse_recorder
from vidsparse.patch import install, uninstall
from vidsparse.testing import tiny_call, tiny_pipeline
from vidsparse.testing.pipelines_motif import TEXT_DIM, VALID_TEXT


@pytest.mark.parametrize("variant", ["t2v", "i2v"])
def test_motif_pipeline_runs_sparse_and_layers_match_oracle(variant):
    calls = check_pipeline_class("motif", variant, grid=(3, 16, 16), text_tokens=set(VALID_TEXT),
                                 text_position="suffix")
    assert {c.layout.text_tokens for c in calls} == set(VALID_TEXT)


def test_motif_dense_patch_reproduces():
    check_dense_reproduces(tiny_pipeline("motif"), tiny_call("motif"))


@torch.no_grad()  # inference, as in a pipeline
def record_bare(transformer, **inputs) -> list:
    recorder = sparse_recorder()
    install(transformer, recorder)
    try:
        transformer(**inputs, return_dict=False)
    finally:
        uninstall(transformer)
    check_against_oracle(recorder)
    return [call for call, _ in recorder.calls]


def motif_inputs(generator: torch.Generator, text_tokens: int = 7) -> dict:
    return dict(hidden_states=torch.randn(1, 9, 3, 32, 32, generator=generator), timestep=torch.tensor([500]),
                encoder_hidden_states=torch.randn(1, text_tokens, TEXT_DIM, generator=generator))


def test_motif_image_tokens_sit_between_video_and_text():
    """I2V with a vision encoder: the suffix is [image tokens, text tokens], all dense rows and columns."""
    transformer = tiny_pipeline("motif", image_embed_dim=24).transformer
    generator = torch.Generator().manual_seed(0)
    calls = record_bare(transformer, **motif_inputs(generator), image_embeds=torch.randn(1, 5, 24, generator=generator))
    layouts = {(c.layout.grid, c.layout.text_tokens, c.layout.text_position) for c in calls}
    assert layouts == {((3, 16, 16), 5 + 7, "suffix")}


def test_motif_decoder_layers_keep_the_encoder_copy_of_the_video_dense():
    """Decoder single blocks attend over [video, the encoder's output for the video]: the copy is the suffix."""
    transformer = tiny_pipeline("motif", num_single_layers=3, num_decoder_layers=1).transformer
    calls = record_bare(transformer, **motif_inputs(torch.Generator().manual_seed(0)))
    suffix = {c.layer: c.layout.text_tokens for c in calls}
    assert suffix == {0: 7, 1: 7, 2: 7, 3: 3 * 16 * 16}
