"""Block-sparse attention in plain torch by gathering each query block's key blocks (the CPU fast path).

Every (batch, head, query block) is one *row*. Rows of one (batch, head) that keep exactly the same key blocks
form a *set* (common in local-window plans: all query tiles of a NATTEN stride group, or near the borders,
share one window). Sets are grouped by their number of query blocks, number of key blocks, and whether any key
block holds padding slots (an edge tile, the text block, a ragged last block). Each group runs as chunks of one
batched `scaled_dot_product_attention` call over contiguous gathered tokens:

    queries [sets, 1, n * block_q, D]   keys/values [sets, 1, count * block_k, D]

so the work follows the plan's density, the CPU flash kernel sees long contiguous sequences (longer query
sequences get its larger, more efficient query tiles), keys shared by a set are gathered once, and no mask is
built except for the groups that touch padding slots, which get a boolean key mask. Blocks are gathered with
`index_select` over whole blocks (memcpy-sized rows); per-element advanced indexing is several times slower
on CPU. Chunks keep the gathered keys and values near the size of the last-level cache.
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
def gather_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: BlockPlan, scale: float, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    b, h, _, d = q.shape
    bq, bk = plan.block_q, plan.block_k
    mq, mk = plan.num_q_blocks, plan.num_kv_blocks
    device = q.device
    q_rows = _blocked(to_working_order(q, plan), mq, bq)  # [rows, bq, D]
    k_blocks = _blocked(to_working_order(k, plan), mk, bk).view(b * h * mk, bk * d)
    v_blocks = _blocked(to_working_order(v, plan), mk, bk).view(b * h * mk, bk * d)

    counts, indices = expand_plan(plan, b)
    counts = counts.reshape(-1).long()
    indices = indices.reshape(b * h * mq, -1).long()
    # Canonical key list of every row: its key blocks sorted, unused slots = mk (sorts last).
    used = torch.arange(indices.shape[1], device=device) < counts.unsqueeze(1)
    canonical = torch.sort(torch.where(used, indices, mk), dim=1).values
    head_of_row = torch.arange(b * h * mq, device=device) // mq
    sets, set_of_row = torch.unique(torch.cat([head_of_row.unsqueeze(1), canonical], 1), dim=0, return_inverse=True)
    set_head, set_keys = sets[:, 0], sets[:, 1:]
    set_width = (set_keys < mk).sum(1)
    set_size = torch.bincount(set_of_row, minlength=len(sets))
    rows_by_set = torch.argsort(set_of_row, stable=True)
    set_start = torch.cumsum(set_size, 0) - set_size
    set_keys = set_keys.clamp(max=mk - 1)  # unused slots are never read beyond the set's width
    key_valid = torch.arange(bk, device=device) < plan.kv_block_lengths(device).long().unsqueeze(1)  # [Mk, bk]
    listed = torch.arange(set_keys.shape[1], device=device) < set_width.unsqueeze(1)
    ragged = (~key_valid.all(1))[set_keys] & listed
    kinds, kind_of_set = torch.unique(
        torch.stack([set_width, set_size, ragged.any(1).long()], 1), dim=0, return_inverse=True
    )

    rows_out = torch.empty_like(q_rows)
    for kind, (width, size, has_padding) in enumerate(kinds.tolist()):
        members_of_kind = torch.nonzero(kind_of_set == kind).squeeze(1)
        rows = rows_by_set[set_start[members_of_kind].unsqueeze(1) + torch.arange(size, device=device)]  # [sets, size]
        if width == 0:  # rows of skipped heads
            rows_out.index_fill_(0, rows.reshape(-1), 0.0)
            continue
        step = max(1, _CHUNK_ELEMENTS // (width * bk * d))
        for chunk, chunk_rows in zip(members_of_kind.split(step), rows.split(step)):
            n = chunk.numel()
            keys_of_chunk = set_keys.index_select(0, chunk)[:, :width]
            ids = (keys_of_chunk + (set_head.index_select(0, chunk) * mk).unsqueeze(1)).reshape(-1)
            keys = k_blocks.index_select(0, ids).view(n, 1, width * bk, d)
            values = v_blocks.index_select(0, ids).view(n, 1, width * bk, d)
            mask = key_valid[keys_of_chunk].view(n, 1, 1, width * bk) if has_padding else None
            queries = q_rows.index_select(0, chunk_rows.reshape(-1)).view(n, 1, size * bq, d)
            result = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, scale=scale)
            rows_out.index_copy_(0, chunk_rows.reshape(-1), result.view(n * size, bq, d))
    working_len = plan.layout.padded_len if plan.layout is not None else q.shape[2]
    return from_working_order(rows_out.view(b, h, mq * bq, d)[:, :, :working_len], plan, out)
