"""vidsparse's built-in trained model: "tiny-wan", a small text-to-video WanPipeline trained on procedural shapes.

A random-weight model has almost uniform attention, so sparse attention on it says nothing about quality.
tiny-wan was trained by `scripts/train_tiny_wan.py` on `vidsparse.testing.shapes` clips ("two blue squares
bouncing on a black background"), so its attention has learned real spatio-temporal structure and its samples
can be scored against their prompts (`vidsparse.testing.shapes.score_clip`). It is an ordinary diffusers folder
(`models/tiny-wan/`: WanTransformer3DModel, AutoencoderKLWan, UMT5 text encoder, word-level tokenizer,
UniPC flow scheduler), loaded with `WanPipeline.from_pretrained`.

Geometry at TINY_WAN_CALL: 17 frames of 64 x 64 -> latents 9 x 32 x 32 (VAE x2 spatial, x2 temporal),
patch 1 x 2 x 2 as in Wan -> 9 x 16 x 16 = 2304 tokens per self-attention call; 3 layers of 2 heads x 32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

TINY_MODEL_ID = "tiny-wan"
TINY_MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "tiny-wan"

# The call the model was trained for; max_sequence_length=16 fits every prompt (at most 11 words and "</s>").
TINY_WAN_CALL: dict[str, Any] = dict(
    num_frames=17, height=64, width=64, num_inference_steps=20, guidance_scale=4.0, max_sequence_length=16,
)

# Demo, evaluation and profiling prompts: every colour, direction, motion and count, on each background.
TINY_WAN_PROMPTS: tuple[str, ...] = (
    "a red circle moving right on a black background",
    "a blue square moving left on a white background",
    "a green triangle moving up on a gray background",
    "a yellow circle moving down on a black background",
    "two red squares moving right on a white background",
    "two blue circles moving left on a gray background",
    "three green circles moving down on a black background",
    "two yellow triangles moving up on a white background",
    "a blue circle bouncing on a black background",
    "two green squares bouncing on a gray background",
    "a red triangle growing on a white background",
    "two yellow circles growing on a black background",
    "a green square turning on a black background",
    "a red triangle turning on a gray background",
    "three blue squares bouncing on a white background",
    "a yellow square growing on a gray background",
)


def load_tiny_wan(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    """The trained tiny-wan WanPipeline from TINY_MODEL_DIR, on `device` in `dtype`."""
    if not (TINY_MODEL_DIR / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the tiny-wan weights are missing: {TINY_MODEL_DIR}/model_index.json not found (they are committed "
            f"to the repository; re-create them with `python scripts/train_tiny_wan.py train` then `... export`)"
        )
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(TINY_MODEL_DIR, dtype=dtype)
    return pipe.to(device)
