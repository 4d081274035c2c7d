"""scripts/gpu_check.py's CPU dry run: every section runs at tiny shapes and the JSON has what a GPU run reports.

The dry run measures nothing (the interpreter and a tiny model); what is checked is that the script runs end to end
and that the Triton kernel's output, in every plan it tried, is as close to the float64 oracle as SDPA's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.mark.slow
def test_dry_run_writes_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True
    sections = {"correctness", "kernel", "overhead", "step", "compile", "syncs", "tune"}
    assert {"device", "versions", "date"} | sections <= set(report)
    assert {"torch", "diffusers", "triton"} <= set(report["versions"])

    assert len(report["correctness"]) == 2  # density 1.0 and 0.2 on the dry-run shape
    for row in report["correctness"]:
        assert row["ok"], row
        assert row["kernel_max_error"] < 1e-5 and row["kernel_vs_sdpa_max_difference"] < 1e-5

    kernels = {(r["kernel"], round(r["density"], 3)) for r in report["kernel"] if "error" not in r}
    assert {"triton", "flex"} <= {name for name, _ in kernels}
    assert all(r["tflops"] > 0 for r in report["kernel"] if "error" not in r)
    assert any(r["kernel"] == "sdpa-cudnn" for r in report["kernel"])  # reported even when unavailable

    overhead = {row["case"]: row for row in report["overhead"]}
    assert len(overhead) == 4 and overhead["default (static)"]["dynamic"] is False
    for row in overhead.values():  # the controller's path reads nothing back and uploads nothing in steady state
        assert row["syncs"] == {} and row["uploads"] == {}, row
    assert overhead["blockified reuse"]["plans_reused"] > 0 and overhead["blockified refresh"]["plans_reused"] == 0

    step = report["step"]
    assert step["dense_s"] > 0 and step["default_s"] > 0 and step["mixed_s"] > 0
    assert 0 < step["default_mean_density"] < 1 and 0 < step["mixed_mean_density"] < 1
    assert report["compile"]["fullgraph"] is True and report["compile"]["default_s"] > 0

    syncs = report["syncs"]
    assert syncs["dense"]["op_calls"] == 0  # an unpatched model never enters the op
    layers = 4  # the tiny Wan: every layer's self-attention enters the op, layer 0 runs dense inside it
    assert syncs["default"]["op_calls"] == layers and syncs["mixed"]["op_calls"] == layers
    assert syncs["default"]["cuda_sync_warnings"] is None  # no CUDA on the dry run

    tuned = report["tune"]["rows"]  # the table's config, then each forced one on the same plan
    assert [row["config"] for row in tuned][0] is None and len(tuned) >= 2
    for row in tuned:
        assert "error" not in row and row["max_difference_from_table"] < 1e-5, row
    assert all(best["no_token_table_ms"] > 0 for best in report["tune"]["best"].values())
