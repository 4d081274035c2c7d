"""Helpers shared by the dynamic strategies: tile-pooled q/k, smallest covering sets, and the final plan.

Dynamic strategies look at *pooled* queries and keys: the mean of the real tokens of each video block (one
block = one tile of the layout's working order). Padding slots of edge tiles are excluded from the mean, and
the number of real tokens of each tile is returned alongside so that a strategy can weight a partly empty
tile by its size. Text blocks are never pooled: text rows and columns are dense in every plan.
"""

from __future__ import annotations

import torch

from ..device_cache import on_device
from ..layout import VideoLayout
from ..plan import BlockPlan
from .base import with_dense_text


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


def pool_video_blocks(layout: VideoLayout, x: torch.Tensor) -> torch.Tensor:
    """Mean of x over the real tokens of every video block: [B, H, S, D] model order -> [B, H, Mv, D].

    One `index_add_` of the video tokens into their tile (float32, or float64 for float64 inputs): a single
    read of the video tokens, no gather into the working order and no padded copy, so pooling the 12 heads of
    a 32,760-token call stays a small share of one dense attention call.
    """
    b, h, _, d = x.shape
    video = x[:, :, layout.video_offset : layout.video_offset + layout.num_video_tokens].to(compute_dtype(x))
    sums = torch.zeros(b, h, layout.num_video_blocks, d, dtype=video.dtype, device=x.device)
    sums.index_add_(2, _video_tile_of_token(layout, x.device), video)
    return sums / video_block_lengths(layout, x.device).to(sums.dtype)[:, None]


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
    return torch.zeros_like(take).scatter_(-1, order, take)


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
