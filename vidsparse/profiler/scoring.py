"""Scoring candidates on one attention call: error and recall on sampled query rows, density, planning time.

For each head, the dense scores of the sampled rows against every key are computed once (float64, as in
`vidsparse.metrics`) and summed per key block; each distinct block mask among the candidates then combines
those block sums:

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

def sample_rows(layout: VideoLayout, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """int64 [r]: at least `count` distinct random video query rows (model order), sorted, stratified by query block.

    Every kernel block that holds video tokens gets its share of `count` in proportion to its video tokens,
    rounded up (so at least one row), drawn at random inside the block: every query block (borders, first frame,
    packed edge tiles) is scored at every call, and count <= r < count + the video blocks. All rows if `count` >=
    the video tokens.
    Text rows are left out: every strategy keeps them dense, so they would only dilute the error.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"sample_rows: count must be an integer >= 1, got {count!r}")
    n = layout.num_video_tokens
    if count >= n:
        return torch.arange(n) + layout.video_offset
    block = _block_of_token(layout, torch.device("cpu"))[layout.video_offset:layout.video_offset + n]
    sizes = torch.bincount(block, minlength=layout.num_blocks)
    quota = torch.minimum(torch.ceil(count * sizes / n).long(), sizes)
    order = torch.randperm(n, generator=generator)  # a random order of the video rows ...
    by_block, index = torch.sort(block[order], stable=True)  # ... grouped by block, random inside each block
    rank = torch.arange(n) - (torch.cumsum(sizes, 0) - sizes)[by_block]
    picked = order[index[rank < quota[by_block]]]
    return torch.sort(picked).values + layout.video_offset


@dataclass
class CallScores:
    """Scores of every candidate on one call: float64 [C, H] each (means over the call's batch), plus the
    wall time of planning each candidate for all heads of the call (0 for static plans, which are cached), divided
    by the steps one plan serves in the runtime (`steps_served`: blockified's `refresh_every`), and `masks`, the
    distinct block masks scored (per head, summed over heads and batch: the work `accounting` counts)."""

    error: torch.Tensor
    recall: torch.Tensor
    density: torch.Tensor
    blocks: torch.Tensor
    plan_ms: torch.Tensor
    masks: int = 0


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
            # A plan the runtime reuses across steps (blockified) is paid once per refresh, not per call.
            plan_ms[i] = (time.perf_counter() - start) * 1e3 / steps_served(strategy)
        else:
            plan = strategy.plan(layout)
        block_mask = plan.to_block_mask().to(q.device).expand(b, h, -1, -1)  # [B, H, Mq, Mk]
        masks.append(block_mask)
        density[i] = plan.density(per_head=True).to("cpu").expand(b, h).mean(0)
        blocks[i] = block_mask.sum((-1, -2)).float().mean(0).cpu()
    rows = rows.to(q.device)
    q_block = _block_of_token(layout, q.device)[rows]
    error = torch.zeros(c, h, dtype=torch.float64)
    recall = torch.zeros(c, h, dtype=torch.float64)
    distinct = 0
    for batch in range(b):
        for head in range(h):
            head_masks = torch.stack([m[batch, head] for m in masks])  # [C, Mq, Mk]
            unique, inverse = torch.unique(head_masks.flatten(1), dim=0, return_inverse=True)
            unique = unique.view(-1, *head_masks.shape[1:])
            distinct += unique.shape[0]
            e, r = _score_head(q[batch, head], k[batch, head], v[batch, head], unique, rows, q_block, layout, scale)
            error[:, head] += e[inverse.cpu()] / b
            recall[:, head] += r[inverse.cpu()] / b
    return CallScores(error, recall, density, blocks, plan_ms, distinct)


def _block_of_token(layout: VideoLayout, device: torch.device) -> torch.Tensor:
    """int64 [S]: the kernel block (working order) holding each model-order token."""
    return (layout.inverse_permutation // layout.block_size).to(device)


def _score_head(q, k, v, block_masks, rows, q_block, layout: VideoLayout, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """(error, recall) float64 [U] of U block masks [U, Mq, Mk] for one head, on query rows `rows`.

    The sampled rows' exp-scores are summed per key block once ([r, Mk] mass, [Mk, r, D] weighted values), so
    each mask costs r x Mk x D instead of a softmax over all keys. Rows where a mask keeps keys whose mass
    underflows to 0 next to the row maximum are recomputed with a softmax over the kept keys alone.
    """
    scores = torch.matmul(q[rows].double(), k.double().T) * scale  # [r, S]
    weights = torch.exp(scores - scores.amax(-1, keepdim=True))
    total = weights.sum(-1)  # [r]
    v64 = v.double()
    perm = layout.permutation.to(q.device)
    real = perm >= 0
    m, bs, r = layout.num_blocks, layout.block_size, rows.numel()
    w_work = (weights[:, perm.clamp(min=0)] * real).view(r, m, bs)  # [r, Mk, block]
    v_work = (v64[perm.clamp(min=0)] * real[:, None]).view(m, bs, -1)  # [Mk, block, D]
    block_mass = w_work.sum(-1)  # [r, Mk]
    block_out = torch.bmm(w_work.transpose(0, 1), v_work)  # [Mk, r, D]
    dense = block_out.sum(0) / total[:, None]  # [r, D]
    dense_sq = dense.square().sum()
    keep = block_masks[:, q_block].double()  # [U, r, Mk]
    mass = (keep * block_mass).sum(-1)  # [U, r]
    out = torch.einsum("urm,mrd->urd", keep, block_out) / mass.clamp(min=1e-300)[..., None]
    underflow = (mass == 0) & (keep.sum(-1) > 0)
    for u, row in torch.nonzero(underflow).tolist():
        kept = keep[u, row][_block_of_token(layout, q.device)] > 0
        out[u, row] = torch.softmax(scores[row].masked_fill(~kept, float("-inf")), -1) @ v64
    error = ((out - dense).square().sum((-1, -2)) / dense_sq).sqrt()
    recall = (mass / total).mean(-1)
    return error.cpu(), recall.cpu()


@dataclass
class ScoreTable:
    """Running sums of CallScores per (bucket, layer): [C, H] tensors, the largest error of any call, a call
    count, and per prompt (`end_prompt`) the sum and squared sum of each prompt's mean error and the prompt count.

    The standard error of the mean error is taken over prompts, not calls: the calls of one generation share
    its content and are correlated, so their spread under-states how much the error moves on a new prompt. The
    spread of the per-prompt means themselves is what a new prompt's error varies by (`mean`'s `error_spread`)."""

    candidates: list[Strategy]
    num_heads: int
    sums: dict[tuple[int, int], dict[str, torch.Tensor]] = field(default_factory=dict)
    counts: dict[tuple[int, int], int] = field(default_factory=dict)
    max_error: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    _prompt: dict[tuple[int, int], list[torch.Tensor]] = field(default_factory=dict, repr=False)

    def add(self, bucket: int, layer: int, scores: CallScores) -> None:
        key = (bucket, layer)
        if key not in self.sums:
            shape = (len(self.candidates), self.num_heads)
            self.sums[key] = {name: torch.zeros(shape, dtype=torch.float64) for name in SUMMED}
            self.counts[key] = 0
            self.max_error[key] = torch.zeros(shape, dtype=torch.float64)
        for name in _FIELDS:
            value = getattr(scores, name).double()
            self.sums[key][name] += value if value.dim() == 2 else value[:, None].expand(-1, self.num_heads)
        self.counts[key] += 1
        self.max_error[key] = torch.maximum(self.max_error[key], scores.error)
        self._prompt.setdefault(key, []).append(scores.error.double())

    def end_prompt(self) -> None:
        """Fold the calls added since the last call into one sample per (bucket, layer): the prompt's mean error."""
        for key, errors in self._prompt.items():
            mean = torch.stack(errors).mean(0)
            self.sums[key]["prompt_error"] += mean
            self.sums[key]["prompt_error_sq"] += mean.square()
            self.sums[key]["prompts"] += 1
        self._prompt = {}

    def mean(self, bucket: int, layer: int) -> dict[str, torch.Tensor] | None:
        """Statistics over the calls scored for (bucket, layer), [C, H] each: the means of error, recall, density,
        blocks and plan_ms; `error_se`, the standard error of the mean error over prompts (sample standard
        deviation of the per-prompt means / sqrt(prompts); NaN with fewer than two prompts); `error_max`, the
        largest error of a call; `error_spread`, the spread of one new prompt's mean error around this mean (sample
        standard deviation of the per-prompt means x sqrt(1 + 1 / prompts): the new prompt's own deviation plus the
        mean's; NaN with fewer than two prompts). None if unscored."""
        key = (bucket, layer)
        if key not in self.sums:
            return None
        sums = self.sums[key]
        stats = {name: sums[name] / self.counts[key] for name in _FIELDS}
        n = sums["prompts"]
        mean = sums["prompt_error"] / n.clamp(min=1)
        variance = (sums["prompt_error_sq"] - n * mean.square()).clamp(min=0) / (n - 1).clamp(min=1)
        stats["error_se"] = torch.where(n > 1, (variance / n.clamp(min=1)).sqrt(), math.nan)
        stats["error_spread"] = torch.where(n > 1, (variance * (1 + 1 / n.clamp(min=1))).sqrt(), math.nan)
        stats["error_max"] = self.max_error[key].clone()
        return stats


def steps_served(strategy: Strategy, horizon: int = 100) -> int:
    """Denoising steps one plan of `strategy` serves in the runtime (`Strategy.reusable`; 1 for plans made per call)."""
    return max(1, sum(1 for step in range(horizon) if strategy.reusable(0, step)))


_FIELDS = ("error", "recall", "density", "blocks", "plan_ms")
#: What ScoreTable sums per (bucket, layer): the CallScores fields, the per-prompt mean errors, their squares and
#: the prompt count ([C, H] each, so that ranks can add them).
SUMMED = (*_FIELDS, "prompt_error", "prompt_error_sq", "prompts")
