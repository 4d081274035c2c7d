"""A profile made on one latent grid, applied on a larger grid and on a grid the tile does not divide (issue 19).

The rule (see `vidsparse.profile`): parameters are in latent frames and in tiles of the one runtime tile, so they
cover the same latent neighbourhood on every grid. Checked at token level, from token coordinates alone: on each
grid every key of the query's physical neighbourhood is kept, and where the neighbourhood holds only full tiles
(no border shift, no packed edge block) exactly those keys are kept: the same latent extent on every grid. Then a
patched tiny Wan pipeline generates at the two other grids with the profile, dynamic strategies included.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import vidsparse
from vidsparse import VideoLayout
from vidsparse.layout import DEFAULT_TILE
from vidsparse.profile import FORMAT, Profile
from vidsparse.runtime import DenseFallbackWarning
from vidsparse.testing import tiny_pipeline

CALIBRATION_GRID = (3, 16, 32)  # tile grid (3, 2, 2): divisible
LARGER_GRID = (7, 40, 80)  # tile grid (7, 5, 5)
UNEVEN_GRID = (5, 30, 52)  # tile grid (5, 4, 4), partial rows and columns: edge tiles packed
GRIDS = [CALIBRATION_GRID, LARGER_GRID, UNEVEN_GRID]
TF, TH, TW = DEFAULT_TILE

#: (bucket, layer, head) -> strategy of the profile, for the tiny Wan pipeline (2 layers of 2 heads).
HEADS = {
    (0, 0, 0): ("neighborhood", {"window": [3, 3, 3]}),
    (0, 0, 1): ("diagonal", {"width": 1}),
    (0, 1, 0): ("diagonal", {"width": None, "temporal": "all", "column": 0}),
    (0, 1, 1): ("union", {"parts": [{"name": "diagonal", "params": {"width": 0}},
                                    {"name": "stripe", "params": {"first_frames": 1, "tiles": [[0, 1, 1]]}}]}),
    (1, 0, 0): ("draft", {"keep_ratio": 0.25}),
    (1, 0, 1): ("vmoba", {"partition": "3d", "st_chunk_size": [1, 2, 2]}),
    (1, 1, 0): ("stripe", {"top_k": 2}),
    (1, 1, 1): ("blockified", {"recall": 0.9, "refresh_every": 2}),
}


def profile_dict() -> dict:
    buckets = []
    for b, (start, stop) in enumerate(((0.0, 0.5), (0.5, 1.0))):
        layers = [{"layer": layer, "heads": [
            {"strategy": HEADS[b, layer, h][0], "params": HEADS[b, layer, h][1], "error": 0.01, "recall": 0.9,
             "density": 0.3} for h in range(2)]} for layer in range(2)]
        buckets.append({"start": start, "stop": stop, "layers": layers})
    return {
        "format": FORMAT,
        "model": {"family": "wan", "name": "tiny", "revision": None, "num_layers": 2, "num_heads": 2, "head_dim": 16},
        "calibration": {"prompts": 1, "steps": 4, "frames": 9, "height": 128, "width": 256,
                        "grid": list(CALIBRATION_GRID), "tile": list(DEFAULT_TILE), "seed": 0, "sampled_steps": [1, 3],
                        "rows": 64, "objective": {"error": 0.05}, "seconds": 1.0},
        "schedule": {"dense_warmup_steps": 0, "dense_layers": []},
        "hardware": {"cost": "ideal", "device": "cpu", "backend": "gather", "dtype": "float32", "tokens": 1536,
                     "heads": 2, "head_dim": 16, "block_size": 128, "dense_ms": 1.0, "fixed_ms": 0.0,
                     "ms_per_block": 0.01, "points": [], "planning_ms": {}},
        "buckets": buckets,
        "summary": {"mean_density": 0.3, "predicted_speedup": 2.0, "predicted_error": 0.01},
    }


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> Profile:
    path = tmp_path_factory.mktemp("profile") / "p.json"
    Profile.from_dict(profile_dict()).save(path)
    return Profile.load(path)


def static_strategy(profile: Profile, bucket: int, layer: int, head: int):
    step = 0 if bucket == 0 else 3
    return profile.policy().strategies(step, 4, layer, 2)[head]


def kept_keys(strategy, layout: VideoLayout, rows: torch.Tensor) -> torch.Tensor:
    """bool [r, S]: the keys the strategy's plan keeps for query tokens `rows` (model order)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an explicit stripe tile outside a small grid warns; checked elsewhere
        return strategy.plan(layout).to_dense_mask(rows)[0, 0]


def sampled_rows(layout: VideoLayout, count: int = 48) -> torch.Tensor:
    return torch.randperm(layout.num_video_tokens, generator=torch.Generator().manual_seed(0))[:count]


def tile_of(coords: torch.Tensor) -> torch.Tensor:
    return coords // torch.tensor(DEFAULT_TILE)


def full_tile(layout: VideoLayout, tile: torch.Tensor) -> torch.Tensor:
    """bool: the tile(s) lie wholly inside the grid (not an edge tile, so never packed)."""
    return ((tile + 1) * torch.tensor(DEFAULT_TILE) <= torch.tensor(layout.grid)).all(-1)


@pytest.mark.parametrize("grid", GRIDS, ids=["calibration", "larger", "uneven"])
def test_neighborhood_window_covers_the_same_latent_extent(profile, grid):
    layout = VideoLayout(*grid)
    strategy = static_strategy(profile, 0, 0, 0)
    rows = sampled_rows(layout)
    kept = kept_keys(strategy, layout, rows)
    coords = layout.token_coords
    key_tiles, query_tiles = tile_of(coords), tile_of(coords[rows])
    tile_grid = torch.tensor(layout.tile_grid)
    # NATTEN's window of 3 tiles per axis, shifted (not cut) at the borders.
    start = torch.clamp(torch.minimum(query_tiles - 1, tile_grid - 3), min=0)
    inside = ((key_tiles[None] >= start[:, None]) & (key_tiles[None] < start[:, None] + 3)).all(-1)
    assert bool((kept | ~inside).all()), "a key of the physical window is missing"
    exact = [r for r in range(rows.numel())
             if bool(full_tile(layout, query_tiles[r]))
             and bool(((query_tiles[r] >= 1) & (query_tiles[r] + 2 <= tile_grid)).all())
             and bool(full_tile(layout, query_tiles[r] + 1))]
    assert exact or grid == CALIBRATION_GRID  # the larger grids have interior queries to check exactly
    for r in exact:
        assert torch.equal(kept[r], inside[r])
        box = coords[kept[r]]
        extent = (box.amax(0) - box.amin(0) + 1).tolist()
        assert extent == [3 * TF, 3 * TH, 3 * TW]  # 3 frames x 24 rows x 48 columns on every grid


@pytest.mark.parametrize("grid", GRIDS, ids=["calibration", "larger", "uneven"])
def test_diagonal_band_and_multi_diagonal_keep_their_frames(profile, grid):
    layout = VideoLayout(*grid)
    rows = sampled_rows(layout)
    coords = layout.token_coords
    df = (coords[rows, None, 0] - coords[None, :, 0]).abs()
    band = kept_keys(static_strategy(profile, 0, 0, 1), layout, rows)
    assert bool((band | (df > 1)).all())  # every key within one frame
    # Nothing beyond one more frame for a query in a full tile (a packed key block may span a frame edge), two
    # more for a query in a packed block (whose own tokens may span one).
    in_full_tile = full_tile(layout, tile_of(coords[rows]))
    assert not bool((band & (df > 2) & in_full_tile[:, None]).any())
    assert not bool((band & (df > 3)).any())
    column = kept_keys(static_strategy(profile, 0, 1, 0), layout, rows)
    tiles = tile_of(coords)[:, 1:]
    same_column = (tiles[rows, None] == tiles[None, :]).all(-1)
    assert bool((column | ~same_column).all())  # the query's tile column in every frame ("all" frames)
    for r in range(rows.numel()):
        if bool(full_tile(layout, tile_of(coords[rows[r]]))):  # a full tile's column holds full tiles only
            assert torch.equal(column[r], same_column[r])


def test_profile_runs_on_other_grids_without_raising(profile):
    """The tiny Wan pipeline (patch 1 x 2 x 2, VAE 8x, 4x in time) patched with the profile, generating at a
    larger grid and at an uneven one: every strategy plans and runs there, the stripe tile outside the uneven grid
    only warns."""
    pipe = tiny_pipeline("wan")
    vidsparse.patch(pipe, profile=profile)
    try:
        for frames, height, width in ((5, 24, 48), (4, 6, 20)):  # 5760 and 480 tokens; the second has no tile (0, 1, 1)
            pixels = dict(num_frames=4 * (frames - 1) + 1, height=16 * height, width=16 * width)
            with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = pipe(prompt="a red circle", num_inference_steps=4, output_type="latent", max_sequence_length=16,
                           generator=torch.Generator().manual_seed(0), **pixels).frames
            outside = [w for w in caught if "outside the tile grid" in str(w.message)]
            assert bool(outside) == (height < 2 * TH)
            assert not [w for w in caught if isinstance(w.message, DenseFallbackWarning)]
            assert out.shape[2:] == (frames, 2 * height, 2 * width) and bool(torch.isfinite(out).all())
    finally:
        vidsparse.unpatch(pipe)
