"""Allegro (AllegroPipeline, its only pipeline class) patched sparse.

Expected grid by hand: 9 frames -> (9 - 1) / 4 + 1 = 3 latent frames; 256 px / VAE 8 / patch 2 = 16.
"""

from __future__ import annotations

from family_checks import check_dense_reproduces, check_layers, run_sparse
from vidsparse.testing import tiny_call, tiny_pipeline


def test_allegro_pipeline_runs_sparse_and_layers_match_oracle():
    pipe, call = tiny_pipeline("allegro"), tiny_call("allegro")
    run_sparse(pipe, call)
    check_layers(pipe, call, grid=(3, 16, 16))


def test_allegro_dense_patch_reproduces():
    check_dense_reproduces(tiny_pipeline("allegro"), tiny_call("allegro"))
