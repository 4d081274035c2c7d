"""Random block plans over a layout, for tests of kernels, backends and metrics."""

from __future__ import annotations

import torch

from ..layout import VideoLayout
from ..plan import BlockPlan


def random_block_plan(layout: VideoLayout, batch: int, heads: int, density: float,
                      skip_head: int | None = None) -> BlockPlan:
    """A plan keeping each (query block, key block) pair with probability `density` (torch's global generator),
    plus one random key block per query block so none is empty; `skip_head` is a skipped head (all zeros)."""
    m = layout.num_blocks
    mask = torch.rand(batch, heads, m, m) < density
    mask[..., torch.arange(m), torch.randint(m, (m,))] = True
    skip = None
    if skip_head is not None:
        mask[:, skip_head] = False
        skip = torch.zeros(heads, dtype=torch.bool)
        skip[skip_head] = True
    return BlockPlan.from_mask(mask, layout=layout, skip_heads=skip)
