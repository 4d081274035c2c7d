"""Allegro (AllegroPipeline, its only pipeline class) patched sparse.

Expected grid by hand: 9 frames -> (9 - 1) / 4 + 1 = 3 latent frames; 256 px / VAE 8 / patch 2 = 16.
"""

from __future__ import annotations

from family_checks import check_dense_reproduces, check_pipeline_class
from vidsparse.testing import tiny_call, tiny_pipeline


def test_allegro_pipeline_runs_sparse_and_layers_match_oracle():
    check_pipeline_class("allegro", None, grid=(3, 16, 16))


def test_allegro_dense_patch_reproduces():
    check_dense_reproduces(tiny_pipeline("allegro"), tiny_call("allegro"))
