"""The full-size attention geometries of the supported models, for padding counts and benchmarks.

name -> (frames, height, width, text_tokens, text_position): the latent grid after patchify as diffusers computes it
for that resolution and frame count (CogVideoX 1.5 pads its 21 latent frames to 22 for its temporal patch of 2), and
the text tokens the family puts in the self-attention sequence (CogVideoX 226 as a prefix, HunyuanVideo and Mochi
256 as a suffix; Wan and LTX-Video keep text in cross-attention). Issue 18's table.
"""

from __future__ import annotations

MODEL_GEOMETRIES: dict[str, tuple[int, int, int, int, str]] = {
    "Wan 2.1 480p x 81": (21, 30, 52, 0, "suffix"),
    "Wan 2.1 720p x 81": (21, 45, 80, 0, "suffix"),
    "Wan 2.2 TI2V-5B 1280x704 x 121": (31, 22, 40, 0, "suffix"),
    "HunyuanVideo 720p x 129": (33, 45, 80, 256, "suffix"),
    "CogVideoX 1.5 1360x768 x 81": (11, 48, 85, 226, "prefix"),
    "LTX-Video 768x512 x 121": (16, 16, 24, 0, "suffix"),
    "Mochi 848x480 x 163": (28, 30, 53, 256, "suffix"),
}
