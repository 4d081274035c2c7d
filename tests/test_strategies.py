"""The registry, the static strategies (dense, skip, diagonal, stripe, neighborhood), stripe's sampled mode, unions.

Every static plan is checked against an independent token-level mask built from each token's (f, h, w) and
tile coordinates in the model's order: the plan must keep every pair the definition includes (never miss a key)
and keep no block pair holding none of them (except each query's own tile). Layouts are padded, with text.
"""

from __future__ import annotations

import math

import pytest
import torch

import vidsparse.strategies as strategies
from vidsparse import VideoLayout
from vidsparse.metrics import attention_recall, relative_l2_error
from vidsparse.testing import make_heads

UNPADDED = VideoLayout(4, 8, 8, tile=(1, 4, 4))
PADDED_PREFIX = VideoLayout(5, 6, 7, text_tokens=5, text_position="prefix", tile=(1, 4, 4))
PADDED_SUFFIX = VideoLayout(5, 5, 9, text_tokens=20, text_position="suffix", tile=(2, 4, 2))
LAYOUTS = [UNPADDED, PADDED_PREFIX, PADDED_SUFFIX]
LAYOUT_IDS = ["unpadded", "padded-prefix", "padded-suffix"]


# ----- independent token-level definitions (model order) -------------------------------------------------------------
def coords(layout: VideoLayout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(f, h, w) [S] of every token (-1 for text), tile coordinates [S, 3], and a video flag [S]."""
    c = layout.token_coords
    video = c[:, 0] >= 0
    return c, torch.where(video[:, None], c // torch.tensor(layout.tile), -1), video


def with_text(video_pairs: torch.Tensor, layout: VideoLayout) -> torch.Tensor:
    """[S, S]: the video-pair definition, every pair involving a text token kept."""
    _, _, video = coords(layout)
    return video_pairs | ~video[:, None] | ~video[None, :]


def diagonal_tokens(layout: VideoLayout, width, temporal, column) -> torch.Tensor:
    c, t, _ = coords(layout)
    df = (c[:, None, 0] - c[None, :, 0]).abs()
    keep = torch.zeros(layout.seq_len, layout.seq_len, dtype=torch.bool)
    if width is not None:
        keep |= df <= width
    if temporal is not None:
        near = torch.maximum((t[:, None, 1] - t[None, :, 1]).abs(), (t[:, None, 2] - t[None, :, 2]).abs())
        keep |= (df <= temporal) & (near <= column)
    return with_text(keep, layout)


def stripe_tokens(layout: VideoLayout, first_frames=0, sinks=0, tiles=()) -> torch.Tensor:
    c, t, video = coords(layout)
    working_block = layout.inverse_permutation // layout.block_size  # sinks: the first blocks of the working order
    column = video & ((c[:, 0] < first_frames) | (working_block < sinks))
    for tile in tiles:
        column |= video & (t == torch.tensor(tile)).all(1)
    return with_text(column[None, :].expand(layout.seq_len, -1), layout)


def natten_window(n: int, k: int, s: int, d: int) -> list[set[int]]:
    """Per query tile x of one axis, the key tiles of its window (GNA / NATTEN non-causal semantics)."""
    windows = []
    for x in range(n):
        group, inner = x % d, x // d
        group_len = len(range(group, n, d))
        leader = min(s * (inner // s) + s // 2, group_len - 1)
        start = min(max(leader - k // 2, 0), max(group_len - k, 0))
        windows.append({group + d * j for j in range(start, min(start + k, group_len))})
    return windows


def neighborhood_tokens(layout: VideoLayout, window, stride, dilation) -> torch.Tensor:
    _, t, video = coords(layout)
    keep = video[:, None] & video[None, :]
    for axis in range(3):
        n = layout.tile_grid[axis]
        allowed = torch.zeros(n, n, dtype=torch.bool)
        for x, keys in enumerate(natten_window(n, window[axis], stride[axis], dilation[axis])):
            allowed[x, list(keys)] = True
        tq, tk = t[:, axis].clamp(min=0), t[:, axis].clamp(min=0)
        keep &= allowed[tq[:, None], tk[None, :]]
    return with_text(keep, layout)


def assert_plan_matches_definition(plan, layout: VideoLayout, definition: torch.Tensor) -> None:
    """The plan keeps every defined pair, and each kept video block pair holds a defined pair or is diagonal."""
    assert plan.layout == layout and (plan.batch, plan.num_heads) == (1, 1)
    kept = plan.to_dense_mask()[0, 0]
    missed = definition & ~kept
    assert not bool(missed.any()), f"plan misses {int(missed.sum())} token pairs of its definition"
    block = layout.inverse_permutation // layout.block_size
    m = layout.num_blocks
    defined_blocks = torch.zeros(m * m, dtype=torch.bool)
    pairs = torch.nonzero(definition)
    defined_blocks[block[pairs[:, 0]] * m + block[pairs[:, 1]]] = True
    allowed = defined_blocks.view(m, m) | torch.eye(m, dtype=torch.bool)
    extra = plan.to_block_mask()[0, 0] & ~allowed
    assert not bool(extra.any()), f"plan keeps {int(extra.sum())} block pairs its definition does not include"


# ----- the registry ----------------------------------------------------------------------------------------------------
def test_available_lists_every_family():
    expected = {"dense", "skip", "diagonal", "stripe", "draft", "blockified", "neighborhood", "vmoba", "union"}
    assert expected <= set(strategies.available())


def test_get_refuses_unknown_names_and_parameters_clearly():
    with pytest.raises(ValueError, match=r"unknown strategy 'diagonl'.*diagonal"):
        strategies.get("diagonl")
    with pytest.raises(ValueError, match=r"no parameter 'window'.*accepted: \['width', 'temporal', 'column'\]"):
        strategies.get("diagonal", window=3)


@pytest.mark.parametrize(
    "name, params, argument",
    [
        ("diagonal", {"width": -1}, "width"),
        ("diagonal", {"width": 1.5}, "width"),
        ("diagonal", {"width": None, "temporal": None}, "give width"),
        ("diagonal", {"temporal": 1, "column": -2}, "column"),
        ("diagonal", {"temporal": "most"}, "temporal"),
        ("stripe", {}, "keeps nothing"),
        ("stripe", {"first_frames": -1}, "first_frames"),
        ("stripe", {"tiles": [(0, 1)]}, "tiles"),
        ("stripe", {"top_k": 0}, "top_k"),
        ("stripe", {"fraction": 1.5}, "fraction"),
        ("stripe", {"top_k": 2, "mass": 0.5}, "at most one"),
        ("stripe", {"top_k": 2, "samples": 0}, "samples"),
        ("neighborhood", {"window": 0}, "window"),
        ("neighborhood", {"window": (3, 3)}, "window"),
        ("neighborhood", {"window": 2, "stride": 3}, "stride"),
        ("neighborhood", {"dilation": (1, True, 1)}, "dilation"),
        ("union", {"parts": []}, "at least one"),
        ("union", {"parts": [{"name": "nope"}]}, "unknown strategy"),
        ("union", {"parts": "diagonal"}, "parts"),
    ],
)
def test_bad_parameters_name_the_argument(name, params, argument):
    with pytest.raises(ValueError, match=argument):
        strategies.get(name, **params)


def test_stripe_tile_outside_the_grid_keeps_nothing_with_a_warning():
    """A tile coordinate is a latent position (the tile has the same size at every grid): a grid too small to
    hold it has nothing to keep there, and planning goes on (no failure mid-generation on another grid)."""
    with pytest.warns(UserWarning, match=r"tile \(9, 0, 0\).*outside the tile grid"):
        plan = strategies.get("stripe", first_frames=1, tiles=[(9, 0, 0)]).plan(UNPADDED)
    assert torch.equal(plan.to_block_mask(), strategies.get("stripe", first_frames=1).plan(UNPADDED).to_block_mask())


STATIC = [
    ("dense", {}),
    ("diagonal", {"width": 1}),
    ("diagonal", {"width": None, "temporal": 2, "column": 1}),
    ("stripe", {"first_frames": 1, "sinks": 2, "tiles": [(1, 1, 0)]}),
    ("neighborhood", {"window": (3, 1, 2), "dilation": (1, 2, 1)}),
    ("union", {"parts": [{"name": "diagonal", "params": {"width": 0}}, {"name": "stripe", "params": {"first_frames": 1}}]}),
]


@pytest.mark.parametrize("name, params", STATIC, ids=[n for n, _ in STATIC])
def test_static_plans_are_cached_per_layout_and_round_trip(name, params):
    strategy = strategies.get(name, **params)
    assert not strategy.is_dynamic
    plan = strategy.plan(PADDED_PREFIX)
    assert strategies.get(name, **params).plan(PADDED_PREFIX) is plan  # equal strategies share the cache entry
    assert strategy.plan(PADDED_SUFFIX) is not plan and strategy.plan(PADDED_SUFFIX).layout == PADDED_SUFFIX
    again = strategies.get(name, **strategy.params())
    assert again == strategy and hash(again) == hash(strategy)
    assert math.isclose(strategy.estimate_density(PADDED_PREFIX), plan.density())


# ----- dense and skip -----------------------------------------------------------------------------------------------------
def test_dense_keeps_everything_and_skip_nothing():
    for layout in LAYOUTS:
        assert bool(strategies.get("dense").plan(layout).to_dense_mask().all())
        skip = strategies.get("skip").plan(layout)
        assert skip.density() == 0.0 and bool(skip.skip_heads.all())
        q, k, v = make_heads(layout, ["spatial"], head_dim=32)
        assert float(relative_l2_error(q, k, v, skip)) == pytest.approx(1.0)  # the head's output is dropped


# ----- diagonal ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize(
    "width, temporal, column", [(0, None, 0), (1, None, 0), (None, 1, 0), (None, 9, 1), (0, 2, 0), (None, "all", 0)]
)
def test_diagonal_plan_matches_its_token_definition(layout, width, temporal, column):
    plan = strategies.get("diagonal", width=width, temporal=temporal, column=column).plan(layout)
    frames = layout.frames if temporal == "all" else temporal  # "all": every frame of this grid
    assert_plan_matches_definition(plan, layout, diagonal_tokens(layout, width, frames, column))


# ----- stripe ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("params", [{"first_frames": 1}, {"first_frames": 3}, {"sinks": 3}, {"tiles": [(1, 0, 1), (0, 1, 0)]}])
def test_static_stripe_matches_its_token_definition(layout, params):
    plan = strategies.get("stripe", **params).plan(layout)
    # Every query keeps its own tile too, which the block-level check allows.
    assert_plan_matches_definition(plan, layout, stripe_tokens(layout, **params))


def sampled_tile_scores(layout: VideoLayout, q: torch.Tensor, k: torch.Tensor, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent: mean softmax mass of evenly spaced video query rows on each video tile, and on text."""
    video_rows = torch.nonzero(layout.token_coords[:, 0] >= 0).squeeze(1)
    picks = torch.linspace(0, video_rows.numel() - 1, min(samples, video_rows.numel()), dtype=torch.float64)
    rows = video_rows[picks.round().long().unique()]
    probs = torch.softmax(q[:, :, rows].double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1]), -1).mean(2)
    _, _, video = coords(layout)
    block = layout.inverse_permutation // layout.block_size
    scores = torch.stack([probs[..., video & (block == b)].sum(-1) for b in range(layout.num_video_blocks)], dim=-1)
    return scores, probs[..., ~video].sum(-1)


@pytest.mark.parametrize("layout", [UNPADDED, PADDED_SUFFIX], ids=["unpadded", "padded-suffix"])
@pytest.mark.parametrize("params", [{"top_k": 3}, {"fraction": 0.3}, {"mass": 0.6}, {"mass": 0.9, "first_frames": 1}])
def test_sampled_stripe_keeps_the_top_tiles_of_the_sampled_rows(layout, params):
    strategy = strategies.get("stripe", samples=16, **params)
    assert strategy.is_dynamic
    q, k = 2.0 * torch.randn(2, 3, layout.seq_len, 16), 2.0 * torch.randn(2, 3, layout.seq_len, 16)
    plan = strategy.plan(layout, q, k)
    assert (plan.batch, plan.num_heads) == (2, 3)
    scores, text = sampled_tile_scores(layout, q, k, samples=16)
    mv = layout.num_video_blocks
    ranked = torch.argsort(scores, dim=-1, descending=True)
    expected = torch.zeros(2, 3, mv, dtype=torch.bool)
    for b in range(2):
        for h in range(3):
            if "mass" in params:
                total = float(text[b, h])
                for tile in ranked[b, h].tolist():
                    if total >= params["mass"]:
                        break
                    expected[b, h, tile] = True
                    total += float(scores[b, h, tile])
            else:
                n = params.get("top_k") or math.ceil(params["fraction"] * mv)
                expected[b, h, ranked[b, h, :n]] = True
    block = layout.inverse_permutation // layout.block_size
    first_frame_of_block = torch.tensor([int(layout.token_coords[block == b, 0].min()) for b in range(mv)])
    expected |= first_frame_of_block < params.get("first_frames", 0)
    blocks = plan.to_block_mask()
    expected_blocks = expected[:, :, None, :].expand(2, 3, mv, mv) | torch.eye(mv, dtype=torch.bool)
    assert torch.equal(blocks[..., :mv, :mv], expected_blocks)
    assert bool(blocks[..., mv:, :].all()) and bool(blocks[..., :, mv:].all())


# ----- neighborhood -----------------------------------------------------------------------------------------------------------
def test_natten_windows_on_known_examples():
    # Hand-checked: sliding windows shift at the borders instead of shrinking; stride = window is blocked
    # attention; dilation 2 windows take every other tile.
    assert natten_window(7, 3, 1, 1) == [{0, 1, 2}, {0, 1, 2}, {1, 2, 3}, {2, 3, 4}, {3, 4, 5}, {4, 5, 6}, {4, 5, 6}]
    assert natten_window(4, 2, 2, 1) == [{0, 1}, {0, 1}, {2, 3}, {2, 3}]
    assert natten_window(6, 2, 1, 2) == [{0, 2}, {1, 3}, {0, 2}, {1, 3}, {2, 4}, {3, 5}]
    assert natten_window(2, 5, 1, 1) == [{0, 1}, {0, 1}]  # a window larger than the axis keeps the axis


@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize(
    "window, stride, dilation",
    [((3, 3, 3), (1, 1, 1), (1, 1, 1)), ((2, 2, 2), (2, 2, 2), (1, 1, 1)), ((3, 1, 2), (2, 1, 1), (1, 1, 1)),
     ((2, 1, 1), (1, 1, 1), (2, 1, 1))],
    ids=["sliding", "blocked", "strided", "dilated"],
)
def test_neighborhood_plan_matches_its_token_definition(layout, window, stride, dilation):
    plan = strategies.get("neighborhood", window=window, stride=stride, dilation=dilation).plan(layout)
    assert_plan_matches_definition(plan, layout, neighborhood_tokens(layout, window, stride, dilation))


def test_blocked_neighborhood_partitions_the_tiles():
    layout = VideoLayout(4, 8, 8, tile=(1, 4, 4))  # tile grid (4, 2, 2)
    blocks = strategies.get("neighborhood", window=(2, 2, 2), stride=(2, 2, 2)).plan(layout).to_block_mask()[0, 0]
    # Blocked attention is an equivalence relation: every query block sees exactly its own group of 2x2x2 tiles.
    assert torch.equal(blocks, blocks.T) and torch.equal((blocks.int() @ blocks.int()) > 0, blocks)
    assert bool((blocks.sum(1) == 8).all())


# ----- unions ----------------------------------------------------------------------------------------------------------------
def test_union_of_static_strategies_is_the_union_of_their_definitions():
    layout = PADDED_SUFFIX
    union = strategies.get("diagonal", width=0) | strategies.get("stripe", first_frames=1)
    assert union.name == "union" and not union.is_dynamic
    definition = diagonal_tokens(layout, 0, None, 0) | stripe_tokens(layout, first_frames=1)
    assert_plan_matches_definition(union.plan(layout), layout, definition)
    nested = union | strategies.get("neighborhood", window=1)
    assert len(nested.parts) == 3  # nested unions are flattened


def test_union_with_a_dynamic_part_broadcasts_the_static_one():
    layout = PADDED_PREFIX
    q, k = torch.randn(2, 3, layout.seq_len, 16), torch.randn(2, 3, layout.seq_len, 16)
    draft = strategies.get("draft", keep_ratio=0.1)
    union = strategies.get("diagonal", width=0) | draft
    assert union.is_dynamic
    with pytest.raises(ValueError, match="needs q and k"):
        union.plan(layout)
    plan = union.plan(layout, q, k)
    assert (plan.batch, plan.num_heads) == (2, 3)
    expected = draft.plan(layout, q, k).to_block_mask() | strategies.get("diagonal", width=0).plan(layout).to_block_mask()
    assert torch.equal(plan.to_block_mask(), expected)
    # A union is skipped only where every part skips.
    assert bool((strategies.get("skip") | strategies.get("skip")).plan(layout).skip_heads.all())
    kept = (strategies.get("skip") | strategies.get("diagonal", width=0)).plan(layout).skip_heads
    assert kept is None or not bool(kept.any())  # no head skipped (the union keeps an all-False tensor)


# ----- quality on the head type each family is designed for --------------------------------------------------------------------
# 8 frames of 16 x 16 tokens, 16-token tiles (one frame, 4 x 4 tokens): 128 tiles. Densities are exact for the
# static families (e.g. a band of 3 frames of 8 keeps 3/8 of the keys).
QUALITY_LAYOUT = VideoLayout(8, 16, 16, tile=(1, 4, 4))
QUALITY = [
    ("spatial", "diagonal", {"width": 1}, 3 / 8, 0.05),
    ("spatial", "neighborhood", {"window": (3, 3, 3)}, 3 / 8 * 3 / 4 * 3 / 4, 0.05),
    ("temporal", "diagonal", {"width": None, "temporal": 7, "column": 0}, 1 / 16, 0.05),
    ("sink", "stripe", {"first_frames": 1}, 1 / 8 + 1 / 128, 0.1),
    ("sink", "stripe", {"top_k": 4}, 5 / 128, 0.1),
    ("spatial", "union", {"parts": [{"name": "diagonal", "params": {"width": 1}},
                                    {"name": "stripe", "params": {"first_frames": 1}}]}, 3 / 8 + 1 / 8, 0.05),
    ("sink", "union", {"parts": [{"name": "diagonal", "params": {"width": 1}},
                                 {"name": "stripe", "params": {"first_frames": 1}}]}, 3 / 8 + 1 / 8, 0.1),
]


@pytest.mark.parametrize("kind, name, params, density, max_error", QUALITY, ids=[f"{q[1]}-on-{q[0]}" for q in QUALITY])
def test_low_error_on_the_head_type_it_is_designed_for(kind, name, params, density, max_error):
    layout = QUALITY_LAYOUT
    q, k, v = make_heads(layout, [kind, "diffuse"], head_dim=64)
    strategy = strategies.get(name, **params)
    plan = strategy.plan(layout, q, k) if strategy.is_dynamic else strategy.plan(layout)
    rows = torch.randperm(layout.seq_len)[:512]
    error = relative_l2_error(q, k, v, plan, rows=rows)
    got = plan.density(per_head=True).flatten()
    assert float(got[0]) <= density + 1e-9, got
    assert float(error[0, 0]) < max_error, error
    # The same plan on a diffuse head is far off: the low error comes from the match of pattern and head.
    assert float(error[0, 1]) > 3 * max_error, error
    assert float(attention_recall(q, k, plan, rows=rows)[0, 0]) > 0.9
