"""The procedural shapes dataset: determinism, prompts, continuous-time rendering and prompt scoring."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vidsparse.testing.shapes import (
    COLOURS,
    DIRECTIONS,
    MOTIONS,
    parse_prompt,
    prompt_vocabulary,
    render_clip,
    sample_clip_spec,
    score_clip,
)

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(torch.initial_seed())


def test_same_seed_same_clip_and_different_seeds_differ(rng):
    seed = int(rng.integers(2**31))
    a = sample_clip_spec(np.random.default_rng(seed))
    b = sample_clip_spec(np.random.default_rng(seed))
    assert a == b
    np.testing.assert_array_equal(render_clip(a, frames=5, height=24, width=24), render_clip(b, frames=5, height=24, width=24))
    others = {sample_clip_spec(np.random.default_rng(seed + k)) for k in range(1, 6)}
    assert a not in others and len(others) > 1


def test_prompt_round_trip_and_vocabulary(rng):
    vocabulary = set(prompt_vocabulary())
    for _ in range(30):
        spec = sample_clip_spec(rng)
        facts = parse_prompt(spec.prompt)
        assert (facts.count, facts.colour, facts.shape, facts.motion, facts.background) == (
            spec.count, spec.colour, spec.shape, spec.motion, spec.background)
        assert set(spec.prompt.split()) <= vocabulary


@pytest.mark.parametrize("bad", ["a red circle", "four red circles moving left on a black background",
                                 "a purple circle moving left on a black background",
                                 "a red circle moving sideways on a black background"])
def test_parse_prompt_rejects_text_the_generator_never_writes(bad):
    with pytest.raises(ValueError):
        parse_prompt(bad)


def test_fixed_fields_are_respected_and_checked(rng):
    spec = sample_clip_spec(rng, colour="green", motion="moving up", count=2, background="white")
    assert (spec.colour, spec.motion, spec.count, spec.background) == ("green", "moving up", 2, "white")
    assert spec.prompt.startswith("two green ") and spec.prompt.endswith("moving up on a white background")
    with pytest.raises(ValueError, match="colour"):
        sample_clip_spec(rng, colour="purple")
    with pytest.raises(ValueError, match="turning circle"):
        sample_clip_spec(rng, shape="circle", motion="turning")


def test_short_clip_is_a_subsample_of_the_long_one(rng):
    spec = sample_clip_spec(rng)
    long = render_clip(spec, frames=17, height=32, width=32)
    short = render_clip(spec, frames=5, height=32, width=32)
    np.testing.assert_array_equal(short, long[::4])
    assert long.dtype == np.uint8 and long.shape == (17, 32, 32, 3)
    with pytest.raises(ValueError, match="frames"):
        render_clip(spec, frames=1, height=32, width=32)


@pytest.mark.parametrize("motion", MOTIONS)
def test_ground_truth_clips_score_full_adherence(rng, motion):
    for count in (1, 2):
        spec = sample_clip_spec(rng, motion=motion, count=count)
        video = render_clip(spec, frames=9, height=48, width=48)
        score = score_clip(video, spec.prompt)
        assert score["colour_ok"] and score["motion_ok"], score
        assert score["adherence"] >= 2 / 3, score  # objects may touch for a few frames; count is a median
        # float input in [0, 1] is scored like uint8
        assert score_clip(video.astype(np.float32) / 255.0, spec.prompt) == score


def test_wrong_colour_direction_and_count_score_low(rng):
    for direction in DIRECTIONS:
        spec = sample_clip_spec(rng, motion=f"moving {direction}", count=1)
        video = render_clip(spec, frames=9, height=48, width=48)
        assert score_clip(video, spec.prompt)["adherence"] == 1.0
        wrong_colour = next(c for c in COLOURS if c != spec.colour)
        wrong = score_clip(video, spec.prompt.replace(spec.colour, wrong_colour, 1))
        assert not wrong["colour_ok"] and not wrong["motion_ok"], wrong  # no pixel of that colour moves
        wrong = score_clip(video, spec.prompt.replace(direction, OPPOSITE[direction]))
        assert wrong["colour_ok"] and not wrong["motion_ok"], wrong
        noun = spec.shape
        wrong = score_clip(video, spec.prompt.replace(f"a {spec.colour} {noun} ", f"three {spec.colour} {noun}s "))
        assert not wrong["count_ok"] and wrong["count"] == 1, wrong
    spec = sample_clip_spec(rng, motion="growing", count=1)
    video = render_clip(spec, frames=9, height=48, width=48)
    assert not score_clip(video, spec.prompt.replace("growing", "turning"))["motion_ok"]


def test_blank_or_noise_clips_do_not_adhere(rng):
    prompt = sample_clip_spec(rng).prompt
    blank = np.zeros((9, 48, 48, 3), dtype=np.uint8)
    assert score_clip(blank, prompt)["adherence"] == 0.0
    noise = rng.integers(0, 256, size=(9, 48, 48, 3), dtype=np.uint8)
    assert score_clip(noise, prompt)["adherence"] < 1.0
    with pytest.raises(ValueError, match="frames, height, width, 3"):
        score_clip(blank[..., 0], prompt)


def test_dataclass_is_frozen(rng):
    spec = sample_clip_spec(rng)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.colour = "red"
