"""Backend "flex": torch FlexAttention (`torch.nn.attention.flex_attention`) driven by a BlockMask built from the plan.

The plan's lists become the BlockMask's lists directly (`BlockMask.from_kv_blocks`, working order, block size
(block_q, block_k), a batch-1 plan broadcast by FlexAttention itself). Key blocks whose real tokens fill the
block go in the "full" lists, which FlexAttention computes without evaluating any mask; blocks with padding
slots (edge tiles, the text block, a ragged last block) go in the "partial" lists, where a mask_mod keeps
the block's real keys only. Plans without such blocks carry no mask_mod at all.

flex_attention is compiled once per shape by torch.compile (inductor's C++ template on CPU, its Triton
template on GPU). BlockMasks are cached per plan, so a cached static plan pays for its conversion once.
"""

from __future__ import annotations

import functools
import weakref

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from ..attention import from_working_order, register_backend, to_working_order
from ..plan import BlockPlan

# Distinct shapes one process may compile before dynamo falls back to (slow, memory-hungry) eager flex.
_RECOMPILE_LIMIT = 64
_block_masks: weakref.WeakKeyDictionary[BlockPlan, dict[str, BlockMask]] = weakref.WeakKeyDictionary()


@functools.cache
def _compiled_flex_attention():
    return torch.compile(flex_attention, dynamic=False)


def plan_block_mask(plan: BlockPlan, device: torch.device) -> BlockMask:
    """The BlockMask computing exactly the plan's block pairs over real keys, in the working order."""
    per_plan = _block_masks.setdefault(plan, {})
    if str(device) not in per_plan:
        per_plan[str(device)] = _build_block_mask(plan.to(device), device)
    return per_plan[str(device)]


def _build_block_mask(plan: BlockPlan, device: torch.device) -> BlockMask:
    mk, bk = plan.num_kv_blocks, plan.block_k
    lengths = plan.kv_block_lengths(device)
    # FlexAttention's index lists must be wide enough to cover every key block.
    indices = F.pad(plan.kv_indices, (0, mk - plan.max_kv_blocks)).long()
    listed = torch.arange(mk, device=device) < plan.kv_counts.unsqueeze(-1)
    ragged = listed & (lengths[indices] < bk)
    full = listed & ~ragged
    working_len = plan.layout.padded_len if plan.layout is not None else plan.kv_len

    def split(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # A stable sort puts the selected entries first, in the plan's order.
        order = torch.sort((~selected).to(torch.int8), dim=-1, stable=True).indices
        return selected.sum(-1, dtype=torch.int32), torch.gather(indices, -1, order).to(torch.int32).contiguous()

    partial_counts, partial_indices = split(ragged)
    full_counts, full_indices = split(full)
    mask_mod = None
    if bool(ragged.any()):
        key_valid = (torch.arange(bk, device=device) < lengths.unsqueeze(1)).reshape(-1)  # [Mk * block_k]

        def mask_mod(b, h, q_idx, kv_idx):
            return key_valid[kv_idx]

    q_working_len = plan.layout.padded_len if plan.layout is not None else plan.q_len
    return BlockMask.from_kv_blocks(
        partial_counts, partial_indices, full_counts, full_indices,
        BLOCK_SIZE=(plan.block_q, bk), mask_mod=mask_mod, seq_lengths=(q_working_len, working_len),
        compute_q_blocks=False,  # the transposed lists only serve the backward pass
    )


@register_backend("flex")
def flex_backend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: BlockPlan, scale: float, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    block_mask = plan_block_mask(plan, q.device)
    qw, kw, vw = (to_working_order(x, plan) for x in (q, k, v))
    with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
        result = _compiled_flex_attention()(qw, kw, vw, block_mask=block_mask, scale=scale)
    if plan.skip_heads is not None:
        # Rows with no key block are not guaranteed to be zero in every FlexAttention build.
        result = result.masked_fill(plan.skip_heads.to(q.device)[None, :, None, None], 0.0)
    return from_working_order(result, plan, out)
