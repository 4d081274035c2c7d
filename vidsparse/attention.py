"""`block_sparse_attention`: run a BlockPlan on q/k/v through one of the registered backends.

Every backend takes and returns tensors in the model's own token order, [B, H, S, D]. Backends that work in
the plan's working (tile) order use `to_working_order` / `from_working_order` around their kernel.

Backends:
    reference  plain torch with an explicit token mask, any dtype (float64 is the oracle of every test)
    gather     plain torch: each query block's key blocks gathered, batched SDPA calls (the CPU fast path)
    flex       torch FlexAttention with a BlockMask built from the plan, compiled
    triton     the fused block-sparse flash-attention kernel in `vidsparse.kernels`
    auto       triton on CUDA, the fastest correct CPU path otherwise
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Protocol

import torch

from .plan import BlockPlan


class Backend(Protocol):
    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: BlockPlan, scale: float, *,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The attention output [B, H, Sq, D] in the model's order, written into `out` (any strides) when given."""


_BACKENDS: dict[str, Backend] = {}


def register_backend(name: str) -> Callable[[Backend], Backend]:
    """Decorator registering an attention backend under `name`."""

    def wrap(fn: Backend) -> Backend:
        _BACKENDS[name] = fn
        return fn

    return wrap


def available_backends() -> list[str]:
    _load_optional_backends()
    return sorted(_BACKENDS) + ["auto"]


def _load_optional_backends() -> None:
    # Imported lazily: FlexAttention and Triton are heavy and optional at import time of vidsparse.
    from .backends import flex, gather, triton  # noqa: F401


def resolve_backend(name: str, device: torch.device) -> str:
    """The concrete backend `name` stands for on this device."""
    _load_optional_backends()
    if name == "auto":
        from .backends.triton import triton_available

        return "triton" if device.type == "cuda" and triton_available() else "gather"
    if name not in _BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {available_backends()}")
    return name


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: BlockPlan,
    *,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention of q over k/v restricted to the block pairs of `plan`.

    Args:
        q: [B, H, Sq, D]; k, v: [B, H, Sk, D], in the model's token order.
        plan: a BlockPlan with H heads, batch 1 (shared) or B, q_len == Sq and kv_len == Sk.
        scale: softmax scale, default 1/sqrt(D).
        backend: "reference", "flex", "triton", "gather" or "auto".

    Returns:
        [B, H, Sq, D] in the model's order; rows of skipped heads are zero.
    """
    check_inputs(q, k, v, plan)
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)
                              or not math.isfinite(scale)):
        raise ValueError(f"scale must be a finite number (or None for 1/sqrt(head_dim)), got {scale!r}")
    if not isinstance(backend, str):
        raise ValueError(f"backend must be a str, one of {available_backends()}, got {backend!r}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    name = resolve_backend(backend, q.device)
    return _BACKENDS[name](q, k, v, plan.to(q.device), scale)


def run_plan(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: BlockPlan,
    *,
    scale: float | None,
    backend: str,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """`block_sparse_attention` on the per-call path, for plans vidsparse built for these tensors itself.

    Nothing is checked or resolved: `backend` is a registered backend's name, as `resolve_backend` answers it (the
    controller resolves "auto" once per device), and the plan is on q's device already. With `out` ([B, H, Sq, D],
    any strides, e.g. a view of the [B, S, H, D] buffer the model expects), the result is written there.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return _BACKENDS[backend](q, k, v, plan, scale, out=out)


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: BlockPlan) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor [B, H, S, D], got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be [B, H, S, D], got shape {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree on batch, heads and head_dim")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.dtype.is_floating_point:
        raise ValueError(f"q, k, v must be floating point, got {q.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if not isinstance(plan, BlockPlan):
        raise ValueError(f"plan must be a vidsparse BlockPlan, got {type(plan).__name__}")
    b, h, sq, _ = q.shape
    if h != plan.num_heads:
        raise ValueError(f"q has {h} heads but the plan has {plan.num_heads}")
    if plan.batch not in (1, b):
        raise ValueError(f"q has batch {b} but the plan has batch {plan.batch} (must be 1 or {b})")
    if sq != plan.q_len or k.shape[2] != plan.kv_len:
        raise ValueError(
            f"sequence lengths q={sq}, k={k.shape[2]} do not match the plan's q_len={plan.q_len}, kv_len={plan.kv_len}"
        )


def expand_plan(plan: BlockPlan, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """kv_counts [batch, H, Mq] and kv_indices [batch, H, Mq, Kmax], broadcast (not copied) over the batch."""
    counts, indices = plan.kv_counts, plan.kv_indices
    return counts.expand(batch, *counts.shape[1:]), indices.expand(batch, *indices.shape[1:])


def to_working_order(x: torch.Tensor, plan: BlockPlan) -> torch.Tensor:
    """[B, H, S, D] model order -> working order (tile order with padding slots), or x itself without a layout."""
    perm = plan.permutation(x.device)
    return x if perm is None else x.index_select(2, perm)


def from_working_order(x: torch.Tensor, plan: BlockPlan, out: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of `to_working_order` for outputs: drops padding slots (written into `out` when given)."""
    inv = plan.inverse_permutation(x.device)
    if out is None:
        return x if inv is None else x.index_select(2, inv)
    return out.copy_(x) if inv is None else torch.index_select(x, 2, inv, out=out)


@register_backend("reference")
def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: BlockPlan, scale: float, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v with the plan's token mask, computed in q's dtype in query-row chunks."""
    b, h, sq, _ = q.shape
    sk = k.shape[2]
    out = torch.empty_like(q) if out is None else out
    # Bound the [B, H, rows, Sk] score matrix to about 2^26 elements per chunk.
    rows = max(1, min(sq, (1 << 26) // max(1, b * h * sk)))
    qb = plan.q_block_of_token(q.device)
    kb = plan.kv_block_of_token(q.device)
    block_mask = plan.to_block_mask()
    for start in range(0, sq, rows):
        stop = min(sq, start + rows)
        mask = block_mask[:, :, qb[start:stop]][:, :, :, kb]  # [Bp, H, r, Sk]
        scores = torch.matmul(q[:, :, start:stop], k.transpose(-1, -2)) * scale
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # fully masked rows: skipped heads -> zeros
        out[:, :, start:stop] = torch.matmul(probs, v)
    return out
