"""Quality metrics against independent numpy formulas (PSNR, SSIM) and their edge cases."""

import math

import numpy as np
import pytest
import torch

from vidsparse.evaluate.quality import (
    compare_videos,
    find_lpips,
    mean_quality,
    psnr_per_frame,
    ssim_per_frame,
    video_psnr,
)


def _rng() -> np.random.Generator:
    return np.random.default_rng(torch.initial_seed())


def _pair(rng: np.random.Generator, shape=(4, 12, 10, 3), noise=0.05) -> tuple[np.ndarray, np.ndarray]:
    reference = rng.random(shape).astype(np.float32)
    test = np.clip(reference + noise * rng.standard_normal(shape), 0, 1).astype(np.float32)
    return reference, test


def _ssim_oracle(x: np.ndarray, y: np.ndarray, win: int) -> float:
    """Wang et al. 2004 with a win x win uniform window, sample covariances, valid region, channels averaged."""
    c1, c2 = (0.01) ** 2, (0.03) ** 2
    n = win * win
    per_channel = []
    for c in range(x.shape[-1]):
        a, b = x[..., c].astype(np.float64), y[..., c].astype(np.float64)
        values = []
        for i in range(a.shape[0] - win + 1):
            for j in range(a.shape[1] - win + 1):
                pa, pb = a[i:i + win, j:j + win], b[i:i + win, j:j + win]
                ma, mb = pa.mean(), pb.mean()
                va = ((pa - ma) ** 2).sum() / (n - 1)
                vb = ((pb - mb) ** 2).sum() / (n - 1)
                cov = ((pa - ma) * (pb - mb)).sum() / (n - 1)
                values.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
        per_channel.append(np.mean(values))
    return float(np.mean(per_channel))


def test_psnr_matches_formula():
    reference, test = _pair(_rng())
    diff = reference.astype(np.float64) - test.astype(np.float64)
    expected_frames = [10 * math.log10(1 / np.mean(d**2)) for d in diff]
    np.testing.assert_allclose(psnr_per_frame(reference, test), expected_frames, rtol=1e-12)
    assert video_psnr(reference, test) == pytest.approx(10 * math.log10(1 / np.mean(diff**2)), rel=1e-12)


def test_psnr_of_identical_video_and_frame_is_inf():
    reference, test = _pair(_rng())
    test[1] = reference[1]
    frames = psnr_per_frame(reference, test)
    assert math.isinf(frames[1]) and np.isfinite(np.delete(frames, 1)).all()
    assert math.isfinite(video_psnr(reference, test))  # one equal frame does not make the video inf
    assert math.isinf(video_psnr(reference, reference.copy()))


def test_ssim_matches_oracle():
    reference, test = _pair(_rng(), shape=(2, 11, 9, 3), noise=0.1)
    expected = [_ssim_oracle(r, t, 7) for r, t in zip(reference, test)]
    np.testing.assert_allclose(ssim_per_frame(reference, test), expected, rtol=1e-6)


def test_ssim_small_frames_use_smaller_window():
    reference, test = _pair(_rng(), shape=(1, 5, 6, 3), noise=0.1)
    np.testing.assert_allclose(ssim_per_frame(reference, test), [_ssim_oracle(reference[0], test[0], 5)], rtol=1e-6)


def test_compare_and_mean():
    rng = _rng()
    pairs = [_pair(rng, noise=n) for n in (0.02, 0.1)]
    qualities = [compare_videos(r, t) for r, t in pairs]
    assert qualities[0].psnr > qualities[1].psnr and qualities[0].ssim > qualities[1].ssim
    assert qualities[0].ssim == pytest.approx(np.mean(qualities[0].ssim_per_frame))
    mean = mean_quality(qualities)
    assert mean["psnr"] == pytest.approx((qualities[0].psnr + qualities[1].psnr) / 2)
    assert mean["lpips"] is None


def test_lpips_metric_is_used_when_given():
    reference, test = _pair(_rng())
    calls = []

    def metric(a, b):
        calls.append(a.shape)
        return np.abs(a - b).mean(axis=(1, 2, 3)).astype(np.float64)

    quality = compare_videos(reference, test, metric)
    assert calls == [reference.shape]
    assert quality.lpips == pytest.approx(np.abs(reference - test).mean(), rel=1e-5)


def test_lpips_never_downloads(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    availability = find_lpips()
    if availability.metric is None:
        assert "skipped" in availability.note
    assert not any(tmp_path.rglob("*.pth"))


@pytest.mark.parametrize(
    "reference, test, message",
    [
        (np.zeros((2, 4, 4, 3), np.float32), np.zeros((2, 4, 5, 3), np.float32), "same shape"),
        (np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 3), np.float32), "frames, height"),
        (np.zeros((1, 4, 4, 3), np.uint8), np.zeros((1, 4, 4, 3), np.uint8), "floats"),
        (np.full((1, 4, 4, 3), 2.0), np.zeros((1, 4, 4, 3)), r"\[0, 1\]"),
    ],
)
def test_bad_inputs(reference, test, message):
    with pytest.raises(ValueError, match=message):
        video_psnr(reference, test)
