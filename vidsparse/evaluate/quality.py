"""How far a sparse video is from the dense one: PSNR and SSIM (scikit-image), LPIPS when available locally.

Videos are numpy arrays [F, H, W, C] with values in [0, 1] (what a diffusers pipeline returns with
`output_type="np"`). Metrics are computed on these arrays, never on the compressed mp4 files, so they do not
depend on the video encoder.

Definitions (the dense video is the reference):
- PSNR of a frame: 10 log10(1 / MSE) over its pixels and channels (data range 1).
- PSNR of a video: the same over all pixels of all frames (MSE of the whole video), so one perfectly equal frame
  does not make the video's PSNR infinite. Equal videos have PSNR = inf.
- SSIM of a frame: Wang et al. 2004, "Image quality assessment: from error visibility to structural similarity"
  (scikit-image, 7x7 uniform window, channels averaged); SSIM of a video: mean over its frames.
- LPIPS (Zhang et al. 2018, "The unreasonable effectiveness of deep features as a perceptual metric"): AlexNet
  variant of the `lpips` package, mean over frames. Computed only when the package and its network weights are
  already on this machine; it never downloads anything.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from skimage.metrics import structural_similarity

# The AlexNet backbone file torchvision's `alexnet(weights=IMAGENET1K_V1)` loads from the torch hub cache.
_ALEXNET_CHECKPOINT = "alexnet-owt-7be5be79.pth"


def check_video_pair(reference: np.ndarray, test: np.ndarray) -> None:
    """ValueError unless both are [F, H, W, C] float arrays of the same shape with values in [0, 1]."""
    for name, video in (("reference", reference), ("test", test)):
        if not isinstance(video, np.ndarray) or video.ndim != 4:
            raise ValueError(f"{name} must be a numpy array [frames, height, width, channels], got {_describe(video)}")
        if not np.issubdtype(video.dtype, np.floating):
            raise ValueError(f"{name} must hold floats in [0, 1], got dtype {video.dtype}")
        if video.size and (float(video.min()) < 0.0 or float(video.max()) > 1.0):
            raise ValueError(f"{name} values must lie in [0, 1], got [{video.min():.4g}, {video.max():.4g}]")
    if reference.shape != test.shape:
        raise ValueError(f"reference {reference.shape} and test {test.shape} must have the same shape")


def _describe(video: object) -> str:
    return f"shape {video.shape}" if isinstance(video, np.ndarray) else type(video).__name__


def psnr_from_mse(mse: float) -> float:
    """10 log10(1 / mse) for data range 1; inf when mse is 0."""
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def psnr_per_frame(reference: np.ndarray, test: np.ndarray) -> np.ndarray:
    """PSNR (dB) of every frame, [F] float64."""
    check_video_pair(reference, test)
    diff = reference.astype(np.float64) - test.astype(np.float64)
    mse = np.mean(diff * diff, axis=(1, 2, 3))
    return np.array([psnr_from_mse(float(m)) for m in mse])


def video_psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR (dB) of the whole video (MSE over all frames)."""
    check_video_pair(reference, test)
    diff = reference.astype(np.float64) - test.astype(np.float64)
    return psnr_from_mse(float(np.mean(diff * diff)))


def ssim_per_frame(reference: np.ndarray, test: np.ndarray) -> np.ndarray:
    """SSIM of every frame, [F] float64 (scikit-image, channels averaged)."""
    check_video_pair(reference, test)
    _, height, width, _ = reference.shape
    # scikit-image's default 7x7 window must fit in the frame; tiny frames use the largest odd window that does.
    win_size = min(7, height, width)
    win_size -= 1 - win_size % 2
    if win_size < 3:
        raise ValueError(f"SSIM needs frames of at least 3x3 pixels, got {height}x{width}")
    return np.array(
        [
            structural_similarity(r, t, data_range=1.0, channel_axis=-1, win_size=win_size)
            for r, t in zip(reference.astype(np.float64), test.astype(np.float64))
        ]
    )


@dataclass(frozen=True)
class LpipsAvailability:
    """Whether LPIPS can run here, and if not, why (shown in the report)."""

    metric: Callable[[np.ndarray, np.ndarray], np.ndarray] | None
    note: str


def find_lpips(device: str = "cpu") -> LpipsAvailability:
    """The LPIPS (AlexNet) metric if the `lpips` package, torchvision and the AlexNet weights are all local.

    The backbone file is looked for in the torch hub cache before anything is built, so nothing is downloaded.
    """
    for package in ("lpips", "torchvision"):
        if importlib.util.find_spec(package) is None:
            return LpipsAvailability(None, f"LPIPS skipped: the `{package}` package is not installed")
    import torch

    checkpoint = Path(torch.hub.get_dir()) / "checkpoints" / _ALEXNET_CHECKPOINT
    if not checkpoint.is_file():
        return LpipsAvailability(
            None, f"LPIPS skipped: AlexNet weights not found at {checkpoint} (vidsparse never downloads them)"
        )
    import lpips

    network = lpips.LPIPS(net="alex", verbose=False).to(device).eval()

    def to_input(video: np.ndarray) -> torch.Tensor:
        # LPIPS takes [N, 3, H, W] in [-1, 1].
        return torch.from_numpy(np.ascontiguousarray(video)).float().permute(0, 3, 1, 2).to(device) * 2 - 1

    def metric(reference: np.ndarray, test: np.ndarray) -> np.ndarray:
        check_video_pair(reference, test)
        with torch.no_grad():
            return network(to_input(reference), to_input(test)).flatten().double().cpu().numpy()

    return LpipsAvailability(metric, "LPIPS: AlexNet (lpips package), mean over frames")


@dataclass
class VideoQuality:
    """Quality of one test video against its reference."""

    psnr: float
    ssim: float
    psnr_per_frame: list[float]
    ssim_per_frame: list[float]
    lpips: float | None = None
    lpips_per_frame: list[float] | None = field(default=None)


def compare_videos(
    reference: np.ndarray, test: np.ndarray, lpips_metric: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
) -> VideoQuality:
    """PSNR, SSIM (and LPIPS when a metric is given) of `test` against `reference`, per frame and per video."""
    ssim = ssim_per_frame(reference, test)
    quality = VideoQuality(
        psnr=video_psnr(reference, test),
        ssim=float(ssim.mean()),
        psnr_per_frame=psnr_per_frame(reference, test).tolist(),
        ssim_per_frame=ssim.tolist(),
    )
    if lpips_metric is not None:
        per_frame = lpips_metric(reference, test)
        quality.lpips = float(per_frame.mean())
        quality.lpips_per_frame = per_frame.tolist()
    return quality


def mean_quality(videos: list[VideoQuality]) -> dict[str, float | None]:
    """Averages over videos: PSNR (mean of video PSNRs; inf if any pair is identical), SSIM, LPIPS."""
    if not videos:
        raise ValueError("mean_quality needs at least one video")
    lpips_values = [v.lpips for v in videos if v.lpips is not None]
    return {
        "psnr": float(np.mean([v.psnr for v in videos])),
        "ssim": float(np.mean([v.ssim for v in videos])),
        "lpips": float(np.mean(lpips_values)) if len(lpips_values) == len(videos) else None,
    }
