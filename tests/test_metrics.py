"""vidsparse.metrics against brute force: full float64 attention with an explicit token mask, no chunking."""

import math

import pytest
import torch

from vidsparse import BlockPlan, VideoLayout
from vidsparse import metrics
from vidsparse.metrics import attention_recall, relative_l2_error
from vidsparse.testing.plans import random_block_plan


def _brute_force(q, k, v, plan, rows, scale):
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale
    probs = torch.softmax(scores, -1)[:, :, rows]
    keep = plan.to_dense_mask(rows)
    sparse = torch.softmax(scores[:, :, rows].masked_fill(~keep, float("-inf")), -1).nan_to_num(0.0)
    dense_out = probs @ v.double()
    plan_out = sparse @ v.double()
    err = (plan_out - dense_out).flatten(2).norm(dim=-1) / dense_out.flatten(2).norm(dim=-1)
    recall = (probs * keep).sum(-1).mean(-1)
    return err, recall


@pytest.mark.parametrize("plan_batch", [1, 2])
@pytest.mark.parametrize("text_position", ["suffix", "prefix"])
def test_metrics_match_brute_force(plan_batch, text_position, monkeypatch):
    # A tiny chunk budget forces many row chunks, so chunk boundaries are exercised.
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 1000)
    layout = VideoLayout(3, 5, 7, text_tokens=9, text_position=text_position, tile=(1, 4, 4))
    q, k, v = (torch.randn(2, 3, layout.seq_len, 16) for _ in range(3))
    plan = random_block_plan(layout, plan_batch, 3, 0.4, skip_head=1)
    rows = torch.randperm(layout.seq_len)[:40]
    scale = 0.3
    err, recall = _brute_force(q, k, v, plan, rows, scale)
    got_err = relative_l2_error(q, k, v, plan, rows=rows, scale=scale)
    got_recall = attention_recall(q, k, plan, rows=rows, scale=scale)
    assert got_err.dtype == got_recall.dtype == torch.float64
    assert got_err.shape == got_recall.shape == (2, 3)
    torch.testing.assert_close(got_err, err, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_recall, recall, rtol=1e-10, atol=1e-12)
    # Skipped head: output zero -> error 1, recall 0.
    torch.testing.assert_close(got_err[:, 1], torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(got_recall[:, 1], torch.zeros(2, dtype=torch.float64))


def test_all_rows_default_scale_and_no_layout():
    q, k, v = (torch.randn(1, 2, 50, 8) for _ in range(3))
    mask = (torch.rand(1, 2, 4, 4) < 0.5) | torch.eye(4, dtype=torch.bool)
    plan = BlockPlan.from_mask(mask, block_q=16, block_k=16, q_len=50, kv_len=50)
    err, recall = _brute_force(q, k, v, plan, torch.arange(50), 1 / math.sqrt(8))
    torch.testing.assert_close(relative_l2_error(q, k, v, plan), err, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(attention_recall(q, k, plan), recall, rtol=1e-10, atol=1e-12)


def test_dense_plan_is_exact():
    layout = VideoLayout(2, 6, 6, text_tokens=5, tile=(1, 4, 4))
    q, k, v = (torch.randn(1, 2, layout.seq_len, 8) for _ in range(3))
    mask = torch.ones(1, 2, layout.num_blocks, layout.num_blocks, dtype=torch.bool)
    plan = BlockPlan.from_mask(mask, layout=layout)
    assert float(relative_l2_error(q, k, v, plan).max()) < 1e-12
    torch.testing.assert_close(attention_recall(q, k, plan), torch.ones(1, 2, dtype=torch.float64))


@pytest.mark.parametrize(
    "rows, match",
    [(torch.tensor([0, 99]), r"\[0, 72\)"), (torch.tensor([[1]]), "1-D"), (torch.tensor([0.5]), "integer")],
)
def test_bad_rows_are_rejected(rows, match):
    layout = VideoLayout(2, 6, 6, tile=(1, 4, 4))
    q, k, v = (torch.randn(1, 1, layout.seq_len, 8) for _ in range(3))
    plan = BlockPlan.from_mask(torch.ones(1, 1, layout.num_blocks, layout.num_blocks, dtype=torch.bool), layout=layout)
    with pytest.raises(ValueError, match=match):
        relative_l2_error(q, k, v, plan, rows=rows)


def test_one_head_plan_is_scored_on_every_head():
    # A static strategy's plan has one head; each head of q is scored as if the plan were copied to it.
    layout = VideoLayout(3, 5, 7, text_tokens=4, tile=(1, 4, 4))
    q, k, v = (torch.randn(2, 3, layout.seq_len, 8) for _ in range(3))
    plan = random_block_plan(layout, 1, 1, 0.4)
    copied = BlockPlan.concat_heads([plan] * 3)
    err, recall = _brute_force(q, k, v, copied, torch.arange(layout.seq_len), 1 / math.sqrt(8))
    torch.testing.assert_close(relative_l2_error(q, k, v, plan), err, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(attention_recall(q, k, plan), recall, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(err[:, 0], err[:, 1])  # different heads, different errors
