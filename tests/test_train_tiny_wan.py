"""Helpers of the tiny-wan training script: where the shapes are, in pixels and on the VAE's latent grid."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_tiny_wan.py"


@pytest.fixture(scope="module")
def train():
    spec = importlib.util.spec_from_file_location("train_tiny_wan", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shape_mask_marks_exactly_the_pixels_off_the_background(train):
    rng = np.random.default_rng()
    clip = torch.full((1, 3, 5, 16, 16), float(rng.uniform(-1, 1)))
    drawn = torch.from_numpy(rng.random((5, 16, 16)) < 0.1)  # well under half: the median stays background
    clip[0, int(rng.integers(3)), drawn] += 0.5
    assert torch.equal(train.shape_mask(clip)[0, 0], drawn)


def test_latent_mask_follows_the_causal_vae_grid(train):
    """Latent frame 0 <- frame 0, latent frame k <- frames 2k-1, 2k; latent pixel (i, j) <- pixels 2i..2i+1."""
    rng = np.random.default_rng()
    frames, size = 9, 12
    clip = torch.zeros(2, 3, frames, size, size)
    drawn = torch.from_numpy(rng.random((2, frames, size, size)) < 0.05)
    clip[:, 0][drawn] = 1.0
    got = train.latent_shape_mask(clip)
    assert got.shape == (2, 1, 1 + (frames - 1) // 2, size // 2, size // 2)
    for b in range(2):
        for k in range(got.shape[2]):
            sources = [0] if k == 0 else [2 * k - 1, 2 * k]
            for i in range(size // 2):
                for j in range(size // 2):
                    expected = bool(drawn[b, sources, 2 * i:2 * i + 2, 2 * j:2 * j + 2].any())
                    assert bool(got[b, 0, k, i, j]) == expected


def test_vae_stages_cover_every_step(train):
    bounds = np.cumsum([steps for _, _, steps in train.VAE_STAGES])
    for (frames, batch, _), end in zip(train.VAE_STAGES, bounds):
        assert train.vae_stage(int(end) - 1) == (frames, batch)
    assert train.vae_stage(int(bounds[-1]) + 10) == train.VAE_STAGES[-1][:2]
