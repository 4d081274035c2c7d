"""Block-sparse attention in plain torch by gathering each query block's key blocks (the CPU fast path).

Query blocks of all batches and heads are sorted by how many key blocks they keep and processed in chunks;
each chunk gathers only as many key blocks as its largest row needs and runs one batched
`scaled_dot_product_attention`, so the work follows the plan's density even when counts are uneven.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attention import expand_plan, from_working_order, register_backend, to_working_order
from ..plan import BlockPlan

# Elements of gathered keys per chunk (k and v each): bounds the extra memory to about 2 x 64 MiB in fp32.
_CHUNK_ELEMENTS = 1 << 24


@register_backend("gather")
def gather_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: BlockPlan, scale: float) -> torch.Tensor:
    b, h, _, d = q.shape
    bq, bk = plan.block_q, plan.block_k
    mq, mk = plan.num_q_blocks, plan.num_kv_blocks
    qw, kw, vw = (to_working_order(x, plan) for x in (q, k, v))
    # Pad the working sequences to whole blocks so they can be viewed as [rows, block, D].
    qw = F.pad(qw, (0, 0, 0, mq * bq - qw.shape[2]))
    kw = F.pad(kw, (0, 0, 0, mk * bk - kw.shape[2]))
    vw = F.pad(vw, (0, 0, 0, mk * bk - vw.shape[2]))
    q_rows = qw.reshape(b * h * mq, bq, d)
    k_blocks = kw.reshape(b * h, mk, bk, d)
    v_blocks = vw.reshape(b * h, mk, bk, d)
    counts, indices = expand_plan(plan, b)
    counts = counts.reshape(-1).long()
    indices = indices.reshape(b * h * mq, -1).long()
    head_of_row = torch.arange(b * h, device=q.device).repeat_interleave(mq)
    key_valid = torch.arange(bk, device=q.device) < plan.kv_block_lengths(q.device).long().unsqueeze(1)  # [Mk, bk]

    out_rows = torch.zeros_like(q_rows)
    order = torch.argsort(counts, descending=True)
    order = order[counts[order] > 0]  # rows of skipped heads stay zero
    start = 0
    while start < order.numel():
        width = int(counts[order[start]])
        n_rows = max(1, _CHUNK_ELEMENTS // (width * bk * d))
        rows = order[start : start + n_rows]
        idx = indices[rows, :width]  # [r, width]
        used = torch.arange(width, device=q.device) < counts[rows].unsqueeze(1)
        idx = torch.where(used, idx, 0)
        heads = head_of_row[rows].unsqueeze(1)
        # 4-D [rows, 1, tokens, D] inputs: on CPU, 3-D ones fall back to the slow math kernel.
        keys = k_blocks[heads, idx].reshape(len(rows), 1, width * bk, d)
        values = v_blocks[heads, idx].reshape(len(rows), 1, width * bk, d)
        mask = (key_valid[idx] & used.unsqueeze(-1)).reshape(len(rows), 1, 1, width * bk)
        out_rows[rows] = F.scaled_dot_product_attention(
            q_rows[rows].unsqueeze(1), keys, values, attn_mask=mask, scale=scale
        ).squeeze(1)
        start += len(rows)
    working_len = plan.layout.padded_len if plan.layout is not None else q.shape[2]
    return from_working_order(out_rows.reshape(b, h, mq * bq, d)[:, :, :working_len], plan)
