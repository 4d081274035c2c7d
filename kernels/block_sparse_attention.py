"""Fused block-sparse flash-attention forward in Triton, driven directly by a BlockPlan's index lists.

One program computes `BLOCK_M` query rows of one (batch, head): it reads that query block's row of
`kv_counts` / `kv_indices` (a plan shared by the batch has batch stride 0, nothing is copied) and walks only
those key blocks, `BLOCK_N` keys at a time, with the online softmax of FlashAttention-2 (Dao, arXiv
2307.08691) accumulated in fp32:

    m_new = max(m, rowmax(s));  l = l * 2^(m - m_new) + rowsum(2^(s - m_new));  acc = acc * 2^(m - m_new) + p v

with s = q k^T * scale * log2(e). No dense mask exists anywhere: the only per-block data is the index list.

Addressing: the plan's blocks are counted in its *working order* (3D tiles, padded). The kernel reads q, k, v
and writes the output in the model's own order with the caller's strides (diffusers' [B, S, H, D] viewed as
[B, H, S, D] works as is), through `token_table`: int32 [working length], the model-order token of every
working slot, -1 for a padding slot. So the permutation costs no pass over q/k/v/out outside the kernel, only a
4-byte index per key row the kernel touches (k and v rows of head_dim 128 in bf16 are 512 bytes: < 1 %).
A table rather than per-tile run offsets (a tile is `tf * th` runs of `tw` contiguous tokens): the table
needs no knowledge of the tile shape, so it holds for any working order the layout chooses (tiles that do not
divide the grid, packed or non-power-of-two tiles inside a block, text blocks), and its load is one
contiguous vector per key chunk, which the compiler pipelines with the k/v loads. Without a table (plain
ragged blocks) the working order is the model's order.

Padding: a padding slot's address is clamped to a real token so every load is unmasked. Key block j holds
`kv_block_lengths[j]` real tokens, first in the block; only key chunks that reach past that length (in edge
tiles, the last text block, a ragged last block) mask the scores of their padding slots to -inf. Chunks of
full blocks, the vast majority, take the fast path: no mask, decided by one scalar length load and compare
per key chunk (the loads stay outside that branch, so they pipeline). Query rows of padding slots are computed
on a real token's row and not stored.

head_dim: tl.arange needs powers of two, so a head_dim that is not one is split into two power-of-two parts
when that is smaller than padding (96 = 64 + 32, 80 = 64 + 16; two dot products accumulate the scores, two
accumulators hold the output): no padded column is loaded or multiplied. Otherwise (e.g. 112 -> 128, or
head_dim < 16) the columns are padded and masked.

A row whose count is 0 (a skipped head) writes zeros.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

_LOG2_E = 1.4426950408889634
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _slot_rows(TOKENS, slots, length, PERMUTED: tl.constexpr):
    """Model-order rows of working slots, clamped to a real row so loads need no mask, and which are real."""
    if PERMUTED:
        token = tl.load(TOKENS + slots)
        rows = tl.maximum(token, 0)
        real = token >= 0
    else:
        rows = tl.minimum(slots, length - 1)
        real = slots < length
    return rows, real


@triton.jit
def _load_cols(ptrs, cols, HEAD_DIM: tl.constexpr, PADDED: tl.constexpr):
    """Load a tile whose head_dim columns are `cols`; the mask exists only if the part has padded columns."""
    if PADDED:
        x = tl.load(ptrs, mask=cols < HEAD_DIM, other=0.0)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def _dot(a, b, FP32_DOT: tl.constexpr):
    if FP32_DOT:
        c = tl.dot(a, b, input_precision="ieee")
    else:
        c = tl.dot(a.to(b.dtype), b)
    return c


@triton.jit
def _block_sparse_attention_fwd(
    Q, K, V, Out, KV_COUNTS, KV_INDICES, KV_LENGTHS, TOKENS,
    qk_scale, q_len, kv_len, num_heads,
    stride_qb, stride_qh, stride_qs, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_ob, stride_oh, stride_os, stride_od,
    stride_cb, stride_ch, stride_cm,
    stride_ib, stride_ih, stride_im, stride_ik,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PERMUTED: tl.constexpr, FP32_DOT: tl.constexpr,
):
    # head_dim columns: part d = [0, BLOCK_D), part e = [BLOCK_D, BLOCK_D + BLOCK_E) when BLOCK_E > 0.
    D_PADDED: tl.constexpr = BLOCK_D > HEAD_DIM
    E_PADDED: tl.constexpr = BLOCK_D + BLOCK_E > HEAD_DIM
    CHUNKS: tl.constexpr = BLOCK_K // BLOCK_N
    row_start = tl.program_id(0) * BLOCK_M
    q_block = row_start // BLOCK_Q  # BLOCK_M divides BLOCK_Q: a program never straddles two query blocks
    b = tl.program_id(1) // num_heads
    h = tl.program_id(1) % num_heads
    rows, row_ok = _slot_rows(TOKENS, row_start + tl.arange(0, BLOCK_M), q_len, PERMUTED)
    cols_d = tl.arange(0, BLOCK_D)

    q_rows = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + rows.to(tl.int64)[:, None] * stride_qs
    q = _load_cols(q_rows + cols_d[None, :] * stride_qd, cols_d[None, :], HEAD_DIM, D_PADDED)
    # Loop-invariant parts of the key/value addresses (k is loaded transposed, [BLOCK_D, BLOCK_N]).
    k_base = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if BLOCK_E > 0:
        cols_e = BLOCK_D + tl.arange(0, BLOCK_E)
        q_e = _load_cols(q_rows + cols_e[None, :] * stride_qd, cols_e[None, :], HEAD_DIM, E_PADDED)
        acc_e = tl.zeros([BLOCK_M, BLOCK_E], dtype=tl.float32)
    count = tl.load(KV_COUNTS + b * stride_cb + h * stride_ch + q_block * stride_cm)
    index_row = KV_INDICES + b * stride_ib + h * stride_ih + q_block * stride_im

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    # One flat loop over (listed key block, BLOCK_N-chunk of it): the compiler pipelines the loads across
    # key blocks, which a nested per-block loop would not allow.
    for it in range(count * CHUNKS):
        kv_block = tl.load(index_row + (it // CHUNKS) * stride_ik)
        chunk_start = (it % CHUNKS) * BLOCK_N
        offs_in_block = chunk_start + tl.arange(0, BLOCK_N)
        keys, _ = _slot_rows(TOKENS, kv_block * BLOCK_K + offs_in_block, kv_len, PERMUTED)
        key_offsets = keys.to(tl.int64)
        k = _load_cols(k_base + key_offsets[None, :] * stride_ks + cols_d[:, None] * stride_kd,
                       cols_d[:, None], HEAD_DIM, D_PADDED)
        s = _dot(q, k, FP32_DOT)
        if BLOCK_E > 0:
            k_e = _load_cols(k_base + key_offsets[None, :] * stride_ks + cols_e[:, None] * stride_kd,
                             cols_e[:, None], HEAD_DIM, E_PADDED)
            s += _dot(q_e, k_e, FP32_DOT)
        s = s * qk_scale
        length = tl.load(KV_LENGTHS + kv_block)
        if length < chunk_start + BLOCK_N:  # a chunk with padding slots (they come last in the block): mask them
            s = tl.where(offs_in_block[None, :] < length, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A chunk of padding seen before any real key leaves m_new = -inf; subtract 0 then, not -inf (NaN).
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_sub[:, None])
        alpha = tl.math.exp2(m_i - m_sub)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_cols(v_base + key_offsets[:, None] * stride_vs + cols_d[None, :] * stride_vd,
                       cols_d[None, :], HEAD_DIM, D_PADDED)
        acc = acc * alpha[:, None] + _dot(p, v, FP32_DOT)
        if BLOCK_E > 0:
            v_e = _load_cols(v_base + key_offsets[:, None] * stride_vs + cols_e[None, :] * stride_vd,
                             cols_e[None, :], HEAD_DIM, E_PADDED)
            acc_e = acc_e * alpha[:, None] + _dot(p, v_e, FP32_DOT)
        m_i = m_new

    inv_l = 1.0 / tl.where(l_i > 0.0, l_i, 1.0)  # no key at all (count 0): acc is 0, the row stays 0
    out_rows = Out + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + rows.to(tl.int64)[:, None] * stride_os
    tl.store(out_rows + cols_d[None, :] * stride_od, (acc * inv_l[:, None]).to(Out.dtype.element_ty),
             mask=row_ok[:, None] & (cols_d[None, :] < HEAD_DIM))
    if BLOCK_E > 0:
        tl.store(out_rows + cols_e[None, :] * stride_od, (acc_e * inv_l[:, None]).to(Out.dtype.element_ty),
                 mask=row_ok[:, None] & (cols_e[None, :] < HEAD_DIM))


# ----- launch configuration -------------------------------------------------------------------------------
class LaunchConfig(NamedTuple):
    """Tile sizes and scheduling of one launch: BLOCK_M query rows per program, BLOCK_N keys per step."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# (BLOCK_M, BLOCK_N, num_warps, num_stages) per head_dim class on Hopper, clamped to the plan's block sizes
# (BLOCK_M <= block_q so a program stays inside one query block; BLOCK_N <= block_k divides it).
# Starting points from FlashAttention-2 practice (128 query rows per program; narrower key chunks and more
# warps as head_dim grows). Measured once, on an H200 (scripts/results/gpu_check_nvidia-h200.json): 360-398 TFLOP/s
# of attended work at D=128 and densities 1.0-0.1, where FlexAttention reaches 8-10 % more and cuDNN's dense kernel
# 632; not tuned yet: `scripts/gpu_check.py --sections tune` times a grid of configs against this table.
_HOPPER_CONFIGS: dict[int, LaunchConfig] = {
    64: LaunchConfig(128, 128, 8, 3),
    128: LaunchConfig(128, 64, 8, 3),
}
# Under TRITON_INTERPRET the kernel runs in numpy on the CPU, one program at a time: the widest tiles mean
# the fewest interpreted steps. Warps and stages mean nothing there.
_INTERPRETER_CONFIG = LaunchConfig(256, 256, 4, 1)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def launch_config(head_dim: int, block_q: int, block_k: int, *, interpreter: bool) -> LaunchConfig:
    """The launch table's config for this head_dim and plan block sizes."""
    block_m, block_n, warps, stages = (
        _INTERPRETER_CONFIG if interpreter else _HOPPER_CONFIGS[64 if head_dim <= 64 else 128]
    )
    block_m, block_n = min(block_m, block_q), min(block_n, block_k)
    if block_m < 128:  # 8 warps only pay off on 128-row tiles (small test tiles of 16-64 rows)
        warps = min(warps, 4)
    return LaunchConfig(block_m, block_n, warps, stages)


def head_dim_blocks(head_dim: int) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_E): the power-of-two column parts head_dim runs as; BLOCK_E = 0 means one part.

    Two parts when their sum is below the next power of two (96 -> 64 + 32, 80 -> 64 + 16, 72 -> 64 + 16 with
    8 padded columns); one padded part otherwise (112 -> 128, tl.dot needs >= 16 columns: 8 -> 16).
    """
    padded = max(16, triton.next_power_of_2(head_dim))
    low = padded // 2
    high = max(16, triton.next_power_of_2(head_dim - low)) if head_dim > low >= 16 else 0
    return (low, high) if high and low + high < padded else (padded, 0)


# ----- launch -----------------------------------------------------------------------------------------------
def _check_block(name: str, value: int, upper: int = 256) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value & (value - 1) or not 16 <= value <= upper:
        raise ValueError(f"{name} must be a power of two in [16, {upper}] (tl.dot needs tiles >= 16), got {value!r}")


def _check_config(config: LaunchConfig, block_q: int, block_k: int) -> LaunchConfig:
    config = LaunchConfig(*config)
    _check_block("config.block_m", config.block_m, block_q)
    _check_block("config.block_n", config.block_n, block_k)
    for name in ("num_warps", "num_stages"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"config.{name} must be a positive integer, got {value!r}")
    return config


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
    token_table: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    config: LaunchConfig | tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """Block-sparse attention; one launch for all batches and heads.

    Args:
        q: [B, H, Sq, D]; k, v: [B, H, Sk, D] (any strides), float16, bfloat16 or float32, D <= 256
            (bfloat16 only on a GPU: Triton's interpreter computes it wrongly). In the model's order.
        kv_counts: int32 [B or 1, H, Mq]; kv_indices: int32 [B or 1, H, Mq, Kmax], blocks of the working order.
            A leading 1 is broadcast over the batch with stride 0.
        kv_block_lengths: int32 [Mk]: real keys in each key block, first in the block; only the key chunks
            that reach past it take the masked path.
        block_q, block_k: the plan's block sizes, powers of two in [16, 256].
        scale: softmax scale.
        token_table: int32 [W], the model-order token of each working slot, -1 for padding slots (a
            VideoLayout's permutation); then Sq == Sk, W is a multiple of both block sizes, Mq = W / block_q,
            Mk = W / block_k, and every entry must lie in [-1, Sq) (not checked: that would read the device).
            None: the working order is the model's order, cut into blocks (a ragged last one); tensors
            already in a padded working order also work, their padding slots holding finite values (read
            unmasked, never attended to; `to_working_order` fills them with a real token's).
        out: optional [B, H, Sq, D] output of q's dtype to write into, any strides (every element is written).
        config: force a LaunchConfig (block_m dividing block_q, block_n dividing block_k), e.g. to test the
            sub-block path of the GPU launch table under the interpreter; default: `launch_config`.

    Returns:
        out, [B, H, Sq, D] in the model's order; rows of query blocks with count 0 are zero.
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
    kv_len = k.shape[2]
    if k.shape != v.shape or k.shape[:2] != q.shape[:2] or k.shape[3] != head_dim or not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q {tuple(q.shape)} {q.dtype}, k {tuple(k.shape)} {k.dtype}, v {tuple(v.shape)} {v.dtype}: "
                         "k and v must match, and share batch, heads, head_dim and dtype with q")
    if not 1 <= head_dim <= 256:
        raise ValueError(f"head_dim must be in [1, 256], got {head_dim}")
    for name, t, dims in (("kv_counts", kv_counts, 3), ("kv_indices", kv_indices, 4),
                          ("kv_block_lengths", kv_block_lengths, 1), ("token_table", token_table, 1)):
        if t is not None and (t.dtype != torch.int32 or t.dim() != dims):
            raise ValueError(f"{name} must be an int32 tensor with {dims} dims, got {t.dtype} {tuple(t.shape)}")
    working_q, working_k = q_len, kv_len
    if token_table is not None:
        working_q = working_k = token_table.shape[0]
        if q_len != kv_len or working_q % block_q or working_k % block_k:
            raise ValueError(f"token_table of {working_q} slots needs q and k of one length (got {q_len}, {kv_len}) "
                             f"and a multiple of block_q={block_q} and block_k={block_k} slots")
    num_q_blocks = triton.cdiv(working_q, block_q)
    if kv_counts.shape[0] not in (1, batch) or tuple(kv_counts.shape[1:]) != (heads, num_q_blocks):
        raise ValueError(f"kv_counts must be [1 or {batch}, {heads}, {num_q_blocks}], got {tuple(kv_counts.shape)}")
    if tuple(kv_indices.shape[:3]) != tuple(kv_counts.shape):
        raise ValueError(f"kv_indices {tuple(kv_indices.shape)} must start with kv_counts' shape {tuple(kv_counts.shape)}")
    if kv_block_lengths.shape[0] != triton.cdiv(working_k, block_k):
        raise ValueError(f"kv_block_lengths has {kv_block_lengths.shape[0]} blocks of {block_k}, "
                         f"{working_k} key slots need {triton.cdiv(working_k, block_k)}")
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(f"out must be {tuple(q.shape)} {q.dtype} on {q.device}, got {tuple(out.shape)} {out.dtype}")
    plan_tensors = (kv_counts, kv_indices, kv_block_lengths) + (() if token_table is None else (token_table,))
    if {t.device for t in (q, k, v) + plan_tensors} != {q.device}:
        raise ValueError("q, k, v and the plan tensors must be on one device")

    counts = kv_counts.expand(batch, -1, -1)  # stride 0 over the batch for a shared plan
    indices = kv_indices.expand(batch, -1, -1, -1)
    if config is None:
        config = launch_config(head_dim, block_q, block_k, interpreter=interpreter)
    block_m, block_n, warps, stages = _check_config(config, block_q, block_k)
    block_d, block_e = head_dim_blocks(head_dim)
    grid = (triton.cdiv(working_q, block_m), batch * heads)
    _block_sparse_attention_fwd[grid](
        q, k, v, out, counts, indices, kv_block_lengths, kv_block_lengths if token_table is None else token_table,
        scale * _LOG2_E, working_q, kv_len, heads,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *counts.stride(), *indices.stride(),
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_E=block_e, BLOCK_Q=block_q, BLOCK_K=block_k,
        BLOCK_M=block_m, BLOCK_N=block_n, PERMUTED=token_table is not None, FP32_DOT=q.dtype == torch.float32,
        num_warps=warps, num_stages=stages,
    )
    return out
