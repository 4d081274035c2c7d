"""blockified: exact block importance, fewest blocks to a recall target, reused across steps (AdaSpa, arXiv 2502.21079)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..device_cache import on_device
from ..layout import VideoLayout
from ..plan import BlockPlan
from .base import Strategy, register_strategy
from .pooling import check_qk, compute_dtype, density_with_text, plan_from_video_mask, smallest_covering_set

# Upper bound on the elements of one chunk of the score matrix (B * H * query rows * key columns): 2^26 floats
# = 256 MiB in float32. The search never materializes more than this, whatever the sequence length.
_SCORE_CHUNK_ELEMENTS = 1 << 26


@register_strategy
@dataclass(frozen=True)
class Blockified(Strategy):
    """Head-adaptive block sparsity from an exact search, reused across denoising steps (AdaSpa).

    Definition, per batch entry and head, with s_ij = q_i . k_j / sqrt(D) over real tokens only:

    1. Row log-sum-exp: L_i = log sum_j exp(s_ij) over every key j (video and text).
    2. Exact block importance: A[a, b] = (1 / n_a) * sum_{i in a} sum_{j in b} exp(s_ij - L_i), the mean over
       the real queries of query block a of the softmax mass they give to key block b (each row of A sums to 1).
    3. For each video query block a, keep the fewest video key blocks, taken in descending order of A[a, .],
       such that T_a + (their mass) >= `recall`, where T_a = sum of A[a, text blocks] (text is always kept).
       The kept blocks therefore hold at least `recall` of the block's mean attention mass.
    4. Every query block also keeps its own block; text rows and columns are dense.

    Designed for: any head whose mass concentrates on few blocks, whatever the pattern (recall 0.95: error < 0.1
    at density <= 0.3 on the zoo's block heads); on diffuse heads it keeps nearly everything, as it should.

    Cost: step 2 is one pass of dense scores, in chunks of at most 2^26 of them: per key block, the sum of
    exp(s_ij - running row max) (rescaled online when the row max grows, as flash attention does); L_i is the
    log of the sum over all key blocks, so the scores are exponentiated once. AdaSpa pays it only at a few steps, because
    a head's pattern and L_i barely change across denoising steps: `plan()` always searches, and
    `reusable(planned_at, step)` tells the runtime (`vidsparse.strategies.reuse.PlanCache`) to reuse the plan
    for the `refresh_every` steps starting at the one it was made at, then search again.

    Args:
        recall: attention mass each query block must keep, in (0, 1].
        refresh_every: denoising steps one search serves, >= 1 (1 = search at every step).
    """

    name = "blockified"
    is_dynamic = True

    recall: float = 0.9
    refresh_every: int = 10

    def __post_init__(self) -> None:
        if isinstance(self.recall, bool) or not isinstance(self.recall, (int, float)) or not 0 < self.recall <= 1:
            raise ValueError(f"blockified: recall must be a number in (0, 1], got {self.recall!r}")
        if isinstance(self.refresh_every, bool) or not isinstance(self.refresh_every, int) or self.refresh_every < 1:
            raise ValueError(f"blockified: refresh_every must be an integer >= 1, got {self.refresh_every!r}")

    def reusable(self, planned_at: int | None, step: int | None) -> bool:
        if planned_at is None or step is None:
            return False
        return 0 <= step - planned_at < self.refresh_every

    def block_importance(self, layout: VideoLayout, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """A: float [B, H, Mv, M], the exact mean attention mass of each (video query block, key block)."""
        check_qk(self.name, layout, q, k)
        return _block_importance(layout, q, k)

    def _plan_dynamic(self, layout: VideoLayout, q: torch.Tensor, k: torch.Tensor) -> BlockPlan:
        mass = self.block_importance(layout, q, k)
        mv = layout.num_video_blocks
        keep = smallest_covering_set(mass[..., :mv], self.recall, base=mass[..., mv:].sum(-1))
        return plan_from_video_mask(keep, layout)

    def estimate_density(self, layout: VideoLayout) -> float:
        """An upper bound: ceil(recall * Mv) + 1 blocks per query block, what a uniform head needs."""
        mv = layout.num_video_blocks
        return density_with_text(layout, min(mv, math.ceil(self.recall * mv) + 1) / mv)


def _block_importance(layout: VideoLayout, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    b, h, _, d = q.shape
    bs, mv, m = layout.block_size, layout.num_video_blocks, layout.num_blocks
    dtype = compute_dtype(q)
    scale = 1.0 / math.sqrt(d)
    perm = on_device(layout, "permutation", q.device, lambda: layout.permutation)
    real = perm >= 0
    # Working order: tiles (and text blocks) of `bs` consecutive slots; padding slots are masked out.
    q_work = q.index_select(2, perm[: mv * bs].clamp(min=0)).to(dtype) * scale
    k_work = k.index_select(2, perm.clamp(min=0)).to(dtype)
    key_bias = torch.zeros(m * bs, dtype=dtype, device=q.device).masked_fill(~real, float("-inf"))
    q_lengths = on_device(layout, "block_lengths", q.device, lambda: layout.block_lengths)[:mv].to(dtype)
    row_weight = real[: mv * bs].to(dtype) / q_lengths.repeat_interleave(bs)  # 1/n_a on real rows, 0 on padding

    per_row = b * h * bs  # score elements per key column for one query block
    k_chunk = max(1, min(m, _SCORE_CHUNK_ELEMENTS // (per_row * bs)))  # key blocks per chunk
    q_chunk = max(1, min(mv, _SCORE_CHUNK_ELEMENTS // (per_row * k_chunk * bs)))  # query blocks per chunk
    key_chunks = [(start, min(m, start + k_chunk)) for start in range(0, m, k_chunk)]

    def scores(q_rows: torch.Tensor, kc: tuple[int, int]) -> torch.Tensor:
        lo, hi = kc[0] * bs, kc[1] * bs
        return torch.matmul(q_rows, k_work[:, :, lo:hi].transpose(-1, -2)) + key_bias[lo:hi]

    mass = torch.empty(b, h, mv, m, dtype=dtype, device=q.device)
    for qa in range(0, mv, q_chunk):
        qb = min(mv, qa + q_chunk)
        q_rows = q_work[:, :, qa * bs : qb * bs]
        rows = (qb - qa) * bs
        row_max = torch.full((b, h, rows, 1), float("-inf"), dtype=dtype, device=q.device)
        block_sums = torch.zeros(b, h, rows, m, dtype=dtype, device=q.device)  # sum_j in block exp(s_ij - max_i)
        for kc in key_chunks:
            s = scores(q_rows, kc)
            # Every block holds a real key, so each chunk's row max is finite and the rescaling never gives NaN.
            new_max = torch.maximum(row_max, s.amax(-1, keepdim=True))
            block_sums.mul_(torch.exp(row_max - new_max))
            block_sums[..., kc[0] : kc[1]] = s.sub_(new_max).exp_().reshape(b, h, rows, kc[1] - kc[0], bs).sum(-1)
            row_max = new_max
        # exp(s - L) summed over a key block = its block sum / the row's total; then weighted-summed per query block.
        weight = row_weight[qa * bs : qb * bs, None]
        probs = block_sums / block_sums.sum(-1, keepdim=True).clamp(min=torch.finfo(dtype).tiny) * weight
        mass[:, :, qa:qb] = probs.reshape(b, h, qb - qa, bs, m).sum(3)
    return mass
