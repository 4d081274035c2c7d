"""HunyuanVideo 1.5 adapter on a tiny transformer and the tiny T2V / I2V pipelines: video first, then each entry's
valid conditioning tokens (image, ByT5, Qwen), padded ones last, under the processor's square mask
valid(query) & valid(key), which the runtime reads as key padding (padded query rows run the model's kernel with
their own mask rows).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from family_checks import call_patched, full_and_sparse
from test_patch import Recorder, check_against_oracle

from vidsparse.controller import DenseSchedule, SparseController, StrategyPolicy
from vidsparse.families import find_family
from vidsparse.patch import DenseFallbackWarning, install, uninstall
from vidsparse.strategies import get

GRID = (3, 16, 16)
#: (Qwen, ByT5) valid tokens per batch entry; 4 image tokens are valid in both (an I2V call).
VALID = ((5, 2), (9, 6))


def tiny_hunyuan15():
    from diffusers import HunyuanVideo15Transformer3DModel

    torch.manual_seed(0)
    return HunyuanVideo15Transformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
        num_refiner_layers=1, text_embed_dim=32, text_embed_2_dim=16, image_embed_dim=16, rope_axes_dim=(4, 6, 6),
    ).eval()


def inputs() -> dict:
    generator = torch.Generator().manual_seed(1)
    qwen, byt5 = (torch.tensor([[entry[i]] for entry in VALID]) for i in range(2))
    return dict(
        hidden_states=torch.randn(2, 4, *GRID, generator=generator), timestep=torch.tensor([500.0, 500.0]),
        encoder_hidden_states=torch.randn(2, 12, 32, generator=generator),
        encoder_attention_mask=(torch.arange(12)[None] < qwen).long(),
        encoder_hidden_states_2=torch.randn(2, 6, 16, generator=generator),
        encoder_attention_mask_2=(torch.arange(6)[None] < byt5).long(),
        image_embeds=torch.randn(2, 4, 16, generator=generator), return_dict=False,
    )


def run(transformer, controller=None) -> torch.Tensor:
    return call_patched(transformer, inputs(), controller)[0]


def test_full_density_reproduces_and_sparse_layers_match_the_oracle():
    transformer = tiny_hunyuan15()
    assert find_family(transformer).name == "hunyuan"
    recorder = full_and_sparse(lambda controller: run(transformer, controller))
    # Each entry alone, trimmed to its valid prefix: 4 image + ByT5 + Qwen tokens after the video.
    assert {(c.q.shape[0], c.layout.text_tokens) for c, _ in recorder.calls} == {(1, 4 + b + q) for q, b in VALID}
    assert {c.layout.grid for c, _ in recorder.calls} == {GRID}
    assert {c.layout.text_position for c, _ in recorder.calls} == {"suffix"}
    assert {c.layer for c, _ in recorder.calls} == {0, 1}
    check_against_oracle(recorder)


#: variant -> valid conditioning tokens of the prompt and the negative prompt: Qwen + ByT5 (5 + 2, 3 + 1), and for
#: image-to-video the 16 SigLIP tokens of the image (the text-to-video call's zero image tokens are masked).
PIPELINE_TEXT = {"t2v": {7, 4}, "i2v": {23, 20}}


@pytest.mark.parametrize("variant", sorted(PIPELINE_TEXT))
def test_pipeline_runs_sparse(variant):
    from family_checks import check_layers, output

    from vidsparse.testing import tiny_call, tiny_pipeline

    pipe, call = tiny_pipeline("hunyuan15", variant=variant), tiny_call("hunyuan15", variant)
    reference = output(pipe, call)
    full = Recorder(SparseController(StrategyPolicy(get("neighborhood", window=64), DenseSchedule(0, frozenset()))))
    install(pipe, full)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DenseFallbackWarning)
            torch.testing.assert_close(output(pipe, call), reference, rtol=1e-4, atol=1e-5)
    finally:
        uninstall(pipe)
    # 9 frames at 64 px, VAE 2x in time and 4x in space, patch 1: 5 x 16 x 16.
    with warnings.catch_warnings():
        warnings.simplefilter("error", DenseFallbackWarning)
        check_layers(pipe, call, grid=(5, 16, 16), text_tokens=PIPELINE_TEXT[variant], text_position="suffix")
