"""Kandinsky 5 (every pipeline class) and Kandinsky 6 (TI2VA, with and without audio) patched sparse.

Expected grids by hand: video variants 17 frames -> (17 - 1) / 4 + 1 = 5 latent frames, 256 px / VAE 8 / patch 2 = 16;
the image pipelines resize 256 px to their smallest supported size 1024 px -> 1024 / 8 / 2 = 64, one frame.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import vidsparse
from family_checks import check_dense_reproduces, check_pipeline_class, output
from test_patch import SPARSE, check_against_oracle, sparse_recorder
from vidsparse.patch import DenseFallbackWarning, install, uninstall
from vidsparse.testing import tiny_call, tiny_pipeline

KANDINSKY5 = {"t2v": (5, 16, 16), "i2v": (5, 16, 16), "t2i": (1, 64, 64), "i2i": (1, 64, 64)}


@pytest.mark.parametrize("variant", list(KANDINSKY5))
def test_kandinsky5_pipeline_runs_sparse_and_layers_match_oracle(variant):
    check_pipeline_class("kandinsky5", variant, grid=KANDINSKY5[variant])


def test_kandinsky5_dense_patch_reproduces():
    check_dense_reproduces(tiny_pipeline("kandinsky5", variant="i2v"), tiny_call("kandinsky5", "i2v"))


#: Kandinsky 6 TI2VA: 9 frames -> 3 latent frames; the reference image of "i2v" is appended as a 4th frame.
KANDINSKY6 = {"t2v": (3, 16, 16), "i2v": (4, 16, 16)}


@pytest.mark.parametrize("variant", list(KANDINSKY6))
def test_kandinsky6_pipeline_runs_sparse_and_layers_match_oracle(variant):
    check_pipeline_class("kandinsky6", variant, grid=KANDINSKY6[variant])


@torch.no_grad()  # inference, as in a pipeline
def test_kandinsky6_with_audio_patches_the_video_stream_only():
    """Video and audio denoised together: the video self-attention is sparse, the audio stream keeps its kernel."""
    transformer = tiny_pipeline("kandinsky6").transformer
    generator = torch.Generator().manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(1, 3, 32, 32, 9, generator=generator),
        audio_hidden_states=torch.randn(1, 12, 4, generator=generator),
        encoder_hidden_states=torch.randn(1, 7, 32, generator=generator),
        pooled_projections=torch.randn(1, 16, generator=generator), timestep=torch.tensor([500.0]),
        return_dict=False,
    )
    reference = transformer(**inputs)
    recorder = sparse_recorder()
    install(transformer, recorder)
    try:
        sparse = transformer(**inputs)
        audio_modules = [block.audio_dec_block.self_attention for block in transformer.visual_transformer_blocks]
        assert not any(type(m.processor).__name__.startswith("Sparse") for m in audio_modules)
    finally:
        uninstall(transformer)
    check_against_oracle(recorder)
    assert {call.layout.grid for call, _ in recorder.calls} == {(3, 16, 16)}
    assert [call.layer for call, _ in recorder.calls] == [0, 1]
    assert sparse[1].shape == reference[1].shape
    assert not torch.allclose(sparse[1], reference[1])  # audio reads the (sparse) video through cross-attention


def test_kandinsky5_nabla_calls_keep_the_models_sparse_kernel_with_one_warning():
    """NABLA checkpoints reorder tokens into 8x8 blocks and bring their own flex BlockMask: vidsparse leaves them be."""
    pipe = tiny_pipeline("kandinsky5", attention_type="nabla", attention_P=0.9, attention_wT=3, attention_wH=3,
                         attention_wW=3, attention_add_sta=True, attention_method="topcdf")
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    active = _AttentionBackendRegistry._active_backend
    pipe.transformer.set_attention_backend("flex")  # diffusers also makes it the process-wide active backend
    try:
        call = tiny_call("kandinsky5")
        reference = output(pipe, call)
        controller = vidsparse.patch(pipe, strategy=SPARSE, dense_warmup_steps=0, dense_layers=())
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                patched = output(pipe, call)
        finally:
            vidsparse.unpatch(pipe)
    finally:  # or every later test in this process runs flex
        pipe.transformer.reset_attention_backend()
        _AttentionBackendRegistry.set_active_backend(active)
    fallbacks = [str(w.message) for w in caught if issubclass(w.category, DenseFallbackWarning)]
    assert len(fallbacks) == 1 and "attention mask is a BlockMask" in fallbacks[0]
    assert controller.stats["sparse_calls"] == 0
    assert torch.equal(patched, reference)
