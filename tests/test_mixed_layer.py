"""A layer whose heads use different strategies (what a profile gives), as the controller plans it in one call.

The controller plans the heads of draft, vmoba and sampled stripe together (`MaskPlanner`s: one mask, q and k
selected and pooled once), other dynamic strategies group by group, and static heads once. Checked here:
- the layer's plan is, head by head and bit for bit, the plan of that head's strategy run on that head alone, over
  consecutive calls with new activations (the buffers reused across calls hold nothing stale);
- each mask head keeps what its strategy's definition keeps (independent float64 definitions, tests/
  test_strategies_dynamic.py and tests/test_strategies.py);
- the output equals float64 attention with the plan's explicit token mask;
- one steady-state call of the issue's mixed layer dispatches at most `MIXED_LAYER_LAUNCHES` ATen ops (about one
  GPU kernel launch each), whatever the number of heads.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import vidsparse.strategies as strategies
from test_strategies import sampled_tile_scores
from test_strategies_dynamic import (
    expected_vmoba_chunks,
    independent_chunks,
    independent_draft_map,
    independent_gates,
)
from vidsparse import VideoLayout
import vidsparse.attention
from vidsparse.controller import SparseController
from vidsparse.runtime import AttentionCall
from vidsparse.testing.launches import LaunchCounter

# 20 video blocks, padded in every axis, text suffix spanning two padded blocks.
SUFFIX = VideoLayout(3, 5, 9, text_tokens=20, text_position="suffix", tile=(2, 4, 2))
# 12 video blocks, padded edge tiles, text prefix.
PREFIX = VideoLayout(3, 6, 7, text_tokens=5, text_position="prefix", tile=(1, 4, 4))
LAYER = 1  # vmoba's cycled partition is 2D here

# Ops of one steady-state call of the issue's mixed layer (counted by LaunchCounter, which also counts dtype
# conversions): 122 before the heads of mask planners were planned together (108 non-view ops as
# scripts/bench_overhead.py counted them then, conversions not counted), 60 after.
MIXED_LAYER_LAUNCHES = 60


def issue_layer(heads: int) -> list[strategies.Strategy]:
    """The issue's mixed layer (scripts/bench_overhead.py): per 12 heads 4 draft, 3 diagonal, 3 vmoba, 2 stripe."""
    twelve = ([strategies.get("draft")] * 4 + [strategies.get("diagonal")] * 3
              + [strategies.get("vmoba").at_layer(LAYER)] * 3 + [strategies.get("stripe", top_k=2)] * 2)
    return [twelve[head * 12 // heads] for head in range(heads)]


def interleaved_layer() -> list[strategies.Strategy]:
    """Every kind of head, no strategy's heads adjacent: mask planners of each selection mode, static heads
    (band, skip, neighborhood) and a union (planned through the plan cache, not with the mask planners)."""
    get = strategies.get
    kinds = [
        get("draft", mass=0.6), get("vmoba", select_mode="topk", topk=2, threshold_type="head_global"),
        get("stripe", mass=0.6, first_frames=1), get("diagonal", width=1), get("skip"),
        get("vmoba", partition="3d", st_chunk_size=(1, 1, 2), threshold_type="head_global"),
        get("draft") | get("stripe", first_frames=1), get("stripe", fraction=0.3, sinks=2),
        get("neighborhood", window=1), get("draft"), get("vmoba").at_layer(LAYER),
    ]
    return kinds + kinds[:2] + [kinds[5], kinds[7]]


def mask_planners_only() -> list[strategies.Strategy]:
    """Only mask planners, each strategy's heads adjacent and in head order (the layer's plan is theirs as is)."""
    get = strategies.get
    return [get("draft")] * 3 + [get("vmoba").at_layer(LAYER)] * 2 + [get("stripe", top_k=3)]


LAYERS = {"issue": issue_layer(12), "interleaved": interleaved_layer(), "mask-planners-only": mask_planners_only()}


def random_qkv(layout: VideoLayout, heads: int, seed: int, dtype=torch.float32, batch: int = 2, dim: int = 16):
    generator = torch.Generator().manual_seed(seed)
    return [(2.0 * torch.randn(batch, heads, layout.seq_len, dim, generator=generator, dtype=torch.float64)).to(dtype)
            for _ in range(3)]


def each_head_alone(layout, layer, q, k) -> tuple[torch.Tensor, torch.Tensor]:
    """(kv_counts, kv_indices) of the layer with every head planned by its strategy on that head alone."""
    counts, indices = [], []
    for head, strategy in enumerate(layer):
        plan = strategy.plan(layout, q[:, head : head + 1], k[:, head : head + 1]) if strategy.is_dynamic \
            else strategy.plan(layout)
        counts.append(plan.kv_counts.expand(q.shape[0], -1, -1))
        padded = F.pad(plan.kv_indices, (0, layout.num_blocks - plan.max_kv_blocks))
        indices.append(padded.expand(q.shape[0], -1, -1, -1))
    return torch.cat(counts, 1), torch.cat(indices, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("layout", [SUFFIX, PREFIX], ids=["text-suffix", "text-prefix"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_plan_is_each_head_planned_alone(name, layout, dtype):
    layer = LAYERS[name]
    controller = SparseController(None)
    for step in range(3):  # new activations at every call: the reused buffers must carry nothing over
        q, k, _ = random_qkv(layout, len(layer), seed=step, dtype=dtype)
        plan = controller.plan(layout, layer, q, k, site=(LAYER, 0), step=step)
        counts, indices = each_head_alone(layout, layer, q, k)
        assert torch.equal(plan.kv_counts, counts)
        assert torch.equal(plan.kv_indices, indices)  # the whole buffer, entries past the counts included
        skipped = torch.tensor([s.name == "skip" for s in layer])
        assert torch.equal(plan.skip_heads if plan.skip_heads is not None else torch.zeros_like(skipped), skipped)


def test_mask_heads_keep_what_their_definitions_keep():
    """Independent float64 definitions of draft (top cells of the draft map), vmoba (chunks by gate) and sampled
    stripe (top tiles of the sampled rows), on the heads of the issue's layer."""
    layout, layer = SUFFIX, issue_layer(12)
    q, k, _ = random_qkv(layout, len(layer), seed=5, dtype=torch.float64)
    mv = layout.num_video_blocks
    blocks = SparseController(None).plan(layout, layer, q, k, site=(LAYER, 0), step=0).to_block_mask()[..., :mv, :mv]
    eye = torch.eye(mv, dtype=torch.bool)
    for head, strategy in enumerate(layer):
        qh, kh = q[:, head : head + 1], k[:, head : head + 1]
        if strategy.name == "draft":
            probs = independent_draft_map(layout, qh, kh).flatten(-2)
            ranked = torch.argsort(probs, dim=-1, descending=True)[..., : math.ceil(strategy.keep_ratio * mv * mv)]
            expected = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, ranked, True).view(-1, 1, mv, mv) | eye
        elif strategy.name == "vmoba":
            chunk = independent_chunks(layout, strategy.active_partition, strategy)
            own = F.one_hot(chunk, int(chunk.max()) + 1).bool()
            expected = expected_vmoba_chunks(strategy, independent_gates(layout, qh, kh, chunk), own)[..., chunk]
        elif strategy.name == "stripe":
            scores, _ = sampled_tile_scores(layout, qh, kh, samples=strategy.samples)
            top = torch.argsort(scores, dim=-1, descending=True)[..., : strategy.top_k]
            expected = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, top, True)[:, :, None, :] | eye
        else:
            expected = strategy.plan(layout).to_block_mask()[..., :mv, :mv].expand(q.shape[0], 1, mv, mv)
        assert torch.equal(blocks[:, head : head + 1], expected), f"head {head} ({strategy.name})"


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_output_is_float64_masked_attention(name):
    layer, layout = LAYERS[name], SUFFIX
    q, k, v = random_qkv(layout, len(layer), seed=7)
    controller = SparseController(_Layer(layer), backend="triton")  # the GPU path (Triton's interpreter here)
    for step in range(2):
        out = controller(AttentionCall(layer=LAYER, step=step, num_steps=10, q=q, k=k, v=v, layout=layout, scale=None))
    plan = controller.plan(layout, layer, q, k, site=(LAYER, 0), step=1)
    scores = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    probs = torch.softmax(scores.masked_fill(~plan.to_dense_mask(), -math.inf), dim=-1).nan_to_num(0.0)  # skip: 0
    torch.testing.assert_close(out.double(), probs @ v.double(), rtol=1e-4, atol=1e-5)


def _no_kernel(q, k, v, plan, scale, *, out=None):
    """The kernel left out: only the controller's own ops are counted."""
    return out


@pytest.fixture
def no_kernel_backend(monkeypatch):
    """`_no_kernel` registered as backend "no kernel" for one test (the registry's choices are public: the CLI lists
    them, so a test must not leave its own there)."""
    monkeypatch.setitem(vidsparse.attention._BACKENDS, "no kernel", _no_kernel)


class _Layer:
    """A policy giving one layer's per-head strategies at every call."""

    def __init__(self, layer: list[strategies.Strategy]) -> None:
        self.layer = layer

    def strategies(self, step, num_steps, layer, num_heads):
        return self.layer


def steady_state_launches(layer: list[strategies.Strategy], batch: int, dtype=torch.bfloat16) -> LaunchCounter:
    q, k, v = random_qkv(SUFFIX, len(layer), seed=0, dtype=dtype, batch=batch)
    controller = SparseController(_Layer(layer), backend="no kernel")
    out = torch.empty_like(q)
    calls = [AttentionCall(layer=LAYER, step=s, num_steps=10, q=q, k=k, v=v, layout=SUFFIX, scale=None, out=out)
             for s in range(2)]
    controller(calls[0])  # the first call of a layer shape builds and uploads its plan metadata
    with torch.inference_mode(), LaunchCounter() as counter:
        controller(calls[1])
    return counter


def test_mixed_layer_launches_are_bounded_and_do_not_grow_with_heads(no_kernel_backend):
    counted = {heads: steady_state_launches(issue_layer(heads), batch=2 if heads == 12 else 1) for heads in (12, 24)}
    assert counted[12].launches <= MIXED_LAYER_LAUNCHES, dict(counted[12].by_op)
    assert counted[24].by_op == counted[12].by_op  # heads of a strategy are planned together, not one by one


def test_the_launch_counter_counts_conversions_and_not_views():
    x = torch.randn(4, 6, dtype=torch.bfloat16)
    with LaunchCounter() as counter:
        y = x.float()  # a conversion kernel
        y.float()  # already float32: no copy
        y[1:].t().unsqueeze(0).expand(3, -1, -1)  # views
        torch.promote_types(x.dtype, torch.float32)  # host only
        y.add_(1)
    # The conversion is `_to_copy`, or `to` under inference_mode.
    assert counter.launches == 2 and counter.by_op["add_"] == 1
