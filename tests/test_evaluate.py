"""`vidsparse eval` end to end on a tiny Wan pipeline: files, consistent numbers, densities, reproducibility."""

import argparse
import json
import math

import numpy as np
import pytest
import torch

from vidsparse.evaluate.cli import add_eval_arguments, evaluate_from_args, parse_strategy, read_prompts
from vidsparse.evaluate.density import DensityRecorder
from vidsparse.evaluate.report import summary_table
from vidsparse.evaluate.runner import EvalSettings, _DenseController, _Mode
from vidsparse.evaluate.video import read_mp4
from vidsparse.layout import VideoLayout
from vidsparse.strategies import get
from vidsparse.testing import tiny_pipeline

# patch 1 at 64 x 64 px, 9 frames -> latent grid 3 x 8 x 8 = 192 tokens, two 128-token tiles.
GEOMETRY = ["--height", "64", "--width", "64", "--frames", "9", "--steps", "2", "--max-sequence-length", "16"]
GRID = (3, 8, 8)
WINDOW_1 = 'neighborhood:{"window": 1}'


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline("wan", patch_size=(1, 1, 1))


def _args(out, *extra):
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    return parser.parse_args(["--model", "tiny-wan", "--prompt", "a red circle moving left", "--seeds", "3",
                              *GEOMETRY, "--device", "cpu", "--no-progress", "--out", str(out), *extra])


def _psnr_from_frames(frames):
    """Video PSNR from per-frame PSNRs: the video MSE is the mean of the (equal-sized) frames' MSEs."""
    return 10 * math.log10(1 / np.mean([10 ** (-p / 10) for p in frames]))


def test_eval_end_to_end_and_reproducible(pipe, tmp_path):
    extra = ["--strategy", WINDOW_1, "--strategy", "dense", "--repeats", "2", "--warmup", "0"]
    report = evaluate_from_args(_args(tmp_path / "a", *extra), pipe=pipe, command="test")
    again = evaluate_from_args(_args(tmp_path / "b", *extra, "--clock", "process"), pipe=pipe, command="test")

    out = tmp_path / "a"
    for name in ("report.json", "report.md", "plots/speed_quality.png", "plots/density_dense-strategy.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "report.json").read_text())["variants"][0]["quality"]["mean"]["psnr"] == pytest.approx(
        report["variants"][0]["quality"]["mean"]["psnr"])
    assert "| dense |" in (out / "report.md").read_text()

    window, dense = report["variants"]
    layout = VideoLayout(*GRID)
    # Same seed, same pipeline: a 'dense' strategy reproduces the dense video exactly; a sparse one does not.
    assert math.isinf(dense["quality"]["mean"]["psnr"]) and dense["quality"]["mean"]["ssim"] == pytest.approx(1.0)
    video = window["quality"]["videos"][0]
    assert 0 < video["psnr"] < math.inf and video["ssim"] < 1
    assert len(video["psnr_per_frame"]) == 9
    assert video["psnr"] == pytest.approx(_psnr_from_frames(video["psnr_per_frame"]), rel=1e-9)
    assert window["quality"]["mean"]["ssim"] == pytest.approx(np.mean(video["ssim_per_frame"]))

    # Videos on disk: every frame, the side-by-side three panels wide.
    frames = read_mp4(out / video["files"]["video"])
    assert frames.shape == (9, 64, 64, 3)
    assert read_mp4(out / video["files"]["side_by_side"]).shape[2] > 3 * 64

    # Timings: two runs each, medians, speedups are ratios of the medians, attention inside the transformer.
    for mode in (report["dense"], window):
        timing = mode["timing"]
        assert timing["num_runs"] == 2 and len(timing["runs"]) == 2
        for run in timing["runs"]:
            assert 0 < run["attention_s"] <= run["transformer_s"] <= run["end_to_end_s"]
            # 2 steps x 2 layers x 2 CFG branches
            assert run["attention_calls"] == 8 and run["transformer_calls"] == 4
        assert timing["end_to_end_s"] == pytest.approx(np.median([r["end_to_end_s"] for r in timing["runs"]]))
    assert window["speedup"]["attention"] == pytest.approx(
        report["dense"]["timing"]["attention_s"] / window["timing"]["attention_s"])
    assert window["repeat_max_abs_diff"] == 0 and report["dense"]["repeat_max_abs_diff"] == 0

    # Achieved density against the plan of the strategy: layer 0 and step 0 dense (default schedule, 2 steps).
    sparse = float(get("neighborhood", window=1).plan(layout).density())
    assert sparse < get("dense").plan(layout).density()  # computed densities: the last block is half padding
    table = np.array(window["density"]["per_layer_head"])
    np.testing.assert_allclose(table[0], 1.0)
    np.testing.assert_allclose(table[1], (1.0 + sparse) / 2, rtol=1e-9)
    assert window["density"]["sparse_calls"] == 2 * 2  # 2 runs x step 1 x layer 1 x 2 CFG branches
    # Which kernel ran which calls: vidsparse's CPU kernel for the sparse ones, the model's own for the rest.
    assert window["density"]["calls_by_backend"] == {
        "vidsparse:gather": window["density"]["sparse_calls"],
        "diffusers:default": window["density"]["attention_calls"] - window["density"]["sparse_calls"],
    }
    np.testing.assert_allclose(dense["density"]["per_layer_head"], 1.0)

    # Same command twice (timed on another clock): the same quality numbers.
    for first, second in zip(report["variants"], again["variants"]):
        assert first["quality"] == second["quality"]
        assert first["density"] == second["density"]
    assert "dense" in summary_table(report) and "neighborhood(window=1)" in summary_table(report)


def test_dense_runs_match_unpatched_pipeline(pipe):
    settings = EvalSettings(prompts=["two blue squares bouncing"], seeds=[5], height=64, width=64, num_frames=9,
                            num_inference_steps=2, call_kwargs={"max_sequence_length": 16}, warmup=0)
    expected = pipe(**settings.call("two blue squares bouncing", 5)).frames[0]
    video, timing = _Mode(pipe, _DenseController(), sparse=False).run(settings, "two blue squares bouncing", 5)
    np.testing.assert_array_equal(video, expected)
    assert timing.attention_calls == 8


def test_density_recorder_against_plans():
    layout = VideoLayout(*GRID)
    strategy = get("neighborhood", window=1)
    plan = strategy.plan(layout)

    class Controller:
        def plan(self, *args):
            return plan

        def __call__(self, call):
            if call.layer == 0:
                return call.q
            return self.plan(call.layout)

    class Call:
        def __init__(self, layer):
            self.layer, self.layout, self.q = layer, layout, torch.zeros(2, 2, 4, 1)

    controller = Controller()
    recorder = DensityRecorder(controller, controller)
    for layer in (0, 1, 1):
        recorder(Call(layer))
    assert "plan" not in vars(controller)  # the shadowing method is gone after each call
    table = recorder.per_layer_head()
    np.testing.assert_allclose(table, [[1.0, 1.0], [plan.density(), plan.density()]])
    assert recorder.summary()["sparse_calls"] == 2


def test_argument_errors(tmp_path, pipe):
    with pytest.raises(ValueError, match="at least one of"):
        evaluate_from_args(_args(tmp_path), pipe=pipe)
    with pytest.raises(FileNotFoundError, match="--profile"):
        evaluate_from_args(_args(tmp_path, "--profile", str(tmp_path / "missing.json")), pipe=pipe)
    with pytest.raises(ValueError, match="clock"):
        EvalSettings(prompts=["x"], seeds=[0], height=8, width=8, num_frames=1, num_inference_steps=1, clock="gpu")
    with pytest.raises(ValueError, match="JSON object"):
        parse_strategy("neighborhood:[1]")
    assert parse_strategy('neighborhood:{"window": [1, 2, 2]}') == ("neighborhood", {"window": (1, 2, 2)})
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# comment\n\na red circle\n  two blue squares  \n")
    assert read_prompts(str(prompts), ["x"]) == ["a red circle", "two blue squares", "x"]
    with pytest.raises(ValueError, match="prompts"):
        read_prompts(None, [])


def test_eval_loads_the_random_tiny_models_under_the_name_profiles_record():
    """`vidsparse profile` records a random tiny pipeline as `tiny-<family>-random`: eval loads it by that name too."""
    from vidsparse.evaluate.models import load_pipeline

    for name in ("tiny-hunyuan", "tiny-hunyuan-random"):
        assert type(load_pipeline(name).transformer).__name__ == "HunyuanVideoTransformer3DModel"
