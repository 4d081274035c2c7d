"""Every diffusers modular pipeline class of a supported family runs sparse under `vidsparse.patch(pipe)`.

A modular pipeline keeps its components as attributes (`pipe.transformer`, `pipe.transformer_2`, `pipe.scheduler`)
like a classic one, and its denoise blocks call `scheduler.set_timesteps` and `scheduler.step` on that scheduler, so
the same installation applies. For each class, a tiny pipeline (`vidsparse.testing.modular_pipelines`, 2 steps with
classifier-free guidance through the guider), and for the auto blocks of LTX and LTX-2 also their other workflows
(text-to-video, image-to-video, conditions, in-context reference video):
1. patched at full density through vidsparse's kernel, its latents are the unpatched pipeline's;
2. patched sparse with one dense warm-up step: no DenseFallbackWarning, every call on the expected grid, the step
   counter sees steps 0 and 1 of 2 (Echo, without a scheduler: 0 to 7 of an unknown number) with the same calls in
   each (every guider branch, every layer of the expert that runs), step 0 dense and the later ones sparse, and each
   sparse layer equals float64 attention masked by its plan;
3. unpatched, processors, hooks and scheduler are the originals and the output is bitwise the unpatched one.
"""

from __future__ import annotations

import collections

import pytest
import torch
from family_checks import call_patched
from test_patch import SPARSE, check_against_oracle, sparse_recorder

import vidsparse
from vidsparse.controller import DenseSchedule, SparseController, StrategyPolicy
from vidsparse.patch import PatchError, inspect_model, install, installed_controller, uninstall
from vidsparse.runtime import BypassWarning
from vidsparse.strategies import get
from vidsparse.support import describe_support
from vidsparse.testing.modular_pipelines import modular_pipeline_classes
from vidsparse.testing.pipeline_classes import _frames, tiny_pipeline_of

#: class -> latent token grid of its tiny call, from the call's sizes and the VAE / patch factors.
GRIDS = {
    # Wan VAE 4x in time, 8x in space, patch (1, 2, 2): 9 frames at 128 px -> 3 x 8 x 8.
    "WanModularPipeline": (3, 8, 8),
    "WanImage2VideoModularPipeline": (3, 8, 8),
    "Wan22ModularPipeline": (3, 8, 8),
    "Wan22Image2VideoModularPipeline": (3, 8, 8),
    "Wan22VaceModularPipeline": (4, 8, 8),  # the reference image is one more latent frame, before the video
    # LTX VAE 8x in time, 32x in space: 17 frames at 256 px -> 3 x 8 x 8.
    "LTXModularPipeline": (3, 8, 8),
    # Tiny LTX-2 VAE 2x in time and space: 9 frames at 32 px -> 5 x 16 x 16 (audio tokens stay dense).
    "LTX2ModularPipeline": (5, 16, 16),
    "LTX25ModularPipeline": (5, 16, 16),
    "EchoModularPipeline": (7, 16, 16),  # + the 2 memory images' latent frames, before the generated ones
    # Tiny HunyuanVideo 1.5 VAE 2x in time, 4x in space: 9 frames at 64 px -> 5 x 16 x 16.
    "HunyuanVideo15ModularPipeline": (5, 16, 16),
}



def _ltx2_workflow(workflow: str) -> dict:
    """The inputs that make the LTX-2 auto blocks run `workflow` (the tiny call is text-to-video), as for the classic
    LTX-2 pipeline classes: crf 0, no H.264 re-compression (it needs PyAV)."""
    from diffusers.pipelines.ltx2 import pipeline_ltx2_condition, pipeline_ltx2_ic_lora

    if workflow == "image2video":
        return dict(image=_frames(1, 32)[0], image_crf=0)
    if workflow == "condition":  # an image at frame 0 and a keyframe at index 3 (one latent frame, appended)
        return dict(conditions=[pipeline_ltx2_condition.LTX2VideoCondition(frames=image, index=index, crf=0)
                                for image, index in zip(_frames(2, 32), (0, 3))])
    return dict(reference_conditions=[pipeline_ltx2_ic_lora.LTX2ReferenceCondition(frames=_frames(5, 32))])


#: (class, workflow of its auto blocks) -> (how the call changes, grid) beyond each class's tiny call.
WORKFLOWS = {
    ("LTXModularPipeline", "text2video"): (lambda call: {k: v for k, v in call.items() if k != "image"}, (3, 8, 8)),
    ("LTX2ModularPipeline", "image2video"): (lambda call: {**call, **_ltx2_workflow("image2video")}, (5, 16, 16)),
    ("LTX2ModularPipeline", "condition"): (lambda call: {**call, **_ltx2_workflow("condition")}, (6, 16, 16)),
    # + the 5 reference frames (the tiny VAE encodes them 1:1 in time), appended
    ("LTX2ModularPipeline", "in_context"): (lambda call: {**call, **_ltx2_workflow("in_context")}, (10, 16, 16)),
    ("LTX25ModularPipeline", "image2video"): (lambda call: {**call, **_ltx2_workflow("image2video")}, (5, 16, 16)),
}
CASES = [(name, None) for name in sorted(GRIDS)] + sorted(WORKFLOWS)

#: class -> transformer calls per denoising step: the guider's conditions (LTX-2's guider runs 4 passes; Echo has none).
BRANCHES = {"LTX2ModularPipeline": 4, "LTX25ModularPipeline": 4, "EchoModularPipeline": 1}

#: class -> (steps, number of steps the counter reports). Echo has no scheduler: its steps are counted from the
#: transformer's timestep input, and their number is unknown (None), as for a bare transformer.
STEPS = {"EchoModularPipeline": (8, None)}

#: A neighborhood window wider than any tiny grid: every block kept, computed by vidsparse's kernel.
FULL = ("neighborhood", {"window": 64})


def _latents(pipe, call, controller=None) -> torch.Tensor:
    """The call's latents, patched with `controller` for the call if given (DenseFallbackWarning is an error)."""
    return call_patched(pipe, {**call, "generator": torch.Generator().manual_seed(0), "output": "latents"}, controller)


def _state(pipe) -> tuple:
    """What patching changes: every attention processor, the transformers' forward pre-hooks, the scheduler's own
    methods (its instance attributes that are callables)."""
    transformers = [getattr(pipe, name, None) for name in ("transformer", "transformer_2")]
    transformers = [t for t in transformers if t is not None]
    processors = [m.processor for t in transformers for m in t.modules() if hasattr(m, "processor")]
    hooks = [dict(t._forward_pre_hooks) for t in transformers]
    scheduler = getattr(pipe, "scheduler", None)
    return processors, hooks, {key for key, value in vars(scheduler or object).items() if callable(value)}


def test_every_modular_pipeline_class_is_covered():
    assert modular_pipeline_classes() == sorted(GRIDS)


@pytest.mark.parametrize("name, workflow", CASES, ids=[f"{n}-{w}" if w else n for n, w in CASES])
def test_modular_pipeline_runs_sparse_counts_steps_and_unpatches(name, workflow):
    pipe, call = tiny_pipeline_of(name)
    grid = GRIDS[name]
    if workflow is not None:
        change, grid = WORKFLOWS[name, workflow]
        call = change(call)
    report = describe_support(pipe)  # what `vidsparse inspect-model` prints, before anything runs
    assert report.supported and sum(group.count for group in report.sparse) == inspect_model(pipe).num_layers
    before = _state(pipe)
    reference = _latents(pipe, call)

    full = SparseController(StrategyPolicy(get(FULL[0], **FULL[1]), DenseSchedule(0, frozenset())))
    torch.testing.assert_close(_latents(pipe, call, full), reference, rtol=1e-4, atol=1e-5)
    assert full.stats["sparse_calls"] > 0 and full.stats["dense_calls"] == 0

    recorder = sparse_recorder(SPARSE, warmup=1)
    out = _latents(pipe, call, recorder)
    assert torch.isfinite(out).all() and not torch.allclose(out, reference, atol=1e-4)
    calls = [c for c, _ in recorder.calls]
    assert {c.layout.grid for c in calls} == {grid}
    steps, num_steps = STEPS.get(name, (2, 2))
    per_step = collections.Counter(c.step for c in calls)
    assert set(per_step) == set(range(steps)) and {c.num_steps for c in calls} == {num_steps}
    info = inspect_model(pipe)
    # Every layer of the expert that runs the step (Wan 2.2: `transformer`, then `transformer_2`), once per branch.
    for step in range(steps):
        layers = collections.Counter(c.layer for c in calls if c.step == step)
        assert len(set(layers.values())) == 1 and set(layers.values()) == {BRANCHES.get(name, 2)}
        expert = min(step, len(info.layers_per_transformer) - 1)
        first = info.first_layers[expert]
        assert set(layers) == set(range(first, first + info.layers_per_transformer[expert]))
    assert recorder.inner.stats["dense_calls"] == per_step[0]
    assert recorder.inner.stats["sparse_calls"] == len(calls) - per_step[0] > 0
    check_against_oracle(recorder)

    assert _state(pipe) == before
    assert torch.equal(_latents(pipe, call), reference)


def test_patch_through_vidsparse_patch_with_defaults():
    """`vidsparse.patch(pipe)` as a user calls it: default strategy, dense warm-up and first layer, then sparse."""
    pipe, call = tiny_pipeline_of("WanModularPipeline")
    controller = vidsparse.patch(pipe)
    try:
        _latents(pipe, call)  # DenseFallbackWarning is an error
    finally:
        vidsparse.unpatch(pipe)
    # 2 steps x 2 branches x 2 layers: step 0 (warm-up) and layer 0 dense, layer 1 of step 1 sparse.
    assert controller.stats["sparse_calls"] == 2 and controller.stats["dense_calls"] == 6


def test_modular_pipeline_without_a_loaded_transformer_is_refused():
    from diffusers.modular_pipelines import WanBlocks

    pipe = WanBlocks().init_pipeline()  # components declared by the blocks, none loaded
    with pytest.raises(PatchError, match="transformer of this WanModularPipeline is not loaded"):
        vidsparse.patch(pipe)
    with pytest.raises(ValueError, match="is not loaded"):
        describe_support(pipe)


def test_transformer_replaced_after_patch_warns_and_is_unpatched_through_the_patched_one():
    pipe, call = tiny_pipeline_of("WanModularPipeline")
    patched, before = pipe.transformer, _state(pipe)
    vidsparse.patch(pipe, strategy=SPARSE)
    pipe.update_components(transformer=type(patched)(**patched.config).eval())
    with pytest.warns(BypassWarning, match="the transformer of this WanModularPipeline was loaded or replaced"):
        _latents(pipe, call)
    with pytest.raises(PatchError, match="pass the patched transformer to vidsparse.unpatch"):
        vidsparse.unpatch(pipe)
    vidsparse.unpatch(patched)  # removes the whole installation: its processors, its hook and the scheduler's wrappers
    assert installed_controller(patched) is None
    pipe.update_components(transformer=patched)
    assert _state(pipe) == before


def test_second_expert_loaded_after_patch_warns():
    pipe, call = tiny_pipeline_of("Wan22ModularPipeline")
    expert = pipe.transformer_2
    pipe.update_components(transformer_2=None)
    vidsparse.patch(pipe, strategy=SPARSE)
    try:
        pipe.update_components(transformer_2=expert)
        with pytest.warns(BypassWarning, match="the transformer_2 of this Wan22ModularPipeline"):
            _latents(pipe, call)
    finally:
        vidsparse.unpatch(pipe)


def test_pipelines_sharing_components_share_the_installation():
    """Modular pipelines share loaded components (through a ComponentsManager): a second pipeline on the patched
    transformer and scheduler runs sparse with its steps counted, and patching it too is refused."""
    from diffusers.modular_pipelines import ComponentsManager, WanBlocks

    pipe, call = tiny_pipeline_of("WanModularPipeline")
    blocks = WanBlocks()
    blocks.sub_blocks.pop("text_encoder")
    other = blocks.init_pipeline(components_manager=ComponentsManager())
    other.update_components(**{name: pipe.components[name] for name in ("transformer", "scheduler", "vae")})
    recorder = sparse_recorder(SPARSE, warmup=1)
    install(pipe, recorder)
    try:
        with pytest.raises(PatchError, match="already patched"):
            vidsparse.patch(other)
        _latents(other, call)
    finally:
        uninstall(pipe)
    per_step = collections.Counter((c.step, c.num_steps) for c, _ in recorder.calls)
    assert per_step == {(0, 2): 4, (1, 2): 4}  # 2 branches x 2 layers a step
    assert recorder.inner.stats["sparse_calls"] == 4 and recorder.inner.stats["dense_calls"] == 4


def test_echo_needs_an_int_warm_up():
    """Echo has no scheduler, so the number of its steps is unknown: the default fractional warm-up assumes 50 steps
    and says so; `dense_warmup_steps=2` keeps 2 of its 8 steps dense."""
    pipe, call = tiny_pipeline_of("EchoModularPipeline")
    controller = vidsparse.patch(pipe)
    try:
        with pytest.warns(UserWarning, match="number of denoising steps is unknown"):
            _latents(pipe, call)
    finally:
        vidsparse.unpatch(pipe)
    assert controller.stats["sparse_calls"] == 0
    controller = vidsparse.patch(pipe, dense_warmup_steps=2)
    try:
        _latents(pipe, call)
    finally:
        vidsparse.unpatch(pipe)
    # 8 steps x 2 layers: steps 0-1 dense, then layer 0 dense (the default dense first layer) and layer 1 sparse.
    assert controller.stats["dense_calls"] == 2 * 2 + 6 and controller.stats["sparse_calls"] == 6
