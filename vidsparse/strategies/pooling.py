"""Helpers shared by the dynamic strategies: tile-pooled q/k, smallest covering sets, and the final plan.

Dynamic strategies look at *pooled* queries and keys: the mean of the real tokens of each video block (one
block = one tile of the layout's working order). Padding slots of edge tiles are excluded from the mean, and
the number of real tokens of each tile is returned alongside so that a strategy can weight a partly empty
tile by its size. Text blocks are never pooled: text rows and columns are dense in every plan.

Strategies that choose a video-block mask at every call (draft, vmoba, sampled stripe) are `MaskPlanner`s: they
write their mask into a view they are given (`write_video_mask`), so the controller can plan all of a layer's heads
of such strategies into one mask, pool q and k once for all of them (`HeadInputs`), and build one plan from it.
On a GPU each tensor op is one launch, about 20 microseconds of host time, so ops are counted here: index tables
and constants derived from a layout are computed once per device (`on_device`), never per call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..device_cache import on_device
from ..layout import VideoLayout
from ..plan import BlockPlan
from .base import Strategy, with_dense_text


def check_qk(name: str, layout: VideoLayout, q: torch.Tensor, k: torch.Tensor) -> None:
    """ValueError unless q and k are [B, H, layout.seq_len, D] with matching batch, heads and head_dim."""
    for arg, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[2] != layout.seq_len:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name}: {arg} must be [B, H, {layout.seq_len}, D] for {layout}, got {shape}")
    if q.shape != k.shape:
        raise ValueError(f"{name}: q {tuple(q.shape)} and k {tuple(k.shape)} must have the same shape")


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32, or float64 for float64 inputs: pooled statistics are never accumulated in half precision."""
    return torch.promote_types(x.dtype, torch.float32)


def video_block_lengths(layout: VideoLayout, device: torch.device | str = "cpu") -> torch.Tensor:
    """int64 [num_video_blocks]: real tokens in each video tile."""
    def make() -> torch.Tensor:
        return layout.block_lengths[: layout.num_video_blocks].long()

    return on_device(layout, "video_block_lengths", device, make)


def video_block_sizes(layout: VideoLayout, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """`video_block_lengths` as floats of `dtype` (exact: they are small integers), cached per dtype and device."""
    return on_device(layout, f"video_block_sizes_{dtype}", device, lambda: video_block_lengths(layout).to(dtype))


def video_eye(layout: VideoLayout, device: torch.device | str) -> torch.Tensor:
    """bool [Mv, Mv]: each video query block's own block."""
    mv = layout.num_video_blocks
    return on_device(layout, "video_eye", device, lambda: torch.eye(mv, dtype=torch.bool))


def expanded_zero(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zero expanded to `shape` (a view, no memory). An out-of-place op on it (`torch.scatter`, `torch.index_add`)
    allocates its result, zeroes it and writes it in one op, where `torch.zeros` and an in-place op are two."""
    return on_device(("zero", dtype), "zero", device, lambda: torch.zeros((), dtype=dtype)).expand(shape)


def pool_video_blocks(layout: VideoLayout, x: torch.Tensor) -> torch.Tensor:
    """Mean of x over the real tokens of every video block: [B, H, S, D] model order -> [B, H, Mv, D]."""
    return tile_means(layout, x)[0]


def tile_means(layout: VideoLayout, *xs: torch.Tensor) -> torch.Tensor:
    """`pool_video_blocks` of several tensors of one shape at once: [len(xs), B, H, Mv, D].

    One `index_add_` per tensor of its video tokens into their tile (float32, or float64 for float64 inputs), into
    one buffer divided once: a single read of the video tokens, no gather into the working order and no padded
    copy, so pooling the 12 heads of a 32,760-token call stays a small share of one dense attention call.
    """
    b, h, _, d = xs[0].shape
    dtype, device = compute_dtype(xs[0]), xs[0].device
    sums = torch.zeros(len(xs), b, h, layout.num_video_blocks, d, dtype=dtype, device=device)
    video = slice(layout.video_offset, layout.video_offset + layout.num_video_tokens)
    for i, x in enumerate(xs):  # `sums[i]`, not iteration: in-place writes into unbind's views break autograd
        sums[i].index_add_(2, _video_tile_of_token(layout, device), x[:, :, video].to(dtype))
    return sums / video_block_sizes(layout, device, dtype)[:, None]


def _video_tile_of_token(layout: VideoLayout, device: torch.device) -> torch.Tensor:
    """int64 [num_video_tokens]: the video block (tile) of each video token, in the model's order."""
    def make() -> torch.Tensor:
        video = layout.inverse_permutation[layout.video_offset : layout.video_offset + layout.num_video_tokens]
        return video // layout.block_size

    return on_device(layout, "video_tile_of_token", device, make)


def smallest_covering_set(weights: torch.Tensor, target: torch.Tensor | float, base: torch.Tensor | float = 0.0) -> torch.Tensor:
    """The fewest entries of `weights` (last dim) whose sum, added to `base`, reaches `target`.

    Entries are taken in descending order of weight, so the set is the shortest prefix of the sorted weights
    with base + prefix sum >= target: empty when base alone reaches the target, everything when the target is
    never reached. `target` and `base` broadcast against weights[..., 0]. Returns a bool mask shaped like weights.
    """
    ordered, order = torch.sort(weights, dim=-1, descending=True, stable=True)
    before = torch.cumsum(ordered, dim=-1) - ordered  # mass of the entries ranked above each one
    # Python numbers stay numbers: turning them into device tensors would upload them on every call.
    base = base.unsqueeze(-1) if isinstance(base, torch.Tensor) else base
    target = target.unsqueeze(-1) if isinstance(target, torch.Tensor) else target
    take = (before + base) < target
    return take.scatter(-1, order, take)  # `order` is a permutation: every entry is written


def plan_from_video_mask(video_mask: torch.Tensor, layout: VideoLayout) -> BlockPlan:
    """BlockPlan from a bool [B, H, Mv, Mv] video-block mask: each query block's own block and all text kept."""
    mv = layout.num_video_blocks
    own = torch.eye(mv, dtype=torch.bool, device=video_mask.device)
    return per_call_plan(with_dense_text(video_mask | own, layout), layout)


def per_call_plan(mask: torch.Tensor, layout: VideoLayout, skip_heads: torch.Tensor | None = None) -> BlockPlan:
    """A dynamic strategy's plan from its block mask [B, H, M, M], built without reading anything back to the host.

    Every row keeps its own block, so the plan is valid by construction and is not re-validated (a device sync);
    `kv_indices` is Mk wide whatever the counts (the kernel reads only the first kv_counts entries).
    """
    return BlockPlan.from_mask(mask, layout=layout, skip_heads=skip_heads, max_kv_blocks=layout.num_blocks, check=False)


def density_with_text(layout: VideoLayout, video_key_fraction: float) -> float:
    """Density of a plan keeping `video_key_fraction` of the video keys of every video query, text dense.

    Exact for a plan whose every video query keeps that fraction of video keys; used by the dynamic strategies'
    `estimate_density`, whose video fraction is a prior.
    """
    nv, nt = layout.num_video_tokens, layout.num_dense_tokens
    kept = nv * (nv * min(1.0, max(0.0, video_key_fraction)) + nt) + nt * (nv + nt)
    return kept / float(layout.seq_len) ** 2


@dataclass
class HeadInputs:
    """What a `MaskPlanner` reads for the heads it plans: their q and k, and the tile means of both.

    Attributes:
        layout: the call's layout.
        q, k: [B, h, S, D] of these heads, model order (the controller hands over views of one float copy of the
            heads it plans together).
        tiles: [2, B, h, Mv, D] tile means of q and k (`tile_means`), computed on first use unless given (the
            controller pools every head that needs them in one go and hands over views).
    """

    layout: VideoLayout
    q: torch.Tensor
    k: torch.Tensor
    tiles: torch.Tensor | None = None

    def tile_means(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(q, k) tile means, [B, h, Mv, D] each."""
        if self.tiles is None:
            self.tiles = tile_means(self.layout, self.q, self.k)
        return self.tiles[0], self.tiles[1]


class MaskPlanner(Strategy):
    """A dynamic strategy that chooses, at every call, a video-block mask per head (draft, vmoba, sampled stripe).

    Its plan is the mask with every text row and column and each query block's own block kept. Subclasses define
    `write_video_mask`; `reads_tile_means` says whether it uses `HeadInputs.tile_means`, so the controller knows
    which heads to pool. Such plans are made anew at every call (`reusable` is False).
    """

    reads_tile_means: ClassVar[bool] = False

    def write_video_mask(self, inputs: HeadInputs, out: torch.Tensor) -> None:
        """Write the kept video blocks of `inputs`' heads, each query block's own block included, into `out`
        (bool [B, h, Mv, Mv], a view into a larger mask: write it whole, with `out=` or in place)."""
        raise NotImplementedError

    def _plan_dynamic(self, layout: VideoLayout, q: torch.Tensor, k: torch.Tensor) -> BlockPlan:
        check_qk(self.name, layout, q, k)
        mask = dense_text_mask(layout, q.shape[0], q.shape[1], q.device)
        self.write_video_mask(HeadInputs(layout, q, k), video_part(mask, layout))
        return per_call_plan(mask, layout)


def dense_text_mask(layout: VideoLayout, batch: int, heads: int, device: torch.device) -> torch.Tensor:
    """bool [batch, heads, M, M], all True: text rows and columns kept; `MaskPlanner`s write the video part."""
    return torch.ones(batch, heads, layout.num_blocks, layout.num_blocks, dtype=torch.bool, device=device)


def video_part(mask: torch.Tensor, layout: VideoLayout) -> torch.Tensor:
    """The video-query, video-key view [..., Mv, Mv] of a block mask [..., M, M]."""
    mv = layout.num_video_blocks
    return mask[..., :mv, :mv]
