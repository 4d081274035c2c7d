"""Wan family adapter on the classes built on Wan's blocks: VACE's control branch and two VACE experts, SkyReels V2's
masked diffusion forcing. (Every Wan-family pipeline class runs sparse in test_family_pipelines.py.)"""

from __future__ import annotations

import warnings

import pytest
import torch
from test_patch import check_against_oracle, sparse_recorder

from vidsparse.families import find_family
from vidsparse.patch import DenseFallbackWarning, inspect_model, install, uninstall
from vidsparse.testing.pipeline_classes import tiny_pipeline_of
from vidsparse.testing.pipelines import _WAN_TRANSFORMER


def test_vace_numbers_base_blocks_first_then_control_blocks():
    """Layer i < num_layers is base block i (as in a plain Wan model); the control branch's blocks follow."""
    pipe, _ = tiny_pipeline_of("WanVACEPipeline")
    transformer = pipe.transformer
    modules = find_family(transformer).attention_modules(transformer)
    expected = [block.attn1 for block in transformer.blocks] + [block.attn1 for block in transformer.vace_blocks]
    assert all(a is b for a, b in zip(modules, expected, strict=True))
    assert inspect_model(pipe).num_layers == len(transformer.blocks) + len(transformer.vace_blocks)


def test_vace_control_branch_attends_over_the_video_grid():
    """The control latents (padded to the video's token count) are self-attended with the same grid and plan."""
    pipe, call = tiny_pipeline_of("WanVACEPipeline")
    recorder = sparse_recorder()
    install(pipe, recorder)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DenseFallbackWarning)
            pipe(**call, output_type="latent", generator=torch.Generator().manual_seed(0))
    finally:
        uninstall(pipe)
    base = len(pipe.transformer.blocks)
    control = [c for c, _ in recorder.calls if c.layer >= base]
    assert {c.layer for c in control} == set(range(base, base + len(pipe.transformer.vace_blocks)))
    assert {c.layout.grid for c, _ in recorder.calls} == {(4, 8, 8)}
    check_against_oracle(recorder)


def test_skyreels_block_causal_diffusion_forcing_runs_dense_with_one_warning():
    """causal_block_size > 1 masks attention block-causally over frames, which a sparse plan does not represent yet:
    those calls keep the model's kernel and mask (the output is unchanged) and warn once."""
    from diffusers import SkyReelsV2Transformer3DModel

    torch.manual_seed(0)
    transformer = SkyReelsV2Transformer3DModel(**_WAN_TRANSFORMER, num_frame_per_block=2).eval()
    generator = torch.Generator().manual_seed(1)
    inputs = dict(
        hidden_states=torch.randn(1, 4, 4, 16, 16, generator=generator),
        timestep=torch.tensor([[900, 900, 700, 700]]), enable_diffusion_forcing=True,
        encoder_hidden_states=torch.randn(1, 8, _WAN_TRANSFORMER["text_dim"], generator=generator), return_dict=False,
    )
    with torch.no_grad():
        expected = transformer(**inputs)[0]
    install(transformer, sparse_recorder())
    try:
        with torch.no_grad(), pytest.warns(DenseFallbackWarning, match="not a boolean key-padding mask") as caught:
            out = transformer(**inputs)[0]
    finally:
        uninstall(transformer)
    assert len([w for w in caught if issubclass(w.category, DenseFallbackWarning)]) == 1
    torch.testing.assert_close(out, expected)


def test_vace_with_two_experts_numbers_each_transformer_in_turn():
    """Wan 2.2 VACE (A14B-like): `transformer` (base + control blocks) then `transformer_2`; the high-noise expert
    runs the steps above the boundary (timesteps >= 875 of 1000), the low-noise one the rest."""
    from diffusers import WanVACEPipeline, WanVACETransformer3DModel

    base, call = tiny_pipeline_of("WanVACEPipeline")
    torch.manual_seed(1)
    expert = WanVACETransformer3DModel(**_WAN_TRANSFORMER, vace_layers=[0, 1],
                                       vace_in_channels=base.transformer.config.vace_in_channels).eval()
    pipe = WanVACEPipeline(**{**base.components, "transformer_2": expert}, boundary_ratio=0.875)
    pipe.set_progress_bar_config(disable=True)
    info = inspect_model(pipe)
    assert info.layers_per_transformer == (4, 4) and info.first_layers == (0, 4)
    recorder = sparse_recorder()
    install(pipe, recorder)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DenseFallbackWarning)
            pipe(**{**call, "num_inference_steps": 4}, output_type="latent", generator=torch.Generator().manual_seed(0))
    finally:
        uninstall(pipe)
    by_step: dict = {}
    for c, _ in recorder.calls:
        by_step.setdefault(c.step, set()).add(c.layer)
    assert by_step[0] == {0, 1, 2, 3} and by_step[3] == {4, 5, 6, 7}
    assert all(layers in ({0, 1, 2, 3}, {4, 5, 6, 7}) for layers in by_step.values())
    check_against_oracle(recorder)
