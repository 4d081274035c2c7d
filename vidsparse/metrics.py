"""How far a BlockPlan is from dense attention: output error and kept softmax mass, exact, in float64.

For a head with queries q_i, keys k_j, values v_j and the plan's kept key set K(i) of query i:

    p_ij        = softmax_j(scale * q_i . k_j)                     (dense attention probabilities)
    o_dense_i   = sum_j p_ij v_j
    o_plan_i    = sum_{j in K(i)} p_ij v_j / sum_{j in K(i)} p_ij  (what the sparse kernel computes; 0 for skipped heads)

    relative_l2_error = || o_plan - o_dense ||_F / || o_dense ||_F   over the selected query rows
    attention_recall  = mean_i sum_{j in K(i)} p_ij                  over the selected query rows

The relative L2 error is the output-space objective of Sparse VideoGen (MSE of masked vs full output on
sampled rows) and STA's mask search; the recall is MInference's "attention mass kept" score.

Both are computed exactly (no sampling of keys) in float64, a chunk of query rows and one head at a time, so
the largest intermediate is [B, rows, S] and a 12-head, 32,760-token call fits in a few hundred MiB.
"""

from __future__ import annotations

import math

import torch

from .attention import check_inputs
from .plan import BlockPlan

# Score elements ([B, rows, Sk]) per chunk: 2^22 float64 values = 32 MiB per temporary.
_CHUNK_ELEMENTS = 1 << 22


def relative_l2_error(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: BlockPlan,
    *,
    rows: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """float64 [B, H]: ||o_plan - o_dense|| / ||o_dense|| over the query rows `rows` (model order; None = all).

    q, k, v are [B, H, S, D] in the model's order; the plan may have batch 1 (shared) or B, and one head
    (a static strategy's plan, scored on every head) or H.
    """
    plan = _broadcast_heads(plan, q.shape[1])
    check_inputs(q, k, v, plan)
    diff_sq, dense_sq = _accumulate(q, k, v, plan, rows, scale, want_output=True)
    return (diff_sq / dense_sq).sqrt()


def attention_recall(
    q: torch.Tensor,
    k: torch.Tensor,
    plan: BlockPlan,
    *,
    rows: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """float64 [B, H]: mean over the query rows `rows` of the dense softmax mass on the keys the plan keeps.

    Plans with one head are applied to every head, as in `relative_l2_error`.
    """
    plan = _broadcast_heads(plan, q.shape[1])
    check_inputs(q, k, k, plan)
    kept, count = _accumulate(q, k, None, plan, rows, scale, want_output=False)
    return kept / count


def _broadcast_heads(plan: BlockPlan, heads: int) -> BlockPlan:
    return BlockPlan.concat_heads([plan] * heads) if plan.num_heads == 1 and heads > 1 else plan


def _check_rows(rows: torch.Tensor | None, q_len: int, device: torch.device) -> torch.Tensor:
    if rows is None:
        return torch.arange(q_len, device=device)
    rows = torch.as_tensor(rows, device=device)
    if rows.dim() != 1 or rows.dtype not in (torch.int32, torch.int64) or rows.numel() == 0:
        raise ValueError(f"rows must be a non-empty 1-D integer tensor of query indices, got {rows.dtype} {tuple(rows.shape)}")
    if int(rows.min()) < 0 or int(rows.max()) >= q_len:
        raise ValueError(f"rows must lie in [0, {q_len}), got values in [{int(rows.min())}, {int(rows.max())}]")
    return rows.long()


def _accumulate(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor | None,
    plan: BlockPlan,
    rows: torch.Tensor | None,
    scale: float | None,
    *,
    want_output: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (batch, head) sums over the selected rows.

    want_output: (sum ||o_plan - o_dense||^2, sum ||o_dense||^2); otherwise (sum of kept mass, number of rows).
    """
    b, h, sq, d = q.shape
    sk = k.shape[2]
    device = q.device
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    rows = _check_rows(rows, sq, device)
    plan = plan.to(device)
    block_mask = plan.to_block_mask()  # [Bp, H, Mq, Mk]
    q_block = plan.q_block_of_token(device)[rows]
    k_block = plan.kv_block_of_token(device)
    chunk = max(1, _CHUNK_ELEMENTS // (b * sk))
    first = torch.zeros(b, h, dtype=torch.float64, device=device)
    second = torch.zeros(b, h, dtype=torch.float64, device=device)
    for head in range(h):
        k64 = k[:, head].double()
        v64 = v[:, head].double() if v is not None else None
        head_blocks = block_mask[:, head]  # [Bp, Mq, Mk]
        for start in range(0, rows.numel(), chunk):
            sel = rows[start : start + chunk]
            keep = head_blocks[:, q_block[start : start + chunk]][:, :, k_block]  # [Bp, r, Sk]
            scores = torch.matmul(q[:, head, sel].double(), k64.transpose(-1, -2)) * scale  # [B, r, Sk]
            probs = torch.softmax(scores, dim=-1)
            kept_probs = probs * keep
            if not want_output:
                first[:, head] += kept_probs.sum(dim=(-1, -2))
                second[:, head] += sel.numel()
                continue
            dense_out = torch.matmul(probs, v64)
            # A softmax of its own rather than renormalised dense probabilities, which could underflow when
            # the plan keeps only far-off keys. Rows keeping nothing (skipped heads) output zero, as backends do.
            plan_probs = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1).nan_to_num(0.0)
            plan_out = torch.matmul(plan_probs, v64)
            first[:, head] += (plan_out - dense_out).square().sum(dim=(-1, -2))
            second[:, head] += dense_out.square().sum(dim=(-1, -2))
    return first, second
