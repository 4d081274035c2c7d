"""draft: a low-resolution attention map on tile-pooled q/k picks the key tiles (DraftAttention, arXiv 2505.14708)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..device_cache import on_device
from ..layout import VideoLayout
from .base import register_strategy
from .pooling import (
    HeadInputs,
    MaskPlanner,
    check_qk,
    density_with_text,
    smallest_covering_set,
    video_block_sizes,
    video_eye,
    expanded_zero,
)

DEFAULT_KEEP_RATIO = 0.25


@register_strategy
@dataclass(frozen=True)
class Draft(MaskPlanner):
    """Keep the key tiles that a draft (low-resolution) attention map ranks highest.

    Definition, per batch entry and head, over the Mv video tiles of the layout:

    1. q_a, k_b = mean of the real query / key tokens of tile a / b (DraftAttention average-pools 8x16 patches
       per frame; here the pooling cell is the layout's tile, which is also the kernel block).
    2. Draft map P[a, b] = softmax_b(q_a . k_b / sqrt(D) + log n_b), n_b = real tokens of tile b. The log n_b
       term makes P[a, b] the share of attention mass tile b would get if all its tokens scored like its
       mean, so partly empty (padded) edge tiles are not over-weighted.
    3. Selection, one of:
       - `keep_ratio` r (DraftAttention's percentile mask, headwise): keep the ceil(r * Mv^2) largest entries of
         the head's whole map P (DraftAttention keeps 10-25%: sparsity 0.9 on HunyuanVideo, 0.75 on Wan).
       - `mass` m: for each query tile a, keep the fewest key tiles whose P[a, .] sums to at least m (taken in
         descending order of P).
    4. Every query tile also keeps its own tile; text rows and columns are dense.

    Designed for: content-dependent, block-clustered heads (keep_ratio 0.25 or mass 0.9: error < 0.1 at
    density <= 0.3 on the zoo's block heads). Mean pooling blurs position, so on spatial heads a mass target
    undershoots (see the strategy table); a local pattern suits those better.

    Args:
        keep_ratio: fraction of the map's tiles kept per head, in (0, 1]. Default 0.25 when `mass` is not given.
        mass: cumulative draft-attention mass to cover per query tile, in (0, 1]. Give at most one of the two.
    """

    name = "draft"
    is_dynamic = True
    reads_tile_means = True

    keep_ratio: float | None = None
    mass: float | None = None

    def __post_init__(self) -> None:
        if self.keep_ratio is not None and self.mass is not None:
            raise ValueError(f"draft: give keep_ratio or mass, not both (got keep_ratio={self.keep_ratio}, mass={self.mass})")
        if self.keep_ratio is None and self.mass is None:
            object.__setattr__(self, "keep_ratio", DEFAULT_KEEP_RATIO)
        for arg in ("keep_ratio", "mass"):
            value = getattr(self, arg)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1):
                raise ValueError(f"draft: {arg} must be a number in (0, 1], got {value!r}")

    def draft_map(self, layout: VideoLayout, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The low-resolution attention map P: float [B, H, Mv, Mv], rows summing to 1."""
        check_qk(self.name, layout, q, k)
        return self._draft_map(HeadInputs(layout, q, k))

    def _draft_map(self, inputs: HeadInputs) -> torch.Tensor:
        q_tiles, k_tiles = inputs.tile_means()
        scores = torch.matmul(q_tiles, k_tiles.transpose(-1, -2)) / math.sqrt(q_tiles.shape[-1])
        return torch.softmax(scores + _log_sizes(inputs.layout, q_tiles.device, q_tiles.dtype), dim=-1)

    def write_video_mask(self, inputs: HeadInputs, out: torch.Tensor) -> None:
        probs = self._draft_map(inputs)
        if self.mass is not None:
            keep = smallest_covering_set(probs, self.mass)
        else:
            b, h, mv, _ = probs.shape
            top = torch.topk(probs.reshape(b, h, mv * mv), math.ceil(self.keep_ratio * mv * mv), dim=-1).indices
            keep = torch.scatter(expanded_zero((b, h, mv * mv), torch.bool, probs.device), -1, top, True)
            keep = keep.reshape(b, h, mv, mv)
        torch.bitwise_or(keep, video_eye(inputs.layout, probs.device), out=out)

    def estimate_density(self, layout: VideoLayout) -> float:
        """keep_ratio mode: the kept fraction of tiles (plus own tiles and text). mass mode: an upper bound,
        ceil(m * Mv) tiles per row, which is what a uniform (diffuse) map needs; concentrated heads need fewer."""
        mv = layout.num_video_blocks
        tiles = self.keep_ratio * mv if self.keep_ratio is not None else math.ceil(self.mass * mv)
        return density_with_text(layout, min(mv, tiles + 1) / mv)


def _log_sizes(layout: VideoLayout, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """log n_b of every video tile, computed on the device once (the same kernel as a per-call log)."""
    return on_device(layout, f"log_sizes_{dtype}", device, lambda: torch.log(video_block_sizes(layout, device, dtype)))
