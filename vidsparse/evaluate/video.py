"""Writing videos: one mp4 per run (imageio + its bundled ffmpeg) and a labelled side-by-side comparison.

Videos are [F, H, W, C] arrays, floats in [0, 1] or uint8. Files are written under a temporary name in the
target folder and renamed when complete, so an interrupted run never leaves a truncated mp4 behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
from PIL import Image, ImageDraw, ImageFont

# H.264 with yuv420p needs even sizes; crf 18 is visually lossless for x264, which is what a comparison needs.
_ENCODER_PARAMS = dict(format="FFMPEG", codec="libx264", pixelformat="yuv420p", macro_block_size=1, quality=None,
                       output_params=["-crf", "18"])
_LABEL_HEIGHT = 14
_SEPARATOR = 4
# Absolute differences are small for a good sparse run; this gain makes them visible in the third panel.
DIFFERENCE_GAIN = 4.0


def to_uint8(video: np.ndarray) -> np.ndarray:
    """[F, H, W, C] floats in [0, 1] (or uint8) -> uint8 RGB, rounding to nearest."""
    if video.ndim != 4 or video.shape[-1] not in (1, 3):
        raise ValueError(f"video must be [frames, height, width, 1 or 3 channels], got shape {video.shape}")
    if video.dtype == np.uint8:
        frames = video
    else:
        frames = np.clip(np.rint(video.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    """Replicate the last row/column where a side is odd (yuv420p subsamples chroma by 2)."""
    _, height, width, _ = frames.shape
    return np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")


def write_mp4(path: str | os.PathLike, video: np.ndarray, fps: int = 16) -> Path:
    """Write `video` ([F, H, W, C], floats in [0, 1] or uint8) as an H.264 mp4 at `fps` frames per second."""
    if isinstance(fps, bool) or not isinstance(fps, int) or fps < 1:
        raise ValueError(f"fps must be an integer >= 1, got {fps!r}")
    path = Path(path)
    frames = _pad_to_even(to_uint8(video))
    if frames.shape[0] == 0:
        raise ValueError("cannot write a video with no frames")
    temporary = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        with imageio.get_writer(temporary, fps=fps, **_ENCODER_PARAMS) as writer:
            for frame in frames:
                writer.append_data(frame)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def read_mp4(path: str | os.PathLike) -> np.ndarray:
    """All frames of a video file, uint8 [F, H, W, 3]."""
    return np.stack(imageio.mimread(Path(path), format="FFMPEG", memtest=False))


def _label(width: int, text: str) -> np.ndarray:
    bar = Image.new("RGB", (width, _LABEL_HEIGHT), (0, 0, 0))
    ImageDraw.Draw(bar).text((3, 1), text, fill=(255, 255, 255), font=ImageFont.load_default())
    return np.asarray(bar)


def side_by_side(
    reference: np.ndarray, test: np.ndarray, labels: tuple[str, str] = ("dense", "sparse"), with_difference: bool = True
) -> np.ndarray:
    """Frames of `reference | test | gain x |test - reference|`, each under its label; uint8 [F, H', W', 3]."""
    left, right = to_uint8(reference), to_uint8(test)
    if left.shape != right.shape:
        raise ValueError(f"side_by_side: videos must have the same shape, got {left.shape} and {right.shape}")
    panels = [left, right]
    names = list(labels)
    if with_difference:
        difference = np.abs(left.astype(np.int16) - right.astype(np.int16)) * DIFFERENCE_GAIN
        panels.append(np.clip(difference, 0, 255).astype(np.uint8))
        names.append(f"|difference| x{DIFFERENCE_GAIN:g}")
    num_frames, height, width, _ = left.shape
    separator = np.full((num_frames, _LABEL_HEIGHT + height, _SEPARATOR, 3), 128, dtype=np.uint8)
    columns = []
    for panel, name in zip(panels, names):
        label = np.broadcast_to(_label(width, name), (num_frames, _LABEL_HEIGHT, width, 3))
        columns += [np.concatenate([label, panel], axis=1), separator]
    return np.concatenate(columns[:-1], axis=2)
