"""The dynamic strategies (draft, blockified, vmoba) and plan reuse across denoising steps.

Every selection is checked against an independent float64 re-implementation of its docstring definition,
computed in the model's token order (no working order, no chunking) and, where small enough, by enumerating
every subset of key tiles.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import vidsparse.strategies as strategies
from vidsparse import VideoLayout
from vidsparse.metrics import attention_recall, relative_l2_error
from vidsparse.strategies import blockified as blockified_module
from vidsparse.strategies.pooling import pool_video_blocks, smallest_covering_set
from vidsparse.strategies.reuse import PlanCache
from vidsparse.testing import make_heads

# 8 tiles, no padding, no text: small enough to enumerate all 2^8 key-tile subsets per row.
SMALL = VideoLayout(2, 8, 8, tile=(1, 4, 4))
# 12 tiles, padded edge tiles, text prefix: 2^12 subsets.
PADDED_PREFIX = VideoLayout(3, 6, 7, text_tokens=5, text_position="prefix", tile=(1, 4, 4))
# 20 tiles, padded in every axis, text suffix spanning two padded blocks.
PADDED_SUFFIX = VideoLayout(3, 5, 9, text_tokens=20, text_position="suffix", tile=(2, 4, 2))
LAYOUTS = [SMALL, PADDED_PREFIX, PADDED_SUFFIX]

CONFIGS = [
    ("draft", {}),
    ("draft", {"mass": 0.6}),
    ("blockified", {"recall": 0.8}),
    ("vmoba", {"partition": "1d"}),
    ("vmoba", {"partition": "2d", "select_mode": "topk", "topk": 2}),
    ("vmoba", {"partition": "3d", "st_chunk_size": (1, 1, 2), "threshold_type": "head_global"}),
    ("vmoba", {"layer": 4, "select_mode": "topk", "threshold_type": "head_global"}),
]
CONFIG_IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in params.items()) or 'default'}" for name, params in CONFIGS]


def random_qk(layout: VideoLayout, batch: int = 2, heads: int = 3, dim: int = 16, dtype=torch.float64):
    # Larger-than-unit logits make the attention maps uneven, so the selections are not trivial.
    q = 2.0 * torch.randn(batch, heads, layout.seq_len, dim, dtype=dtype)
    k = 2.0 * torch.randn(batch, heads, layout.seq_len, dim, dtype=dtype)
    return q, k


# ----- independent definitions (model order, float64) --------------------------------------------------------------
def block_of_token(layout: VideoLayout) -> torch.Tensor:
    return layout.inverse_permutation // layout.block_size


def naive_tile_means(layout: VideoLayout, x: torch.Tensor) -> torch.Tensor:
    """[B, H, Mv, D]: mean of x over the real tokens of each video block (a full tile, or packed edge tiles)."""
    out = torch.zeros(*x.shape[:2], layout.num_video_blocks, x.shape[-1], dtype=torch.float64)
    for block in range(layout.num_video_blocks):
        inside = block_of_token(layout) == block
        out[:, :, block] = x[:, :, inside].double().mean(2)
    return out


def first_tile_of_block(layout: VideoLayout, block: int) -> tuple[int, int, int]:
    """Tile coordinates of the first token of a video block."""
    token = int(layout.permutation[block * layout.block_size])
    return tuple((layout.token_coords[token] // torch.tensor(layout.tile)).tolist())


def tile_sizes(layout: VideoLayout) -> torch.Tensor:
    return torch.bincount(block_of_token(layout), minlength=layout.num_blocks)[: layout.num_video_blocks]


def exact_block_mass(layout: VideoLayout, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """[B, H, Mv, M]: mean over each video query block's tokens of the dense softmax mass on each key block."""
    probs = torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    blocks = block_of_token(layout)
    one_hot = torch.nn.functional.one_hot(blocks, layout.num_blocks).double()  # [S, M]
    per_key_block = probs @ one_hot  # [B, H, S, M]
    summed = one_hot.T @ per_key_block  # [B, H, M, M] summed over query tokens
    return (summed / one_hot.sum(0)[:, None])[:, :, : layout.num_video_blocks]


def all_subsets(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0, 1], repeat=n)), dtype=torch.float64)  # [2^n, n]


def brute_force_fewest(weights: torch.Tensor, target: float, base: torch.Tensor | float = 0.0) -> torch.Tensor:
    """bool like weights [..., n]: the fewest entries with base + sum >= target (the heaviest such set)."""
    subsets = all_subsets(weights.shape[-1])
    sums = weights @ subsets.T + torch.as_tensor(base, dtype=torch.float64).unsqueeze(-1)  # [..., 2^n]
    size = subsets.sum(1)
    reach = sums >= target
    fewest = torch.where(reach, size, math.inf).amin(-1, keepdim=True)
    # Among the fewest-sized subsets that reach the target, the heaviest one (the top entries).
    best = torch.where(reach & (size == fewest), sums, -math.inf).argmax(-1)
    return subsets[best].bool()


def video_block_mask(plan, layout: VideoLayout) -> torch.Tensor:
    mv = layout.num_video_blocks
    return plan.to_block_mask()[..., :mv, :mv]


# ----- plan structure ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS, ids=["small", "padded-prefix", "padded-suffix"])
@pytest.mark.parametrize("name, params", CONFIGS, ids=CONFIG_IDS)
def test_plan_is_valid_with_dense_text_and_own_blocks(name, params, layout):
    strategy = strategies.get(name, **params)
    assert strategy.is_dynamic
    q, k = random_qk(layout, batch=2, heads=3, dtype=torch.float32)
    plan = strategy.plan(layout, q, k)
    assert (plan.batch, plan.num_heads, plan.layout) == (2, 3, layout)
    blocks = plan.to_block_mask()
    mv = layout.num_video_blocks
    assert bool(blocks[..., mv:, :].all()) and bool(blocks[..., :, mv:].all()), "text rows and columns must be dense"
    assert bool(torch.diagonal(blocks, dim1=-2, dim2=-1).all()), "every query block keeps its own block"
    tokens = plan.to_dense_mask()
    text = layout.token_coords[:, 0] < 0
    assert bool(tokens[:, :, text].all()) and bool(tokens[:, :, :, text].all())
    assert bool((plan.kv_counts >= 1).all())


@pytest.mark.parametrize("name, params", CONFIGS, ids=CONFIG_IDS)
def test_batch_entries_are_planned_independently(name, params):
    strategy = strategies.get(name, **params)
    q, k = random_qk(PADDED_PREFIX, batch=3, heads=2)
    together = strategy.plan(PADDED_PREFIX, q, k).to_block_mask()
    for b in range(3):
        alone = strategy.plan(PADDED_PREFIX, q[b : b + 1], k[b : b + 1]).to_block_mask()
        assert torch.equal(together[b : b + 1], alone)


@pytest.mark.parametrize("name, params", CONFIGS, ids=CONFIG_IDS)
def test_half_precision_inputs_give_valid_plans(name, params):
    q, k = random_qk(PADDED_SUFFIX, batch=1, heads=2, dtype=torch.bfloat16)
    plan = strategies.get(name, **params).plan(PADDED_SUFFIX, q, k)
    assert bool(torch.diagonal(plan.to_block_mask(), dim1=-2, dim2=-1).all())


@pytest.mark.parametrize("name", ["draft", "blockified", "vmoba"])
def test_wrong_qk_shapes_are_refused(name):
    q, k = random_qk(SMALL)
    with pytest.raises(ValueError, match="q must be"):
        strategies.get(name).plan(SMALL, q[:, :, :-1], k)
    with pytest.raises(ValueError, match="same shape"):
        strategies.get(name).plan(SMALL, q, k[:, :1])
    with pytest.raises(ValueError, match="needs q and k"):
        strategies.get(name).plan(SMALL)


def test_pooled_tiles_are_means_of_real_tokens():
    for layout in LAYOUTS:
        x = torch.randn(2, 3, layout.seq_len, 8)
        torch.testing.assert_close(pool_video_blocks(layout, x).double(), naive_tile_means(layout, x), rtol=1e-5, atol=1e-6)


def test_smallest_covering_set_matches_enumeration():
    weights = torch.rand(4, 7, dtype=torch.float64)
    base = torch.rand(4, dtype=torch.float64) * weights.sum(-1) * 0.3
    target = 0.7 * (weights.sum(-1) + base)
    assert torch.equal(smallest_covering_set(weights, target, base), brute_force_fewest(weights, target[:, None], base))


# ----- draft ---------------------------------------------------------------------------------------------------------
def independent_draft_map(layout: VideoLayout, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    scores = naive_tile_means(layout, q) @ naive_tile_means(layout, k).transpose(-1, -2) / math.sqrt(q.shape[-1])
    return torch.softmax(scores + tile_sizes(layout).double().log(), dim=-1)


@pytest.mark.parametrize("layout", [SMALL, PADDED_PREFIX], ids=["small", "padded-prefix"])
@pytest.mark.parametrize("mass", [0.3, 0.75, 0.95])
def test_draft_mass_keeps_the_fewest_tiles_reaching_the_mass(layout, mass):
    q, k = random_qk(layout)
    plan = strategies.get("draft", mass=mass).plan(layout, q, k)
    probs = independent_draft_map(layout, q, k)
    expected = brute_force_fewest(probs, mass) | torch.eye(layout.num_video_blocks, dtype=torch.bool)
    assert torch.equal(video_block_mask(plan, layout), expected)


@pytest.mark.parametrize("keep_ratio", [0.1, 0.25, 1.0])
def test_draft_keep_ratio_keeps_the_top_cells_of_each_head(keep_ratio):
    layout = PADDED_PREFIX
    q, k = random_qk(layout)
    plan = strategies.get("draft", keep_ratio=keep_ratio).plan(layout, q, k)
    probs = independent_draft_map(layout, q, k)
    mv = layout.num_video_blocks
    expected = torch.zeros_like(probs, dtype=torch.bool)
    n_keep = math.ceil(keep_ratio * mv * mv)
    for b, h in itertools.product(range(probs.shape[0]), range(probs.shape[1])):
        ranked = sorted(range(mv * mv), key=lambda cell: -float(probs[b, h].reshape(-1)[cell]))
        for cell in ranked[:n_keep]:
            expected[b, h, cell // mv, cell % mv] = True
    expected |= torch.eye(mv, dtype=torch.bool)
    assert torch.equal(video_block_mask(plan, layout), expected)


# ----- blockified ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", [SMALL, PADDED_PREFIX], ids=["small", "padded-prefix"])
@pytest.mark.parametrize("recall", [0.5, 0.9])
def test_blockified_keeps_the_fewest_blocks_reaching_the_recall(layout, recall):
    q, k = random_qk(layout)
    strategy = strategies.get("blockified", recall=recall)
    mass = exact_block_mass(layout, q, k)
    torch.testing.assert_close(strategy.block_importance(layout, q, k), mass)
    mv = layout.num_video_blocks
    text_mass = mass[..., mv:].sum(-1)
    expected = brute_force_fewest(mass[..., :mv], recall, text_mass) | torch.eye(mv, dtype=torch.bool)
    plan = strategy.plan(layout, q, k)
    assert torch.equal(video_block_mask(plan, layout), expected)
    # Hence every head keeps at least `recall` of the attention mass (text rows are dense and keep all of it).
    assert bool((attention_recall(q, k, plan) >= recall - 1e-9).all())


def test_blockified_chunked_search_equals_the_unchunked_one(monkeypatch):
    layout = PADDED_SUFFIX
    q, k = random_qk(layout, dtype=torch.float32)
    whole = strategies.get("blockified").block_importance(layout, q, k)
    # A budget of a few blocks of scores forces several key chunks (two passes with an online log-sum-exp)
    # and several query chunks.
    monkeypatch.setattr(blockified_module, "_SCORE_CHUNK_ELEMENTS", 2 * 3 * layout.block_size**2 * 3)
    chunked = strategies.get("blockified").block_importance(layout, q, k)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(whole.double(), exact_block_mass(layout, q, k), rtol=1e-4, atol=1e-6)


# ----- vmoba ---------------------------------------------------------------------------------------------------------
def independent_chunks(layout: VideoLayout, partition: str, strategy) -> torch.Tensor:
    """int64 [Mv]: chunk id of each tile, numbered in order of first appearance of its chunk key."""
    keys = []
    for block in range(layout.num_video_blocks):
        f, h, w = first_tile_of_block(layout, block)
        if partition == "1d":
            keys.append((f // strategy.temporal_chunk_size,))
        elif partition == "2d":
            keys.append((h // strategy.spatial_chunk_size[0], w // strategy.spatial_chunk_size[1]))
        else:
            t3, h3, w3 = strategy.st_chunk_size
            keys.append((f // t3, h // h3, w // w3))
    ids = {key: i for i, key in enumerate(dict.fromkeys(keys))}
    return torch.tensor([ids[key] for key in keys])


def independent_gates(layout: VideoLayout, q: torch.Tensor, k: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
    q_tiles = naive_tile_means(layout, q)
    video_tile = block_of_token(layout)
    keys = []
    for c in range(int(chunk.max()) + 1):
        tiles = torch.nonzero(chunk == c).squeeze(1)
        inside = torch.isin(video_tile, tiles) & (layout.token_coords[:, 0] >= 0)
        keys.append(k[:, :, inside].double().mean(2))
    return q_tiles @ torch.stack(keys, dim=2).transpose(-1, -2)  # [B, H, Mv, C]


def fewest_in_order(values: list[float], start: float, target: float) -> list[int]:
    """Indices of the fewest values, taken largest first, with start + their sum >= target."""
    taken, total = [], start
    for i in sorted(range(len(values)), key=lambda i: -values[i]):
        if total >= target:
            break
        taken.append(i)
        total += values[i]
    return taken


def expected_vmoba_chunks(strategy, gate: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    b_, h_, mv, c = gate.shape
    chosen = own.expand(b_, h_, mv, c).clone()
    for b, h in itertools.product(range(b_), range(h_)):
        g = gate[b, h]
        if strategy.select_mode == "topk" and strategy.threshold_type == "query_head":
            for a in range(mv):
                others = [j for j in range(c) if not own[a, j]]
                for j in sorted(others, key=lambda j: -float(g[a, j]))[: strategy.topk - 1]:
                    chosen[b, h, a, j] = True
        elif strategy.select_mode == "topk":
            entries = [(a, j) for a in range(mv) for j in range(c) if not own[a, j]]
            for a, j in sorted(entries, key=lambda e: -float(g[e]))[: (strategy.topk - 1) * mv]:
                chosen[b, h, a, j] = True
        elif strategy.threshold_type == "query_head":
            for a in range(mv):
                w = ((g[a] - g[a].min()) / (g[a].max() - g[a].min())).tolist()
                total = sum(w)
                others = [j for j in range(c) if not own[a, j]]
                own_w = sum(w[j] for j in range(c) if own[a, j])
                for i in fewest_in_order([w[j] / total for j in others], own_w / total, strategy.simsum_threshold):
                    chosen[b, h, a, others[i]] = True
        else:
            w = (g - g.min()) / (g.max() - g.min())
            total = float(w.sum())
            entries = [(a, j) for a in range(mv) for j in range(c) if not own[a, j]]
            own_w = float((w * own).sum())
            picks = fewest_in_order([float(w[e]) / total for e in entries], own_w / total, strategy.simsum_threshold)
            for i in picks:
                chosen[b, h, entries[i][0], entries[i][1]] = True
    return chosen


VMOBA_SELECTIONS = [
    {"select_mode": "topk", "topk": 1},
    {"select_mode": "topk", "topk": 3},
    {"select_mode": "topk", "topk": 2, "threshold_type": "head_global"},
    {"select_mode": "threshold", "simsum_threshold": 0.25},
    {"select_mode": "threshold", "simsum_threshold": 0.6},
    {"select_mode": "threshold", "simsum_threshold": 0.4, "threshold_type": "head_global"},
]


@pytest.mark.parametrize("partition", ["1d", "2d", "3d"])
@pytest.mark.parametrize("selection", VMOBA_SELECTIONS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_vmoba_selection_matches_its_definition(partition, selection):
    layout = VideoLayout(5, 6, 10, text_tokens=3, tile=(1, 4, 4))  # tile grid (5, 2, 3), padded rows
    strategy = strategies.get(
        "vmoba", partition=partition, temporal_chunk_size=2, spatial_chunk_size=(1, 2), st_chunk_size=(2, 1, 2),
        **selection,
    )
    q, k = random_qk(layout)
    chunk = independent_chunks(layout, partition, strategy)
    gate = independent_gates(layout, q, k, chunk)
    own = torch.nn.functional.one_hot(chunk, int(chunk.max()) + 1).bool()
    chosen = expected_vmoba_chunks(strategy, gate, own)
    expected = chosen[..., chunk]  # a kept chunk keeps all its tiles
    plan = strategy.plan(layout, q, k)
    assert torch.equal(video_block_mask(plan, layout), expected)


def test_vmoba_partition_cycles_with_the_layer():
    layout = VideoLayout(6, 8, 12, tile=(2, 4, 4))  # tile grid (3, 2, 3)
    cycling = strategies.get("vmoba", spatial_chunk_size=(1, 2), st_chunk_size=(2, 2, 2))
    expected_chunks = {"1d": 3, "2d": 2 * 2, "3d": 2 * 1 * 2}
    for layer in range(7):
        at = cycling.at_layer(layer)
        assert at.active_partition == ("1d", "2d", "3d")[layer % 3]
        assert at.chunk_of_block(layout)[1] == expected_chunks[at.active_partition]
    fixed = strategies.get("vmoba", partition="2d")
    assert fixed.at_layer(5) is fixed and fixed.active_partition == "2d"


def test_vmoba_keeps_every_chunk_when_all_gates_are_equal():
    q, k = random_qk(PADDED_PREFIX)
    plan = strategies.get("vmoba", simsum_threshold=0.1).plan(PADDED_PREFIX, torch.zeros_like(q), k)
    assert bool(plan.to_block_mask().all())


# ----- density estimates -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, params",
    [("draft", {"mass": 0.8}), ("blockified", {"recall": 0.8}), ("vmoba", {"partition": "3d", "st_chunk_size": (1, 1, 1)})],
)
def test_density_estimate_bounds_the_planned_density(name, params):
    layout = VideoLayout(4, 8, 8, text_tokens=16, tile=(1, 4, 4))  # no padding: tiles and chunks of equal size
    strategy = strategies.get(name, **params)
    q, k = random_qk(layout, dtype=torch.float32)
    q = q * 0.1  # near-uniform heads: the worst case of the bound
    planned = strategy.plan(layout, q, k).density(per_head=True)
    assert bool((planned <= strategy.estimate_density(layout) + 1e-9).all())


# ----- quality on the head type each is designed for --------------------------------------------------------------------
QUALITY = [
    ("draft", {"keep_ratio": 0.25}),
    ("draft", {"mass": 0.9}),
    ("blockified", {"recall": 0.95}),
    ("vmoba", {"partition": "3d", "st_chunk_size": (1, 1, 1), "simsum_threshold": 0.9}),
]


@pytest.mark.parametrize("name, params", QUALITY, ids=[f"{n}-{p}" for n, p in QUALITY])
def test_low_error_on_block_clustered_heads(name, params):
    # 16 tiles dealt into 5 clusters: an exact oracle keeps about 3/16 of the keys.
    layout = VideoLayout(4, 16, 16, tile=(1, 8, 8))
    q, k, v = make_heads(layout, ["block", "block"], batch=2, head_dim=64)
    plan = strategies.get(name, **params).plan(layout, q, k)
    error = relative_l2_error(q, k, v, plan)
    density = plan.density(per_head=True)
    assert bool((density <= 0.3).all()), density
    assert bool((error < 0.1).all()), error


# ----- reuse across denoising steps -------------------------------------------------------------------------------------
def test_blockified_plan_is_reused_until_the_refresh_step():
    strategy = strategies.get("blockified", refresh_every=3)
    cache = PlanCache()
    layout = PADDED_PREFIX
    plans = {}
    for step in range(7):
        q, k = random_qk(layout)  # new activations at every step
        plans[step] = cache.plan(strategy, layout, q, k, key=(0, "heads 0-2"), step=step)
        if step in (0, 3, 6):
            expected = strategy.plan(layout, q, k)  # a refresh step searches on this step's q and k
            assert torch.equal(plans[step].to_block_mask(), expected.to_block_mask())
    assert plans[1] is plans[0] and plans[2] is plans[0]
    assert plans[4] is plans[3] and plans[5] is plans[3]
    assert plans[3] is not plans[0] and plans[6] is not plans[3]
    assert (cache.plans_made, cache.plans_reused) == (3, 4)


def test_plan_cache_replans_when_the_call_differs():
    strategy = strategies.get("blockified", refresh_every=50)
    cache = PlanCache()
    q, k = random_qk(SMALL, batch=2)
    first = cache.plan(strategy, SMALL, q, k, key="layer 0", step=10)
    assert cache.plan(strategy, SMALL, q, k, key="layer 0", step=11) is first
    assert cache.plan(strategy, SMALL, q, k, key="layer 1", step=11) is not first  # another call site
    assert cache.plan(strategy, SMALL, q[:1], k[:1], key="layer 0", step=12).batch == 1  # other batch size
    first = cache.plan(strategy, SMALL, q, k, key="layer 0", step=12)
    assert cache.plan(strategy, SMALL, q, k, key="layer 0", step=None) is not first  # unknown step
    first = cache.plan(strategy, SMALL, q, k, key="layer 0", step=12)
    assert cache.plan(strategy, SMALL, q, k, key="layer 0", step=0) is not first  # a new generation began
    other = strategies.get("blockified", refresh_every=50, recall=0.5)
    assert cache.plan(other, SMALL, q, k, key="layer 0", step=1) is not first  # another strategy
    assert len(cache) == 2
    cache.clear()
    assert len(cache) == 0


def test_reuse_policy_of_each_strategy():
    blockified = strategies.get("blockified", refresh_every=4)
    assert [blockified.reusable(8, s) for s in (8, 9, 11, 12, 7)] == [True, True, True, False, False]
    assert not blockified.reusable(None, 3) and not blockified.reusable(3, None)
    assert not strategies.get("draft").reusable(8, 8)  # other dynamic strategies re-plan at every call
    assert not strategies.get("vmoba").reusable(8, 8)
    assert strategies.get("dense").reusable(0, 30)
    cache = PlanCache()
    q, k = random_qk(SMALL)
    draft = strategies.get("draft")
    assert cache.plan(draft, SMALL, q, k, key=0, step=1) is not cache.plan(draft, SMALL, q, k, key=0, step=1)


# ----- parameters ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, params, argument",
    [
        ("draft", {"keep_ratio": 0}, "keep_ratio"),
        ("draft", {"keep_ratio": 1.5}, "keep_ratio"),
        ("draft", {"mass": -0.1}, "mass"),
        ("draft", {"mass": True}, "mass"),
        ("draft", {"keep_ratio": 0.2, "mass": 0.5}, "not both"),
        ("blockified", {"recall": 0}, "recall"),
        ("blockified", {"recall": 1.1}, "recall"),
        ("blockified", {"refresh_every": 0}, "refresh_every"),
        ("blockified", {"refresh_every": 2.5}, "refresh_every"),
        ("vmoba", {"partition": "4d"}, "partition"),
        ("vmoba", {"layer": -1}, "layer"),
        ("vmoba", {"temporal_chunk_size": 0}, "temporal_chunk_size"),
        ("vmoba", {"spatial_chunk_size": (1,)}, "spatial_chunk_size"),
        ("vmoba", {"st_chunk_size": (1, 0, 1)}, "st_chunk_size"),
        ("vmoba", {"select_mode": "top"}, "select_mode"),
        ("vmoba", {"topk": 0}, "topk"),
        ("vmoba", {"simsum_threshold": 0}, "simsum_threshold"),
        ("vmoba", {"threshold_type": "overall"}, "threshold_type"),
    ],
)
def test_bad_parameters_name_the_argument(name, params, argument):
    with pytest.raises(ValueError, match=argument):
        strategies.get(name, **params)


@pytest.mark.parametrize("name, params", CONFIGS, ids=CONFIG_IDS)
def test_params_round_trip_through_plain_data(name, params):
    strategy = strategies.get(name, **params)
    again = strategies.get(name, **strategy.params())  # lists from JSON become tuples again
    assert again == strategy and hash(again) == hash(strategy)
