"""Triton kernels of vidsparse, importable as `vidsparse.kernels` (never as a top-level `kernels` module).

`block_sparse_attention_fwd` is the fused block-sparse flash-attention forward that executes a BlockPlan in
its working order; `vidsparse.backends.triton` wraps it as the "triton" backend.
"""

from .block_sparse_attention import block_sparse_attention_fwd

__all__ = ["block_sparse_attention_fwd"]
