"""The checks the family test files run on a pipeline call (imported by tests/test_family_<name>.py).

- `run_sparse`: the pipeline patched with `vidsparse.patch` at a sparse strategy, every layer and step sparse; no
  DenseFallbackWarning may be raised and some calls must run sparse.
- `check_layers`: the same call with a recording controller; every patched layer's output equals float64 softmax
  attention masked by the plan (the oracle of tests/test_patch.py), and the layout of every call has the expected
  grid and text tokens, placed where the family puts them.
- `check_dense_reproduces`: patched with a plan of density 1 (through vidsparse's kernel), the pipeline's output
  equals the unpatched one.
- `check_pipeline_class`: `run_sparse` and `check_layers` on the tiny pipeline of (family, variant).
- `call_patched`: one call of a transformer or pipeline, patched for the call or not; `full_and_sparse`: a call at full
  density through vidsparse's kernel reproduces the unpatched one and a sparse call does not.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch

import vidsparse
from vidsparse.controller import DenseSchedule, SparseController, StrategyPolicy
from test_patch import SPARSE, Recorder, check_against_oracle, sparse_recorder
from vidsparse.patch import DenseFallbackWarning, inspect_model, install, uninstall
from vidsparse.strategies import get
from vidsparse.testing import tiny_call, tiny_pipeline


PROMPT = "a red fox running in the snow"
#: A neighborhood window wider than any tiny grid: every block kept, computed by vidsparse's kernel.
FULL = ("neighborhood", {"window": (1023, 1023, 1023)})


def output(pipe: Any, call: dict[str, Any]) -> torch.Tensor:
    """The pipeline's latent output for `call` (seeded; PROMPT unless the call brings prompt embeddings)."""
    prompt = {} if any(name.startswith("prompt_embeds") for name in call) else {"prompt": PROMPT}
    generator = torch.Generator().manual_seed(1234)
    return pipe(**prompt, **call, output_type="latent", generator=generator, return_dict=False)[0]


def run_sparse(pipe: Any, call: dict[str, Any]) -> dict[str, Any]:
    """Controller stats of one sparse call (DenseFallbackWarning is an error)."""
    controller = vidsparse.patch(pipe, strategy=SPARSE, dense_warmup_steps=0, dense_layers=())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DenseFallbackWarning)
            out = output(pipe, call)
    finally:
        vidsparse.unpatch(pipe)
    assert torch.isfinite(out).all()
    assert controller.stats["sparse_calls"] > 0 and controller.stats["dense_calls"] == 0
    return controller.stats


def check_layers(
    pipe: Any, call: dict[str, Any], *, grid: tuple[int, int, int], text_tokens: set[int] | None = None,
    text_position: str | None = None,
) -> list:
    """Record a sparse call, compare every layer with the oracle and the layouts with what is expected.

    `text_tokens`: the admissible text token counts (None: text is not in the self-attention sequence).
    """
    recorder = sparse_recorder()
    install(pipe, recorder)
    try:
        output(pipe, call)
    finally:
        uninstall(pipe)
    check_against_oracle(recorder)
    calls = [c for c, _ in recorder.calls]
    assert {c.layout.grid for c in calls} == {grid}
    assert {c.layer for c in calls} == set(range(inspect_model(pipe).num_layers))
    if text_tokens is None:
        assert {c.layout.text_tokens for c in calls} == {0}
    else:
        assert {c.layout.text_tokens for c in calls} <= text_tokens
        assert {c.layout.text_position for c in calls} == {text_position}
    return calls


def check_dense_reproduces(pipe: Any, call: dict[str, Any]) -> None:
    """Patched with a plan that keeps every block, computed by vidsparse's kernel, the output is the unpatched one."""
    reference = output(pipe, call)
    controller = vidsparse.patch(pipe, strategy=FULL, dense_warmup_steps=0, dense_layers=())
    try:
        full = output(pipe, call)
    finally:
        vidsparse.unpatch(pipe)
    assert controller.stats["sparse_calls"] > 0 and controller.stats["dense_calls"] == 0
    torch.testing.assert_close(full, reference, rtol=1e-4, atol=1e-5)


def call_patched(
    model: Any, inputs: dict[str, Any], controller: Any = None, *, no_grad: Callable[[], Any] = torch.no_grad
) -> Any:
    """`model(**inputs)` (a transformer or a pipeline) under `no_grad()`, with `controller` installed for the call if
    given; DenseFallbackWarning is an error."""
    if controller is not None:
        install(model, controller)
    try:
        with no_grad(), warnings.catch_warnings():
            warnings.simplefilter("error", DenseFallbackWarning)
            return model(**inputs)
    finally:
        if controller is not None:
            uninstall(model)


def full_and_sparse(run: Callable[[Any], torch.Tensor]) -> Recorder:
    """`run(controller)` unpatched (None), at full density through vidsparse's kernel (it must give the unpatched
    output) and at the sparse strategy of test_patch (it must not); the recorder of the sparse run."""
    reference = run(None)
    full = Recorder(SparseController(StrategyPolicy(get("neighborhood", window=64), DenseSchedule(0, frozenset()))))
    torch.testing.assert_close(run(full), reference, rtol=1e-4, atol=1e-5)
    assert full.calls
    recorder = sparse_recorder()
    assert not torch.allclose(run(recorder), reference, atol=1e-4)
    return recorder


def check_pipeline_class(family: str, variant: str | None, **expected: Any) -> list:
    """The tiny pipeline of (family, variant) runs sparse without fallback and matches the oracle layer by layer;
    `expected`: the keyword arguments of `check_layers` (grid, text_tokens, text_position)."""
    pipe, call = tiny_pipeline(family, variant=variant), tiny_call(family, variant)
    run_sparse(pipe, call)
    return check_layers(pipe, call, **expected)
