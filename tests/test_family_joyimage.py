"""JoyImage Edit (`JoyImageEditTransformer3DModel`): items laid out as frames, text last.

The bare transformer on an edit call as `JoyImageEditPipeline` makes it: a batch of two, two items [reference image,
image being generated] of one latent frame each, 32 x 30 latent pixels (patch 2: grid 2 x 16 x 15), and 12 text
tokens. At full density through vidsparse's kernel the output is the unpatched one; sparse, every layer equals masked
float64 attention with the same plan, with the text tokens last. A 5-D latent (which the transformer also takes: one
image) has the grid of that frame.

The pipeline itself (its Qwen3-VL encoder and processor left out: the call passes prompt embeddings) always works at
its ~1024 px resolution buckets, a grid of 2 x 64 x 64 for an edit: too large for the float64 oracle on a CPU, so there
it runs sparse without fallback on that grid and reproduces the unpatched output at full density.
"""

from __future__ import annotations

import pytest
import torch
from family_checks import call_patched, full_and_sparse, run_sparse
from test_patch import check_against_oracle

from vidsparse.families import find_family

TEXT = 12


def tiny_joyimage():
    from diffusers import JoyImageEditTransformer3DModel

    torch.manual_seed(0)
    return JoyImageEditTransformer3DModel(
        patch_size=[1, 2, 2], in_channels=4, hidden_size=32, num_attention_heads=2, text_dim=32, num_layers=2,
        rope_dim_list=[4, 6, 6],
    ).eval()


@pytest.mark.parametrize("latent_shape, grid", [
    ((2, 2, 4, 1, 32, 30), (2, 16, 15)),  # edit: [B, N items, C, T, H, W]
    ((2, 4, 1, 64, 64), (1, 32, 32)),  # text-to-image: [B, C, T, H, W] (larger: one frame of several tiles)
])
def test_items_as_frames_full_density_reproduces_and_sparse_layers_match_the_oracle(latent_shape, grid):
    transformer = tiny_joyimage()
    assert find_family(transformer).name == "joyimage"
    generator = torch.Generator().manual_seed(1)
    inputs = dict(hidden_states=torch.randn(*latent_shape, generator=generator), timestep=torch.tensor([500.0] * 2),
                  encoder_hidden_states=torch.randn(2, TEXT, 32, generator=generator), return_dict=False)
    recorder = full_and_sparse(lambda controller: call_patched(transformer, inputs, controller)[0])
    assert {(c.layout.grid, c.layout.text_tokens, c.layout.text_position) for c, _ in recorder.calls} == {
        (grid, TEXT, "suffix")}
    assert {c.layer for c, _ in recorder.calls} == {0, 1}
    check_against_oracle(recorder)


def tiny_edit_pipeline():
    from diffusers import FlowMatchEulerDiscreteScheduler, JoyImageEditPipeline

    from vidsparse.testing.pipelines import _wan_vae, conditioning_image

    pipe = JoyImageEditPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=_wan_vae().eval(), text_encoder=None,
                                tokenizer=None, transformer=tiny_joyimage(), processor=None)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(2)
    call = dict(image=conditioning_image(256, 256), height=256, width=256, num_inference_steps=2, guidance_scale=3.0)
    for prefix in ("", "negative_"):
        call[f"{prefix}prompt_embeds"] = torch.randn(1, TEXT, 32, generator=generator)
        call[f"{prefix}prompt_embeds_mask"] = torch.ones(1, TEXT, dtype=torch.long)
    return pipe, call


def test_edit_pipeline_runs_sparse_on_its_bucket_grid():
    pipe, call = tiny_edit_pipeline()
    assert run_sparse(pipe, call)["sparse_calls"] == 2 * 2 * 2  # steps x CFG branches x layers

    def run(controller):
        torch.manual_seed(0)  # the pipeline samples the reference image's VAE posterior from the global RNG
        generator = torch.Generator().manual_seed(0)
        return call_patched(pipe, dict(call, output_type="latent", generator=generator), controller).images

    recorder = full_and_sparse(run)
    # 256 px asks for the square 1024 px bucket: Wan's VAE 8x, patch 2 -> 64 x 64, 2 items.
    assert {(c.layout.grid, c.layout.text_tokens) for c, _ in recorder.calls} == {((2, 64, 64), TEXT)}
