"""Block-sparse attention in plain torch by gathering each query block's key blocks (the CPU fast path).

Every (batch, head, query block) is one *row*. Rows are grouped by how many key blocks they keep, and by
whether any of those blocks holds padding slots (an edge tile, the text block, a ragged last block). Each
group runs as chunks of one batched `scaled_dot_product_attention` call over contiguous gathered keys:

    queries [rows, 1, block_q, D]   keys/values [rows, 1, count * block_k, D]

so the work follows the plan's density, the CPU flash kernel sees long contiguous key sequences, and no
mask is built except for the (few) groups that touch padding slots, which get a boolean key mask.
Key blocks are gathered with `index_select` over whole blocks (memcpy-sized rows); per-element advanced
indexing is several times slower on CPU. Chunks keep the gathered keys and values near the size of the
last-level cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attention import expand_plan, from_working_order, register_backend, to_working_order
from ..plan import BlockPlan

# Elements of gathered keys per chunk (keys and values each): 2 x 16 MiB in fp32.
_CHUNK_ELEMENTS = 1 << 22


def _blocked(x: torch.Tensor, blocks: int, block: int) -> torch.Tensor:
    """[B, H, S, D] -> [B*H*blocks, block, D], zero-padding S to whole blocks."""
    b, h, s, d = x.shape
    if s < blocks * block:
        x = F.pad(x, (0, 0, 0, blocks * block - s))
    return x.reshape(b * h * blocks, block, d)


@register_backend("gather")
def gather_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: BlockPlan, scale: float) -> torch.Tensor:
    b, h, _, d = q.shape
    bq, bk = plan.block_q, plan.block_k
    mq, mk = plan.num_q_blocks, plan.num_kv_blocks
    device = q.device
    q_rows = _blocked(to_working_order(q, plan), mq, bq).unsqueeze(1)  # [rows, 1, bq, D]
    k_blocks = _blocked(to_working_order(k, plan), mk, bk).view(b * h * mk, bk * d)
    v_blocks = _blocked(to_working_order(v, plan), mk, bk).view(b * h * mk, bk * d)

    counts, indices = expand_plan(plan, b)
    counts = counts.reshape(-1).long()
    indices = indices.reshape(b * h * mq, -1).long()
    used = torch.arange(indices.shape[1], device=device) < counts.unsqueeze(1)
    indices = torch.where(used, indices, 0)
    key_valid = torch.arange(bk, device=device) < plan.kv_block_lengths(device).long().unsqueeze(1)  # [Mk, bk]
    ragged = (~key_valid.all(1))[indices].logical_and(used).any(1)
    # Global key-block ids: the row's (batch, head) selects its slice of k_blocks.
    block_ids = indices + (torch.arange(b * h * mq, device=device) // mq * mk).unsqueeze(1)

    out = torch.empty_like(q_rows)
    group = counts * 2 + ragged.long()
    order = torch.argsort(group, stable=True)
    keys_of_group, sizes = torch.unique_consecutive(group[order], return_counts=True)
    start = 0
    for key, size in zip(keys_of_group.tolist(), sizes.tolist()):
        rows = order[start : start + size]
        start += size
        width, has_padding = key // 2, bool(key % 2)
        if width == 0:  # rows of skipped heads
            out.index_fill_(0, rows, 0.0)
            continue
        step = max(1, _CHUNK_ELEMENTS // (width * bk * d))
        for chunk in rows.split(step):
            n = chunk.numel()
            ids = block_ids.index_select(0, chunk)[:, :width].reshape(-1)
            keys = k_blocks.index_select(0, ids).view(n, 1, width * bk, d)
            values = v_blocks.index_select(0, ids).view(n, 1, width * bk, d)
            mask = None
            if has_padding:
                mask = key_valid[indices.index_select(0, chunk)[:, :width]].view(n, 1, 1, width * bk)
            out.index_copy_(
                0, chunk,
                F.scaled_dot_product_attention(q_rows.index_select(0, chunk), keys, values, attn_mask=mask, scale=scale),
            )
    working_len = plan.layout.padded_len if plan.layout is not None else q.shape[2]
    return from_working_order(out.view(b, h, mq * bq, d)[:, :, :working_len], plan)
