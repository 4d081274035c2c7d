"""Fused block-sparse flash-attention forward in Triton, driven directly by a BlockPlan's index lists.

One program computes `BLOCK_M` query rows of one (batch, head): it reads that query block's row of
`kv_counts` / `kv_indices` (a plan shared by the batch has batch stride 0, nothing is copied) and walks only
those key blocks, `BLOCK_N` keys at a time, with the online softmax of FlashAttention-2 (Dao, arXiv
2307.08691) accumulated in fp32:

    m_new = max(m, rowmax(s));  l = l * 2^(m - m_new) + rowsum(2^(s - m_new));  acc = acc * 2^(m - m_new) + p v

with s = q k^T * scale * log2(e). Key block j holds `kv_block_lengths[j]` real tokens, first in the block;
the rest (the ragged last block, padding slots of edge tiles) are masked out. A row whose count is 0 (a
skipped head) writes zeros. No dense mask exists anywhere: the only per-block data is the index list.

All tensors are in the plan's *working order*; `vidsparse.backends.triton` permutes around the call.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_LOG2_E = 1.4426950408889634
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _block_sparse_attention_fwd(
    Q, K, V, Out, KV_COUNTS, KV_INDICES, KV_LENGTHS,
    qk_scale, q_len, num_heads,
    stride_qb, stride_qh, stride_qs, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_ob, stride_oh, stride_os, stride_od,
    stride_cb, stride_ch, stride_cm,
    stride_ib, stride_ih, stride_im, stride_ik,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FP32_DOT: tl.constexpr,
):
    row_start = tl.program_id(0) * BLOCK_M
    q_block = row_start // BLOCK_Q  # BLOCK_M divides BLOCK_Q: a program never straddles two query blocks
    b = tl.program_id(1) // num_heads
    h = tl.program_id(1) % num_heads
    offs_m = row_start + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM  # head_dim 96 runs as 128 with masked columns
    row_ok = offs_m < q_len

    q = tl.load(Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
                + offs_m[:, None] * stride_qs + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    # Loop-invariant parts of the key/value addresses (k is loaded transposed, [BLOCK_D, BLOCK_N]).
    k_base = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh + offs_d[:, None] * stride_kd
    v_base = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh + offs_d[None, :] * stride_vd
    count = tl.load(KV_COUNTS + b * stride_cb + h * stride_ch + q_block * stride_cm)
    index_row = KV_INDICES + b * stride_ib + h * stride_ih + q_block * stride_im

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # One flat loop over (listed key block, BLOCK_N-chunk of it): the compiler pipelines the loads across
    # key blocks, which a nested per-block loop would not allow.
    for it in range(count * (BLOCK_K // BLOCK_N)):
        kv_block = tl.load(index_row + (it // (BLOCK_K // BLOCK_N)) * stride_ik)
        offs_in_block = (it % (BLOCK_K // BLOCK_N)) * BLOCK_N + tl.arange(0, BLOCK_N)
        key_ok = offs_in_block < tl.load(KV_LENGTHS + kv_block)
        offs_n = kv_block * BLOCK_K + offs_in_block
        k = tl.load(k_base + offs_n[None, :] * stride_ks,
                    mask=key_ok[None, :] & d_ok[:, None], other=0.0)
        if FP32_DOT:
            s = tl.dot(q, k, input_precision="ieee")
        else:
            s = tl.dot(q, k)
        s = tl.where(key_ok[None, :], s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A chunk of padding seen before any real key leaves m_new = -inf; subtract 0 then, not -inf (NaN).
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_sub[:, None])
        alpha = tl.math.exp2(m_i - m_sub)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_n[:, None] * stride_vs,
                    mask=key_ok[:, None] & d_ok[None, :], other=0.0)
        if FP32_DOT:
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]  # no key at all (count 0): acc is 0, the row stays 0
    tl.store(Out + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
             + offs_m[:, None] * stride_os + offs_d[None, :] * stride_od,
             out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


# ----- launch configuration -------------------------------------------------------------------------------
# (BLOCK_M, BLOCK_N, num_warps, num_stages) per head_dim class on Hopper, clamped to the plan's block sizes
# (BLOCK_M <= block_q so a program stays inside one query block; BLOCK_N <= block_k divides it).
# Starting points from FlashAttention-2 practice (128 query rows per program; narrower key chunks and more
# warps as head_dim grows). NOT YET MEASURED ON A GPU: no GPU was available when this table was written;
# replace it with the winners of scripts/bench_attention.py once measured.
_HOPPER_CONFIGS: dict[int, tuple[int, int, int, int]] = {
    64: (128, 128, 8, 3),
    128: (128, 64, 8, 3),
}
# Under TRITON_INTERPRET the kernel runs in numpy on the CPU, one program at a time: the widest tiles mean
# the fewest interpreted steps. Warps and stages mean nothing there.
_INTERPRETER_CONFIG = (256, 256, 4, 1)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def launch_config(head_dim: int, block_q: int, block_k: int, *, interpreter: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for this head_dim and plan block sizes."""
    block_m, block_n, warps, stages = (
        _INTERPRETER_CONFIG if interpreter else _HOPPER_CONFIGS[64 if head_dim <= 64 else 128]
    )
    block_m, block_n = min(block_m, block_q), min(block_n, block_k)
    if block_m < 128:  # 8 warps only pay off on 128-row tiles (small test tiles of 16-64 rows)
        warps = min(warps, 4)
    return block_m, block_n, warps, stages


# ----- launch -----------------------------------------------------------------------------------------------
def _check_block(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value & (value - 1) or not 16 <= value <= 256:
        raise ValueError(f"{name} must be a power of two in [16, 256] (tl.dot needs tiles >= 16), got {value!r}")


def block_sparse_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_counts: torch.Tensor,
    kv_indices: torch.Tensor,
    kv_block_lengths: torch.Tensor,
    *,
    block_q: int,
    block_k: int,
    scale: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Block-sparse attention in the working order; one launch for all batches and heads.

    Args:
        q: [B, H, Lq, D]; k, v: [B, H, Lk, D] (any strides), float16, bfloat16 or float32, D <= 256
            (bfloat16 only on a GPU: Triton's interpreter computes it wrongly).
        kv_counts: int32 [B or 1, H, ceil(Lq / block_q)]; kv_indices: int32 [B or 1, H, Mq, Kmax].
            A leading 1 is broadcast over the batch with stride 0.
        kv_block_lengths: int32 [Mk]: real keys in each key block, first in the block
            (block j covers working positions [j * block_k, j * block_k + kv_block_lengths[j])).
        block_q, block_k: the plan's block sizes, powers of two in [16, 256].
        scale: softmax scale.
        out: optional [B, H, Lq, D] output of q's dtype to write into (every element is written).

    Returns:
        out, [B, H, Lq, D]; rows of query blocks with count 0 are zero.
    """
    _check_block("block_q", block_q)
    _check_block("block_k", block_k)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must be [B, H, L, D], got shape {tuple(t.shape)}")
        if t.dtype not in _DTYPES:
            raise ValueError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")
    interpreter = _interpreting() or q.device.type != "cuda"
    if interpreter and q.dtype == torch.bfloat16:
        raise ValueError("bfloat16 needs a CUDA device: Triton's CPU interpreter computes it wrongly; use float16 or float32")
    batch, heads, q_len, head_dim = q.shape
    if k.shape != v.shape or k.shape[:2] != q.shape[:2] or k.shape[3] != head_dim or not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q {tuple(q.shape)} {q.dtype}, k {tuple(k.shape)} {k.dtype}, v {tuple(v.shape)} {v.dtype}: "
                         "k and v must match, and share batch, heads, head_dim and dtype with q")
    if not 1 <= head_dim <= 256:
        raise ValueError(f"head_dim must be in [1, 256], got {head_dim}")
    num_q_blocks = triton.cdiv(q_len, block_q)
    for name, t, dims in (("kv_counts", kv_counts, 3), ("kv_indices", kv_indices, 4),
                          ("kv_block_lengths", kv_block_lengths, 1)):
        if t.dtype != torch.int32 or t.dim() != dims:
            raise ValueError(f"{name} must be an int32 tensor with {dims} dims, got {t.dtype} {tuple(t.shape)}")
    if kv_counts.shape[0] not in (1, batch) or tuple(kv_counts.shape[1:]) != (heads, num_q_blocks):
        raise ValueError(f"kv_counts must be [1 or {batch}, {heads}, {num_q_blocks}], got {tuple(kv_counts.shape)}")
    if tuple(kv_indices.shape[:3]) != tuple(kv_counts.shape):
        raise ValueError(f"kv_indices {tuple(kv_indices.shape)} must start with kv_counts' shape {tuple(kv_counts.shape)}")
    if kv_block_lengths.shape[0] != triton.cdiv(k.shape[2], block_k):
        raise ValueError(f"kv_block_lengths has {kv_block_lengths.shape[0]} blocks of {block_k}, "
                         f"keys of length {k.shape[2]} need {triton.cdiv(k.shape[2], block_k)}")
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(f"out must be {tuple(q.shape)} {q.dtype} on {q.device}, got {tuple(out.shape)} {out.dtype}")
    if {t.device for t in (q, k, v, kv_counts, kv_indices, kv_block_lengths)} != {q.device}:
        raise ValueError("q, k, v and the plan tensors must be on one device")

    counts = kv_counts.expand(batch, -1, -1)  # stride 0 over the batch for a shared plan
    indices = kv_indices.expand(batch, -1, -1, -1)
    block_m, block_n, warps, stages = launch_config(head_dim, block_q, block_k, interpreter=interpreter)
    grid = (triton.cdiv(q_len, block_m), batch * heads)
    _block_sparse_attention_fwd[grid](
        q, k, v, out, counts, indices, kv_block_lengths, scale * _LOG2_E, q_len, heads,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *counts.stride(), *indices.stride(),
        HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)), BLOCK_Q=block_q, BLOCK_K=block_k,
        BLOCK_M=block_m, BLOCK_N=block_n, FP32_DOT=q.dtype == torch.float32,
        num_warps=warps, num_stages=stages,
    )
    return out
