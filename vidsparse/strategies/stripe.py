"""stripe: key tiles that every query keeps (vertical stripes of the attention map), fixed or sampled.

Vertical stripes are keys that every query attends to: attention sinks, the first latent frame (Wan and
Radial Attention keep it as a sink), global tokens. Sparse-vDiT (Chen et al., arXiv 2506.03065) names this
pattern "vertical stripe"; MInference (Jiang et al., arXiv 2407.02490) finds its "vertical lines" online from
the attention of a few sampled queries (the last 64 queries of an LLM prompt).

Definition. The stripe set C is a set of video key tiles; the plan keeps, for every video query tile Q,

    C  ∪  {Q}  ∪  every text tile,        and every key tile for text queries.

C is the union of
    first_frames = n  the blocks holding any token of the first n latent frames (n >= frames: all of them)
    sinks = n         the first n video blocks of the working order (its full tiles in tile-grid row-major
                      order, so the first n tiles of the first frames when they are full)
    tiles             explicit (tile_f, tile_h, tile_w) coordinates: the blocks holding that tile's tokens.
                      The tile has the same latent size at every grid (`vidsparse.layout.DEFAULT_TILE`), so a
                      coordinate is a fixed latent position; on a grid too small to hold it, it keeps nothing
                      (with a warning) instead of failing mid-generation
    sampled (one of top_k, fraction, mass; makes the strategy dynamic, C per batch entry and head):
                      `samples` video query rows, evenly spaced over the video tokens in the model's order,
                      take the dense softmax (scale 1/sqrt(head_dim)) over all keys; a key tile's score is the
                      mean over those rows of the mass on its tokens. C gets the highest-scoring video tiles:
          top_k = n     the n best tiles
          fraction = p  the ceil(p * video tiles) best tiles
          mass = m      the fewest best tiles such that their score plus the text tokens' mass reaches m

Cost of sampling: samples x seq_len scores per head, i.e. samples / seq_len of a dense attention call.
Density without text: about |C| / (video tiles) + 1 / (video tiles).

C is a set of blocks, not tiles, where a block packs pieces of several edge tiles (see `vidsparse.layout`).

Designed for: sink heads, usually unioned with a local pattern (`diagonal | stripe`). first_frames=1 keeps
1/F of the keys plus the own tile (error < 0.1 on the zoo's sink heads, whose sinks hold 95% of the mass), and
sampled top_k=4 finds the 4 sink tiles from 64 sampled rows at 5/128 density; see tests/test_strategies.py.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

import torch

from ..device_cache import on_device
from ..layout import VideoLayout
from ..plan import BlockPlan
from .base import register_strategy, with_dense_text
from .pooling import HeadInputs, MaskPlanner, expanded_zero, video_eye

Tile = tuple[int, int, int]


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"stripe: {name} must be an integer >= {minimum}, got {value!r}")


def _check_share(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"stripe: {name} must be a number in (0, 1], got {value!r}")


@register_strategy
@dataclass(frozen=True)
class Stripe(MaskPlanner):
    """Key tiles kept by every query: first frames, sinks, explicit tiles, and/or sampled top tiles."""

    name = "stripe"

    first_frames: int = 0
    sinks: int = 0
    tiles: tuple[Tile, ...] = ()
    top_k: int | None = None
    fraction: float | None = None
    mass: float | None = None
    samples: int = 64

    def __post_init__(self) -> None:
        _check_int("first_frames", self.first_frames, 0)
        _check_int("sinks", self.sinks, 0)
        _check_int("samples", self.samples, 1)
        tiles = tuple(tuple(t) for t in self.tiles) if isinstance(self.tiles, (list, tuple)) else None
        if tiles is None or any(len(t) != 3 for t in tiles):
            raise ValueError(f"stripe: tiles must be a list of (tile_f, tile_h, tile_w) triples, got {self.tiles!r}")
        for t in tiles:
            for v in t:
                _check_int("tiles coordinates", v, 0)
        object.__setattr__(self, "tiles", tiles)
        if self.top_k is not None:
            _check_int("top_k", self.top_k, 1)
        for name in ("fraction", "mass"):
            if getattr(self, name) is not None:
                _check_share(name, getattr(self, name))
        chosen = [n for n in ("top_k", "fraction", "mass") if getattr(self, n) is not None]
        if len(chosen) > 1:
            raise ValueError(f"stripe: give at most one of top_k, fraction, mass; got {', '.join(chosen)}")
        if not (self.first_frames or self.sinks or self.tiles or chosen):
            raise ValueError("stripe: keeps nothing; give first_frames, sinks, tiles, or one of top_k, fraction, mass")

    @property
    def is_dynamic(self) -> bool:  # type: ignore[override]
        return self.top_k is not None or self.fraction is not None or self.mass is not None

    # ----- the fixed stripes -----------------------------------------------------------------------------
    def fixed_columns(self, layout: VideoLayout) -> torch.Tensor:
        """bool [Mv]: the video key blocks kept for every query by first_frames, sinks and tiles."""
        columns = layout.block_frame_range[:, 0] < self.first_frames
        columns[: self.sinks] = True
        blocks, tiles = layout.block_tile_pairs
        for t in self.tiles:
            if not all(0 <= c < n for c, n in zip(t, layout.tile_grid)):
                warnings.warn(f"stripe: tile {t} in tiles lies outside the tile grid {layout.tile_grid} of {layout}; "
                              f"it keeps nothing on this grid", stacklevel=2)
                continue
            columns[blocks[tiles == layout.tile_index(*t)]] = True
        return columns

    def block_mask(self, layout: VideoLayout) -> torch.Tensor:
        if self.is_dynamic:
            return super().block_mask(layout)
        return with_dense_text(_with_diagonal(self.fixed_columns(layout)), layout)

    # ----- the sampled stripes ---------------------------------------------------------------------------
    def sampled_rows(self, layout: VideoLayout) -> torch.Tensor:
        """int64 [r]: the model-order video query rows whose attention picks the sampled stripes."""
        n = min(self.samples, layout.num_video_tokens)
        positions = torch.linspace(0, layout.num_video_tokens - 1, n, dtype=torch.float64).round().long()
        return layout.video_offset + positions.unique()

    def write_video_mask(self, inputs: HeadInputs, out: torch.Tensor) -> None:
        layout, q, k = inputs.layout, inputs.q, inputs.k
        mv, device = layout.num_video_blocks, q.device
        rows = on_device((self, layout), "sampled_rows", device, lambda: self.sampled_rows(layout))
        scores = torch.matmul(q[:, :, rows].float(), k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
        probs = torch.softmax(scores, dim=-1).mean(2)  # [B, H, S]
        key_block = on_device(layout, "block_of_token", device, lambda: layout.inverse_permutation // layout.block_size)
        block_mass = torch.index_add(expanded_zero((*probs.shape[:2], layout.num_blocks), probs.dtype, device), -1,
                                     key_block, probs)
        order = torch.sort(block_mass[..., :mv], dim=-1, descending=True)
        if self.mass is not None:
            # Keep a tile while the mass before it (text included) is still short of the target.
            text_mass = block_mass[..., mv:].sum(-1, keepdim=True)
            keep_sorted = text_mass + order.values.cumsum(-1) - order.values < self.mass
        else:
            count = min(self.top_k if self.top_k is not None else math.ceil(self.fraction * mv), mv)
            first = on_device((self, layout), "first_ranks", device, lambda: torch.arange(mv) < count)
            keep_sorted = first.expand_as(order.indices)
        columns = keep_sorted.scatter(-1, order.indices, keep_sorted)  # `order` is a permutation: all written
        if self.first_frames or self.sinks or self.tiles:
            columns |= on_device((self, layout), "fixed_columns", device, lambda: self.fixed_columns(layout))
        torch.bitwise_or(columns.unsqueeze(-2), video_eye(layout, device), out=out)  # the columns and the own tile

    def retiled(self, measured_tile: Tile, tile: Tile) -> "Stripe":
        if not self.tiles:
            return self
        # Each tile becomes the tile holding its first latent token.
        tiles = tuple(tuple(c * m // t for c, m, t in zip(coord, measured_tile, tile)) for coord in self.tiles)
        return dataclasses.replace(self, tiles=tuple(dict.fromkeys(tiles)))

    def estimate_density(self, layout: VideoLayout) -> float:
        if not self.is_dynamic:
            return self.plan(layout).density()
        # The sampled tiles are unknown before seeing q and k: count the fixed ones exactly and the sampled
        # ones as top_k / fraction of the video tiles (a mass target is counted as that share of the tiles).
        mv = layout.num_video_blocks
        share = self.top_k / mv if self.top_k is not None else (self.fraction or self.mass)
        fixed = BlockPlan.from_mask(
            with_dense_text(_with_diagonal(self.fixed_columns(layout)), layout)[None, None], layout=layout
        ).density()
        return min(1.0, fixed + (1.0 - fixed) * min(1.0, float(share)))


def _with_diagonal(columns: torch.Tensor) -> torch.Tensor:
    """bool [..., Mv, Mv]: the stripe columns for every query tile, plus each query tile's own tile."""
    mv = columns.shape[-1]
    return columns.unsqueeze(-2).expand(*columns.shape[:-1], mv, mv) | torch.eye(mv, dtype=torch.bool, device=columns.device)
