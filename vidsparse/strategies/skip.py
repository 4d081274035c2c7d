"""skip: the head computes nothing and contributes zeros (Sparse-vDiT, arXiv 2506.03065: 3-6% of heads)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import VideoLayout
from ..plan import BlockPlan
from .base import Strategy, register_strategy


@register_strategy
@dataclass(frozen=True)
class Skip(Strategy):
    """Drops the head: its attention output is zero for every query (video and text), density 0."""

    name = "skip"

    def plan(self, layout: VideoLayout, q: torch.Tensor | None = None, k: torch.Tensor | None = None) -> BlockPlan:
        m = layout.num_blocks
        return BlockPlan(
            torch.zeros(1, 1, m, dtype=torch.int32),
            torch.zeros(1, 1, m, 1, dtype=torch.int32),
            layout.block_size, layout.block_size, layout.seq_len, layout.seq_len,
            layout=layout, skip_heads=torch.ones(1, dtype=torch.bool),
        )

    def estimate_density(self, layout: VideoLayout) -> float:
        return 0.0
