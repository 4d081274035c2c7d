"""CPU attention backends against the float64 oracle: plain masked softmax attention built from plan.to_dense_mask().

Every backend's output buffer is poisoned: `torch.empty_like` is patched to return NaN-filled tensors during the
call, so a row a backend forgets to write shows up as NaN. The Triton kernel has its own tests
(tests/test_triton_kernel.py).
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vidsparse import BlockPlan, VideoLayout, block_sparse_attention
from vidsparse.attention import resolve_backend
from vidsparse.backends import gather
from vidsparse.testing.plans import random_block_plan

FAST_BACKENDS = ["reference", "gather"]


def oracle(q, k, v, plan, scale=None):
    """float64 softmax(q k^T * scale) v over the plan's token mask; rows with no key (skipped heads) are zero."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale
    scores = scores.masked_fill(~plan.to_dense_mask(), float("-inf"))
    return torch.softmax(scores, -1).nan_to_num(0.0) @ v.double()


@pytest.fixture
def poisoned(monkeypatch):
    real = torch.empty_like
    monkeypatch.setattr(torch, "empty_like", lambda x, **kw: real(x, **kw).fill_(float("nan")))


def _check(out, q, k, v, plan, *, scale=None, atol=2e-5):
    assert out.shape == q.shape and out.dtype == q.dtype
    assert not bool(out.isnan().any()), "rows left unwritten (poisoned NaN)"
    torch.testing.assert_close(out.double(), oracle(q, k, v, plan, scale), rtol=1e-4, atol=atol)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("head_dim", [64, 96, 128])
@pytest.mark.parametrize("text_position", ["suffix", "prefix"])
def test_layout_plans(backend, head_dim, text_position, poisoned):
    # 3x5x7 grid on 2x4x4 tiles: ragged edge tiles; 11 text tokens: a partly filled text block.
    layout = VideoLayout(3, 5, 7, text_tokens=11, text_position=text_position, tile=(2, 4, 4))
    q, k, v = (torch.randn(2, 3, layout.seq_len, head_dim) for _ in range(3))
    plan = random_block_plan(layout, 2, 3, density=0.3, skip_head=1)
    out = block_sparse_attention(q, k, v, plan, backend=backend)
    _check(out, q, k, v, plan)
    assert bool((out[:, 1] == 0).all())  # skipped head


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("q_len,kv_len", [(50, 50), (37, 61), (64, 64)])
def test_plans_without_layout(backend, q_len, kv_len, poisoned):
    block_q, block_k = 16, 16
    mq, mk = math.ceil(q_len / block_q), math.ceil(kv_len / block_k)
    mask = torch.rand(1, 2, mq, mk) < 0.5
    mask[..., torch.arange(mq), torch.arange(mq) % mk] = True
    plan = BlockPlan.from_mask(mask, block_q=block_q, block_k=block_k, q_len=q_len, kv_len=kv_len)
    q = torch.randn(3, 2, q_len, 64)
    k, v = (torch.randn(3, 2, kv_len, 64) for _ in range(2))
    # Batch-1 plan shared by a batch of 3; a non-default scale.
    _check(block_sparse_attention(q, k, v, plan, scale=0.05, backend=backend), q, k, v, plan, scale=0.05)


def test_reference_float64_and_auto():
    layout = VideoLayout(2, 4, 6, text_tokens=3, tile=(1, 4, 4))
    q, k, v = (torch.randn(1, 2, layout.seq_len, 32, dtype=torch.float64) for _ in range(3))
    plan = random_block_plan(layout, 1, 2, density=0.4)
    out = block_sparse_attention(q, k, v, plan, backend="reference")
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, oracle(q, k, v, plan), rtol=1e-12, atol=1e-12)
    assert resolve_backend("auto", torch.device("cpu")) == "gather"


def test_gather_chunks_and_mixed_groups(monkeypatch, poisoned):
    # A tiny chunk budget splits every group into many SDPA calls; counts vary per row, some rows touch padding.
    monkeypatch.setattr(gather, "_CHUNK_ELEMENTS", 1)
    layout = VideoLayout(4, 6, 9, text_tokens=20, tile=(2, 4, 4))
    q, k, v = (torch.randn(2, 4, layout.seq_len, 64) for _ in range(3))
    plan = random_block_plan(layout, 2, 4, density=0.5, skip_head=3)
    _check(block_sparse_attention(q, k, v, plan, backend="gather"), q, k, v, plan)


@settings(max_examples=20, deadline=None)
@given(
    frames=st.integers(1, 4),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    text_tokens=st.integers(0, 20),
    text_position=st.sampled_from(["suffix", "prefix"]),
    tile=st.sampled_from([(1, 4, 4), (2, 2, 4), (2, 4, 2)]),
    batch=st.sampled_from([1, 2]),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_gather_random_plans(frames, height, width, text_tokens, text_position, tile, batch, density, seed):
    torch.manual_seed(seed)
    layout = VideoLayout(frames, height, width, text_tokens=text_tokens, text_position=text_position, tile=tile)
    q, k, v = (torch.randn(2, 2, layout.seq_len, 16) for _ in range(3))
    plan = random_block_plan(layout, batch, 2, density)
    _check(block_sparse_attention(q, k, v, plan, backend="gather"), q, k, v, plan)


@pytest.mark.slow
def test_flex(poisoned):
    # Compiling FlexAttention on CPU takes tens of seconds: one case covering padding (a mask_mod), text,
    # a skipped head and a batch-shared plan.
    layout = VideoLayout(2, 5, 7, text_tokens=9, text_position="prefix", tile=(1, 4, 4))
    q, k, v = (torch.randn(2, 2, layout.seq_len, 64) for _ in range(3))
    plan = random_block_plan(layout, 1, 2, density=0.4, skip_head=0)
    out = block_sparse_attention(q, k, v, plan, backend="flex")
    _check(out, q, k, v, plan)
    assert bool((out[:, 0] == 0).all())


def test_input_errors():
    layout = VideoLayout(1, 4, 8, tile=(1, 4, 4))
    plan = random_block_plan(layout, 1, 2, density=0.5)
    q, k, v = (torch.randn(1, 2, 32, 16) for _ in range(3))
    with pytest.raises(ValueError, match=r"\[B, H, S, D\]"):
        block_sparse_attention(q[0], k, v, plan)
    with pytest.raises(ValueError, match="same shape"):
        block_sparse_attention(q, k, v[..., :8], plan)
    with pytest.raises(ValueError, match="agree"):
        block_sparse_attention(q[..., :8], k, v, plan)
    with pytest.raises(ValueError, match="share a dtype"):
        block_sparse_attention(q, k.double(), v, plan)
    with pytest.raises(ValueError, match="floating point"):
        block_sparse_attention(*(x.to(torch.int32) for x in (q, k, v)), plan)
    with pytest.raises(ValueError, match="one device"):
        block_sparse_attention(q, k.to("meta"), v, plan)
    with pytest.raises(ValueError, match="heads"):
        block_sparse_attention(q[:, :1], k[:, :1], v[:, :1], plan)
    with pytest.raises(ValueError, match="batch"):
        two = random_block_plan(layout, 2, 2, density=0.5)
        block_sparse_attention(*(x.expand(3, -1, -1, -1) for x in (q, k, v)), two)
    with pytest.raises(ValueError, match="sequence lengths"):
        block_sparse_attention(q[:, :, :30], k, v, plan)
    with pytest.raises(ValueError, match="unknown backend"):
        block_sparse_attention(q, k, v, plan, backend="nope")
