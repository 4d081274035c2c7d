"""vidsparse.patch / unpatch on the tiny pipeline of every family (CPU, random weights, nothing downloaded).

The oracle for a patched layer is float64 masked attention built from the plan's dense token mask; the oracle for
the whole pipeline is the unpatched pipeline itself.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pytest
import torch

import vidsparse
from vidsparse.controller import DenseSchedule, SparseController, StrategyPolicy
from vidsparse.families import get_family
from vidsparse.patch import DenseFallbackWarning, PatchError, default_strategy, inspect_model, install, installed_controller, uninstall
from vidsparse.strategies import get
from vidsparse.testing import tiny_call, tiny_pipeline

#: (family, variant) -> pixels per latent token along height and width (VAE factor x patch size).
CASES = {
    ("wan", "t2v"): 16, ("wan", "a14b"): 16, ("wan", "i2v"): 16, ("wan", "ti2v"): 32, ("hunyuan", None): 16,
    ("cogvideox", "1.0"): 16, ("cogvideox", "1.5"): 16, ("ltx", None): 32, ("mochi", None): 16,
}
IDS = [f"{family}-{variant}" if variant else family for family, variant in CASES]

#: Classifier-free guidance arguments (HunyuanVideo is guidance-distilled: true CFG needs a negative prompt).
CFG = {"hunyuan": dict(true_cfg_scale=2.0, negative_prompt="blurry")}

#: Keeps each query tile's own key tile only (plus dense text): sparse on every tiny grid, which spans several tiles.
SPARSE = ("neighborhood", {"window": 1})


@functools.lru_cache(maxsize=None)
def _pipeline(family: str, variant: str):
    return tiny_pipeline(family, variant=variant)


#: Cases that only run the reproduce/restore and per-layer oracle tests: Wan I2V's transformer path is Wan T2V's,
#: and its pipeline VAE-encodes the conditioning frames on every call (the slowest tiny pipeline by far).
LIGHT = {("wan", "i2v")}


@pytest.fixture(params=list(CASES), ids=IDS)
def case(request):
    yield from _case(request)


@pytest.fixture(params=[c for c in CASES if c not in LIGHT], ids=[i for c, i in zip(CASES, IDS) if c not in LIGHT])
def full_case(request):
    yield from _case(request)


def _case(request):
    family, variant = request.param
    pipe = _pipeline(family, variant)
    yield Case(family, variant, pipe, CASES[request.param])
    if installed_controller(pipe) is not None:  # a failed test must not leak its patch
        uninstall(pipe)


@dataclass
class Case:
    family: str
    variant: str | None
    pipe: object
    unit: int

    def run(self, prompt: str | list[str] = "a red fox running in the snow", **overrides) -> torch.Tensor:
        kwargs = {**tiny_call(self.family, self.variant), "output_type": "latent", **overrides}
        generator = torch.Generator().manual_seed(1234)
        return self.pipe(**prompt_kwargs(self.pipe, prompt, kwargs), generator=generator, **kwargs).frames


def prompt_kwargs(pipe, prompt, kwargs) -> dict:
    """{"prompt": prompt}, or for Wan I2V the T5 embeddings: diffusers 0.42's WanImageToVideoPipeline cleans prompts
    with ftfy unconditionally, and ftfy is not a dependency, so the T2V pipeline's encoder code encodes them."""
    if type(pipe).__name__ != "WanImageToVideoPipeline":
        return {"prompt": prompt}
    from diffusers import WanPipeline

    prompts = [prompt] if isinstance(prompt, str) else prompt
    n, length = kwargs.get("num_videos_per_prompt", 1), kwargs["max_sequence_length"]

    def encode(texts):
        return WanPipeline._get_t5_prompt_embeds(pipe, texts, num_videos_per_prompt=n, max_sequence_length=length)

    return {"prompt_embeds": encode(prompts), "negative_prompt_embeds": encode([""] * len(prompts))}


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
    return Recorder(SparseController(policy))  # backend "auto": what patch() uses


def check_against_oracle(recorder: Recorder) -> None:
    assert recorder.calls, "no self-attention call reached the controller"
    for call, out in recorder.calls:
        assert call.q.shape == out.shape and call.layout.seq_len == call.q.shape[2]
        strategies = recorder.inner.policy.strategies(call.step, call.num_steps, call.layer, call.q.shape[1])
        if strategies is None:
            torch.testing.assert_close(out, call.dense())
            continue
        plan = recorder.inner.plan(call.layout, strategies, call.q, call.k)
        assert plan.useful_density() < 1.0  # sparse: fewer real token pairs (density() counts padding slots too)
        expected = masked_attention(call.q, call.k, call.v, plan, call.scale)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


# ----- the patch reproduces, restores, changes -----------------------------------------------------------------
def test_dense_reproduces_and_unpatch_restores_bitwise(case):
    pipe = case.pipe
    before = processors(pipe)
    reference = case.run()
    controller = vidsparse.patch(pipe, strategy="dense")
    assert all(type(p).__name__.startswith("Sparse") for p in processors(pipe) if p not in before)
    dense = case.run()
    assert controller.stats["dense_calls"] > 0
    torch.testing.assert_close(dense, reference, rtol=1e-5, atol=1e-6)
    vidsparse.unpatch(pipe)
    assert all(a is b for a, b in zip(processors(pipe), before))
    assert torch.equal(case.run(), reference)


def test_sparse_changes_output_and_matches_masked_attention_per_layer(case):
    pipe = case.pipe
    reference = case.run()
    recorder = sparse_recorder()
    install(pipe, recorder)
    out = case.run()
    uninstall(pipe)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, reference, atol=1e-4)
    info = inspect_model(pipe)
    layers = {call.layer for call, _ in recorder.calls}
    if len(info.layers_per_transformer) == 1:
        assert layers == set(range(info.num_layers))
    else:  # Wan 2.2's experts split the steps: the high-noise one runs first
        assert set(range(info.layers_per_transformer[0])) <= layers
    check_against_oracle(recorder)
    check_text(case, recorder)


def check_text(case: Case, recorder: Recorder) -> None:
    """Text tokens in self-attention: where the family puts them, as many as the valid prompt tokens."""
    family = get_family(case.family)
    for call, _ in recorder.calls:
        if family.text_position is None:
            assert call.layout.text_tokens == 0
        else:
            assert 0 < call.layout.text_tokens <= tiny_call(case.family)["max_sequence_length"]
            assert call.layout.text_position == family.text_position


def test_non_divisible_resolution_cfg_and_batch(full_case):
    case = full_case
    pipe, call = case.pipe, tiny_call(case.family)
    # Latent grids no 128-token tile divides, two prompts of different lengths, and classifier-free guidance.
    odd = dict(height=call["height"] - 3 * case.unit, width=call["width"] - case.unit,
               **CFG.get(case.family, dict(guidance_scale=3.0)))
    if case.variant == "ti2v":  # 3 x 5 x 7 tokens fit one packed block: 33 frames (9 latent) make three
        odd["num_frames"] = 33
    prompts = ["a fox", "a red fox running in the snow"]
    reference = case.run(prompts, **odd)
    vidsparse.patch(pipe, strategy="dense")
    torch.testing.assert_close(case.run(prompts, **odd), reference, rtol=1e-5, atol=1e-6)
    vidsparse.unpatch(pipe)
    recorder = sparse_recorder()
    install(pipe, recorder)
    out = case.run(prompts, **odd)
    uninstall(pipe)
    assert torch.isfinite(out).all() and out.shape == reference.shape
    assert not torch.allclose(out, reference, atol=1e-4)
    grids = {call.layout.grid for call, _ in recorder.calls}
    assert all(any(n % t for n, t in zip(grid, vidsparse.VideoLayout(*grid).tile)) for grid in grids)
    if case.family != "mochi":  # Mochi's processor calls attention once per batch entry
        assert max(call.q.shape[0] for call, _ in recorder.calls) >= 2
    check_against_oracle(recorder)
    check_text(case, recorder)


def test_step_tracking_and_dense_warmup(full_case):
    case = full_case
    steps = 4
    recorder = sparse_recorder(warmup=0.5)
    install(case.pipe, recorder)
    case.run(num_inference_steps=steps, **CFG.get(case.family, dict(guidance_scale=3.0)))
    uninstall(case.pipe)
    seen = sorted({(call.step, call.num_steps) for call, _ in recorder.calls})
    assert seen == [(s, steps) for s in range(steps)]
    for call, out in recorder.calls:
        if call.step < 2:
            torch.testing.assert_close(out, call.dense())
    assert recorder.inner.stats["dense_calls"] > 0 and recorder.inner.stats["sparse_calls"] > 0
    check_against_oracle(recorder)


def test_patch_defaults_keep_first_layer_and_warmup_dense(full_case):
    case = full_case
    controller = vidsparse.patch(case.pipe, strategy=SPARSE, dense_warmup_steps=1)
    vidsparse.unpatch(case.pipe)
    recorder = Recorder(controller)
    install(case.pipe, recorder)
    case.run(num_inference_steps=3)
    uninstall(case.pipe)
    first_layers = set(inspect_model(case.pipe).first_layers)
    for call, out in recorder.calls:
        expected_dense = call.step == 0 or call.layer in first_layers
        planned = controller.policy.strategies(call.step, call.num_steps, call.layer, call.q.shape[1])
        assert (planned is None) == expected_dense
    assert controller.stats["sparse_calls"] > 0 and controller.stats["dense_calls"] > 0


# ----- errors leave the pipeline as it was -------------------------------------------------------------------
def _untouched(case: Case, before, reference) -> None:
    assert all(a is b for a, b in zip(processors(case.pipe), before)) and len(processors(case.pipe)) == len(before)
    assert installed_controller(case.pipe) is None
    assert torch.equal(case.run(), reference)


class _FakeProfile:
    """Duck-typed profile (model/schedule/policy) for another model."""

    def __init__(self, family, num_layers, num_heads, **extra) -> None:
        self.model = type("Model", (), dict(family=family, num_layers=num_layers, num_heads=num_heads, **extra))()
        self.schedule = type("Schedule", (), dict(dense_warmup_steps=0, dense_layers=[]))()

    def policy(self):
        return StrategyPolicy(get("dense"))


def test_errors_leave_pipeline_untouched(full_case):
    case = full_case
    pipe = case.pipe
    before = processors(pipe)
    reference = case.run()
    info = inspect_model(pipe)

    with pytest.raises(ValueError, match="num_layers"):
        vidsparse.patch(pipe, _FakeProfile(info.family, info.num_layers + 1, info.num_heads))
    with pytest.raises(ValueError, match="num_heads"):
        vidsparse.patch(pipe, _FakeProfile(info.family, info.num_layers, info.num_heads * 2))
    with pytest.raises(ValueError, match="family"):
        vidsparse.patch(pipe, _FakeProfile("other", info.num_layers, info.num_heads))
    with pytest.raises(ValueError, match="head_dim"):
        vidsparse.patch(pipe, _FakeProfile(info.family, info.num_layers, info.num_heads, head_dim=info.head_dim + 8))
    with pytest.raises(ValueError, match="dense_layers"):
        vidsparse.patch(pipe, strategy="dense", dense_layers=[info.num_layers])
    with pytest.raises(ValueError, match="strategy"):
        vidsparse.patch(pipe, strategy=42)
    with pytest.raises(PatchError, match="not patched"):
        vidsparse.unpatch(pipe)
    _untouched(case, before, reference)

    vidsparse.patch(pipe, strategy=SPARSE)
    patched = processors(pipe)
    with pytest.raises(PatchError, match="already patched"):
        vidsparse.patch(pipe, strategy="dense")
    assert all(a is b for a, b in zip(processors(pipe), patched))
    vidsparse.unpatch(pipe)
    _untouched(case, before, reference)

    # An unknown processor on the last layer: nothing at all is patched.
    from diffusers.models.attention_processor import AttnProcessor2_0

    transformer = getattr(pipe, "transformer_2", None) or pipe.transformer
    module = get_family(info.family).attention_modules(transformer)[-1]
    original = module.processor
    module.processor = AttnProcessor2_0()
    try:
        swapped = processors(pipe)
        with pytest.raises(PatchError, match="processor"):
            vidsparse.patch(pipe, strategy="dense")
        assert all(a is b for a, b in zip(processors(pipe), swapped))
        assert not any(transformer._forward_pre_hooks for transformer in transformers(pipe))
    finally:
        module.processor = original
    _untouched(case, before, reference)


def transformers(pipe) -> list:
    return [t for t in (pipe.transformer, getattr(pipe, "transformer_2", None)) if t is not None]


def test_unsupported_model_is_refused():
    class Pipe:
        transformer = torch.nn.Linear(2, 2)

    with pytest.raises(PatchError, match="not supported"):
        vidsparse.patch(Pipe())
    with pytest.raises(PatchError, match="pipeline"):
        vidsparse.patch(object())
    assert not Pipe.transformer._forward_pre_hooks


def test_bare_transformer_counts_steps_from_timesteps():
    case = Case("wan", "t2v", _pipeline("wan", "t2v"), 16)
    recorder = sparse_recorder(warmup=1)
    install(case.pipe.transformer, recorder)
    try:
        case.run(num_inference_steps=3)
    finally:
        uninstall(case.pipe.transformer)
    assert sorted({(c.step, c.num_steps) for c, _ in recorder.calls}) == [(0, None), (1, None), (2, None)]
    check_against_oracle(recorder)


def test_default_patch_is_sparse_after_warmup_and_first_layer():
    case = Case("wan", "t2v", _pipeline("wan", "t2v"), 16)
    no_cfg = dict(num_inference_steps=5, guidance_scale=1.0)
    reference = case.run(**no_cfg)
    controller = vidsparse.patch(case.pipe)
    try:
        out = case.run(**no_cfg)
    finally:
        vidsparse.unpatch(case.pipe)
    assert controller.policy.strategy == default_strategy()
    # 5 steps: ceil(0.2 * 5) = 1 dense warm-up step, then layer 0 dense and layer 1 sparse (2 layers, no CFG).
    assert controller.stats == {**controller.stats, "dense_calls": 1 * 2 + 4, "sparse_calls": 4}
    assert torch.isfinite(out).all() and not torch.allclose(out, reference, atol=1e-4)


def test_torch_compiled_transformer_patched_after_compiling():
    """Patching a transformer that torch.compile has already traced (dynamo caches frames per code object)."""
    pipe = tiny_pipeline("wan")
    case = Case("wan", "t2v", pipe, 16)
    vidsparse.patch(pipe, strategy=SPARSE, dense_warmup_steps=0)
    sparse_eager = case.run()
    vidsparse.unpatch(pipe)
    pipe.transformer = torch.compile(pipe.transformer, backend="eager")
    dense_compiled = case.run()
    controller = vidsparse.patch(pipe, strategy=SPARSE, dense_warmup_steps=0)
    try:
        torch.testing.assert_close(case.run(), sparse_eager)
    finally:
        vidsparse.unpatch(pipe)
    assert controller.stats["sparse_calls"] > 0 and controller.stats["dense_calls"] > 0
    assert torch.equal(case.run(), dense_compiled)


def test_calls_it_cannot_represent_run_the_models_kernel_with_a_warning(monkeypatch):
    """A grid that does not match the sequence (here: a wrong grid reader) falls back to dense, warning once."""
    case = Case("wan", "t2v", _pipeline("wan", "t2v"), 16)
    reference = case.run()
    monkeypatch.setattr(get_family("wan"), "grid", lambda transformer, inputs: (1, 1, 1))
    controller = vidsparse.patch(case.pipe, strategy=SPARSE, dense_warmup_steps=0, dense_layers=[])
    try:
        with pytest.warns(DenseFallbackWarning, match="does not match the latent grid") as caught:
            out = case.run()
    finally:
        vidsparse.unpatch(case.pipe)
    assert len([w for w in caught if issubclass(w.category, DenseFallbackWarning)]) == 1
    assert controller.stats["sparse_calls"] == 0
    assert torch.equal(out, reference)
