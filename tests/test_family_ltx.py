"""LTX family adapter: the grid from token coordinates (LTXConditionPipeline, long multi-prompt, LTX-2) and LTX-2's
video stream sparse beside its dense audio stream.

Expected grids are built by hand with the pipelines' coordinate conventions (LTX: pixel coordinates with the causal
first-frame shift, time divided by the frame rate; LTX-2: [start, end) bounds per patch).
"""

from __future__ import annotations

import pytest
import torch
from family_checks import call_patched
from test_patch import Recorder, check_against_oracle, sparse_recorder

from vidsparse.controller import DenseSchedule, SparseController, StrategyPolicy
from vidsparse.families.ltx import grid_from_token_coords
from vidsparse.patch import DenseFallbackWarning, install, uninstall
from vidsparse.strategies import get


def ltx_coords(frames: int, height: int, width: int, *, frame_index: int = 0, frame_rate: float = 25.0):
    """[1, 3, F*H*W] coordinates as LTXConditionPipeline builds them (32x spatial, 8x temporal VAE)."""
    f, h, w = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij")
    coords = torch.stack([f * 8, h * 32, w * 32]).reshape(1, 3, -1).float()
    coords[:, 0] = ((coords[:, 0] + 1 - 8).clamp(min=0) + frame_index) / frame_rate
    return coords


def test_grid_from_coords_of_the_condition_pipeline():
    assert grid_from_token_coords(ltx_coords(3, 8, 6)) == (3, 8, 6)
    # A condition video's 2 latent frames at frame 8, prepended: planned as the first frames of one grid.
    extra = torch.cat([ltx_coords(2, 8, 6, frame_index=8), ltx_coords(3, 8, 6)], dim=2)
    assert grid_from_token_coords(extra) == (5, 8, 6)
    # LTX-2's [start, end) bounds.
    bounds = torch.stack([ltx_coords(3, 4, 5), ltx_coords(3, 4, 5) + 1], dim=-1)
    assert grid_from_token_coords(bounds) == (3, 4, 5)


def test_grid_from_coords_refuses_tokens_off_a_raster():
    coords = ltx_coords(3, 8, 6)
    assert grid_from_token_coords(coords[:, :, torch.randperm(coords.shape[2])]) is None  # not row-major
    assert grid_from_token_coords(coords[:, :, :-5]) is None  # a partial frame
    # A reference at half the resolution appended: its rows and columns are not the video's raster.
    half = ltx_coords(1, 4, 3)
    half[:, 1:] *= 2
    assert grid_from_token_coords(torch.cat([coords, half], dim=2)) is None


# ----- LTX-2: video self-attention sparse, audio dense ---------------------------------------------------------
GRID = (3, 8, 8)
AUDIO_TOKENS = 20


def tiny_ltx2(**config):
    from diffusers import LTX2VideoTransformer3DModel

    torch.manual_seed(0)
    return LTX2VideoTransformer3DModel(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=16,
        cross_attention_dim=32, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
        audio_attention_head_dim=8, audio_cross_attention_dim=16, num_layers=2, caption_channels=16,
        rope_double_precision=False, rope_type="split", **config,
    ).eval()


def ltx2_inputs(transformer, *, sizes: bool = True) -> dict:
    generator = torch.Generator().manual_seed(1)
    tokens = GRID[0] * GRID[1] * GRID[2]
    inputs = dict(
        hidden_states=torch.randn(2, tokens, 4, generator=generator),
        audio_hidden_states=torch.randn(2, AUDIO_TOKENS, 4, generator=generator),
        encoder_hidden_states=torch.randn(2, 7, 16, generator=generator),
        audio_encoder_hidden_states=torch.randn(2, 7, 16, generator=generator),
        timestep=torch.tensor([500.0, 500.0]), audio_num_frames=AUDIO_TOKENS, return_dict=False,
    )
    if sizes:
        inputs.update(num_frames=GRID[0], height=GRID[1], width=GRID[2])
    else:  # only the token coordinates, as the DFR pipelines pass them
        inputs["video_coords"] = transformer.rope.prepare_video_coords(2, *GRID, torch.device("cpu"))
    return inputs


def run(transformer, inputs, controller=None):
    return call_patched(transformer, inputs, controller, no_grad=torch.inference_mode)


#: LTX-2.3's per-head output gates and spatio-temporal guidance (STG: block 1's self-attention replaced by its values
#: for the batch entries the perturbation mask zeroes) act outside the attention kernel.
STG = dict(config=dict(gated_attn=True, perturbed_attn=True),
           inputs=dict(spatio_temporal_guidance_blocks=[1], perturbation_mask=torch.tensor([1.0, 0.0])[:, None, None]))


@pytest.mark.parametrize("sizes, variant", [(True, {}), (False, {}), (True, STG)], ids=["sizes", "coords", "stg"])
def test_ltx2_video_stream_sparse_audio_dense(sizes, variant):
    transformer = tiny_ltx2(**variant.get("config", {}))
    with torch.inference_mode():  # the coordinates as an inference-mode pipeline makes them
        inputs = {**ltx2_inputs(transformer, sizes=sizes), **variant.get("inputs", {})}
    video, audio = run(transformer, inputs)
    # Full density through vidsparse's kernel: both streams exactly the model's.
    full = Recorder(SparseController(StrategyPolicy(get("neighborhood", window=64), DenseSchedule(0, frozenset()))))
    for out, expected in zip(run(transformer, inputs, full), (video, audio)):
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    recorder = sparse_recorder()
    sparse_video, _ = run(transformer, inputs, recorder)
    # Only the video attn1 of each block reached vidsparse: the audio and cross-modal attentions stayed dense.
    assert sorted(call.layer for call, _ in recorder.calls) == [0, 1]
    assert {call.layout.grid for call, _ in recorder.calls} == {GRID}
    assert not torch.allclose(sparse_video, video, atol=1e-4)
    check_against_oracle(recorder)


def test_ltx2_ic_lora_mask_runs_dense_with_one_warning():
    """The IC-LoRA self-attention mask is additive and arbitrary: those calls keep the model's own kernel."""
    transformer = tiny_ltx2()
    inputs = ltx2_inputs(transformer)
    tokens = inputs["hidden_states"].shape[1]
    inputs["video_self_attention_mask"] = (torch.rand(2, tokens, tokens, generator=torch.Generator().manual_seed(2)) > 0.3).float()
    expected = run(transformer, inputs)
    install(transformer, sparse_recorder())
    try:
        with torch.no_grad(), pytest.warns(DenseFallbackWarning) as caught:
            out = transformer(**inputs)
    finally:
        uninstall(transformer)
    assert len([w for w in caught if issubclass(w.category, DenseFallbackWarning)]) == 1
    for a, b in zip(out, expected):
        torch.testing.assert_close(a, b)
