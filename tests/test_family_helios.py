"""Helios (`HeliosTransformer3DModel`): the history latents packed before each chunk are the layout's dense prefix.

On the bare transformer, a batch of two with the history keys amplified (`is_amplify_history`) and history latents
that do not fill whole patches (the model pads them): at full density through vidsparse's kernel the output is the
unpatched one; sparse, every layer equals masked float64 attention with the same plan, the prefix rows and columns
are kept whole and the video part is the plan of the grid alone. The same through the pipelines, HeliosPipeline from
text and from an image and HeliosPyramidPipeline (two chunks each; the pyramid's first stage at half resolution):
no call falls back to the dense kernel.
"""

from __future__ import annotations

import pytest
import torch
from family_checks import call_patched, full_and_sparse
from test_family_framepack import check_dense_outside_the_grid
from test_patch import check_against_oracle

from vidsparse.families import find_family
from vidsparse.testing import tiny_call, tiny_pipeline

#: Latent [F, H, W] of the chunk (patch (1, 2, 2): grid 2 x 16 x 15) and of each history input.
VIDEO, SHORT, MID, LONG = (2, 32, 30), (2, 32, 30), (1, 32, 30), (3, 32, 30)
GRID = (2, 16, 15)
#: short: patch (1, 2, 2), 2 x 16 x 15; mid: padded to (2, 32, 32), kernel (2, 4, 4): 1 x 8 x 8; long: padded to
#: (4, 32, 32), kernel (4, 8, 8): 1 x 4 x 4.
SHORT_TOKENS, MID_TOKENS, LONG_TOKENS = 2 * 16 * 15, 8 * 8, 4 * 4


def tiny_helios():
    from diffusers import HeliosTransformer3DModel

    torch.manual_seed(0)
    transformer = HeliosTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, text_dim=32, freq_dim=32,
        ffn_dim=64, num_layers=2, rope_dim=(4, 6, 6), is_amplify_history=True,
    ).eval()
    with torch.no_grad():  # the amplification's learned per-head scales, not their initial equal values
        for block in transformer.blocks:
            block.attn1.history_key_scale.normal_()
    return transformer


def inputs(with_long_indices: bool) -> dict:
    generator = torch.Generator().manual_seed(1)
    latent = {name: torch.randn(2, 4, *shape, generator=generator) for name, shape in (
        ("hidden_states", VIDEO), ("latents_history_short", SHORT), ("latents_history_mid", MID),
        ("latents_history_long", LONG))}
    # Frame indices as the pipeline lays them out: [long, mid, short, chunk].
    indices = torch.arange(LONG[0] + MID[0] + SHORT[0] + VIDEO[0])[None]
    long, mid, short, video = indices.split([LONG[0], MID[0], SHORT[0], VIDEO[0]], dim=1)
    return dict(
        **latent, timestep=torch.tensor([500.0, 500.0]),
        encoder_hidden_states=torch.randn(2, 12, 32, generator=generator), indices_hidden_states=video,
        indices_latents_history_short=short, indices_latents_history_mid=mid,
        indices_latents_history_long=long if with_long_indices else None, return_dict=False,
    )


@pytest.mark.parametrize("with_long_indices, prefix", [
    (True, SHORT_TOKENS + MID_TOKENS + LONG_TOKENS),
    (False, SHORT_TOKENS + MID_TOKENS),  # long history latents without their indices: the model does not pack them
])
def test_history_prefix_full_density_reproduces_and_sparse_layers_match_the_oracle(with_long_indices, prefix):
    transformer = tiny_helios()
    assert find_family(transformer).name == "helios"
    recorder = full_and_sparse(lambda controller: call_patched(transformer, inputs(with_long_indices), controller)[0])
    assert {(c.q.shape[0], c.q.shape[2], c.layout.grid, c.layout.prefix_tokens, c.layout.text_tokens)
            for c, _ in recorder.calls} == {(2, prefix + 2 * 16 * 15, GRID, prefix, 0)}
    assert {c.layer for c, _ in recorder.calls} == {0, 1}
    check_against_oracle(recorder)
    check_dense_outside_the_grid(recorder)


#: variant -> latent grids of its calls (Wan's VAE: 9 frames -> 3 latent frames, 256 px -> 32 x 32, patch 2).
PIPELINE_GRIDS = {"t2v": {(3, 16, 16)}, "i2v": {(3, 16, 16)}, "pyramid": {(3, 8, 8), (3, 16, 16)}}
#: History before every chunk: long 3 frames padded to 4 -> 1 x 4 x 4, mid 1 frame padded to 2 -> 1 x 8 x 8, short
#: (first-frame slot + 1) 2 x 16 x 16, at full resolution in both pyramid stages.
PIPELINE_PREFIX = 4 * 4 + 8 * 8 + 2 * 16 * 16


@pytest.mark.parametrize("variant", sorted(PIPELINE_GRIDS))
def test_pipelines_run_sparse_and_match_the_oracle(variant):
    pipe, call = tiny_pipeline("helios", variant=variant), tiny_call("helios", variant)

    def run(controller):
        generator = torch.Generator().manual_seed(0)
        return call_patched(pipe, dict(call, output_type="latent", generator=generator), controller).frames

    recorder = full_and_sparse(run)
    assert recorder.inner.stats["sparse_calls"] == len(recorder.calls) > 0
    assert {(c.layout.grid, c.layout.prefix_tokens) for c, _ in recorder.calls} == {
        (grid, PIPELINE_PREFIX) for grid in PIPELINE_GRIDS[variant]}
    check_against_oracle(recorder)
    check_dense_outside_the_grid(recorder)
