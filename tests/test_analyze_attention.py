"""The attention analysis script's measures: the top-10% key mass of a recorded call against a direct float64
computation, structured heads against chance, and the trend file of a run's snapshots."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "analyze_tiny_wan_attention.py"


@pytest.fixture(scope="module")
def analyze():
    spec = importlib.util.spec_from_file_location("analyze_tiny_wan_attention", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class TwoBlocks(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Identity(), torch.nn.Identity()])


def test_recorder_top10_and_shares_match_a_direct_computation(analyze):
    grid = (2, 3, 4)
    seq = 2 * 3 * 4
    rows = torch.tensor([0, 5, 13, 23])
    model = TwoBlocks()
    recorder = analyze.AttentionRecorder(model, grid, rows)
    expected_top = torch.zeros(2, 3, dtype=torch.float64)
    expected_probs = torch.zeros(2, 3, len(rows), seq, dtype=torch.float64)
    try:
        for layer in (0, 1, 1):
            model.blocks[layer](torch.zeros(1))  # the pre-hook sets the layer
            q, k, v = (torch.randn(2, seq, 3, 8) for _ in range(3))
            analyze.wan_module.dispatch_attention_fn(q, k, v)
            logits = torch.einsum("bshd,bthd->bhst", q.double(), k.double())[:, :, rows] / math.sqrt(8)
            p = logits.softmax(-1)
            top = p.sort(-1, descending=True).values[..., : math.ceil(0.1 * seq)].sum(-1)  # [B, H, R]
            weight = 1.0 if layer == 0 else 0.5  # layer 1 is averaged over its two calls
            expected_top[layer] += weight * top.mean(dim=(0, 2))
            expected_probs[layer] += weight * p.mean(0)
    finally:
        recorder.remove()
    probs, top10 = recorder.mean()
    torch.testing.assert_close(top10, expected_top)
    torch.testing.assert_close(probs, expected_probs)
    spatial, temporal = analyze.class_masks(analyze.grid_coords(*grid), rows)
    table = analyze.shares(probs, top10, None, spatial, temporal)
    head = table[1][2]
    assert head["top10"] == pytest.approx(float(expected_top[1, 2]))
    assert head["spatial"] == pytest.approx(float((expected_probs[1, 2] * spatial).sum(1).mean()))


def test_structured_heads_and_summary(analyze):
    uniform = {"spatial": 0.01, "temporal": 0.03, "sink": 0.003, "diffuse": 0.957}
    local = {"spatial": 0.05, "temporal": 0.03, "top10": 0.8}  # 5x chance, spatially
    moving = {"spatial": 0.01, "temporal": 0.09, "top10": 0.7}  # 3x chance, temporally
    diffuse = {"spatial": 0.02, "temporal": 0.05, "top10": 0.3}
    assert analyze.structured(local, uniform) and analyze.structured(moving, uniform)
    assert not analyze.structured(diffuse, uniform)
    s = analyze.summary([[local, moving], [diffuse, diffuse]], uniform)
    assert s["structured_heads"] == 2 and s["heads"] == 4 and s["median_top10"] == pytest.approx(0.5)


def test_trend_keeps_one_row_per_training_step(analyze, tmp_path):
    path = tmp_path / "trend.json"

    def result(step, value):
        return dict(model="tiny-wan-next", definition={}, uniform={}, prompts=["p"], call={"num_inference_steps": 10},
                    training={"flow_steps": step, "train_elapsed_s": 1.0}, summary={"trained": {"median_top10": value}})

    for step, value in ((200, 0.5), (100, 0.4), (200, 0.6)):
        analyze.update_trend(path, result(step, value))
    rows = json.loads(path.read_text())["rows"]
    assert [(r["flow_steps"], r["trained"]["median_top10"]) for r in rows] == [(100, 0.4), (200, 0.6)]


@pytest.mark.parametrize("how", ["uniform", "zero"])
def test_head_ablation_replaces_only_the_target_head(analyze, how):
    seq = 12
    model = TwoBlocks()
    ablation = analyze.HeadAblation(model, seq)
    q, k, v = (torch.randn(2, seq, 3, 8, dtype=torch.float64) for _ in range(3))
    expected = torch.einsum("bhst,bthd->bshd",
                            torch.einsum("bshd,bthd->bhst", q, k).div(math.sqrt(8)).softmax(-1), v)
    try:
        ablation.target = (1, 2, how)
        model.blocks[0](torch.zeros(1))
        torch.testing.assert_close(analyze.wan_module.dispatch_attention_fn(q, k, v), expected)  # another layer
        model.blocks[1](torch.zeros(1))
        out = analyze.wan_module.dispatch_attention_fn(q, k, v)
        cross = analyze.wan_module.dispatch_attention_fn(q[:, :5], k, v)  # not self-attention over the video
    finally:
        ablation.remove()
    torch.testing.assert_close(out[:, :, :2], expected[:, :, :2])
    replaced = v[:, :, 2].mean(1, keepdim=True).expand(-1, seq, -1) if how == "uniform" else torch.zeros(2, seq, 8)
    torch.testing.assert_close(out[:, :, 2], replaced.to(out.dtype))
    torch.testing.assert_close(cross, expected[:, :5])
    assert analyze.wan_module.dispatch_attention_fn is ablation.original


def test_oracle_density_of_local_spread_and_uniform_heads(analyze):
    """Three tiles of 128 tokens (grid 3 x 8 x 16). Head 0 attends only within its query's tile, head 1 equally
    to its own tile and the next, head 2 uniformly to everything: the least tile densities within error 0.05 are
    1/3, 2/3 and 1 (random values make any dropped tile change the uniform head's output by far more than 5%)."""
    grid, seq = (3, 8, 16), 384
    tile = torch.arange(seq) // 128  # frame-major order: tile = frame
    one_hot = torch.nn.functional.one_hot(tile, 3).double()
    q = torch.zeros(1, seq, 3, 3, dtype=torch.float64)
    k = torch.zeros(1, seq, 3, 3, dtype=torch.float64)
    q[0, :, 0], k[0, :, 0] = 60 * one_hot, one_hot  # logit sqrt(3) * 60 / sqrt(3) more on the own tile
    q[0, :, 1], k[0, :, 1] = 60 * (one_hot + one_hot.roll(1, dims=1)), one_hot  # own and next tile
    v = torch.randn(1, seq, 3, 3, dtype=torch.float64)
    rows = torch.arange(0, seq, 3)
    model = TwoBlocks()
    recorder = analyze.AttentionRecorder(model, grid, rows, oracle_error=0.05)
    try:
        model.blocks[0](torch.zeros(1))
        analyze.wan_module.dispatch_attention_fn(q, k, v)
    finally:
        recorder.remove()
    density = recorder.oracle_density()[0]
    torch.testing.assert_close(density, torch.tensor([1 / 3, 2 / 3, 1.0], dtype=density.dtype))
