"""mp4 writing and reading (H.264 round trip) and the side-by-side layout."""

import numpy as np
import pytest
import torch

from vidsparse.evaluate.video import DIFFERENCE_GAIN, read_mp4, side_by_side, to_uint8, write_mp4


def _smooth_video(frames=5, height=32, width=48) -> np.ndarray:
    """A smooth moving gradient in one random tint (compresses well; little chroma detail for 4:2:0 to lose)."""
    rng = np.random.default_rng(torch.initial_seed())
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    phase, tint = rng.random(), 0.6 + 0.4 * rng.random(3)
    video = [(0.5 + 0.4 * np.sin(2 * np.pi * (x + 0.5 * y + phase + f / frames)))[..., None] * tint
             for f in range(frames)]
    return np.stack(video).astype(np.float32)


def test_mp4_round_trip(tmp_path):
    video = _smooth_video()
    path = write_mp4(tmp_path / "v.mp4", video, fps=8)
    decoded = read_mp4(path)
    assert decoded.shape == (5, 32, 48, 3) and decoded.dtype == np.uint8
    error = np.abs(decoded.astype(np.float64) - to_uint8(video).astype(np.float64))
    assert error.mean() < 3.0  # crf 18 H.264 with 4:2:0 chroma: a few levels on average
    assert not list(tmp_path.glob(".*partial*"))


def test_odd_sizes_are_padded(tmp_path):
    video = _smooth_video(frames=3, height=17, width=23)
    decoded = read_mp4(write_mp4(tmp_path / "odd.mp4", video))
    assert decoded.shape == (3, 18, 24, 3)


def test_bad_fps_and_empty(tmp_path):
    with pytest.raises(ValueError, match="fps"):
        write_mp4(tmp_path / "a.mp4", _smooth_video(), fps=0)
    with pytest.raises(ValueError, match="no frames"):
        write_mp4(tmp_path / "b.mp4", np.zeros((0, 4, 4, 3), np.float32))


def test_to_uint8_rounds_and_clips():
    video = np.array([0.0, 0.4 / 255, 1.6 / 255, 1.0, 1.2, -0.3], dtype=np.float32).reshape(1, 1, 6, 1)
    assert to_uint8(video)[0, 0, :, 0].tolist() == [0, 0, 2, 255, 255, 0]
    assert to_uint8(video).shape == (1, 1, 6, 3)


def test_side_by_side_panels():
    rng = np.random.default_rng(torch.initial_seed())
    reference = rng.random((2, 20, 30, 3)).astype(np.float32)
    test = rng.random((2, 20, 30, 3)).astype(np.float32)
    frames = side_by_side(reference, test)
    label, separator = frames.shape[1] - 20, 4
    assert frames.shape == (2, 20 + label, 3 * 30 + 2 * separator, 3)
    assert np.array_equal(frames[:, label:, :30], to_uint8(reference))
    assert np.array_equal(frames[:, label:, 30 + separator:60 + separator], to_uint8(test))
    difference = np.abs(to_uint8(reference).astype(int) - to_uint8(test).astype(int)) * DIFFERENCE_GAIN
    assert np.array_equal(frames[:, label:, 60 + 2 * separator:], np.clip(difference, 0, 255).astype(np.uint8))
