"""Scoring candidates on one attention call: error and recall on sampled query rows, density, planning time.

For each head, the dense scores of the sampled rows against every key are computed once (float64, as in
`vidsparse.metrics`), then each distinct block mask among the candidates is applied to them:

    recall = mean over rows of the dense softmax mass on the kept keys             (= metrics.attention_recall)
    error  = || softmax over kept keys @ v  -  dense output || / || dense output ||  (= metrics.relative_l2_error)

Both are the metrics' definitions on the same rows (a test checks they agree); sharing the dense scores across
candidates and de-duplicating identical masks is what keeps profiling cheap. Nothing the size of q/k/v is kept:
`ScoreTable` holds running sums per (bucket, layer, candidate, head).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from ..layout import VideoLayout
from ..strategies import Strategy

# Elements of one [masks, rows, keys] float64 chunk: 2^23 = 64 MiB per temporary.
_CHUNK_ELEMENTS = 1 << 23


def sample_rows(layout: VideoLayout, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """int64 [r]: `count` distinct random video query rows (model order), sorted; all of them if there are fewer.

    Text rows are left out: every strategy keeps them dense, so they would only dilute the error.
    """
    n = layout.num_video_tokens
    picked = torch.randperm(n, generator=generator)[: min(count, n)]
    return torch.sort(picked).values + layout.video_offset


@dataclass
class CallScores:
    """Scores of every candidate on one call: float64 [C, H] each (means over the call's batch), plus the
    wall time of planning each candidate for all heads of the call (0 for static plans, which are cached)."""

    error: torch.Tensor
    recall: torch.Tensor
    density: torch.Tensor
    blocks: torch.Tensor
    plan_ms: torch.Tensor


def score_call(
    candidates: list[Strategy],
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: VideoLayout,
    *,
    rows: torch.Tensor,
    scale: float | None = None,
    layer: int = 0,
) -> CallScores:
    """Score every candidate (as used at `layer`) on q, k, v [B, H, S, D] (model order) at query rows `rows`."""
    b, h, s, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    c = len(candidates)
    masks, density, blocks, plan_ms = [], torch.zeros(c, h, dtype=torch.float64), torch.zeros(c, h), torch.zeros(c)
    for i, candidate in enumerate(candidates):
        strategy = candidate.at_layer(layer)
        if strategy.is_dynamic:
            if q.is_cuda:
                torch.cuda.synchronize(q.device)
            start = time.perf_counter()
            plan = strategy.plan(layout, q, k)
            if q.is_cuda:
                torch.cuda.synchronize(q.device)
            plan_ms[i] = (time.perf_counter() - start) * 1e3
        else:
            plan = strategy.plan(layout)
        block_mask = plan.to_block_mask().to(q.device).expand(b, h, -1, -1)  # [B, H, Mq, Mk]
        masks.append(block_mask)
        density[i] = plan.density(per_head=True).to("cpu").expand(b, h).mean(0)
        blocks[i] = block_mask.sum((-1, -2)).float().mean(0).cpu()
    rows = rows.to(q.device)
    q_block = _block_of_token(layout, q.device)[rows]
    k_block = _block_of_token(layout, q.device)
    error = torch.zeros(c, h, dtype=torch.float64)
    recall = torch.zeros(c, h, dtype=torch.float64)
    for batch in range(b):
        for head in range(h):
            head_masks = torch.stack([m[batch, head] for m in masks])  # [C, Mq, Mk]
            unique, inverse = torch.unique(head_masks.flatten(1), dim=0, return_inverse=True)
            unique = unique.view(-1, *head_masks.shape[1:])
            e, r = _score_head(q[batch, head], k[batch, head], v[batch, head], unique, rows, q_block, k_block, scale)
            error[:, head] += e[inverse.cpu()] / b
            recall[:, head] += r[inverse.cpu()] / b
    return CallScores(error, recall, density, blocks, plan_ms)


def _block_of_token(layout: VideoLayout, device: torch.device) -> torch.Tensor:
    """int64 [S]: the kernel block (working order) holding each model-order token."""
    return (layout.inverse_permutation // layout.block_size).to(device)


def _score_head(q, k, v, block_masks, rows, q_block, k_block, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """(error, recall) float64 [U] of U block masks [U, Mq, Mk] for one head, on query rows `rows`."""
    scores = torch.matmul(q[rows].double(), k.double().T) * scale  # [r, S]
    probs = torch.softmax(scores, dim=-1)
    v64 = v.double()
    dense = probs @ v64
    dense_sq = dense.square().sum()
    u, r, sk = block_masks.shape[0], rows.numel(), k.shape[0]
    error, recall = torch.empty(u, dtype=torch.float64), torch.empty(u, dtype=torch.float64)
    step = max(1, _CHUNK_ELEMENTS // (r * sk))
    for start in range(0, u, step):
        keep = block_masks[start : start + step][:, q_block][:, :, k_block]  # [u', r, S]
        recall[start : start + step] = (probs * keep).sum(-1).mean(-1).cpu()
        # Softmax over the kept keys computed on its own, like the metrics (no underflow when only far keys stay).
        kept = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1).nan_to_num(0.0)
        diff = (kept @ v64 - dense).square().sum((-1, -2))
        error[start : start + step] = (diff / dense_sq).sqrt().cpu()
    return error, recall


@dataclass
class ScoreTable:
    """Running sums of CallScores per (bucket, layer): [C, H] tensors and a sample count."""

    candidates: list[Strategy]
    num_heads: int
    sums: dict[tuple[int, int], dict[str, torch.Tensor]] = field(default_factory=dict)
    counts: dict[tuple[int, int], int] = field(default_factory=dict)
    max_error: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    def add(self, bucket: int, layer: int, scores: CallScores) -> None:
        key = (bucket, layer)
        if key not in self.sums:
            shape = (len(self.candidates), self.num_heads)
            self.sums[key] = {name: torch.zeros(shape, dtype=torch.float64) for name in _FIELDS}
            self.counts[key] = 0
            self.max_error[key] = torch.zeros(shape, dtype=torch.float64)
        for name in _FIELDS:
            value = getattr(scores, name).double()
            self.sums[key][name] += value if value.dim() == 2 else value[:, None].expand(-1, self.num_heads)
        self.counts[key] += 1
        self.max_error[key] = torch.maximum(self.max_error[key], scores.error)

    def mean(self, bucket: int, layer: int) -> dict[str, torch.Tensor] | None:
        """Means over the samples of (bucket, layer): error, recall, density, blocks, plan_ms ([C, H] each)."""
        key = (bucket, layer)
        if key not in self.sums:
            return None
        return {name: total / self.counts[key] for name, total in self.sums[key].items()}


_FIELDS = ("error", "recall", "density", "blocks", "plan_ms")
