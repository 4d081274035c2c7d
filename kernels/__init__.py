"""Triton kernels of vidsparse, importable as `vidsparse.kernels` (never as a top-level `kernels` module).

`block_sparse_attention_fwd` is the fused block-sparse flash-attention forward that executes a BlockPlan,
reading and writing the model's token order through the plan's token table; `LaunchConfig` forces its tiles
(tests); `vidsparse.backends.triton` wraps it as the "triton" backend.
"""

from .block_sparse_attention import LaunchConfig, block_sparse_attention_fwd

__all__ = ["LaunchConfig", "block_sparse_attention_fwd"]
