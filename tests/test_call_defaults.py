"""`vidsparse profile` / `vidsparse eval` need no --height/--width/--frames/--steps the model knows itself."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from vidsparse.call_defaults import fill_geometry, native_call, pipeline_defaults
from vidsparse.cli import main
from vidsparse.evaluate.cli import add_eval_arguments, settings_from_args
from vidsparse.profile import Profile
from vidsparse.testing import TINY_CALL, tiny_pipeline
from vidsparse.tiny_model import TINY_WAN_CALL

REPO = Path(__file__).resolve().parents[1]
GEOMETRY = ("height", "width", "num_frames", "num_inference_steps")


def test_a_hub_pipeline_defaults_to_what_its_plain_call_generates():
    # What diffusers documents for a plain pipe(prompt): Wan 2.1 480 x 832, 81 frames, 50 steps; Mochi substitutes
    # its default_height/default_width (480 x 848) for None.
    wan = native_call("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", tiny_pipeline("wan"))
    assert wan == dict(height=480, width=832, num_frames=81, num_inference_steps=50)
    assert pipeline_defaults(tiny_pipeline("mochi")) == dict(height=480, width=848, num_frames=19,
                                                             num_inference_steps=64)


def test_derived_defaults_are_what_the_pipeline_generates_without_them():
    """CogVideoX defaults height, width and frames to None and derives them from its transformer config: a call
    without them and a call with the derived values must produce latents of the same shape."""
    pipe = tiny_pipeline("cogvideox")
    derived = pipeline_defaults(pipe)
    common = dict(prompt="a cat", num_inference_steps=1, output_type="latent", max_sequence_length=32)
    plain = pipe(**common).frames
    told = pipe(**common, height=derived["height"], width=derived["width"], num_frames=derived["num_frames"]).frames
    assert plain.shape == told.shape
    assert derived["num_inference_steps"] == 50


def test_tiny_models_use_their_native_call():
    assert native_call("tiny-wan", None) == TINY_WAN_CALL
    # The trained folders load as a plain WanPipeline, whose own defaults (480 x 832, 81 frames) are not theirs.
    for folder in ("models/tiny-wan", "models/tiny-wan-next"):
        assert native_call(str(REPO / folder), tiny_pipeline("wan")) == TINY_WAN_CALL
    assert native_call("tiny-hunyuan-random", None) == TINY_CALL["hunyuan"]


def test_flags_win_and_a_value_nobody_knows_names_its_flag():
    native = dict(height=480, width=832, num_frames=81, num_inference_steps=50)
    geometry, line = fill_geometry(dict(height=None, width=None, num_frames=33, num_inference_steps=None), native, "m")
    assert geometry == dict(height=480, width=832, num_frames=33, num_inference_steps=50)
    assert line == "33 frames of 480 x 832, 50 steps (--height, --width, --steps: m's own defaults)"
    given = dict(height=64, width=64, num_frames=9, num_inference_steps=2)
    assert fill_geometry(given, {}, "m") == (given, "9 frames of 64 x 64, 2 steps")
    with pytest.raises(ValueError, match="--frames: m does not determine its num_frames; give --frames"):
        fill_geometry(dict(height=64, width=64, num_frames=None, num_inference_steps=2), {}, "m")


def test_profile_cli_without_geometry_flags(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox in the snow\n")
    out = tmp_path / "p.json"
    status = main(["profile", "--model", "tiny-wan-random", "--prompts", str(prompts), "--budget", "error=0.3",
                   "--cost", "ideal", "--sample-steps", "1", "--buckets", "1", "--out", str(out), "--no-progress"])
    assert status == 0
    call = TINY_CALL["wan"]
    printed = capsys.readouterr().out
    assert (f"{call['num_frames']} frames of {call['height']} x {call['width']}, {call['num_inference_steps']} steps "
            f"(--height, --width, --frames, --steps: tiny-wan-random's own defaults)") in printed
    calibration = Profile.load(out).calibration
    assert (calibration.height, calibration.width, calibration.frames, calibration.steps) == tuple(
        call[k] for k in GEOMETRY)


def test_eval_settings_default_to_the_model_and_flags_win(capsys):
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    args = parser.parse_args(["--model", "tiny-wan", "--strategy", "dense", "--steps", "3",
                              "--max-sequence-length", "12"])
    settings = settings_from_args(args, ["a cat"], native_call("tiny-wan", None))
    assert (settings.height, settings.width, settings.num_frames, settings.num_inference_steps) == (
        TINY_WAN_CALL["height"], TINY_WAN_CALL["width"], TINY_WAN_CALL["num_frames"], 3)
    assert settings.call_kwargs == dict(guidance_scale=TINY_WAN_CALL["guidance_scale"], max_sequence_length=12)
    assert "(--height, --width, --frames: tiny-wan's own defaults)" in capsys.readouterr().out
