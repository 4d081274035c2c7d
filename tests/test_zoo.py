"""The head zoo: every kind has the structure it claims, measured with exact float64 attention.

The layout is padded (the tile does not divide the grid) and has text tokens, prefix or suffix.
"""

import pytest
import torch

from vidsparse import VideoLayout
from vidsparse.testing import HEAD_KINDS, apply_rope_3d, make_heads
from vidsparse.testing.zoo import rope_band_sizes, sink_positions


@pytest.fixture(scope="module", params=["suffix", "prefix"])
def zoo(request):
    layout = VideoLayout(6, 14, 18, text_tokens=24, text_position=request.param, tile=(2, 4, 4))
    q, k, v = make_heads(layout, HEAD_KINDS, batch=2, dtype=torch.float64)
    probs = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)  # [B, H, S, S]
    coords = layout.token_coords
    video = coords[:, 0] >= 0
    heads = {kind: probs[:, i][:, video] for i, kind in enumerate(HEAD_KINDS)}  # video query rows
    return layout, heads, coords[video], video


def test_shapes_dtype_and_generator():
    layout = VideoLayout(3, 5, 6, text_tokens=4, tile=(1, 4, 4))
    gen = torch.Generator().manual_seed(1)
    q, k, v = make_heads(layout, ["sink", "spatial"], batch=3, head_dim=32, dtype=torch.float16, generator=gen)
    assert q.shape == k.shape == v.shape == (3, 2, layout.seq_len, 32)
    assert q.dtype == k.dtype == v.dtype == torch.float16
    again = make_heads(layout, ["sink", "spatial"], batch=3, head_dim=32, dtype=torch.float16,
                       generator=torch.Generator().manual_seed(1))
    for a, b in zip((q, k, v), again):
        assert torch.equal(a, b)
    assert not torch.equal(q, make_heads(layout, ["sink", "spatial"], batch=3, head_dim=32, dtype=torch.float16)[0])


def test_rope_is_relative():
    # A constant vector rotated at two positions scores the same for every pair of tokens with equal offsets.
    layout = VideoLayout(4, 5, 6, tile=(1, 4, 4))
    assert sum(rope_band_sizes(64)) == 64 and rope_band_sizes(128) == (44, 42, 42)
    x = apply_rope_3d(torch.randn(64, dtype=torch.float64).expand(layout.seq_len, 64).clone(), layout)
    y = apply_rope_3d(torch.randn(64, dtype=torch.float64).expand(layout.seq_len, 64).clone(), layout)
    scores = (x @ y.T).view(4, 5, 6, 4, 5, 6)
    torch.testing.assert_close(scores[0, 0, 0, 1, 2, 3], scores[2, 2, 2, 3, 4, 5])
    torch.testing.assert_close(scores[1, 1, 4, 0, 0, 1], scores[3, 4, 5, 2, 3, 2])
    assert not torch.isclose(scores[0, 0, 0, 1, 2, 3], scores[0, 0, 0, 1, 2, 4])


def test_spatial_head_is_local_in_own_and_adjacent_frames(zoo):
    _, heads, coords, _ = zoo
    delta = (coords[:, None] - coords[None]).abs()
    window = (delta[..., 0] <= 1) & (delta[..., 1] <= 4) & (delta[..., 2] <= 4)
    mass = _mass_on(heads["spatial"], zoo, window)
    assert float(mass.mean()) > 0.95 and float(mass.min()) > 0.85
    # ... and it is really local: keys three or more frames away hold almost nothing.
    assert float(_mass_on(heads["spatial"], zoo, (delta[..., 0] >= 3)).mean()) < 0.01


def test_temporal_head_keeps_the_same_position_across_frames(zoo):
    _, heads, coords, _ = zoo
    same_hw = (coords[:, None, 1:] == coords[None, :, 1:]).all(-1)
    mass = _mass_on(heads["temporal"], zoo, same_hw)
    assert float(mass.mean()) > 0.9 and float(mass.min()) > 0.75
    # Spread over the frames, not stuck in its own one.
    own_frame = coords[:, None, 0] == coords[None, :, 0]
    assert float(_mass_on(heads["temporal"], zoo, same_hw & own_frame).mean()) < 0.5


def test_sink_head_attends_to_a_few_first_frame_keys(zoo):
    layout, heads, _, _ = zoo
    sinks = sink_positions(layout)
    assert (layout.token_coords[sinks, 0] == 0).all() and sinks.numel() <= 4
    mass = heads["sink"][..., sinks].sum(-1)
    assert float(mass.mean()) > 0.9 and float(mass.min()) > 0.8


def test_block_head_is_clustered_by_tiles_and_not_local(zoo):
    layout, heads, _, video = zoo
    mv = layout.num_video_blocks
    key_tile = layout.inverse_permutation // layout.block_size
    per_tile = torch.zeros(*heads["block"].shape[:2], layout.num_blocks, dtype=torch.float64)
    per_tile.index_add_(-1, key_tile, heads["block"])
    top = per_tile.sort(-1, descending=True)
    # A fifth of the tiles hold nearly all the mass ...
    assert float(top.values[..., : mv // 5].sum(-1).mean()) > 0.9
    # ... and the tiles holding more than a uniform share are the same for every query of a tile (clusters
    # are a property of tiles) ...
    query_tile = key_tile[video]
    chosen = per_tile[..., :mv] > 1 / mv
    assert float(chosen.sum(-1).double().mean()) <= mv // 5
    for tile in range(mv):
        rows = chosen[:, query_tile == tile]
        assert (rows == rows[:, :1]).all()
    # ... which are not its spatio-temporal neighbours.
    tiles = layout.block_tile_coords
    near = (tiles[:, None] - tiles[None]).abs().max(-1).values <= 1
    local = (per_tile[..., :mv] * near[query_tile]).sum(-1)
    assert float(local.mean()) < 0.6


def test_diffuse_head_is_near_uniform(zoo):
    layout, heads, _, _ = zoo
    top_tenth = heads["diffuse"].sort(-1, descending=True).values[..., : layout.seq_len // 10].sum(-1)
    assert float(top_tenth.max()) < 0.25


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kinds": ["spatial", "nope"]}, "kinds"),
        ({"kinds": []}, "kinds"),
        ({"kinds": ["sink"], "head_dim": 30}, "head_dim"),
        ({"kinds": ["sink"], "head_dim": 33}, "head_dim"),
        ({"kinds": ["sink"], "batch": 0}, "batch"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_heads(VideoLayout(2, 4, 4), **kwargs)


def _mass_on(probs, zoo, video_key_mask):
    """Mass of each video query row on the video keys selected by video_key_mask [Sv, Sv]."""
    _, _, _, video = zoo
    return (probs[..., video] * video_key_mask).sum(-1)
