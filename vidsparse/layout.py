"""Where every token of one attention call sits: the latent video grid, the text tokens, and the tile order.

Video DiTs flatten the latent grid frame-major, `(f, h, w)` row-major. Kernels compute fixed-size blocks of
consecutive tokens, so strategies that are local in 3D reorder the tokens into *tiles* of shape `(tf, th, tw)`:
one kernel block is exactly one spatio-temporal tile. The reordered sequence is the *working order*:

    [tile 0][tile 1] ... [tile N-1][text block 0] ... [text block T-1]

Tiles are enumerated row-major over the tile grid `(nF, nH, nW)`. Inside a tile the real tokens come first in
`(f, h, w)` order, followed by padding slots where the grid is not divisible by the tile: any resolution works,
the edge tiles are simply partly empty. Text tokens (prefix or suffix in the model's order) always go to the
end of the working order, padded to whole blocks. Padding slots are never attended to as keys, and outputs for
them are dropped when going back to the model's order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import torch

TextPosition = Literal["suffix", "prefix"]

# Tile shapes of 128 tokens tried by `default_tile`, most cube-like first (ties keep the earlier one).
_TILE_CANDIDATES_128: tuple[tuple[int, int, int], ...] = (
    (2, 8, 8),
    (1, 8, 16),
    (1, 16, 8),
    (4, 4, 8),
    (4, 8, 4),
    (2, 4, 16),
    (2, 16, 4),
)


def default_tile(frames: int, height: int, width: int) -> tuple[int, int, int]:
    """The 128-token tile that wastes the fewest padding slots on this grid."""

    def padded_volume(tile: tuple[int, int, int]) -> int:
        return math.prod(math.ceil(n / t) * t for n, t in zip((frames, height, width), tile))

    return min(_TILE_CANDIDATES_128, key=padded_volume)


def _check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"VideoLayout: {name} must be an integer >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class VideoLayout:
    """The token layout of one self-attention call over a video (plus optional text tokens).

    Args:
        frames, height, width: the latent grid after patchify (tokens per axis).
        text_tokens: number of text tokens sharing the sequence (0 when text lives in cross-attention).
        text_position: "suffix" (HunyuanVideo) or "prefix" (CogVideoX): where text sits in the model's order.
        tile: (tf, th, tw) tokens per tile; its volume is the kernel block size and must be a power of two
            between 16 and 256. Default: the 128-token tile with the least padding for this grid.
    """

    frames: int
    height: int
    width: int
    text_tokens: int = 0
    text_position: TextPosition = "suffix"
    tile: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        for name in ("frames", "height", "width"):
            _check_positive_int(name, getattr(self, name))
        _check_positive_int("text_tokens", self.text_tokens, minimum=0)
        if self.text_position not in ("suffix", "prefix"):
            raise ValueError(f"VideoLayout: text_position must be 'suffix' or 'prefix', got {self.text_position!r}")
        tile = default_tile(self.frames, self.height, self.width) if self.tile is None else tuple(self.tile)
        if len(tile) != 3:
            raise ValueError(f"VideoLayout: tile must be (tf, th, tw), got {self.tile!r}")
        for name, t in zip(("tf", "th", "tw"), tile):
            _check_positive_int(f"tile {name}", t)
        volume = math.prod(tile)
        if volume & (volume - 1) or not 16 <= volume <= 256:
            raise ValueError(
                f"VideoLayout: tile volume tf*th*tw must be a power of two in [16, 256] (it is the kernel block "
                f"size), got {tile} = {volume}"
            )
        object.__setattr__(self, "tile", tile)

    # ----- sizes -----------------------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int, int]:
        return (self.frames, self.height, self.width)

    @property
    def block_size(self) -> int:
        return math.prod(self.tile)

    @property
    def num_video_tokens(self) -> int:
        return self.frames * self.height * self.width

    @property
    def seq_len(self) -> int:
        """Length of the attention sequence in the model's order (video + text)."""
        return self.num_video_tokens + self.text_tokens

    @property
    def tile_grid(self) -> tuple[int, int, int]:
        """Number of tiles along (frames, height, width), edge tiles included."""
        return tuple(math.ceil(n / t) for n, t in zip(self.grid, self.tile))  # type: ignore[return-value]

    @property
    def num_video_blocks(self) -> int:
        return math.prod(self.tile_grid)

    @property
    def num_text_blocks(self) -> int:
        return math.ceil(self.text_tokens / self.block_size)

    @property
    def num_blocks(self) -> int:
        return self.num_video_blocks + self.num_text_blocks

    @property
    def padded_len(self) -> int:
        """Length of the working order, padding slots included."""
        return self.num_blocks * self.block_size

    @property
    def video_offset(self) -> int:
        """Index of the first video token in the model's order."""
        return self.text_tokens if self.text_position == "prefix" else 0

    @property
    def text_offset(self) -> int:
        """Index of the first text token in the model's order."""
        return 0 if self.text_position == "prefix" else self.num_video_tokens

    # ----- blocks <-> tiles ------------------------------------------------------------------------------
    def tile_coords(self, block: int) -> tuple[int, int, int]:
        """Tile coordinates (tile_f, tile_h, tile_w) of a video block."""
        if not 0 <= block < self.num_video_blocks:
            raise IndexError(f"block {block} is not a video block (0..{self.num_video_blocks - 1})")
        _, nh, nw = self.tile_grid
        return (block // (nh * nw), (block // nw) % nh, block % nw)

    def tile_block(self, tile_f: int, tile_h: int, tile_w: int) -> int:
        """Block index of the tile at these tile coordinates."""
        nf, nh, nw = self.tile_grid
        if not (0 <= tile_f < nf and 0 <= tile_h < nh and 0 <= tile_w < nw):
            raise IndexError(f"tile ({tile_f}, {tile_h}, {tile_w}) is outside the tile grid {self.tile_grid}")
        return (tile_f * nh + tile_h) * nw + tile_w

    @cached_property
    def block_tile_coords(self) -> torch.Tensor:
        """int64 [num_video_blocks, 3]: tile coordinates of every video block."""
        nf, nh, nw = self.tile_grid
        f, h, w = torch.meshgrid(torch.arange(nf), torch.arange(nh), torch.arange(nw), indexing="ij")
        return torch.stack([f.reshape(-1), h.reshape(-1), w.reshape(-1)], dim=1)

    @cached_property
    def block_frame_range(self) -> torch.Tensor:
        """int64 [num_video_blocks, 2]: first and one-past-last latent frame covered by each video block."""
        start = self.block_tile_coords[:, 0] * self.tile[0]
        return torch.stack([start, torch.clamp(start + self.tile[0], max=self.frames)], dim=1)

    def text_blocks(self) -> range:
        return range(self.num_video_blocks, self.num_blocks)

    # ----- the permutation -------------------------------------------------------------------------------
    @cached_property
    def permutation(self) -> torch.Tensor:
        """int64 [padded_len]: model-order index of the token at each working position, -1 for padding."""
        tf, th, tw = self.tile
        nf, nh, nw = self.tile_grid
        grid = torch.full((nf * tf, nh * th, nw * tw), -1, dtype=torch.int64)
        grid[: self.frames, : self.height, : self.width] = self.video_offset + torch.arange(
            self.num_video_tokens
        ).view(self.grid)
        # [nf, tf, nh, th, nw, tw] -> [nf, nh, nw, tf*th*tw]: one row per tile, tokens in (f, h, w) order.
        tiles = grid.view(nf, tf, nh, th, nw, tw).permute(0, 2, 4, 1, 3, 5).reshape(-1, tf * th * tw)
        # Stable sort on "is padding" moves real tokens to the front of each tile, keeping their order.
        order = torch.sort((tiles < 0).to(torch.int8), dim=1, stable=True).indices
        video = torch.gather(tiles, 1, order).reshape(-1)
        text = torch.full((self.num_text_blocks * self.block_size,), -1, dtype=torch.int64)
        text[: self.text_tokens] = self.text_offset + torch.arange(self.text_tokens)
        return torch.cat([video, text])

    @cached_property
    def inverse_permutation(self) -> torch.Tensor:
        """int64 [seq_len]: working position of each token of the model's order."""
        perm = self.permutation
        inverse = torch.empty(self.seq_len, dtype=torch.int64)
        real = perm >= 0
        inverse[perm[real]] = torch.nonzero(real).squeeze(1)
        return inverse

    @cached_property
    def block_lengths(self) -> torch.Tensor:
        """int32 [num_blocks]: real (non-padding) tokens in each block; they are its first ones."""
        return (self.permutation.view(self.num_blocks, self.block_size) >= 0).sum(1).to(torch.int32)

    @cached_property
    def token_coords(self) -> torch.Tensor:
        """int64 [seq_len, 3]: (f, h, w) of every token in the model's order; -1 for text tokens."""
        coords = torch.full((self.seq_len, 3), -1, dtype=torch.int64)
        f, h, w = torch.meshgrid(*(torch.arange(n) for n in self.grid), indexing="ij")
        video = torch.stack([f.reshape(-1), h.reshape(-1), w.reshape(-1)], dim=1)
        coords[self.video_offset : self.video_offset + self.num_video_tokens] = video
        return coords

    def __repr__(self) -> str:
        text = f", text_tokens={self.text_tokens} ({self.text_position})" if self.text_tokens else ""
        return f"VideoLayout(grid={self.grid}{text}, tile={self.tile}, blocks={self.num_blocks})"
