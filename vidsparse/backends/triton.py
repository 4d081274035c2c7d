"""Backend "triton": the fused block-sparse flash-attention kernel of `vidsparse.kernels`.

The kernel reads q/k/v and writes the output in the model's own order and strides: a plan with a layout hands
it the layout's permutation as an int32 table (working slot -> model-order token, -1 for padding), built once
per (layout, device). So no full-tensor copy of q, k, v or the output happens outside the kernel, and an `out`
buffer the caller passes (e.g. a [B, S, H, D]-contiguous tensor viewed as [B, H, S, D]) is written in place.
All batches and heads run in one launch.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import TYPE_CHECKING

import torch

from ..attention import register_backend
from ..layout import VideoLayout
from ..plan import BlockPlan

if TYPE_CHECKING:
    from ..kernels import LaunchConfig


def triton_available() -> bool:
    """True when Triton can run the kernel: on a CUDA device, or in its CPU interpreter (TRITON_INTERPRET=1)."""
    if importlib.util.find_spec("triton") is None:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=64)
def token_table(layout: VideoLayout, device: torch.device) -> torch.Tensor:
    """int32 [padded_len] on `device`: the model-order token of each working slot, -1 for padding slots."""
    return layout.permutation.to(device=device, dtype=torch.int32)


@register_backend("triton")
def triton_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: BlockPlan, scale: float, *,
    out: torch.Tensor | None = None, config: LaunchConfig | None = None,
) -> torch.Tensor:
    """Run the kernel on all batches and heads, in the model's order; writes into `out` when given. `config`
    overrides the launch table (to measure other tile sizes: `scripts/gpu_check.py --sections tune`)."""
    if not triton_available():
        raise RuntimeError("backend 'triton' needs Triton with a CUDA device, or TRITON_INTERPRET=1 on the CPU")
    if q.device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise RuntimeError("backend 'triton' on CPU tensors only runs under TRITON_INTERPRET=1 (a test path, not a fast one)")
    from ..kernels import block_sparse_attention_fwd

    return block_sparse_attention_fwd(
        q, k, v, plan.kv_counts, plan.kv_indices, plan.kv_block_lengths(q.device),
        block_q=plan.block_q, block_k=plan.block_k, scale=scale, out=out,
        token_table=None if plan.layout is None else token_table(plan.layout, q.device), config=config,
    )
