"""A patched transformer under torch.compile, and processors changed behind vidsparse's back.

- The sparse call is one opaque op: a patched transformer compiles with as many graphs and breaks as the
  unpatched one, with `fullgraph=True` for every family, and compiled == eager.
- All layers share one processor function: a 30-layer model compiled block by block never recompiles.
- A processor replaced after `patch` warns naming the layers; processors saved while patched and restored after
  `unpatch` run the model's own kernel.

Compilation uses the "aot_eager" backend (fake tensors and functionalization, as inductor sees the op, without
the C++ compile time); the GPU check compiles with inductor.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch._dynamo as dynamo

import vidsparse
from vidsparse.runtime import BypassWarning
from vidsparse.testing import tiny_call, tiny_pipeline

SPARSE = ("neighborhood", {"window": 1})
FAMILIES = ["wan", "hunyuan", "cogvideox", "ltx", "mochi"]


@functools.lru_cache(maxsize=None)
def _inputs(family: str):
    """A tiny pipeline and the positional/keyword inputs of one of its transformer calls."""
    pipe = tiny_pipeline(family)
    captured = {}
    forward = pipe.transformer.forward

    def grab(*args, **kwargs):
        captured.setdefault("call", (args, kwargs))
        return forward(*args, **kwargs)

    pipe.transformer.forward = grab
    try:
        with torch.no_grad():
            pipe("a fox", generator=torch.Generator().manual_seed(0), output_type="latent",
                 **{**tiny_call(family), "num_inference_steps": 2})
    finally:
        del pipe.transformer.forward
    return pipe, captured["call"]


def _forward(module, call):
    args, kwargs = call
    with torch.no_grad():
        return module(*args, **kwargs)[0]


def _explain(module, call):
    with torch.no_grad():  # inference, as pipelines run it (with gradients the op's body is traced instead)
        return dynamo.explain(module)(*call[0], **call[1])


@pytest.mark.parametrize("family", FAMILIES)
def test_patched_transformer_compiles_fullgraph_with_the_unpatched_graph_count(family):
    pipe, call = _inputs(family)
    transformer = pipe.transformer
    dynamo.reset()
    unpatched = _explain(transformer, call)
    controller = vidsparse.patch(transformer, strategy=SPARSE, dense_warmup_steps=0, dense_layers=[])
    try:
        eager = _forward(transformer, call)
        dynamo.reset()
        patched = _explain(transformer, call)
        dynamo.reset()
        compiled = _forward(torch.compile(transformer, fullgraph=family != "mochi", backend="aot_eager"), call)
    finally:
        vidsparse.unpatch(transformer)
        dynamo.reset()
    if family == "mochi":
        # Mochi's own processor breaks the graph in every layer (nonzero on its text mask), patched or not; patched,
        # the code resumed after that break compiles as one more graph per layer (known gap, see the README).
        layers = len(transformer.transformer_blocks)
        assert patched.graph_count - unpatched.graph_count <= layers
        assert patched.graph_break_count - unpatched.graph_break_count <= layers
    else:
        assert (patched.graph_count, patched.graph_break_count) == (unpatched.graph_count, 0)
        assert unpatched.graph_break_count == 0
    assert controller.stats["sparse_calls"] > 0
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(eager, _forward(transformer, call), atol=1e-4)  # the compiled run was sparse


def test_thirty_layers_compile_once_block_by_block():
    """compile_repeated_blocks: every layer's processor shares one function, so no layer recompiles."""
    pipe = tiny_pipeline("wan", num_layers=30)
    _, (args, kwargs) = _inputs("wan")
    transformer = pipe.transformer
    vidsparse.patch(transformer, strategy=SPARSE, dense_warmup_steps=0, dense_layers=[])
    try:
        eager = _forward(transformer, (args, kwargs))
        dynamo.reset()
        transformer.compile_repeated_blocks(fullgraph=True, backend="aot_eager")
        with dynamo.config.patch(error_on_recompile=True):
            compiled = _forward(transformer, (args, kwargs))
            again = _forward(transformer, (args, kwargs))
    finally:
        vidsparse.unpatch(transformer)
        dynamo.reset()
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again, eager, rtol=1e-4, atol=1e-4)


def _dense_and_sparse(family: str):
    pipe, call = _inputs(family)
    dense = _forward(pipe.transformer, call)
    return pipe, call, dense


def test_processor_replaced_after_patch_warns_naming_the_layers():
    pipe, call, dense = _dense_and_sparse("wan")
    transformer = pipe.transformer
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    controller = vidsparse.patch(transformer, strategy=SPARSE, dense_warmup_steps=0, dense_layers=[])
    try:
        transformer.blocks[1].attn1.set_processor(WanAttnProcessor())
        with pytest.warns(BypassWarning, match=r"layer\(s\) \[1\]"):
            out = _forward(transformer, call)
        calls = controller.stats["sparse_calls"]
        assert calls == 1  # layer 0 only
        _forward(transformer, call)  # once: no second warning
    finally:
        vidsparse.unpatch(transformer)
    assert isinstance(transformer.blocks[1].attn1.processor, WanAttnProcessor)  # the user's stays
    assert not torch.allclose(out, dense, atol=1e-4)


def test_fuse_qkv_projections_after_patch_is_reported():
    """CogVideoX's fuse_qkv_projections swaps in its fused processor class: those layers are named in a warning."""
    pipe, call, dense = _dense_and_sparse("cogvideox")
    transformer = pipe.transformer
    vidsparse.patch(transformer, strategy=SPARSE, dense_warmup_steps=0, dense_layers=[])
    try:
        transformer.fuse_qkv_projections()
        with pytest.warns(BypassWarning, match=r"layer\(s\) \[0, 1\]"):
            out = _forward(transformer, call)
    finally:
        vidsparse.unpatch(transformer)
        transformer.unfuse_qkv_projections()
    torch.testing.assert_close(out, dense, rtol=1e-4, atol=1e-5)


def test_processors_saved_while_patched_run_dense_after_unpatch():
    pipe, call, dense = _dense_and_sparse("wan")
    transformer = pipe.transformer
    controller = vidsparse.patch(transformer, strategy=SPARSE, dense_warmup_steps=0, dense_layers=[])
    saved = transformer.attn_processors
    sparse = _forward(transformer, call)
    vidsparse.unpatch(transformer)
    originals = transformer.attn_processors
    transformer.set_attn_processor(saved)
    try:
        calls = controller.stats["sparse_calls"]
        restored = _forward(transformer, call)
        assert controller.stats["sparse_calls"] == calls
    finally:
        transformer.set_attn_processor(originals)
    assert not torch.allclose(sparse, dense, atol=1e-4)
    torch.testing.assert_close(restored, dense, rtol=1e-5, atol=1e-6)


def test_training_through_a_patched_model_gets_gradients():
    """With gradients wanted the op's body runs as plain torch ops, which autograd differentiates."""
    pipe, (args, kwargs) = _inputs("wan")
    transformer = pipe.transformer
    vidsparse.patch(transformer, strategy=SPARSE, dense_warmup_steps=0, dense_layers=[])
    try:
        transformer.zero_grad()
        transformer(*args, **kwargs)[0].square().mean().backward()
        grad = transformer.blocks[0].attn1.to_q.weight.grad
    finally:
        vidsparse.unpatch(transformer)
        transformer.zero_grad()
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
