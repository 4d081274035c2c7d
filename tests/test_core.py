"""VideoLayout and BlockPlan against independent constructions from token coordinates and plain boolean masks."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vidsparse import BlockPlan, PlanError, VideoLayout
from vidsparse.attention import expand_plan
from vidsparse.layout import DEFAULT_TILE
from vidsparse.testing.geometries import MODEL_GEOMETRIES

TILES = [(1, 4, 4), (2, 4, 2), (2, 2, 4), (1, 8, 16), (2, 8, 8), (4, 2, 2)]


def _expected_block_of_token(layout: VideoLayout) -> torch.Tensor:
    """Working block of every model-order token, from (f, h, w) arithmetic alone: full tiles first, one block
    each in tile-grid row-major order; then the tokens of the edge tiles, ordered by (tile, f, h, w), packed."""
    tf, th, tw = layout.tile
    nh, nw = math.ceil(layout.height / th), math.ceil(layout.width / tw)
    tile_of = {}
    volume: dict[int, int] = {}
    for f in range(layout.frames):
        for h in range(layout.height):
            for w in range(layout.width):
                tile = ((f // tf) * nh + h // th) * nw + w // tw
                tile_of[(f, h, w)] = tile
                volume[tile] = volume.get(tile, 0) + 1
    full = sorted(t for t, n in volume.items() if n == layout.block_size)
    edge_tokens = sorted((tile_of[c], c) for c in tile_of if volume[tile_of[c]] < layout.block_size)
    packed_slot = {c: i for i, (_, c) in enumerate(edge_tokens)}
    blocks = torch.empty(layout.seq_len, dtype=torch.int64)
    i = 0
    for f in range(layout.frames):
        for h in range(layout.height):
            for w in range(layout.width):
                tile = tile_of[(f, h, w)]
                if volume[tile] == layout.block_size:
                    blocks[layout.video_offset + i] = full.index(tile)
                else:
                    blocks[layout.video_offset + i] = len(full) + packed_slot[(f, h, w)] // layout.block_size
                i += 1
    # Dense blocks after the video: the text and prefix tokens in the model's order.
    outside = torch.ones(layout.seq_len, dtype=torch.bool)
    outside[layout.video_offset : layout.video_offset + layout.num_video_tokens] = False
    blocks[outside] = torch.arange(layout.num_dense_tokens) // layout.block_size + layout.num_video_blocks
    return blocks


def _tile_of_token(layout: VideoLayout) -> torch.Tensor:
    """Tile index (row-major over the tile grid) of every model-order video token; -1 for text and prefix."""
    nf, nh, nw = layout.tile_grid
    c = layout.token_coords
    tiles = ((c[:, 0] // layout.tile[0]) * nh + c[:, 1] // layout.tile[1]) * nw + c[:, 2] // layout.tile[2]
    return torch.where(c[:, 0] >= 0, tiles, -1)


def _check_layout(layout: VideoLayout) -> None:
    perm, inv, bs = layout.permutation, layout.inverse_permutation, layout.block_size
    assert perm.shape == (layout.padded_len,) and inv.shape == (layout.seq_len,)
    assert layout.padded_len == layout.num_blocks * bs >= layout.seq_len
    real = perm[perm >= 0]
    assert torch.equal(torch.sort(real).values, torch.arange(layout.seq_len))  # every token exactly once
    assert int((perm < 0).sum()) == layout.padded_len - layout.seq_len
    assert torch.equal(perm[inv], torch.arange(layout.seq_len))  # round trip
    # Each token sits in the block of its full tile or in its packed edge block (text and prefix: the dense blocks).
    assert torch.equal(inv // bs, _expected_block_of_token(layout))
    # Inside a block: real tokens first, by tile and then in the model's (f, h, w) order, then padding.
    blocks = perm.view(layout.num_blocks, bs)
    lengths = (blocks >= 0).sum(1)
    assert torch.equal(layout.block_lengths, lengths.to(torch.int32))
    tile = _tile_of_token(layout)
    for row, n in zip(blocks, lengths.tolist()):
        assert bool((row[:n] >= 0).all()) and bool((row[n:] < 0).all())
        order = tile[row[:n]].clamp(min=0) * layout.seq_len + row[:n]
        assert bool((order[1:] > order[:-1]).all())
    # Padding: only the last video block and the last dense block may be partly empty.
    mv = layout.num_video_blocks
    assert bool((lengths[: mv - 1] == bs).all()) and bool((lengths[mv:-1] == bs).all())
    # Blocks <-> tiles, from token coordinates alone.
    video = tile >= 0
    block = inv // bs
    pairs = sorted({(int(b), int(t)) for b, t in zip(block[video], tile[video])})
    got_blocks, got_tiles = layout.block_tile_pairs
    assert list(zip(got_blocks.tolist(), got_tiles.tolist())) == pairs
    coords = layout.token_coords
    for b in range(mv):
        in_block = video & (block == b)
        first = int(tile[in_block][torch.argmin(inv[in_block])])
        assert layout.block_tile_coords[b].tolist() == layout.tile_coordinates[first].tolist()
        frames = coords[in_block, 0]
        assert layout.block_frame_range[b].tolist() == [int(frames.min()), int(frames.max()) + 1]
    for t in range(layout.num_tiles):
        tf, th, tw = layout.tile_coordinates[t].tolist()
        assert layout.tile_index(tf, th, tw) == t
    assert list(layout.dense_blocks()) == list(range(layout.num_video_blocks, layout.num_blocks))
    assert int(lengths[layout.num_video_blocks :].sum()) == layout.text_tokens + layout.prefix_tokens


@settings(max_examples=40, deadline=None)
@given(
    frames=st.integers(1, 5),
    height=st.integers(1, 10),
    width=st.integers(1, 10),
    text_tokens=st.integers(0, 40),
    text_position=st.sampled_from(["suffix", "prefix"]),
    tile=st.sampled_from(TILES),
    prefix_tokens=st.sampled_from([0, 0, 1, 7, 40]),
)
def test_random_layouts(frames, height, width, text_tokens, text_position, tile, prefix_tokens):
    _check_layout(VideoLayout(frames, height, width, text_tokens=text_tokens, text_position=text_position, tile=tile,
                              prefix_tokens=prefix_tokens))


def test_text_prefix_and_suffix_positions():
    prefix = VideoLayout(2, 4, 4, text_tokens=5, text_position="prefix", tile=(1, 4, 4))
    suffix = VideoLayout(2, 4, 4, text_tokens=5, text_position="suffix", tile=(1, 4, 4))
    # Text always ends the working order: block 2 holds the 5 text tokens then 11 padding slots.
    assert prefix.permutation[32:37].tolist() == [0, 1, 2, 3, 4]
    assert suffix.permutation[32:37].tolist() == [32, 33, 34, 35, 36]
    assert prefix.permutation[:16].tolist() == list(range(5, 21))
    assert suffix.permutation[:16].tolist() == list(range(16))
    assert prefix.token_coords[:5].tolist() == [[-1, -1, -1]] * 5
    assert prefix.token_coords[5].tolist() == [0, 0, 0]
    assert suffix.token_coords[-1].tolist() == [-1, -1, -1]


def test_prefix_tokens_before_the_video_are_dense_blocks_with_the_text():
    # Framepack's order: 6 history tokens, the 2 x 4 x 4 video, 5 text tokens.
    layout = VideoLayout(2, 4, 4, text_tokens=5, tile=(1, 4, 4), prefix_tokens=6)
    assert (layout.seq_len, layout.video_offset, layout.text_offset, layout.num_dense_tokens) == (43, 6, 38, 11)
    assert layout.permutation[:32].tolist() == list(range(6, 38))
    assert layout.permutation[32:43].tolist() == list(range(6)) + list(range(38, 43))
    assert layout.num_blocks == 3 and layout.block_lengths.tolist() == [16, 16, 11]
    assert layout.token_coords[:6].tolist() == [[-1, -1, -1]] * 6 and layout.token_coords[6].tolist() == [0, 0, 0]
    # With text first (CogVideoX's side): [text][prefix][video].
    cog = VideoLayout(2, 4, 4, text_tokens=5, text_position="prefix", tile=(1, 4, 4), prefix_tokens=6)
    assert (cog.prefix_offset, cog.video_offset, cog.text_offset) == (5, 11, 0)
    assert cog.permutation[32:43].tolist() == list(range(11))
    # A window of one tile keeps, per video query, its own tile and every dense key; dense queries keep every key.
    from vidsparse.strategies import get

    mask = get("neighborhood", window=1).plan(layout).to_dense_mask()[0, 0]
    dense = torch.zeros(43, dtype=torch.bool)
    dense[:6] = dense[38:] = True
    assert bool(mask[dense].all()) and bool(mask[:, dense].all())
    video = ~dense
    frame = (torch.arange(43) - 6) // 16
    assert torch.equal(mask[video][:, video], frame[video][:, None] == frame[video][None, :])


def test_edge_tiles_are_packed():
    layout = VideoLayout(3, 5, 7, tile=(2, 4, 4))
    assert layout.tile_grid == (2, 2, 2) and layout.num_full_tiles == 1
    # One full tile, then the 73 tokens of the seven edge tiles in three blocks: 32 + 32 + 9 (was 8 padded blocks).
    assert layout.block_lengths.tolist() == [32, 32, 32, 9]
    assert layout.seq_len == 105 and layout.padded_len == 128
    # Block 1 packs edge tile 1 (2 x 4 x 3 = 24 tokens) and 8 of the 2 x 1 x 4 tokens of tile 2.
    blocks, tiles = layout.block_tile_pairs
    assert tiles[blocks == 1].tolist() == [1, 2]


@pytest.mark.parametrize("name", MODEL_GEOMETRIES)
def test_padding_within_ten_percent_on_model_geometries(name):
    """Issue 18: computed slot pairs / real token pairs of a dense call <= 1.10 (the old per-tile padding: 1.25
    at Wan 480p). The default tile is the same at every grid, so tile-unit parameters keep their latent size."""
    frames, height, width, text, position = MODEL_GEOMETRIES[name]
    layout = VideoLayout(frames, height, width, text_tokens=text, text_position=position)
    assert layout.tile == DEFAULT_TILE
    slots = layout.num_blocks * layout.block_size
    assert (slots / layout.seq_len) ** 2 == pytest.approx(layout.padding_ratio)
    assert layout.padding_ratio <= 1.10
    full = BlockPlan.from_mask(torch.ones(1, 1, layout.num_blocks, layout.num_blocks, dtype=torch.bool), layout=layout)
    assert full.density() == pytest.approx(layout.padding_ratio)  # the reported density is what the kernel computes
    assert full.useful_density() == pytest.approx(1.0)


@settings(max_examples=20, deadline=None)
@given(
    frames=st.integers(1, 4),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    tile=st.sampled_from(TILES[:3]),
    density=st.floats(0.0, 1.0),
)
def test_lower_tile_mask_keeps_every_token_pair_of_the_tile_mask(frames, height, width, tile, density):
    layout = VideoLayout(frames, height, width, tile=tile)
    t = layout.num_tiles
    tile_mask = torch.rand(2, t, t) < density
    lowered = layout.lower_tile_mask(tile_mask)
    # Reference: a block pair is kept when one of its token pairs has its tile pair kept.
    tile = _tile_of_token(layout)
    block = layout.inverse_permutation // layout.block_size
    token_mask = tile_mask[:, tile][:, :, tile]
    rows = torch.nn.functional.one_hot(block, layout.num_video_blocks).double()
    expected = (rows.T @ token_mask.double() @ rows) > 0.5
    assert torch.equal(lowered, expected)


def test_layout_errors():
    assert VideoLayout(21, 30, 52).tile == VideoLayout(21, 45, 80).tile == DEFAULT_TILE
    with pytest.raises(ValueError, match="power of two"):
        VideoLayout(2, 4, 4, tile=(1, 3, 4))
    with pytest.raises(ValueError, match="frames"):
        VideoLayout(0, 4, 4)
    with pytest.raises(ValueError, match="prefix_tokens"):
        VideoLayout(1, 4, 4, prefix_tokens=-1)
    with pytest.raises(ValueError, match="text_position"):
        VideoLayout(1, 4, 4, text_tokens=2, text_position="middle")
    layout = VideoLayout(2, 4, 4, tile=(1, 4, 4))
    with pytest.raises(IndexError):
        layout.tile_index(0, 1, 0)
    with pytest.raises(ValueError, match="lower_tile_mask"):
        layout.lower_tile_mask(torch.ones(3, 3, dtype=torch.bool))


# ----- BlockPlan ------------------------------------------------------------------------------------------
def _random_mask(batch: int, heads: int, mq: int, mk: int, density: float = 0.3) -> torch.Tensor:
    mask = torch.rand(batch, heads, mq, mk) < density
    mask[..., torch.arange(mq), torch.arange(mq) % mk] = True  # no empty query block
    return mask


def _expected_dense(block_mask: torch.Tensor, q_blocks: torch.Tensor, k_blocks: torch.Tensor) -> torch.Tensor:
    """Token mask as one-hot(q_blocks) @ block_mask @ one-hot(k_blocks)^T (no indexing into the block mask)."""
    rows = torch.nn.functional.one_hot(q_blocks, block_mask.shape[-2]).double()
    cols = torch.nn.functional.one_hot(k_blocks, block_mask.shape[-1]).double()
    return (rows @ block_mask.double() @ cols.T) > 0.5


def _plan(counts, indices, **kw):
    args = dict(block_q=4, block_k=4, q_len=8, kv_len=12)
    args.update(kw)
    return BlockPlan(torch.tensor(counts, dtype=torch.int32), torch.tensor(indices, dtype=torch.int32), **args)


def test_plan_validation_errors():
    # Valid: 2 query blocks over 3 key blocks; unused slots may hold anything.
    plan = _plan([[[1, 2]]], [[[[2, -7], [0, 1]]]])
    assert plan.num_q_blocks == 2 and plan.num_kv_blocks == 3
    with pytest.raises(PlanError, match="out of range"):
        _plan([[[1, 2]]], [[[[3, 0], [0, 1]]]])
    with pytest.raises(PlanError, match="out of range"):
        _plan([[[1, 2]]], [[[[-1, 0], [0, 1]]]])
    with pytest.raises(PlanError, match="repeats"):
        _plan([[[1, 2]]], [[[[0, 0], [1, 1]]]])
    with pytest.raises(PlanError, match="int32"):
        BlockPlan(torch.ones(1, 1, 2, dtype=torch.int64), torch.zeros(1, 1, 2, 1, dtype=torch.int32), 4, 4, 8, 12)
    with pytest.raises(PlanError, match="int32"):
        BlockPlan(torch.ones(1, 1, 2, dtype=torch.int32), torch.zeros(1, 2, 1, dtype=torch.int32), 4, 4, 8, 12)
    with pytest.raises(PlanError, match="does not match"):
        _plan([[[1, 1]]], [[[[0]], [[0]]]])
    with pytest.raises(PlanError, match="query blocks"):
        _plan([[[1, 1, 1]]], [[[[0], [0], [0]]]])
    with pytest.raises(PlanError, match="kv_counts must lie"):
        _plan([[[2, 1]]], [[[[0], [1]]]])
    with pytest.raises(PlanError, match="no key block"):
        _plan([[[1, 0]]], [[[[0], [1]]]])
    with pytest.raises(PlanError, match="block_q"):
        _plan([[[1, 1]]], [[[[0], [1]]]], block_q=0)
    with pytest.raises(PlanError, match="skip_heads"):
        _plan([[[1, 1]]], [[[[0], [1]]]], skip_heads=torch.tensor([True]))
    with pytest.raises(PlanError, match="skip_heads must be a bool"):
        _plan([[[0, 0]]], [[[[0], [1]]]], skip_heads=torch.tensor([1]))
    layout = VideoLayout(1, 4, 8, tile=(1, 4, 4))
    with pytest.raises(PlanError, match="layout"):
        counts, indices = torch.ones(1, 1, 2, dtype=torch.int32), torch.zeros(1, 1, 2, 1, dtype=torch.int32)
        BlockPlan(counts, indices, 8, 8, 32, 32, layout=layout)
    with pytest.raises(PlanError, match="bool"):
        BlockPlan.from_mask(torch.ones(1, 1, 2, 2), layout=layout)
    with pytest.raises(PlanError, match="give block_q"):
        BlockPlan.from_mask(torch.ones(1, 1, 2, 2, dtype=torch.bool), block_q=4)


def test_skipped_head_empty_rows_are_allowed():
    plan = _plan([[[1, 1], [0, 0]]], [[[[0], [1]], [[0], [0]]]], skip_heads=torch.tensor([False, True]))
    assert not bool(plan.to_dense_mask()[0, 1].any())
    assert plan.density(per_head=True)[0, 1] == 0


@pytest.mark.parametrize("batch", [1, 3])
def test_from_mask_round_trip_and_dense_mask_without_layout(batch):
    block_q, block_k, q_len, kv_len = 4, 8, 22, 37  # ragged last blocks on both sides
    mq, mk = math.ceil(q_len / block_q), math.ceil(kv_len / block_k)
    mask = _random_mask(batch, 2, mq, mk)
    plan = BlockPlan.from_mask(mask, block_q=block_q, block_k=block_k, q_len=q_len, kv_len=kv_len)
    assert plan.kv_counts.dtype == plan.kv_indices.dtype == torch.int32
    assert torch.equal(plan.to_block_mask(), mask)
    assert torch.equal(plan.kv_counts, mask.sum(-1).to(torch.int32))
    dense = _expected_dense(mask, torch.arange(q_len) // block_q, torch.arange(kv_len) // block_k)
    assert torch.equal(plan.to_dense_mask(), dense)
    rows = torch.tensor([21, 0, 5])
    assert torch.equal(plan.to_dense_mask(rows), dense[:, :, rows])
    # Useful density and FLOPs count real token pairs; density counts the slots the kernel computes (ragged
    # last blocks in full).
    pairs = dense.sum(dim=(-1, -2)).double()
    torch.testing.assert_close(plan.useful_density(per_head=True), pairs / (q_len * kv_len))
    assert plan.useful_density() == pytest.approx(float(pairs.mean()) / (q_len * kv_len))
    assert plan.flops(64) == pytest.approx(4 * 64 * float(pairs.sum()))
    slots = mask.sum(dim=(-1, -2)).double() * block_q * block_k
    torch.testing.assert_close(plan.density(per_head=True), slots / (q_len * kv_len))


@settings(max_examples=25, deadline=None)
@given(
    frames=st.integers(1, 4),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    text_tokens=st.integers(0, 20),
    text_position=st.sampled_from(["suffix", "prefix"]),
    tile=st.sampled_from(TILES[:3]),
    batch=st.sampled_from([1, 2]),
    density=st.floats(0.0, 1.0),
)
def test_dense_mask_with_layout_matches_token_mask(
    frames, height, width, text_tokens, text_position, tile, batch, density
):
    layout = VideoLayout(frames, height, width, text_tokens=text_tokens, text_position=text_position, tile=tile)
    m = layout.num_blocks
    mask = _random_mask(batch, 2, m, m, density)
    plan = BlockPlan.from_mask(mask, layout=layout)
    assert torch.equal(plan.to_block_mask(), mask)
    blocks = _expected_block_of_token(layout)
    dense = _expected_dense(mask, blocks, blocks)
    assert torch.equal(plan.to_dense_mask(), dense)
    torch.testing.assert_close(plan.useful_density(per_head=True), dense.sum(dim=(-1, -2)).double() / layout.seq_len**2)
    slots = mask.sum(dim=(-1, -2)).double() * layout.block_size**2
    torch.testing.assert_close(plan.density(per_head=True), slots / layout.seq_len**2)


def test_union():
    layout = VideoLayout(2, 5, 6, text_tokens=7, tile=(1, 4, 4))
    m = layout.num_blocks
    skip_a, skip_b = torch.tensor([True, True, False]), torch.tensor([True, False, False])
    mask_a, mask_b = _random_mask(1, 3, m, m), _random_mask(2, 3, m, m)
    mask_a[:, 0:2] = False
    mask_b[:, 0] = False
    a = BlockPlan.from_mask(mask_a, layout=layout, skip_heads=skip_a)
    b = BlockPlan.from_mask(mask_b, layout=layout, skip_heads=skip_b)
    union = a | b
    assert union.batch == 2
    assert torch.equal(union.to_dense_mask(), a.to_dense_mask() | b.to_dense_mask())
    assert union.skip_heads.tolist() == [True, False, False]  # skipped only where both skip
    other = BlockPlan.from_mask(_random_mask(1, 3, 4, 4), block_q=4, block_k=4, q_len=16, kv_len=16)
    with pytest.raises(PlanError, match="union"):
        a | other


def test_batch_broadcast_shares_storage():
    layout = VideoLayout(2, 4, 8, tile=(1, 4, 4))
    plan = BlockPlan.from_mask(_random_mask(1, 2, layout.num_blocks, layout.num_blocks), layout=layout)
    counts, indices = expand_plan(plan, 4)
    assert counts.shape == (4, 2, layout.num_blocks) and indices.shape[0] == 4
    assert counts.data_ptr() == plan.kv_counts.data_ptr() and counts.stride(0) == 0
    assert indices.data_ptr() == plan.kv_indices.data_ptr() and indices.stride(0) == 0


def test_concat_and_select_heads():
    layout = VideoLayout(2, 4, 4, tile=(1, 4, 4))
    m = layout.num_blocks
    a = BlockPlan.from_mask(_random_mask(1, 2, m, m), layout=layout)
    b = BlockPlan.from_mask(_random_mask(2, 1, m, m, 0.9), layout=layout)
    both = BlockPlan.concat_heads([a, b])
    assert both.batch == 2 and both.num_heads == 3
    assert torch.equal(both.to_block_mask()[:, :2], a.to_block_mask().expand(2, -1, -1, -1))
    assert torch.equal(both.select_heads([2]).to_block_mask(), b.to_block_mask())
