"""dense: every query attends to every key (the unpatched model)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import VideoLayout
from .base import Strategy, register_strategy


@register_strategy
@dataclass(frozen=True)
class Dense(Strategy):
    """Keeps every block pair: density 1."""

    name = "dense"

    def block_mask(self, layout: VideoLayout) -> torch.Tensor:
        return torch.ones(layout.num_blocks, layout.num_blocks, dtype=torch.bool)

    def estimate_density(self, layout: VideoLayout) -> float:
        """What the block-sparse kernel computes for a dense head: 1 plus the layout's padding."""
        return layout.padding_ratio
