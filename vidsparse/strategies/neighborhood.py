"""neighborhood: Generalized Neighborhood Attention over the tile grid (window, stride, dilation per axis).

Generalized Neighborhood Attention (GNA; Hassani et al., arXiv 2504.16922, the NATTEN library) unifies
sliding-window, strided sliding-window and blocked attention. Here it is applied to the grid of tiles
(nF, nH, nW) rather than to single tokens: a full tile is one kernel block, so the pattern is block-sparse
(GNA's "perfectly block-sparse" case, where the stride is aligned with the tile). The tile has the same size at
every grid (`vidsparse.layout.DEFAULT_TILE`, 1 x 8 x 16 latent tokens), so a window in tiles is a fixed latent
extent: window (3, 3, 3) is 3 frames x 24 rows x 48 columns at 480p, at 720p and at any frame count.

Definition, per axis with n tiles, window k, stride s, dilation d (NATTEN's non-causal semantics):

    dilation group   g = x mod d; inside it the tile is x' = x div d, and the group has n_g = ceil((n - g) / d) tiles
    stride leader    L = min(s * floor(x' / s) + floor(s / 2), n_g - 1)     (the centre query of x's stride group)
    window start     a = clamp(L - floor(k / 2), 0, max(n_g - k, 0))          (shifted, not truncated, at borders)
    a key tile y is in the window of x  iff  y mod d == g  and  a <= y div d < a + k

A query tile keeps a key tile when it is in its window along all three axes. Consequences: every window holds
min(k, n_g) tiles per axis (a window larger than the axis keeps the whole axis, where NATTEN would refuse);
all query tiles of one stride group share one window; stride = window gives blocked (non-overlapping)
attention; stride 1 and dilation 1 is a plain sliding window; every tile is in its own window. Text rows and
columns are dense. A block that packs pieces of several edge tiles (see `vidsparse.layout`) keeps the union of
their windows.

Parameters (each an int for all three axes or a (t, h, w) tuple, in tiles):
    window:   k, tiles per window along each axis (NATTEN's kernel_size), >= 1.
    stride:   s, query tiles per stride group, 1 <= s <= window.
    dilation: d, >= 1: the window takes every d-th tile.

Density without text on an (nF, nH, nW) tile grid: prod(min(k, n) / n) over the axes (with dilation, each
group's own n_g).

Designed for: spatial (local 3D) heads. window=(3, 3, 3) on 8 frames of 4 x 4 tiles keeps 3/8 * 3/4 * 3/4 = 21%
of the keys with relative L2 error < 0.05 on the zoo's spatial heads; see tests/test_strategies.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import VideoLayout
from .base import Strategy, in_tiles, register_strategy, with_dense_text

Triple = tuple[int, int, int]


def _as_triple(name: str, value: int | tuple[int, ...] | list[int]) -> Triple:
    values = (value,) * 3 if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if len(values) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"neighborhood: {name} must be an integer >= 1 or a (t, h, w) tuple of them, got {value!r}")
    return values  # type: ignore[return-value]


def window_along_axis(n: int, window: int, stride: int, dilation: int) -> torch.Tensor:
    """bool [n, n]: [x, y] is True when tile y is in the window of query tile x along one axis."""
    x = torch.arange(n)
    group, inner = x % dilation, x // dilation
    group_len = (n - group + dilation - 1) // dilation
    leader = torch.minimum((inner // stride) * stride + stride // 2, group_len - 1)
    start = torch.clamp(leader - window // 2, min=0)
    start = torch.minimum(start, torch.clamp(group_len - window, min=0))
    y_group, y_inner = group[None, :], inner[None, :]
    return (y_group == group[:, None]) & (y_inner >= start[:, None]) & (y_inner < start[:, None] + window)


@register_strategy
@dataclass(frozen=True)
class Neighborhood(Strategy):
    """GNA over tiles: sliding (stride 1), strided, or blocked (stride = window) 3D windows (see module doc)."""

    name = "neighborhood"

    window: Triple = (3, 3, 3)
    stride: Triple = (1, 1, 1)
    dilation: Triple = (1, 1, 1)

    def __post_init__(self) -> None:
        for name in ("window", "stride", "dilation"):
            object.__setattr__(self, name, _as_triple(name, getattr(self, name)))
        for axis, (k, s) in enumerate(zip(self.window, self.stride)):
            if s > k:
                raise ValueError(
                    f"neighborhood: stride must lie in [1, window] on every axis, got stride {self.stride} "
                    f"for window {self.window} (axis {'thw'[axis]})"
                )

    def block_mask(self, layout: VideoLayout) -> torch.Tensor:
        per_axis = [
            window_along_axis(n, k, s, d)
            for n, k, s, d in zip(layout.tile_grid, self.window, self.stride, self.dilation)
        ]
        tiles = layout.tile_coordinates
        keep = torch.ones(layout.num_tiles, layout.num_tiles, dtype=torch.bool)
        for axis, along in enumerate(per_axis):
            coord = tiles[:, axis]
            keep &= along[coord[:, None], coord[None, :]]
        return with_dense_text(layout.lower_tile_mask(keep), layout)

    def retiled(self, measured_tile: Triple, tile: Triple) -> "Neighborhood":
        # A stride or dilation of 1 (sliding, contiguous) stays 1: it is a kind of window, not an extent.
        window, stride, dilation = (
            tuple(v if v == 1 and values is not self.window else in_tiles(v, m, t)
                  for v, m, t in zip(values, measured_tile, tile))
            for values in (self.window, self.stride, self.dilation)
        )
        return Neighborhood(window, tuple(min(s, k) for s, k in zip(stride, window)), dilation)

    def estimate_density(self, layout: VideoLayout) -> float:
        return self.plan(layout).density()
