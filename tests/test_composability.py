"""vidsparse beside the other things users put on a diffusers pipeline, in both orders where order matters.

Each test checks the outcome, not just that nothing raised: sparse calls happened, and the result equals what
the same pipeline gives with vidsparse alone (offloading and LoRA do not change the math), or differs from the
unpatched run as sparse attention must (cache-dit skips blocks, so its runs are compared with each other).
Diffusers' Ulysses context parallelism is covered by tests/test_parallel.py.
"""

from __future__ import annotations

import pytest
import torch

import vidsparse
from vidsparse.testing import tiny_call, tiny_pipeline

SPARSE = ("neighborhood", {"window": 1})
PATCH = dict(strategy=SPARSE, dense_warmup_steps=0, dense_layers=[])


def run(pipe, steps: int = 3) -> torch.Tensor:
    call = {**tiny_call("wan"), "num_inference_steps": steps}
    return pipe("a fox", generator=torch.Generator().manual_seed(0), output_type="latent", **call).frames


def sparse_reference(steps: int = 3) -> torch.Tensor:
    pipe = tiny_pipeline("wan")
    vidsparse.patch(pipe, **PATCH)
    out = run(pipe, steps)
    vidsparse.unpatch(pipe)
    return out


def _group_offload(pipe) -> None:
    pipe.transformer.enable_group_offload(onload_device=torch.device("cpu"), offload_device=torch.device("cpu"),
                                          offload_type="block_level", num_blocks_per_group=1)


def _model_cpu_offload(pipe) -> None:
    pipe.enable_model_cpu_offload(device="cpu")


@pytest.mark.parametrize("offload", [_group_offload, _model_cpu_offload], ids=["group", "model-cpu"])
@pytest.mark.parametrize("order", ["patch-first", "offload-first"])
def test_offloading(offload, order):
    pipe = tiny_pipeline("wan")
    if order == "offload-first":
        offload(pipe)
    controller = vidsparse.patch(pipe, **PATCH)
    if order == "patch-first":
        offload(pipe)
    try:
        out = run(pipe)
    finally:
        vidsparse.unpatch(pipe)
    assert controller.stats["sparse_calls"] == 3 * 2 * 2
    torch.testing.assert_close(out, sparse_reference(), rtol=1e-5, atol=1e-6)


def test_peft_lora_add_fuse_unload():
    """A LoRA on the attention projections (added, fused, unloaded) under the patch: the same as without vidsparse
    at every stage, since LoRA changes the projections and vidsparse only the kernel call after them."""
    pytest.importorskip("peft", reason="peft is an optional test dependency (installed by make test)")
    from peft import LoraConfig

    def staged(patched: bool) -> list[torch.Tensor]:
        pipe = tiny_pipeline("wan")
        controller = vidsparse.patch(pipe, **PATCH) if patched else None
        pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v"],
                                                init_lora_weights=False))
        outs = [run(pipe, 2)]
        pipe.transformer.fuse_lora()
        outs.append(run(pipe, 2))
        pipe.transformer.unfuse_lora()
        pipe.transformer.delete_adapters("default")
        outs.append(run(pipe, 2))
        if patched:
            assert controller.stats["sparse_calls"] == 3 * 2 * 2 * 2
            vidsparse.unpatch(pipe)
        return outs

    with_vidsparse, lora_only = staged(True), staged(False)
    plain = tiny_pipeline("wan")
    vidsparse.patch(plain, **PATCH)
    no_lora = run(plain, 2)
    vidsparse.unpatch(plain)
    torch.testing.assert_close(with_vidsparse[0], with_vidsparse[1], rtol=1e-4, atol=1e-4)  # fused == unfused
    # unloaded: as before the LoRA (unfusing subtracts the fused delta again: float rounding)
    torch.testing.assert_close(with_vidsparse[2], no_lora, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(with_vidsparse[0], no_lora, atol=1e-4)  # the LoRA did something
    assert not torch.allclose(with_vidsparse[0], lora_only[0], atol=1e-4)  # and the patch did too


@pytest.mark.parametrize("order", ["patch-first", "cache-first"])
def test_cache_dit(order):
    """cache-dit's DBCache (a config that caches on the tiny 2-layer model) with the patch, either order: sparse
    calls happen on the steps cache-dit computes, and the output equals patch-then-cache's."""
    cache_dit = pytest.importorskip(
        "cache_dit", reason="cache-dit is an optional test dependency (make test installs it)"
    )

    def generate(order: str) -> tuple[torch.Tensor, dict]:
        pipe = tiny_pipeline("wan")
        config = cache_dit.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=10.0,
                                         max_warmup_steps=1, num_inference_steps=4)
        if order == "cache-first":
            cache_dit.enable_cache(pipe, cache_config=config)
        controller = vidsparse.patch(pipe, **PATCH)
        if order == "patch-first":
            cache_dit.enable_cache(pipe, cache_config=config)
        try:
            out = run(pipe, 4)
        finally:
            vidsparse.unpatch(pipe)
            cache_dit.disable_cache(pipe)
        return out, controller.stats

    out, stats = generate(order)
    reference, _ = generate("patch-first")
    dense_steps = 4 * 2 * 2
    assert 0 < stats["sparse_calls"] < dense_steps  # sparse, and cache-dit skipped some layer calls
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(out).all()
