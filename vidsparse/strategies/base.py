"""The strategy protocol and registry. Every sparse-attention family is one module registering one class.

A strategy is a frozen dataclass whose fields are its parameters, in grid units (latent frames, tiles) and
named as in its source paper, validated in `__post_init__` with errors naming the argument and its range.
It lowers to a BlockPlan for a VideoLayout:

    plan(layout, q=None, k=None) -> BlockPlan

Static strategies (is_dynamic = False) depend on the layout only: their plan has batch 1 and one head and is
cached per (strategy, layout). Dynamic strategies read q and k ([B, H, S, D], model order; they should only
look at pooled summaries) and return a plan with q's batch and heads.

Text tokens are always dense: video queries keep every text key and text queries keep every key
(`with_dense_text`). So are a layout's prefix tokens (tokens outside the grid before the video, such as Framepack's
history latents): they share the dense blocks with the text, and "text" below means both.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from functools import lru_cache
from typing import Any, ClassVar

import torch

from ..layout import VideoLayout
from ..plan import BlockPlan

_REGISTRY: dict[str, type["Strategy"]] = {}


def register_strategy(cls: type["Strategy"]) -> type["Strategy"]:
    """Class decorator: make the strategy available under `cls.name`."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"strategy {cls.__name__} must be a dataclass")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    """Names of all registered strategies."""
    return sorted(_REGISTRY)


def get(name: str, **params: Any) -> "Strategy":
    """The strategy `name` with the given parameters; ValueError naming the accepted names or parameters."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; available: {', '.join(available())}")
    cls = _REGISTRY[name]
    accepted = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"strategy {name!r} has no parameter {', '.join(map(repr, unknown))}; accepted: {accepted}")
    return cls(**params)


class Strategy(ABC):
    """Base class of all strategies (subclasses are frozen dataclasses registered with @register_strategy)."""

    name: ClassVar[str]
    is_dynamic: ClassVar[bool] = False

    def plan(self, layout: VideoLayout, q: torch.Tensor | None = None, k: torch.Tensor | None = None) -> BlockPlan:
        if self.is_dynamic:
            if q is None or k is None:
                raise ValueError(f"strategy {self.name!r} is dynamic and needs q and k")
            return self._plan_dynamic(layout, q, k)
        return _cached_static_plan(self, layout)

    def block_mask(self, layout: VideoLayout) -> torch.Tensor:
        """Static strategies: bool [num_blocks, num_blocks] over the working order, text included."""
        raise NotImplementedError(f"{self.name} is dynamic; use plan(layout, q, k)")

    def _plan_dynamic(self, layout: VideoLayout, q: torch.Tensor, k: torch.Tensor) -> BlockPlan:
        raise NotImplementedError

    def reusable(self, planned_at: int | None, step: int | None) -> bool:
        """Whether a plan made at denoising step `planned_at` may be used again at step `step` for the same
        layer, layout, batch and heads (`vidsparse.strategies.reuse.PlanCache` asks this before planning).

        Static plans never change. Dynamic strategies re-plan at every call unless they override this (the
        blockified strategy reuses its choice for `refresh_every` steps, as AdaSpa does).
        """
        return not self.is_dynamic

    def at_layer(self, layer: int) -> "Strategy":
        """The strategy as used in patched layer `layer` (0-based). Most strategies do not depend on the layer;
        vmoba cycles its key partition with it. A policy applying one strategy to every layer calls this."""
        return self

    def retiled(self, measured_tile: tuple[int, int, int], tile: tuple[int, int, int]) -> "Strategy":
        """The strategy with its tile-unit parameters converted from tiles of `measured_tile` to tiles of `tile`,
        each rounded to the nearest whole tile (at least 1), so it covers about the same latent extent. A profile
        measured with another tile than the runtime's is applied this way. Strategies with no parameter in tiles
        return themselves."""
        return self

    @abstractmethod
    def estimate_density(self, layout: VideoLayout) -> float:
        """Expected fraction of a dense call's work the plan computes on this layout (`BlockPlan.density`: slots,
        padding included); exact for static strategies."""

    def params(self) -> dict[str, Any]:
        """Parameters as plain JSON-able data (what a profile stores)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def __or__(self, other: "Strategy") -> "Strategy":
        from .union import Union

        return Union.of(self, other)


def in_tiles(value: int, measured: int, tile: int) -> int:
    """`value` tiles of `measured` tokens, as the nearest whole number (>= 1) of tiles of `tile` tokens."""
    return max(1, round(value * measured / tile))


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Strategy):
        return {"name": value.name, "params": value.params()}
    return value


@lru_cache(maxsize=256)
def _cached_static_plan(strategy: Strategy, layout: VideoLayout) -> BlockPlan:
    mask = strategy.block_mask(layout)
    return BlockPlan.from_mask(mask[None, None], layout=layout)


def with_dense_text(video_mask: torch.Tensor, layout: VideoLayout) -> torch.Tensor:
    """Extend a video-block mask [..., Mv, Mv] to all blocks [..., M, M] with the dense blocks' (text and prefix)
    rows and columns kept."""
    mv, m = layout.num_video_blocks, layout.num_blocks
    full = torch.ones(*video_mask.shape[:-2], m, m, dtype=torch.bool, device=video_mask.device)
    full[..., :mv, :mv] = video_mask
    return full
