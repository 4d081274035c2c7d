"""vidsparse.patch / unpatch on the tiny pipeline of every family (CPU, random weights, nothing downloaded).

The oracle for a patched layer is float64 masked attention built from the plan's dense token mask; the oracle for
the whole pipeline is the unpatched pipeline itself.
"""

from __future__ import annotations

import functools

import pytest
import torch

import vidsparse
from vidsparse.controller import DenseSchedule, SparseController, StrategyPolicy
from vidsparse.families import get_family
from vidsparse.patch import PatchError, inspect_model, install, installed_controller, uninstall
from vidsparse.strategies import get
from vidsparse.testing import TINY_CALL, tiny_pipeline

#: (family, variant) pairs: every tiny pipeline the patch is tested on.
CASES = [("wan", "t2v"), ("wan", "a14b")]
IDS = [f"{family}-{variant}" for family, variant in CASES]

#: Keeps each query tile's own key tile only (plus dense text): sparse on every tiny grid, which spans several tiles.
SPARSE = ("neighborhood", {"window": 1})


@functools.lru_cache(maxsize=None)
def _pipeline(family: str, variant: str):
    return tiny_pipeline(family, variant=variant)


@pytest.fixture(params=CASES, ids=IDS)
def case(request):
    family, variant = request.param
    pipe = _pipeline(family, variant)
    yield family, pipe
    if installed_controller(pipe) is not None:  # a failed test must not leak its patch
        uninstall(pipe)


def run(pipe, family: str, **overrides) -> torch.Tensor:
    kwargs = {**TINY_CALL[family], "output_type": "latent", **overrides}
    generator = torch.Generator().manual_seed(1234)
    return pipe("a red fox running in the snow", generator=generator, **kwargs).frames


def processors(pipe) -> list:
    out = []
    for name in ("transformer", "transformer_2"):
        transformer = getattr(pipe, name, None)
        if transformer is not None:
            out += [module.processor for module in transformer.modules() if hasattr(module, "processor")]
    return out


def masked_attention(q, k, v, plan, scale) -> torch.Tensor:
    """Float64 softmax(q k^T) v over the plan's dense token mask; rows with no key (skipped heads) are zero."""
    q, k, v = q.double(), k.double(), v.double()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~plan.to_dense_mask().to(q.device), float("-inf"))
    return (torch.softmax(scores, dim=-1).nan_to_num(0.0) @ v).float()


class Recorder:
    """A controller wrapper that keeps every call and what the wrapped controller answered."""

    def __init__(self, inner: SparseController) -> None:
        self.inner = inner
        self.calls: list = []

    def __call__(self, call):
        out = self.inner(call)
        self.calls.append((call, out))
        return out


def sparse_recorder(strategy=SPARSE, warmup=0, dense_layers=()) -> Recorder:
    policy = StrategyPolicy(get(strategy[0], **strategy[1]), DenseSchedule(warmup, frozenset(dense_layers)))
    return Recorder(SparseController(policy, backend="reference"))


def check_against_oracle(recorder: Recorder) -> None:
    assert recorder.calls, "no self-attention call reached the controller"
    for call, out in recorder.calls:
        assert call.q.shape == out.shape and call.layout.seq_len == call.q.shape[2]
        strategies = recorder.inner.policy.strategies(call.step, call.num_steps, call.layer, call.q.shape[1])
        if strategies is None:
            torch.testing.assert_close(out, call.dense())
            continue
        plan = recorder.inner.plan(call.layout, strategies, call.q, call.k)
        assert plan.density() < 1.0
        expected = masked_attention(call.q, call.k, call.v, plan, call.scale)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


# ----- the patch reproduces, restores, changes -----------------------------------------------------------------
def test_dense_reproduces_and_unpatch_restores_bitwise(case):
    family, pipe = case
    before = processors(pipe)
    reference = run(pipe, family)
    controller = vidsparse.patch(pipe, strategy="dense")
    assert all(type(p).__name__.startswith("Sparse") for p in processors(pipe) if p not in before)
    dense = run(pipe, family)
    assert controller.stats["dense_calls"] > 0
    torch.testing.assert_close(dense, reference, rtol=1e-5, atol=1e-6)
    vidsparse.unpatch(pipe)
    assert all(a is b for a, b in zip(processors(pipe), before))
    assert torch.equal(run(pipe, family), reference)


def test_sparse_changes_output_and_matches_masked_attention_per_layer(case):
    family, pipe = case
    reference = run(pipe, family)
    recorder = sparse_recorder()
    install(pipe, recorder)
    out = run(pipe, family)
    uninstall(pipe)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, reference, atol=1e-4)
    layers = {call.layer for call, _ in recorder.calls}
    info = inspect_model(pipe)
    # Every patched layer was called (Wan 2.2's two experts split the steps between them: both show up).
    assert layers == set(range(info.num_layers)) or family == "wan" and len(layers) >= info.layers_per_transformer[0]
    check_against_oracle(recorder)


def test_non_divisible_resolution_cfg_and_batch(case):
    family, pipe = case
    call = TINY_CALL[family]
    # Heights/widths that give latent grids no 128-token tile divides, two videos per prompt, and CFG.
    odd = dict(height=call["height"] - 48, width=call["width"] + 16, num_videos_per_prompt=2, guidance_scale=3.0)
    reference = run(pipe, family, **odd)
    vidsparse.patch(pipe, strategy="dense")
    torch.testing.assert_close(run(pipe, family, **odd), reference, rtol=1e-5, atol=1e-6)
    vidsparse.unpatch(pipe)
    recorder = sparse_recorder()
    install(pipe, recorder)
    out = run(pipe, family, **odd)
    uninstall(pipe)
    assert torch.isfinite(out).all() and out.shape == reference.shape
    batches = {call.q.shape[0] for call, _ in recorder.calls}
    assert max(batches) >= 2
    grids = {call.layout.grid for call, _ in recorder.calls}
    assert all(any(n % t for n, t in zip(grid, vidsparse.VideoLayout(*grid).tile)) for grid in grids)
    check_against_oracle(recorder)


def test_step_tracking_and_dense_warmup(case):
    family, pipe = case
    steps = 4
    recorder = sparse_recorder(warmup=0.5)
    install(pipe, recorder)
    run(pipe, family, num_inference_steps=steps, guidance_scale=3.0)
    uninstall(pipe)
    seen = sorted({(call.step, call.num_steps) for call, _ in recorder.calls})
    assert seen == [(s, steps) for s in range(steps)]
    for call, out in recorder.calls:
        if call.step < 2:
            torch.testing.assert_close(out, call.dense())
    assert recorder.inner.stats["dense_calls"] > 0 and recorder.inner.stats["sparse_calls"] > 0
    check_against_oracle(recorder)


def test_patch_defaults_keep_first_layer_and_warmup_dense(case):
    family, pipe = case
    controller = vidsparse.patch(pipe, strategy=SPARSE, dense_warmup_steps=1)
    recorder = Recorder(controller)
    vidsparse.unpatch(pipe)
    install(pipe, recorder)
    run(pipe, family, num_inference_steps=3)
    uninstall(pipe)
    first_layers = set(inspect_model(pipe).first_layers)
    for call, out in recorder.calls:
        dense = call.step == 0 or call.layer in first_layers
        assert recorder.inner.policy.strategies(call.step, call.num_steps, call.layer, call.q.shape[1]) is None or (
            not dense
        )
    assert controller.stats["sparse_calls"] > 0 and controller.stats["dense_calls"] > 0


# ----- errors leave the pipeline as it was -------------------------------------------------------------------
def _untouched(pipe, family, before, reference) -> None:
    assert all(a is b for a, b in zip(processors(pipe), before)) and len(processors(pipe)) == len(before)
    assert installed_controller(pipe) is None
    assert torch.equal(run(pipe, family), reference)


class _FakeProfile:
    """Duck-typed profile (model/schedule/policy) for another model."""

    def __init__(self, family, num_layers, num_heads) -> None:
        self.model = type("Model", (), dict(family=family, num_layers=num_layers, num_heads=num_heads))()
        self.schedule = type("Schedule", (), dict(dense_warmup_steps=0, dense_layers=[]))()

    def policy(self):
        return StrategyPolicy(get("dense"))


def test_errors_leave_pipeline_untouched(case):
    family, pipe = case
    before = processors(pipe)
    reference = run(pipe, family)
    info = inspect_model(pipe)

    with pytest.raises(ValueError, match="num_layers"):
        vidsparse.patch(pipe, _FakeProfile(info.family, info.num_layers + 1, info.num_heads))
    with pytest.raises(ValueError, match="family"):
        vidsparse.patch(pipe, _FakeProfile("other", info.num_layers, info.num_heads))
    with pytest.raises(ValueError, match="dense_layers"):
        vidsparse.patch(pipe, strategy="dense", dense_layers=[info.num_layers])
    with pytest.raises(ValueError, match="strategy"):
        vidsparse.patch(pipe, strategy=42)
    with pytest.raises(PatchError, match="not patched"):
        vidsparse.unpatch(pipe)
    _untouched(pipe, family, before, reference)

    vidsparse.patch(pipe, strategy=SPARSE)
    patched = processors(pipe)
    with pytest.raises(PatchError, match="already patched"):
        vidsparse.patch(pipe, strategy="dense")
    assert all(a is b for a, b in zip(processors(pipe), patched))
    vidsparse.unpatch(pipe)
    _untouched(pipe, family, before, reference)

    # An unknown processor on one layer: nothing at all is patched.
    from diffusers.models.attention_processor import AttnProcessor2_0

    module = get_family(info.family).attention_modules(pipe.transformer)[-1]
    original = module.processor
    module.processor = AttnProcessor2_0()
    try:
        swapped = processors(pipe)
        with pytest.raises(PatchError, match="processor"):
            vidsparse.patch(pipe, strategy="dense")
        assert all(a is b for a, b in zip(processors(pipe), swapped))
    finally:
        module.processor = original
    _untouched(pipe, family, before, reference)


def test_unsupported_model_is_refused():
    class Pipe:
        transformer = torch.nn.Linear(2, 2)

    with pytest.raises(PatchError, match="not supported"):
        vidsparse.patch(Pipe())
    with pytest.raises(PatchError, match="pipeline"):
        vidsparse.patch(object())
    assert not hasattr(Pipe.transformer, "_forward_pre_hooks") or not Pipe.transformer._forward_pre_hooks


def test_bare_transformer_counts_steps_from_timesteps():
    pipe = _pipeline("wan", "t2v")
    recorder = sparse_recorder(warmup=1)
    install(pipe.transformer, recorder)
    try:
        run(pipe, "wan", num_inference_steps=3)
    finally:
        uninstall(pipe.transformer)
    assert sorted({(c.step, c.num_steps) for c, _ in recorder.calls}) == [(0, None), (1, None), (2, None)]
    check_against_oracle(recorder)
