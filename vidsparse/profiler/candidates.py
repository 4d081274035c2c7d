"""The candidates the profiler scores for every head: each strategy family over a small parameter grid.

Parameters are in grid units (frames, tiles of the one runtime tile) and mean the same latent extent at every
grid, so a choice made at 480p means the same attention at 720p (see `vidsparse.profile`). The grid follows the peers' published settings where they exist (DraftAttention keeps
10-25% of the draft map; AdaSpa-style recall targets; VMoBA's simsum threshold 0.25) and is kept small:
every candidate costs one masked softmax over the sampled rows per head and call.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..layout import VideoLayout
from ..strategies import Strategy, available, get

#: Families a strategy of which is designed for each head kind of the zoo (`vidsparse.testing.zoo.HEAD_KINDS`).
DESIGNED_FOR: dict[str, tuple[str, ...]] = {
    "spatial": ("diagonal", "neighborhood"),
    "temporal": ("diagonal",),
    "sink": ("stripe",),
    "block": ("draft", "blockified", "vmoba"),
    "diffuse": ("dense",),
}


def default_candidates(layout: VideoLayout, families: Iterable[str] | None = None) -> list[Strategy]:
    """dense, skip and a small grid per family for this layout (duplicates removed, dense first).

    Args:
        families: restrict to these strategy names (dense is always included: it is the fallback of every head).
    """
    frames = layout.tile_grid[0]
    grid: list[tuple[str, dict]] = [
        ("dense", {}),
        ("skip", {}),
        ("diagonal", {"width": 0}),
        ("diagonal", {"width": 1}),
        ("diagonal", {"width": None, "temporal": "all", "column": 0}),
        ("diagonal", {"width": None, "temporal": "all", "column": 1}),
        ("diagonal", {"width": 0, "temporal": "all", "column": 0}),
        ("stripe", {"first_frames": 1}),
        ("stripe", {"fraction": 0.1}),
        ("stripe", {"fraction": 0.25}),
        ("neighborhood", {"window": (3, 3, 3)}),
        ("neighborhood", {"window": (min(frames, 5), 3, 3)}),
        ("draft", {"keep_ratio": 0.1}),
        ("draft", {"keep_ratio": 0.25}),
        ("draft", {"keep_ratio": 0.4}),
        ("draft", {"mass": 0.9}),
        ("draft", {"mass": 0.97}),
        ("blockified", {"recall": 0.97}),  # its search costs one dense attention per call: one setting only
        ("vmoba", {}),
        ("vmoba", {"simsum_threshold": 0.5}),
    ]
    wanted = set(available() if families is None else families) | {"dense"}
    unknown = sorted(wanted - set(available()))
    if unknown:
        raise ValueError(f"unknown strategy families {unknown}; available: {', '.join(available())}")
    candidates: list[Strategy] = []
    for name, params in grid:
        if name in wanted:
            strategy = get(name, **params)
            if strategy not in candidates:
                candidates.append(strategy)
    if "union" in wanted and {"diagonal", "stripe"} <= wanted:
        candidates.append(get("diagonal", width=0) | get("stripe", first_frames=1))
    return candidates


def family(strategy: Strategy) -> str:
    """The family a candidate belongs to (a union counts as its first part's family)."""
    parts = getattr(strategy, "parts", None)
    return parts[0].name if strategy.name == "union" and parts else strategy.name
