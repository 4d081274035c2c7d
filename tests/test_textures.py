"""The textured-scenes dataset: determinism, prompts, held-out prompts, rendering, and the adherence scorer on
ground-truth clips (high) and on mismatched prompts, blank and noise clips (low)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vidsparse.testing import textures as T

FRAMES, SIZE = 9, 48  # small enough to be fast, large enough for every texture's motion to be measurable
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(torch.initial_seed())


def render(spec: T.ClipSpec, **kwargs):
    return T.render_clip(spec, frames=FRAMES, height=SIZE, width=SIZE, **kwargs)


def test_same_seed_same_clip_and_short_clip_is_a_subsample(rng):
    seed = int(rng.integers(2**31))
    a, b = T.sample_clip_spec(np.random.default_rng(seed)), T.sample_clip_spec(np.random.default_rng(seed))
    assert a == b
    long = T.render_clip(a, frames=17, height=32, width=32)
    np.testing.assert_array_equal(long, T.render_clip(b, frames=17, height=32, width=32))
    np.testing.assert_array_equal(T.render_clip(a, frames=5, height=32, width=32), long[::4])
    assert long.dtype == np.uint8 and long.shape == (17, 32, 32, 3)
    assert len({T.sample_clip_spec(np.random.default_rng(seed + k)).prompt for k in range(1, 8)}) > 1
    with pytest.raises(ValueError, match="frames"):
        T.render_clip(a, frames=1, height=32, width=32)


def test_prompt_round_trip_vocabulary_and_held_out_prompts(rng):
    vocabulary = set(T.prompt_vocabulary())
    drawn = [T.sample_clip_spec(rng) for _ in range(300)]
    assert not {s.prompt for s in drawn} & set(T.HELD_OUT_PROMPTS)  # never trained on
    assert any(s.object is None for s in drawn) and any(s.object is not None for s in drawn)
    for spec in drawn[:40] + [T.spec_for_prompt(p, rng) for p in T.HELD_OUT_PROMPTS]:
        facts = T.parse_prompt(spec.prompt)
        assert (facts.palette, facts.texture, facts.camera, facts.speed) == (
            spec.palette, spec.texture, spec.camera, spec.speed)
        if spec.object is not None:
            assert (facts.object_palette, facts.object_texture, facts.object_shape, facts.object_direction) == (
                spec.object.palette, spec.object.texture, spec.object.shape, spec.object.direction)
            assert spec.object.palette != spec.palette or spec.prompt in T.HELD_OUT_PROMPTS
        assert set(spec.prompt.split()) <= vocabulary
    assert [T.spec_for_prompt(p, rng).prompt for p in T.HELD_OUT_PROMPTS] == list(T.HELD_OUT_PROMPTS)
    # every palette, texture and background motion is evaluated
    facts = [T.parse_prompt(p) for p in T.HELD_OUT_PROMPTS]
    assert {f.palette for f in facts} == set(T.PALETTES) and {f.texture for f in facts} == set(T.TEXTURES)
    assert {f.camera for f in facts} == set(T.CAMERA_MOTIONS)


@pytest.mark.parametrize("bad", ["ocean stripes", "ocean stripes drifting left", "mono dots standing still slowly",
                                 "teal stripes drifting left slowly", "ocean waves drifting left slowly",
                                 "ocean stripes drifting sideways slowly",
                                 "a fire striped triangle moving right over ocean noise standing still"])
def test_parse_prompt_rejects_text_the_generator_never_writes(bad):
    with pytest.raises(ValueError):
        T.parse_prompt(bad)


def test_textures_are_in_range_and_unknown_ones_refused(rng):
    u, v = rng.uniform(-1, 2, size=(2, 40, 40))
    for kind in T.TEXTURES:
        values = T.texture_field(kind, int(rng.integers(2**31)), u, v)
        assert values.shape == u.shape and values.min() >= 0.0 and values.max() <= 1.0 and values.std() > 0.05
    with pytest.raises(ValueError, match="texture"):
        T.texture_field("waves", 0, u, v)


def test_object_mask_has_the_object_area_and_moves_with_it(rng):
    spec = T.spec_for_prompt("a fire dotted circle moving right over mono noise standing still", rng)
    _, mask = T.render_clip(spec, frames=5, height=64, width=64, with_mask=True)
    area = mask.sum((1, 2)) / 64**2
    np.testing.assert_allclose(area, math.pi * spec.object.radius**2, rtol=0.1)
    xs = (np.arange(64) + 0.5) / 64
    centre_x = (mask.sum(1) * xs).sum(1) / mask.sum((1, 2))
    np.testing.assert_allclose(centre_x, spec.object.x + spec.object.vx * np.linspace(0, 1, 5), atol=0.01)


def test_the_true_motion_explains_the_frames_best(rng):
    for camera in T.CAMERA_MOTIONS:
        speed = None if camera == "standing still" else T.SPEEDS[int(rng.integers(2))]
        spec = T.spec_for_prompt(f"mono noise {camera}" + (f" {speed}" if speed else ""), rng)
        residuals = T.motion_residuals(T.render_clip(spec, frames=FRAMES, height=32, width=32))
        assert min(residuals, key=residuals.get) == (camera, speed)
        assert T.classify_motion(residuals) == (camera, speed)


@pytest.mark.parametrize("camera", T.CAMERA_MOTIONS)
def test_ground_truth_clips_score_full_adherence(rng, camera):
    spec = T.sample_clip_spec(rng)
    while spec.camera != camera:
        spec = T.sample_clip_spec(rng)
    score = T.score_clip(render(spec), spec.prompt)
    assert score["adherence"] == 1.0, score


def test_mismatched_prompts_score_low(rng):
    prompt = "an ocean striped square moving right over fire checkers drifting left slowly"
    video = render(T.spec_for_prompt(prompt, rng))
    assert T.score_clip(video, prompt)["adherence"] == 1.0
    assert T.score_clip(video.astype(np.float32) / 255.0, prompt)["adherence"] == 1.0  # float in [0, 1]
    wrong = {
        "palette_ok": prompt.replace("fire checkers", "violet checkers"),
        "motion_ok": prompt.replace("drifting left", "drifting right"),
        "speed_ok": prompt.replace("slowly", "quickly"),
        "object_ok": prompt.replace("moving right", "moving left"),
    }
    for key, text in wrong.items():
        score = T.score_clip(video, text)
        assert not score[key] and score["adherence"] <= 0.75, (key, score)
    assert not T.score_clip(video, prompt.replace("an ocean", "a forest"))["object_ok"]  # no forest object
    assert not T.score_clip(video, "fire checkers drifting left slowly")["object_ok"]  # an object nobody asked for
    empty = render(T.spec_for_prompt("fire checkers drifting left slowly", rng))
    assert not T.score_clip(empty, prompt)["object_ok"]  # an object that is missing
    turning = render(T.spec_for_prompt("forest dots turning clockwise quickly", rng))
    for other in ("turning counterclockwise quickly", "zooming in quickly", "standing still"):
        assert not T.score_clip(turning, f"forest dots {other}")["motion_ok"], other


def test_blank_and_noise_clips_do_not_adhere(rng):
    prompt = T.HELD_OUT_PROMPTS[int(rng.integers(len(T.HELD_OUT_PROMPTS)))]
    blank = np.zeros((FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    assert T.score_clip(blank, prompt)["adherence"] <= 0.5  # at most palette "mono" and "standing still"
    noise = rng.integers(0, 256, size=(FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    score = T.score_clip(noise, prompt)
    assert score["motion"] == "incoherent" and not score["motion_ok"] and score["adherence"] <= 0.5, score
    with pytest.raises(ValueError, match="frames, height, width, 3"):
        T.score_clip(blank[..., 0], prompt)
