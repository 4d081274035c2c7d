"""Every diffusers pipeline class of the Wan (with SkyReels V2 and ChronoEdit), LTX-Video, CogVideoX and HunyuanVideo
families runs sparse.

For each class, a tiny pipeline built from configs (`vidsparse.testing.pipeline_classes`) runs
1. through vidsparse's kernel at full density (a non-dense strategy whose plan keeps every block): the output must be
   the unpatched pipeline's, so the grid, the token order and the extra tokens are placed as the model has them;
2. with a sparse plan: every call reaches the controller (no DenseFallbackWarning), on the expected latent grid, and
   each patched layer's output equals float64 attention masked by the same plan, and text tokens sit where the
   family puts them.
   Tokens outside the grid (text, Framepack's history) keep whole rows and columns, and the video part of the plan
   is the plan of the grid alone.
The text-to-video classes (and Wan I2V, HunyuanVideo, Mochi) are covered by test_patch.py and test_families.py.
"""

from __future__ import annotations

import collections
import math
import warnings

import pytest
import torch
from test_family_framepack import check_dense_outside_the_grid
from test_patch import Recorder, check_against_oracle, sparse_recorder

from vidsparse.controller import DenseSchedule, SparseController, StrategyPolicy
from vidsparse.patch import DenseFallbackWarning, install, uninstall
from vidsparse.strategies import get
from vidsparse.testing.pipeline_classes import tiny_pipeline_of

#: class -> latent token grid(s) of its tiny call, worked out by hand from the call's sizes and VAE / patch factors.
GRIDS = {
    # Wan VAE 4x in time, 8x in space, patch (1, 2, 2): 9 frames at 128 px -> 3 x 8 x 8.
    "WanVideoToVideoPipeline": (3, 8, 8),
    "WanVACEPipeline": (4, 8, 8),  # the reference image is one more latent frame, before the video
    "WanAnimatePipeline": (4, 8, 8),  # the character image is the first latent frame
    "SkyReelsV2Pipeline": (3, 8, 8),
    "SkyReelsV2ImageToVideoPipeline": (3, 8, 8),
    "SkyReelsV2DiffusionForcingPipeline": (3, 8, 8),
    "SkyReelsV2DiffusionForcingImageToVideoPipeline": (3, 8, 8),
    # 9 frames = base_num_frames: one window, whose first (5-1)/4+1 = 2 latent frames are the video's last frames
    "SkyReelsV2DiffusionForcingVideoToVideoPipeline": (3, 8, 8),
    # 256 px; temporal reasoning: 9 frames -> 3 latent frames at the first step, then the input image's and the edit's.
    "ChronoEditPipeline": {(3, 16, 16), (2, 16, 16)},
    # LTX VAE 8x in time, 32x in space: 17 frames at 256 px -> 3 x 8 x 8.
    "LTXImageToVideoPipeline": (3, 8, 8),
    "LTXConditionPipeline": (5, 8, 8),  # + the 2 latent frames of the video condition at frame 8, prepended
    # Temporal tiles of 16 frames = 2 latent frames, plus the conditioning frames each window injects at its head (the
    # image's index latent; in the second window also the previous window's tail), read from the token coordinates.
    "LTXI2VLongMultiPromptPipeline": {(3, 8, 8), (4, 8, 8)},
    # The tiny LTX-2 VAE is 2x in time and space: 9 frames at 32 px -> 5 x 16 x 16 (audio tokens stay dense).
    "LTX2Pipeline": (5, 16, 16),
    "LTX2ImageToVideoPipeline": (5, 16, 16),
    "LTX2ConditionPipeline": (6, 16, 16),  # + the keyframe condition's latent frame, appended
    # + the reference video's frames, appended: the tiny VAE only downsamples in space when it encodes (its reported
    # 2x in time sizes the generated latents), so 5 reference frames are 5 latent frames.
    "LTX2InContextPipeline": (10, 16, 16),
    "LTX2HDRPipeline": (10, 16, 16),
    "LTX2DFRPipeline": (6, 16, 16),  # + the generated keyframe slot, one latent frame
    # The temporal upsampler doubles the 5 latent frames to 9; + the carried keyframe (an anchor at pixel frame 16)
    # and one invented mid-segment keyframe slot (pixel frame 8), appended.
    "LTX2DFRTemporalRefinePipeline": (11, 16, 16),
    # CogVideoX VAE 4x in time, 8x in space, patch 2: 9 frames at 256 px -> 3 x 16 x 16.
    "CogVideoXImageToVideoPipeline": (3, 16, 16),
    "CogVideoXVideoToVideoPipeline": (3, 16, 16),
    "CogVideoXFunControlPipeline": (3, 16, 16),
    "ConsisIDPipeline": (3, 16, 16),  # CogVideoX's VAE and patch
    # HunyuanVideo VAE 4x in time, 8x in space, patch 2: 9 frames at 256 px -> 3 x 16 x 16.
    "HunyuanSkyreelsImageToVideoPipeline": (3, 16, 16),
    "HunyuanVideoImageToVideoPipeline": (3, 16, 16),
    # One Framepack section of latent_window_size 2 at 256 px: 2 x 16 x 16.
    "HunyuanVideoFramepackPipeline": (2, 16, 16),
}

#: class -> text tokens in the self-attention sequence (absent: none, text is in cross-attention).
TEXT = {
    # CogVideoX: the prompt padded to max_sequence_length, first.
    **{name: ("prefix", {32}) for name in GRIDS if name.startswith(("CogVideoX", "ConsisID"))},
    # HunyuanVideo: each prompt's valid tokens, last (character tokens + <s>: "a red fox", "blurry"; given embeddings
    # with 11 and 17 valid tokens).
    "HunyuanSkyreelsImageToVideoPipeline": ("suffix", {10, 7}),
    "HunyuanVideoImageToVideoPipeline": ("suffix", {11, 17}),
    # Framepack: 16 SigLIP image tokens, then the prompt's valid tokens.
    "HunyuanVideoFramepackPipeline": ("suffix", {16 + 10, 16 + 7}),
}

#: class -> history tokens before the video (absent: none). Framepack's default (inverted anti-drifting) history at
#: 256 px, patch 2 / (2, 4, 4) / (4, 8, 8): clean start image + 1 frame 2 x 16 x 16, 2 frames at 2x 1 x 8 x 8, 16
#: frames at 4x 4 x 4 x 4.
PREFIX = {"HunyuanVideoFramepackPipeline": 2 * 16 * 16 + 8 * 8 + 4 * 4 * 4}

FULL = ("neighborhood", {"window": 64})


def _grids(name: str) -> set:
    return GRIDS[name] if isinstance(GRIDS[name], set) else {GRIDS[name]}


def _run(pipe, call) -> torch.Tensor:
    frames = pipe(**call, output_type="latent", generator=torch.Generator().manual_seed(0)).frames
    return torch.cat([f.flatten() for f in frames]) if isinstance(frames, list) else frames  # Framepack: per section


def _run_patched(pipe, call, controller, target) -> torch.Tensor:
    install(target, controller)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DenseFallbackWarning)
            return _run(pipe, call)
    finally:
        uninstall(target)


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_pipeline_class_runs_sparse_and_matches_oracle(name):
    pipe, call = tiny_pipeline_of(name)
    reference = _run(pipe, call)

    full = Recorder(SparseController(StrategyPolicy(get(FULL[0], **FULL[1]), DenseSchedule(0, frozenset()))))
    torch.testing.assert_close(_run_patched(pipe, call, full, pipe), reference, rtol=1e-4, atol=1e-4)
    assert full.calls and {call.layout.grid for call, _ in full.calls} == _grids(name)

    recorder = sparse_recorder()
    out = _run_patched(pipe, call, recorder, pipe)
    assert torch.isfinite(out).all() and not torch.allclose(out, reference, atol=1e-4)
    assert {call.layout.grid for call, _ in recorder.calls} == _grids(name)
    position, counts = TEXT.get(name, (None, {0}))
    assert {call.layout.text_tokens for call, _ in recorder.calls} == counts
    if position is not None:
        assert {call.layout.text_position for call, _ in recorder.calls} == {position}
    assert {call.layout.prefix_tokens for call, _ in recorder.calls} == {PREFIX.get(name, 0)}
    check_against_oracle(recorder)
    check_dense_outside_the_grid(recorder)


#: Asynchronous diffusion forcing: the frames' schedules one step apart, 3 steps over 3 latent frames in 5 iterations.
ASYNC = dict(ar_step=1, causal_block_size=1, num_inference_steps=3)


@pytest.mark.parametrize("name, extra, iterations", [
    # Diffusion forcing steps only per-frame copies of its scheduler: its iterations are counted by its progress bar.
    ("SkyReelsV2DiffusionForcingPipeline", {}, 2),
    ("SkyReelsV2DiffusionForcingPipeline", ASYNC, 5),
    ("SkyReelsV2DiffusionForcingImageToVideoPipeline", {}, 2),
    ("SkyReelsV2DiffusionForcingVideoToVideoPipeline", ASYNC, 3),  # 2 latent frames given: 1 generated, 3 steps
    ("LTX2Pipeline", {}, 2),  # copies its scheduler for the audio latents: the copy steps itself, uncounted
])
def test_pipeline_patch_with_scheduler_copies(name, extra, iterations):
    pipe, call = tiny_pipeline_of(name)
    recorder = sparse_recorder(warmup=0.4)
    _run_patched(pipe, {**call, **extra}, recorder, pipe)
    # Unpatched, the pipeline's progress bar and the scheduler's methods are the classes' own again.
    assert "progress_bar" not in vars(pipe)
    assert not {"step", "set_timesteps", "__deepcopy__"} & set(vars(pipe.scheduler))
    # Every iteration is counted, each with the same transformer calls (both CFG branches, every layer).
    per_step = collections.Counter(c.step for c, _ in recorder.calls)
    assert set(per_step) == set(range(iterations)) and len(set(per_step.values())) == 1
    assert {c.num_steps for c, _ in recorder.calls if c.step > 0} == {iterations}
    # Dense warm-up: the first ceil(0.4 * iterations) steps, then sparse.
    policy, warm = recorder.inner.policy, set(range(math.ceil(0.4 * iterations)))
    dense = {c.step for c, _ in recorder.calls if policy.strategies(c.step, c.num_steps, c.layer, c.q.shape[1]) is None}
    assert dense == warm
    warm_calls = sum(per_step[step] for step in warm)
    assert recorder.inner.stats["dense_calls"] == warm_calls
    assert recorder.inner.stats["sparse_calls"] == len(recorder.calls) - warm_calls > 0
