"""AnyFlow (`AnyFlowTransformer3DModel`, AnyFlowPipeline from text and continuing a video) patched sparse.

Expected grid by hand: Wan's VAE, 9 frames -> (9 - 1) / 4 + 1 = 3 latent frames, 256 px / 8 / patch 2 = 16. In
video-to-video the 5 given frames are the first 2 latent frames of that grid.
"""

from __future__ import annotations

import pytest
from family_checks import check_dense_reproduces, check_pipeline_class

from vidsparse.testing import tiny_call, tiny_pipeline


@pytest.mark.parametrize("variant", ["t2v", "v2v"])
def test_anyflow_pipeline_runs_sparse_and_layers_match_oracle(variant):
    check_pipeline_class("anyflow", variant, grid=(3, 16, 16))


@pytest.mark.parametrize("variant", ["t2v", "v2v"])
def test_anyflow_dense_patch_reproduces(variant):
    check_dense_reproduces(tiny_pipeline("anyflow", variant=variant), tiny_call("anyflow", variant))
