"""diagonal: the spatial band around each query's own frames, and the multi-diagonal (temporal) copies.

Sparse VideoGen (Xi et al., arXiv 2502.01776) finds two kinds of heads in video DiTs: *spatial* heads, whose
attention map is block-diagonal with one block per frame (each token looks at its own frame and a few nearby
ones), and *temporal* heads, which look at the same spatial position in every frame: in the frame-major token
order those are the diagonals at offsets of whole frames, the "multi-diagonal" of Sparse-vDiT (Chen et al.,
arXiv 2506.03065), which also names the first one "diagonal".

Definition (token level; f = latent frame, (th, tw) = row and column of the token's tile, i.e. h // tile_h and
w // tile_w). A video query q keeps a video key k when

    band:           |f_q - f_k| <= width                                             (width is not None)
    multi-diagonal: |f_q - f_k| <= temporal  and  max(|th_q - th_k|, |tw_q - tw_k|) <= column   (temporal is not None)

(temporal="all": every frame), and the plan keeps a (query tile, key tile) pair when any of their token pairs is
kept: for tiles covering frames [a, b) and [c, d) the band keeps the pair when c < b + width and d > a - width,
and the multi-diagonal when c < b + temporal, d > a - temporal and the tiles' (row, column) are within `column`
of each other. A block packing pieces of several edge tiles keeps what any of them keeps. Text rows and columns
are dense. Every query keeps its own tile.

Parameters (grid units):
    width:    frames on either side kept in full (SVG spatial head; 0 = the query's own frames); None: no band.
    temporal: frames on either side of the multi-diagonal (SVG temporal head), or "all" for every frame of the
              video whatever its length (a number >= frames - 1 also keeps all frames, but only up to that many
              frames on another grid); None: no multi-diagonal.
    column:   tiles on either side, in rows and columns, that the multi-diagonal keeps (0 = the query's own
              tile column, i.e. its spatial position at tile granularity: 8 x 16 latent tokens at every grid).

Density without text, tiles of one frame, F frames: the band keeps about (2 width + 1) / F of the keys, the
multi-diagonal (2 temporal + 1) / F * (2 column + 1)^2 / (tile rows * tile columns).

Designed for: spatial heads (width=1 keeps 3/8 of the keys on 8 frames, relative L2 error < 0.05 on the zoo's
spatial heads) and temporal heads (width=None, temporal="all", column=0 keeps 1/16 of the keys with 4 x 4
tiles of 16 x 16 frames, error < 0.05 on the zoo's temporal heads); see tests/test_strategies.py and the strategy table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import VideoLayout
from .base import Strategy, in_tiles, register_strategy, with_dense_text


ALL_FRAMES = "all"


def _check_count(name: str, value: object, *, optional: bool, all_frames: bool = False) -> None:
    if value is None and optional or value == ALL_FRAMES and all_frames:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        allowed = "None or an integer >= 0" if optional else "an integer >= 0"
        allowed += ' or "all"' if all_frames else ""
        raise ValueError(f"diagonal: {name} must be {allowed}, got {value!r}")


def frames_within(layout: VideoLayout, frames: int) -> torch.Tensor:
    """bool [P, P] over the layout's pieces (a block's share of one tile): some pair of their frames is at most
    `frames` apart."""
    start, stop = layout.piece_frame_range.unbind(1)
    return (start[None, :] < stop[:, None] + frames) & (stop[None, :] > start[:, None] - frames)


@register_strategy
@dataclass(frozen=True)
class Diagonal(Strategy):
    """Spatial band of `width` frames plus an optional multi-diagonal of `temporal` frames (see module doc)."""

    name = "diagonal"

    width: int | None = 0
    temporal: int | str | None = None
    column: int = 0

    def __post_init__(self) -> None:
        _check_count("width", self.width, optional=True)
        _check_count("temporal", self.temporal, optional=True, all_frames=True)
        _check_count("column", self.column, optional=False)
        if self.width is None and self.temporal is None:
            raise ValueError("diagonal: give width (spatial band) or temporal (multi-diagonal), or both")

    def block_mask(self, layout: VideoLayout) -> torch.Tensor:
        # Per piece (a block's share of one tile: its frames are contiguous), so the lowering to blocks is exact.
        _, piece_tiles = layout.block_tile_pairs
        keep = torch.eye(piece_tiles.numel(), dtype=torch.bool)
        if self.width is not None:
            keep |= frames_within(layout, self.width)
        if self.temporal is not None:
            tiles = layout.tile_coordinates[piece_tiles, 1:]
            same_column = (tiles[:, None, :] - tiles[None, :, :]).abs().amax(-1) <= self.column
            temporal = layout.frames if self.temporal == ALL_FRAMES else self.temporal
            keep |= frames_within(layout, temporal) & same_column
        return with_dense_text(layout.lower_piece_mask(keep), layout)

    def retiled(self, measured_tile: tuple[int, int, int], tile: tuple[int, int, int]) -> "Diagonal":
        if self.temporal is None or self.column == 0:
            return self  # frames are frames; column 0 is the query's own tile column at any tile
        # The larger of the two axes' conversions, so the kept columns cover at least the measured extent.
        column = max(in_tiles(self.column, m, t) for m, t in zip(measured_tile[1:], tile[1:]))
        return Diagonal(self.width, self.temporal, column)

    def estimate_density(self, layout: VideoLayout) -> float:
        return self.plan(layout).density()
