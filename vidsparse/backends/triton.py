"""Backend "triton": the fused block-sparse flash-attention kernel of `vidsparse.kernels`.

The kernel works in the plan's working (tile) order, so q/k/v are permuted once before the launch and the
output is permuted back (padding slots dropped) after it. All batches and heads run in one launch.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from ..attention import from_working_order, register_backend, to_working_order
from ..plan import BlockPlan


def triton_available() -> bool:
    """True when Triton can run the kernel: on a CUDA device, or in its CPU interpreter (TRITON_INTERPRET=1)."""
    if importlib.util.find_spec("triton") is None:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") == "1"


@register_backend("triton")
def triton_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: BlockPlan, scale: float) -> torch.Tensor:
    """Permute q/k/v to the working order once, run the kernel on all batches and heads, permute back."""
    if not triton_available():
        raise RuntimeError("backend 'triton' needs Triton with a CUDA device, or TRITON_INTERPRET=1 on the CPU")
    if q.device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise RuntimeError("backend 'triton' on CPU tensors only runs under TRITON_INTERPRET=1 (a test path, not a fast one)")
    from ..kernels import block_sparse_attention_fwd

    out = block_sparse_attention_fwd(
        *(to_working_order(x, plan) for x in (q, k, v)),
        plan.kv_counts, plan.kv_indices, plan.kv_block_lengths(q.device),
        block_q=plan.block_q, block_k=plan.block_k, scale=scale,
    )
    return from_working_order(out, plan)
