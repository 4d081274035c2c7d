"""Where every token of one attention call sits: the latent video grid, the text tokens, and the tile order.

Video DiTs flatten the latent grid frame-major, `(f, h, w)` row-major. Kernels compute fixed-size blocks of
consecutive tokens, so strategies that are local in 3D reorder the tokens into *tiles* of shape `(tf, th, tw)`
whose volume is the kernel block size. The reordered sequence is the *working order*:

    [full tile 0] ... [full tile n-1][packed edge tiles ... padding][dense block 0] ... [dense block D-1]

Tiles are enumerated row-major over the tile grid `(nF, nH, nW)` (edge tiles included); inside a tile tokens keep
their `(f, h, w)` order. A tile the grid fills completely is one kernel block. Where the grid is not divisible by
the tile, the edge tiles are partly empty: their real tokens are *packed* one after the other (in tile order) into
the blocks that follow the full tiles, and only the last of those blocks is padded. The tokens outside the grid go
to the end of the working order, padded to whole blocks: the *dense blocks*, whose rows and columns every strategy
keeps (`vidsparse.strategies.with_dense_text`). They are the text tokens (prefix or suffix in the model's order) and
the layout's `prefix_tokens`, other tokens the model puts right before the video (Framepack's history latents,
packed at three scales: no grid of their own, so no locality a strategy could use), in the model's order. Padding
slots are never attended to as keys, and outputs for them are dropped when going back to the model's order.

Why packing (issue 18, measured by `scripts/tile_padding.py`, results in `scripts/results/tile_padding.json`):
the kernel computes whole blocks, padding included, so a dense call costs (slots / tokens)^2 of the real FLOPs.
Padding every edge tile to a block cost 1.25x at Wan 2.1 480p (21 x 30 x 52) with the best of the seven 128-token
tiles vidsparse used to choose from, and 1.14-1.27x on Wan 720p, Wan 2.2 TI2V, HunyuanVideo 720p and Mochi. No
padded tile of 64 or 128 tokens (any shape, dividing the grid or not a power of two inside the block) keeps all
seven geometries of the issue within 1.10x (HunyuanVideo 720p: 1.11x and 1.14x at best); 256-token blocks do only
with tiles such as 17 x 3 x 5 or 1 x 3 x 85, which are not neighbourhoods. Packing keeps every grid within one
block of padding plus the text's last block: <= 1.008x on all seven. The price is locality: a packed block holds
pieces of several edge tiles, and a static strategy keeps, for that block, what any of its tiles keeps
(`lower_tile_mask`). A 3 x 3 x 3 tile window then computes 1.00-1.17x its exact token-level density on those
geometries (padded v1 tiles: 1.00-1.25x); 6-42% of the tokens sit in packed blocks.

The tile is the same at every grid: `DEFAULT_TILE = (1, 8, 16)` (one latent frame, 8 rows, 16 columns; 128 tokens).
A parameter in tiles (a neighborhood window, a VMoBA chunk) therefore covers the same latent extent at every
resolution and frame count, and a profile made on one grid means the same attention on another (its file records
the tile; see `vidsparse.profile`). One frame per tile also keeps frame-based patterns (diagonal bands, first-frame
stripes) exact to the frame on full tiles (a packed block may span a frame edge). A layout built with another `tile` is allowed (tests, experiments).

Static strategies describe what they keep per pair of tiles (a [T, T] mask over the tile grid) or of pieces (a
block's share of one tile) and `lower_tile_mask` / `lower_piece_mask` turn it into the kernel's block mask: a
block pair is kept when any of their tiles (pieces) are.
Dynamic strategies work on blocks directly (pooled over the block's real tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import torch

TextPosition = Literal["suffix", "prefix"]

#: The tile of every layout that does not name one: (frames, rows, columns) of latent tokens, 128 tokens.
DEFAULT_TILE: tuple[int, int, int] = (1, 8, 16)


def _check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"VideoLayout: {name} must be an integer >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class VideoLayout:
    """The token layout of one self-attention call over a video (plus optional text and prefix tokens).

    The model's order is [text if "prefix"][prefix tokens][video, (f, h, w) row-major][text if "suffix"].

    Args:
        frames, height, width: the latent grid after patchify (tokens per axis).
        text_tokens: number of text tokens sharing the sequence (0 when text lives in cross-attention).
        text_position: "suffix" (HunyuanVideo) or "prefix" (CogVideoX): where text sits in the model's order.
        tile: (tf, th, tw) tokens per tile; its volume is the kernel block size and must be a power of two
            between 16 and 256. Default: `DEFAULT_TILE`, the same at every grid.
        prefix_tokens: tokens outside the grid right before the video (Framepack's history latents); dense, like
            text.
    """

    frames: int
    height: int
    width: int
    text_tokens: int = 0
    text_position: TextPosition = "suffix"
    tile: tuple[int, int, int] | None = None
    prefix_tokens: int = 0

    def __post_init__(self) -> None:
        for name in ("frames", "height", "width"):
            _check_positive_int(name, getattr(self, name))
        _check_positive_int("text_tokens", self.text_tokens, minimum=0)
        _check_positive_int("prefix_tokens", self.prefix_tokens, minimum=0)
        if self.text_position not in ("suffix", "prefix"):
            raise ValueError(f"VideoLayout: text_position must be 'suffix' or 'prefix', got {self.text_position!r}")
        tile = DEFAULT_TILE if self.tile is None else tuple(self.tile)
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
    def num_dense_tokens(self) -> int:
        """Tokens outside the grid, kept densely by every plan: prefix + text."""
        return self.prefix_tokens + self.text_tokens

    @property
    def seq_len(self) -> int:
        """Length of the attention sequence in the model's order (video + text + prefix)."""
        return self.num_video_tokens + self.num_dense_tokens

    @property
    def tile_grid(self) -> tuple[int, int, int]:
        """Number of tiles along (frames, height, width), edge tiles included."""
        return tuple(math.ceil(n / t) for n, t in zip(self.grid, self.tile))  # type: ignore[return-value]

    @property
    def num_tiles(self) -> int:
        return math.prod(self.tile_grid)

    @property
    def num_full_tiles(self) -> int:
        """Tiles the grid fills completely: the first blocks of the working order, one tile each."""
        return math.prod(n // t for n, t in zip(self.grid, self.tile))

    @property
    def num_video_blocks(self) -> int:
        packed = self.num_video_tokens - self.num_full_tiles * self.block_size
        return self.num_full_tiles + math.ceil(packed / self.block_size)

    @property
    def num_dense_blocks(self) -> int:
        return math.ceil(self.num_dense_tokens / self.block_size)

    @property
    def num_blocks(self) -> int:
        return self.num_video_blocks + self.num_dense_blocks

    @property
    def padded_len(self) -> int:
        """Length of the working order, padding slots included."""
        return self.num_blocks * self.block_size

    @property
    def padding_ratio(self) -> float:
        """Computed slot pairs of a dense call over real token pairs: (padded_len / seq_len)^2."""
        return (self.padded_len / self.seq_len) ** 2

    @property
    def prefix_offset(self) -> int:
        """Index of the first prefix token in the model's order."""
        return self.text_tokens if self.text_position == "prefix" else 0

    @property
    def video_offset(self) -> int:
        """Index of the first video token in the model's order."""
        return self.prefix_offset + self.prefix_tokens

    @property
    def text_offset(self) -> int:
        """Index of the first text token in the model's order."""
        return 0 if self.text_position == "prefix" else self.video_offset + self.num_video_tokens

    def dense_blocks(self) -> range:
        """The blocks of the prefix and text tokens (the last of the working order)."""
        return range(self.num_video_blocks, self.num_blocks)

    # ----- tiles -----------------------------------------------------------------------------------------
    def tile_index(self, tile_f: int, tile_h: int, tile_w: int) -> int:
        """Index (row-major over the tile grid) of the tile at these tile coordinates."""
        nf, nh, nw = self.tile_grid
        if not (0 <= tile_f < nf and 0 <= tile_h < nh and 0 <= tile_w < nw):
            raise IndexError(f"tile ({tile_f}, {tile_h}, {tile_w}) is outside the tile grid {self.tile_grid}")
        return (tile_f * nh + tile_h) * nw + tile_w

    @cached_property
    def tile_coordinates(self) -> torch.Tensor:
        """int64 [num_tiles, 3]: (tile_f, tile_h, tile_w) of every tile, row-major."""
        f, h, w = torch.meshgrid(*(torch.arange(n) for n in self.tile_grid), indexing="ij")
        return torch.stack([f.reshape(-1), h.reshape(-1), w.reshape(-1)], dim=1)

    # ----- the permutation -------------------------------------------------------------------------------
    @cached_property
    def _working_order(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(model-order token, tile) of every video slot of the working order; -1 for padding slots."""
        tf, th, tw = self.tile
        nf, nh, nw = self.tile_grid
        bs = self.block_size
        grid = torch.full((nf * tf, nh * th, nw * tw), -1, dtype=torch.int64)
        grid[: self.frames, : self.height, : self.width] = self.video_offset + torch.arange(
            self.num_video_tokens
        ).view(self.grid)
        # [nf, tf, nh, th, nw, tw] -> [nf, nh, nw, tf*th*tw]: one row per tile, tokens in (f, h, w) order.
        tiles = grid.view(nf, tf, nh, th, nw, tw).permute(0, 2, 4, 1, 3, 5).reshape(-1, bs)
        tile_ids = torch.arange(tiles.shape[0])[:, None].expand_as(tiles)
        full = (tiles >= 0).all(1)
        edge_tokens, edge_tiles = tiles[~full], tile_ids[~full]
        real = edge_tokens >= 0  # row-major flattening keeps tile order and (f, h, w) order inside a tile
        padding = torch.full((self.num_video_blocks * bs - self.num_full_tiles * bs - int(real.sum()),), -1)
        tokens = torch.cat([tiles[full].reshape(-1), edge_tokens[real], padding])
        owners = torch.cat([tile_ids[full].reshape(-1), edge_tiles[real], padding])
        return tokens, owners

    @cached_property
    def permutation(self) -> torch.Tensor:
        """int64 [padded_len]: model-order index of the token at each working position, -1 for padding."""
        dense = torch.full((self.num_dense_blocks * self.block_size,), -1, dtype=torch.int64)
        after_video = torch.arange(self.video_offset + self.num_video_tokens, self.seq_len)
        dense[: self.num_dense_tokens] = torch.cat([torch.arange(self.video_offset), after_video])
        return torch.cat([self._working_order[0], dense])

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
        """int64 [seq_len, 3]: (f, h, w) of every token in the model's order; -1 for text and prefix tokens."""
        coords = torch.full((self.seq_len, 3), -1, dtype=torch.int64)
        f, h, w = torch.meshgrid(*(torch.arange(n) for n in self.grid), indexing="ij")
        video = torch.stack([f.reshape(-1), h.reshape(-1), w.reshape(-1)], dim=1)
        coords[self.video_offset : self.video_offset + self.num_video_tokens] = video
        return coords

    # ----- blocks <-> tiles ------------------------------------------------------------------------------
    @cached_property
    def block_tile_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(block, tile) int64 [P] each: the *pieces*, every (video block, tile) pair sharing a token, sorted by
        block then tile. A full tile's block is one piece; a packed block one per edge tile it holds a part of."""
        blocks, owners, _ = self._pieces
        return blocks, owners

    @cached_property
    def piece_frame_range(self) -> torch.Tensor:
        """int64 [P, 2]: first and one-past-last latent frame of each piece's tokens (a piece is a run of its
        tile's tokens in (f, h, w) order, so its frames are contiguous)."""
        return self._pieces[2]

    @cached_property
    def _pieces(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens, owners = self._working_order
        real = tokens >= 0
        blocks = torch.nonzero(real).squeeze(1) // self.block_size
        keys, piece = torch.unique(blocks * self.num_tiles + owners[real], return_inverse=True)
        frame = (tokens[real] - self.video_offset) // (self.height * self.width)
        start = torch.full((keys.numel(),), self.frames).scatter_reduce(0, piece, frame, "amin")
        stop = torch.zeros(keys.numel(), dtype=torch.int64).scatter_reduce(0, piece, frame + 1, "amax")
        return keys // self.num_tiles, keys % self.num_tiles, torch.stack([start, stop], dim=1)

    @cached_property
    def block_tile_coords(self) -> torch.Tensor:
        """int64 [num_video_blocks, 3]: tile coordinates of each video block's first tile (its only tile unless
        the block packs edge tiles)."""
        blocks, tiles = self.block_tile_pairs
        first = torch.ones_like(blocks, dtype=torch.bool)
        first[1:] = blocks[1:] != blocks[:-1]
        return self.tile_coordinates[tiles[first]]

    @cached_property
    def block_frame_range(self) -> torch.Tensor:
        """int64 [num_video_blocks, 2]: first and one-past-last latent frame of the real tokens of each block."""
        blocks, _ = self.block_tile_pairs
        mv, ranges = self.num_video_blocks, self.piece_frame_range
        start = torch.full((mv,), self.frames).scatter_reduce(0, blocks, ranges[:, 0], "amin")
        return torch.stack([start, torch.zeros(mv, dtype=torch.int64).scatter_reduce(0, blocks, ranges[:, 1], "amax")], 1)

    def lower_piece_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """bool [..., num_video_blocks, num_video_blocks] from a mask over pieces [..., P, P] (see
        `block_tile_pairs`): a block pair is kept when any piece of the query block keeps any piece of the key
        block. Where every block is one full tile this is the mask itself."""
        blocks, _ = self.block_tile_pairs
        p, mv = blocks.numel(), self.num_video_blocks
        if mask.shape[-2:] != (p, p):
            raise ValueError(f"lower_piece_mask: mask must be [..., {p}, {p}] for {self}, got {tuple(mask.shape)}")
        if p == mv:  # one piece per block
            return mask
        blocks = blocks.to(mask.device)
        rows = torch.zeros(*mask.shape[:-2], mv, p, dtype=torch.int32, device=mask.device)
        rows.index_add_(rows.dim() - 2, blocks, mask.to(torch.int32))
        out = torch.zeros(*mask.shape[:-2], mv, mv, dtype=torch.int32, device=mask.device)
        out.index_add_(out.dim() - 1, blocks, rows)
        return out > 0

    def lower_tile_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """bool [..., num_video_blocks, num_video_blocks] from a tile mask [..., num_tiles, num_tiles]: a block
        pair is kept when any tile of the query block keeps any tile of the key block (for full tiles, exactly
        the tile pair), so the plan computes at least every token pair the tile mask keeps."""
        t = self.num_tiles
        if mask.shape[-2:] != (t, t):
            raise ValueError(f"lower_tile_mask: mask must be [..., {t}, {t}] for {self}, got {tuple(mask.shape)}")
        tiles = self.block_tile_pairs[1].to(mask.device)
        return self.lower_piece_mask(mask[..., tiles, :][..., tiles])

    def __repr__(self) -> str:
        text = f", text_tokens={self.text_tokens} ({self.text_position})" if self.text_tokens else ""
        prefix = f", prefix_tokens={self.prefix_tokens}" if self.prefix_tokens else ""
        return f"VideoLayout(grid={self.grid}{text}{prefix}, tile={self.tile}, blocks={self.num_blocks})"
