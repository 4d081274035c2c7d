"""MiniMax-H3 (`MiniMaxH3Transformer3DModel`): the generated video ends the packed sequence; the text, keyframe and
audio rows before it are the layout's dense prefix.

The bare transformer on the `[text | keyframe | target audio | target video]` layout its modular pipelines build
(`MiniMaxH3PrepareLayoutStep.build_packed_sequence`, one keyframe anchored at the first frame, stereo audio), a batch
of two (the batch replicates one layout): at full density through vidsparse's kernel the output is the unpatched one;
sparse, every layer equals masked float64 attention with the same plan, the prefix rows and columns are kept whole
and the video part is the plan of the grid alone. A layout that does not end with the video runs dense with one
DenseFallbackWarning. (Its pipelines are modular only and are not run here.)
"""

from __future__ import annotations

import warnings

import pytest
import torch
from family_checks import call_patched, full_and_sparse
from test_family_framepack import check_dense_outside_the_grid
from test_patch import check_against_oracle, sparse_recorder

from vidsparse.families import find_family
from vidsparse.patch import DenseFallbackWarning, install, uninstall

#: Target latent [F, H, W] (patch (1, 2, 2): grid 3 x 16 x 15); text rows; audio latents per channel (2 channels).
FRAMES, HEIGHT, WIDTH = 3, 32, 30
GRID = (3, 16, 15)
TEXT, AUDIO_LATENTS = 12, 5
#: text + one keyframe (a frame of the target raster) + the stereo audio rows.
PREFIX = TEXT + 16 * 15 + 2 * AUDIO_LATENTS
IN_CHANNELS, AUDIO_CHANNELS, TEXT_DIM = 4, 8, 32


def tiny_minimax_h3():
    from diffusers import MiniMaxH3Transformer3DModel

    torch.manual_seed(0)
    return MiniMaxH3Transformer3DModel(
        num_attention_heads=2, attention_head_dim=16, hidden_size=32, num_layers=2, num_refiner_layers=1, ffn_dim=64,
        in_channels=IN_CHANNELS, audio_in_channels=AUDIO_CHANNELS, text_dim=TEXT_DIM, freq_dim=32,
        time_embed_hidden_dim=32, time_embed_dim=16, rope_freq_dim=2,
    ).eval()


def packed_layout() -> tuple[torch.Tensor, ...]:
    from diffusers.modular_pipelines.minimax_h3.before_denoise import MiniMaxH3PrepareLayoutStep

    position_ids, tags, video, audio, text, _, _ = MiniMaxH3PrepareLayoutStep.build_packed_sequence(
        torch.ones(TEXT, dtype=torch.long), FRAMES, HEIGHT, WIDTH, AUDIO_LATENTS, (1, 2, 2), audio_channels=2,
        audio_tag=2, video_tag=0, keyframe_anchors=("first",))
    return position_ids, tags, video, audio, text


def inputs(position_ids, tags, video, audio, text) -> dict:
    generator = torch.Generator().manual_seed(1)
    # The keyframe rows are clean (timestep 0), the generated rows at the current noise level.
    timestep_indices = torch.zeros(position_ids.shape[0], dtype=torch.long)
    timestep_indices[video[: 16 * 15]] = 1
    return dict(
        hidden_states=torch.randn(2, video.numel(), IN_CHANNELS * 4, generator=generator),
        audio_hidden_states=torch.randn(2, audio.numel(), AUDIO_CHANNELS, generator=generator),
        encoder_hidden_states=torch.randn(2, text.numel(), TEXT_DIM, generator=generator),
        timestep=torch.tensor([0.6, 0.0]), timestep_indices=timestep_indices, token_tags=tags,
        position_ids=position_ids, video_indices=video, audio_indices=audio, text_indices=text, return_dict=False,
    )


def test_packed_prefix_full_density_reproduces_and_sparse_layers_match_the_oracle():
    transformer = tiny_minimax_h3()
    assert find_family(transformer).name == "minimax_h3"
    call = inputs(*packed_layout())
    recorder = full_and_sparse(lambda controller: call_patched(transformer, call, controller)[0])
    assert {(c.q.shape[0], c.q.shape[2], c.layout.grid, c.layout.prefix_tokens, c.layout.text_tokens)
            for c, _ in recorder.calls} == {(2, PREFIX + 3 * 16 * 15, GRID, PREFIX, 0)}
    assert {c.layer for c, _ in recorder.calls} == {0, 1}
    check_against_oracle(recorder)
    check_dense_outside_the_grid(recorder)


def test_sequence_not_ending_with_the_video_runs_dense_with_a_warning():
    """[text | video | audio]: the video rows do not end the sequence, so its grid is unknown."""
    position_ids, tags, video, audio, text = packed_layout()
    order = torch.cat([text, video, audio])  # new row r holds old row order[r]
    new_of_old = torch.empty_like(order)
    new_of_old[order] = torch.arange(order.numel())
    call = inputs(position_ids[order], tags[order], new_of_old[video], new_of_old[audio], new_of_old[text])
    transformer = tiny_minimax_h3()
    with torch.no_grad():
        reference = transformer(**call)[0]
    recorder = sparse_recorder()
    install(transformer, recorder)
    try:
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            out = transformer(**call)[0]
    finally:
        uninstall(transformer)
    fallbacks = [w for w in caught if issubclass(w.category, DenseFallbackWarning)]
    assert len(fallbacks) == 1 and "grid" in str(fallbacks[0].message)
    assert not recorder.calls
    torch.testing.assert_close(out, reference)


@pytest.mark.parametrize("anchors", [(), ("first", "last")])
def test_grid_read_from_the_layout(anchors):
    from diffusers.modular_pipelines.minimax_h3.before_denoise import MiniMaxH3PrepareLayoutStep

    from vidsparse.families.minimax_h3 import target_video

    position_ids, _, video, _, _, _, _ = MiniMaxH3PrepareLayoutStep.build_packed_sequence(
        torch.ones(TEXT, dtype=torch.long), FRAMES, HEIGHT, WIDTH, AUDIO_LATENTS, (1, 2, 2), audio_channels=2,
        audio_tag=2, video_tag=0, keyframe_anchors=anchors)
    assert target_video(video, position_ids) == GRID


def test_support_report_keeps_the_text_refiner_dense():
    from vidsparse.support import describe_support

    report = describe_support(tiny_minimax_h3())
    assert report.supported and report.info.num_layers == 2
    assert [(g.pattern, g.count) for g in report.sparse] == [("transformer.transformer_blocks.*.attn", 2)]
    assert [(g.pattern, g.count) for g in report.dense] == [("transformer.token_refiner.refiner_blocks.*.attn", 1)]
