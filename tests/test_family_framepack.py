"""Framepack (`HunyuanVideoFramepackTransformer3DModel`) on HunyuanVideo's adapter: history tokens at three scales
packed before the video are the layout's prefix, the SigLIP image and text tokens after it its text.

A batch of two with different valid text lengths (the key-padding path) and history latents whose 2x and 4x parts
do not fill whole patches (the model pads them): at full density through vidsparse's kernel the output is the
unpatched one; sparse, every layer equals masked float64 attention with the same plan, the prefix and text rows and
columns are kept whole and the video part is the plan of the grid alone; the same through the Triton kernel. The
pipeline's default sampling is tested in test_family_pipelines.py, its F1 (vanilla) sampling here.
"""

from __future__ import annotations

import torch
from family_checks import call_patched, full_and_sparse
from test_patch import SPARSE, Recorder, check_against_oracle

from vidsparse import VideoLayout
from vidsparse.controller import DenseSchedule, SparseController, StrategyPolicy
from vidsparse.families import find_family
from vidsparse.strategies import get

#: Latent [F, H, W] of the video (patch 2: grid 2 x 16 x 15) and of each history input.
VIDEO, CLEAN, HISTORY_2X, HISTORY_4X = (2, 32, 30), (2, 32, 30), (3, 32, 30), (5, 32, 30)
GRID = (2, 16, 15)
#: clean: patch (1, 2, 2), 2 x 16 x 15; 2x: padded to (4, 32, 32), patch (2, 4, 4): 2 x 8 x 8; 4x: padded to
#: (8, 32, 32), patch (4, 8, 8): 2 x 4 x 4.
PREFIX = 2 * 16 * 15 + 2 * 8 * 8 + 2 * 4 * 4
IMAGE_TOKENS, TEXT_LENGTH, VALID_TEXT = 4, 12, (5, 9)


def tiny_framepack():
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    torch.manual_seed(0)
    return HunyuanVideoFramepackTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1, num_single_layers=1,
        num_refiner_layers=1, text_embed_dim=32, pooled_projection_dim=16, rope_axes_dim=(4, 6, 6),
        has_image_proj=True, image_proj_dim=16, has_clean_x_embedder=True,
    ).eval()


def inputs() -> dict:
    generator = torch.Generator().manual_seed(1)
    latent = {name: torch.randn(2, 4, *shape, generator=generator) for name, shape in (
        ("hidden_states", VIDEO), ("latents_clean", CLEAN), ("latents_history_2x", HISTORY_2X),
        ("latents_history_4x", HISTORY_4X))}
    # Frame indices as the pipeline lays them out: [start image, ..., video, 1x, 2x, 4x history].
    indices = torch.arange(1 + VIDEO[0] + 1 + HISTORY_2X[0] + HISTORY_4X[0])
    video, clean, history_2x, history_4x = indices[1:3], indices[[0, 3]], indices[4:7], indices[7:]
    return dict(
        **latent, timestep=torch.tensor([500.0, 500.0]),
        encoder_hidden_states=torch.randn(2, TEXT_LENGTH, 32, generator=generator),
        encoder_attention_mask=(torch.arange(TEXT_LENGTH)[None] < torch.tensor(VALID_TEXT)[:, None]).long(),
        pooled_projections=torch.randn(2, 16, generator=generator),
        image_embeds=torch.randn(2, IMAGE_TOKENS, 16, generator=generator), guidance=torch.tensor([6000.0] * 2),
        indices_latents=video, indices_latents_clean=clean, indices_latents_history_2x=history_2x,
        indices_latents_history_4x=history_4x, return_dict=False,
    )


def run(transformer, controller=None) -> torch.Tensor:
    return call_patched(transformer, inputs(), controller)[0]


def check_dense_outside_the_grid(recorder: Recorder) -> None:
    """Every recorded call's token mask keeps the rows and columns outside the video's range of the model's order
    (prefix, text) whole, and its video part is the plan of a layout holding the grid alone."""
    for call, _ in recorder.calls:
        layout = call.layout
        strategies = recorder.inner.policy.strategies(call.step, call.num_steps, call.layer, call.q.shape[1])
        mask = recorder.inner.plan(layout, strategies, call.q, call.k).to_dense_mask()
        video = torch.zeros(layout.seq_len, dtype=torch.bool)
        video[layout.video_offset : layout.video_offset + layout.num_video_tokens] = True
        assert bool(mask[..., ~video, :].all()) and bool(mask[..., :, ~video].all())
        alone = VideoLayout(*layout.grid, tile=layout.tile)
        expected = recorder.inner.plan(alone, strategies, call.q[:, :, video], call.k[:, :, video]).to_dense_mask()
        assert torch.equal(mask[..., video, :][..., video], expected.expand_as(mask[..., video, :][..., video]))


def test_history_prefix_full_density_reproduces_and_sparse_layers_match_the_oracle():
    transformer = tiny_framepack()
    assert find_family(transformer).name == "hunyuan"
    recorder = full_and_sparse(lambda controller: run(transformer, controller))
    # Each entry alone, trimmed to its valid keys: the history, the video, 4 image tokens and its valid text.
    assert {(c.q.shape[0], c.layout.prefix_tokens, c.layout.text_tokens) for c, _ in recorder.calls} == {
        (1, PREFIX, IMAGE_TOKENS + valid) for valid in VALID_TEXT}
    assert {(c.layout.grid, c.layout.text_position) for c, _ in recorder.calls} == {(GRID, "suffix")}
    assert {c.layer for c, _ in recorder.calls} == {0, 1}
    check_against_oracle(recorder)
    check_dense_outside_the_grid(recorder)


def test_vanilla_sampling_packs_the_same_history():
    """Framepack F1's sampling (`vanilla`: history before the window, frames generated forwards) through the
    pipeline: 16 + 2 + 1 history frames behind the start image, the same 640 prefix tokens (the default sampling runs
    in test_family_pipelines.py)."""
    from vidsparse.testing.pipeline_classes import tiny_pipeline_of

    pipe, call = tiny_pipeline_of("HunyuanVideoFramepackPipeline")
    call.update(sampling_type="vanilla")

    def run_pipeline(controller):
        generator = torch.Generator().manual_seed(0)
        frames = call_patched(pipe, dict(call, output_type="latent", generator=generator), controller).frames
        return torch.cat([f.flatten() for f in frames])

    recorder = full_and_sparse(run_pipeline)
    assert {(c.layout.grid, c.layout.prefix_tokens) for c, _ in recorder.calls} == {((2, 16, 16), 640)}
    check_against_oracle(recorder)
    check_dense_outside_the_grid(recorder)


def test_triton_kernel_with_the_history_prefix():
    """The same call through the Triton kernel (interpreted on CPU; `auto` picks it on CUDA) matches the oracle."""
    recorder = Recorder(SparseController(StrategyPolicy(get(SPARSE[0], **SPARSE[1]), DenseSchedule(0, frozenset())),
                                         backend="triton"))
    run(tiny_framepack(), recorder)
    assert recorder.inner.stats["calls_by_backend"] == {"vidsparse:triton": 4}
    check_against_oracle(recorder)
