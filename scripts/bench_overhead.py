"""Host cost of one patched attention call with the kernel replaced by a no-op: milliseconds, syncs and uploads.

What a GPU must hide behind its kernels is the Python and torch work the controller does per layer call (policy,
plan cache, assembly of per-head plans, dynamic planners' launches). This script calls `SparseController` directly
with an `AttentionCall` at full-size geometry and a backend "noop" that returns the output buffer untouched, so the
time measured is the per-call path alone:

    Wan 2.1 480p x 81 frames   grid 21 x 30 x 52 (32,760 tokens), 12 heads of 128, batch 2 (CFG), bfloat16
    HunyuanVideo 720p x 129f   grid 33 x 45 x 80 + 256 text tokens (suffix), 24 heads of 128, batch 1, bfloat16
                               (HunyuanVideo is guidance-distilled: one transformer call per step, no CFG batch)

Cases: the default strategy (static); a mixed layer (4 draft, 3 diagonal, 3 vmoba, 2 sampled-stripe heads; 8/6/6/4
at HunyuanVideo's 24 heads); blockified (refresh_every=10) at a refresh step and at a reuse step.

Per case: median milliseconds per call over `--repeats` steady-state calls (after one warm-up call, whose time is
reported as `first_call_ms`). `planner_ms` is the time planning dynamic heads (`PlanningClock`: selecting their q/k,
pooling, running their planners, building their plan). On a CPU every op runs as it is called, so planning there is
arithmetic (device work on a GPU) and `host_ms` is the rest: the controller's own work, including the copy of the
dynamic heads' plan into the layer's plan (small device work on a GPU). On a GPU (`--device cuda`) `host_ms` is the
whole call until it returns, launches included, which is what the targets are about (<= 0.3 ms static, <= 2 ms
dynamic), and `total_ms` waits for the device too. Over one more steady-state call: syncs and uploads counted by
`vidsparse.testing.host_sync.HostSyncCounter`, and `launches`, the ATen ops that write a tensor, dtype conversions
included (`vidsparse.testing.launches.LaunchCounter`: about one kernel launch each on a GPU in eager mode, ~20
microseconds of host time each on the H200's host; counts saved before 2026-12-01 missed the conversions), per op
in `launches_by_op`. Blockified's exact search is one full attention pass (about 15 minutes per head on this 2-core
CPU, see scripts/results/bench_planning_cpu.json), so here its block-importance pass returns a fixed random mass and
only the covering-set selection and plan building are timed as its planning.

    OMP_NUM_THREADS=1 nice .venv/bin/python scripts/bench_overhead.py    # both geometries -> bench_overhead_cpu.json
    .venv/bin/python scripts/bench_overhead.py --geometries wan --repeats 5
    python scripts/bench_overhead.py --device cuda                # also a section of scripts/gpu_check.py
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

import vidsparse
from bench_attention import device_name
from vidsparse.attention import register_backend
from vidsparse.controller import DenseSchedule, SparseController, StrategyPolicy
from vidsparse.layout import VideoLayout
from vidsparse.patch import default_strategy
from vidsparse.runtime import AttentionCall
from vidsparse.strategies import Strategy, get
from vidsparse.strategies.blockified import Blockified
from vidsparse.testing.host_sync import HostSyncCounter
from vidsparse.testing.launches import LaunchCounter

RESULTS = Path(__file__).resolve().parent / "results"
LAYER = 1  # a sparse layer (the default schedule keeps layer 0 dense); vmoba runs its 2D partition here
BLOCKIFIED_REFRESH = 10


@dataclass(frozen=True)
class Geometry:
    name: str
    layout: VideoLayout
    batch: int
    heads: int
    head_dim: int = 128


GEOMETRIES = {
    "wan": Geometry("Wan2.1 480p x 81f (B=2 CFG, H=12)", VideoLayout(21, 30, 52), batch=2, heads=12),
    "hunyuan": Geometry("HunyuanVideo 720p x 129f (B=1, H=24, +256 text)", VideoLayout(33, 45, 80, text_tokens=256),
                        batch=1, heads=24),
}


@register_backend("noop")
def noop_backend(q, k, v, plan, scale, *, out=None):
    """The kernel left out: the output buffer is returned as it is (zeros when none is given)."""
    return out if out is not None else torch.zeros_like(q)


class FixedHeads:
    """A HeadPolicy giving one layer's list of per-head strategies at every call (what a profile's layer gives)."""

    def __init__(self, strategies: list[Strategy]) -> None:
        self.heads = strategies

    def strategies(self, step, num_steps, layer, num_heads):
        return self.heads


def mixed_layer(heads: int, layer: int = LAYER) -> list[Strategy]:
    """The issue's mixed layer: per 12 heads, 4 draft, 3 diagonal, 3 vmoba, 2 sampled-stripe, scaled to `heads`
    (24 heads: 8/6/6/4; 2 heads: draft, vmoba)."""
    twelve = ([get("draft")] * 4 + [get("diagonal")] * 3 + [get("vmoba").at_layer(layer)] * 3
              + [get("stripe", top_k=2)] * 2)
    return [twelve[head * 12 // heads] for head in range(heads)]


class PlanningClock:
    """Seconds the controller spends planning dynamic heads: the heads of mask planners (draft, vmoba, sampled
    stripe) planned together (`controller._plan_masks`: selecting their q/k, pooling, the planners, the plan) and
    the others in its plan cache (`controller.reuse.plan`; nothing but a cache hit at a reuse step)."""

    def __init__(self, controller: SparseController) -> None:
        self.seconds = 0.0
        controller.reuse.plan = self._timed(controller.reuse.plan)
        controller._plan_masks = self._timed(controller._plan_masks)

    def _timed(self, plan):
        def timed_plan(*args, **kwargs):
            start = time.perf_counter()
            try:
                return plan(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed_plan


@contextlib.contextmanager
def fixed_block_importance(geometry: Geometry, device: torch.device) -> Iterator[None]:
    """Blockified's exact search (a full attention pass) replaced by a fixed random block mass of the same shape."""
    layout = geometry.layout
    logits = torch.randn(geometry.batch, geometry.heads, layout.num_video_blocks, layout.num_blocks,
                         generator=torch.Generator().manual_seed(1)) * 3
    mass = torch.softmax(logits, -1).to(device)
    original = Blockified.block_importance
    Blockified.block_importance = lambda self, layout, q, k: mass
    try:
        yield
    finally:
        Blockified.block_importance = original


def measure(controller: SparseController, calls: list[AttentionCall], device: torch.device) -> dict:
    """First call (builds plans), then the others timed; then one more call counted for syncs, uploads, launches.

    host_ms: until the call returns, less the planning on a CPU (where planning is arithmetic; on a GPU the host
    only launches it, and host_ms is the whole call). total_ms: until the device is done too.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    *timed_calls, counted_call = calls
    clock = PlanningClock(controller)
    start = time.perf_counter()
    controller(timed_calls[0])
    sync()
    first = time.perf_counter() - start
    totals, planners, hosts = [], [], []
    for call in timed_calls[1:]:
        clock.seconds = 0.0
        sync()
        start = time.perf_counter()
        controller(call)
        returned = time.perf_counter() - start
        sync()
        totals.append(time.perf_counter() - start)
        planners.append(clock.seconds)
        hosts.append(returned - clock.seconds if device.type == "cpu" else returned)
    with HostSyncCounter(attention_only=False) as counter, LaunchCounter() as launches:
        controller(counted_call)
    total, planner = statistics.median(totals), statistics.median(planners)
    return dict(first_call_ms=first * 1e3, total_ms=total * 1e3, planner_ms=planner * 1e3,
                host_ms=statistics.median(hosts) * 1e3,
                syncs=dict(counter.syncs), uploads=dict(counter.uploads), launches=launches.launches,
                launches_by_op=dict(launches.by_op),
                plans_made=controller.reuse.plans_made, plans_reused=controller.reuse.plans_reused)


def bench(geometry: Geometry, repeats: int, device: torch.device = torch.device("cpu")) -> list[dict]:
    layout, b, h, d = geometry.layout, geometry.batch, geometry.heads, geometry.head_dim
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, layout.seq_len, d, generator=generator, dtype=torch.bfloat16).to(device)
               for _ in range(3))
    out = torch.empty_like(q)

    def call(step: int) -> AttentionCall:
        return AttentionCall(layer=LAYER, step=step, num_steps=50, q=q, k=k, v=v, layout=layout, scale=None, out=out)

    always = DenseSchedule(0, frozenset())
    blockified = StrategyPolicy(get("blockified", refresh_every=BLOCKIFIED_REFRESH), always)
    cases = {
        # case: (policy, steps of the calls: warm-up, timed..., counted)
        "default (static)": (StrategyPolicy(default_strategy(), always), list(range(repeats + 2))),
        "mixed 4 draft/3 diag/3 vmoba/2 stripe": (FixedHeads(mixed_layer(h)), list(range(repeats + 2))),
        "blockified refresh": (blockified, [BLOCKIFIED_REFRESH * i for i in range(repeats + 2)]),
        "blockified reuse": (blockified, list(range(repeats + 2))),  # step 0 searches, the rest reuse it
    }
    rows = []
    for name, (policy, steps) in cases.items():
        controller = SparseController(policy, backend="noop")
        with fixed_block_importance(geometry, device), torch.inference_mode():
            row = measure(controller, [call(step) for step in steps], device)
        row.update(geometry=geometry.name, case=name, dynamic=any(s.is_dynamic for s in _strategies(policy, h)))
        rows.append(row)
        print(f"  {name:40s} {row['total_ms']:9.1f} ms  planners {row['planner_ms']:9.1f} ms  host "
              f"{row['host_ms']:7.2f} ms  syncs {sum(row['syncs'].values())}  uploads {sum(row['uploads'].values())}  "
              f"launches {row['launches']}",
              flush=True)
    return rows


def _strategies(policy, heads: int) -> list[Strategy]:
    return policy.strategies(LAYER, 50, LAYER, heads) or []


def table(rows: list[dict]) -> str:
    lines = ["| geometry | case | host ms / call | planning ms | total ms | syncs | uploads | launches |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        planner = f"{r['planner_ms']:.1f}" if r["dynamic"] else "-"
        lines.append(f"| {r['geometry']} | {r['case']} | {r['host_ms']:.2f} | {planner} | {r['total_ms']:.2f} | "
                     f"{sum(r['syncs'].values())} | {sum(r['uploads'].values())} | {r['launches']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--geometries", nargs="+", choices=sorted(GEOMETRIES), default=["wan", "hunyuan"])
    parser.add_argument("--repeats", type=int, default=3, help="timed steady-state calls per case (median)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")

    load_before = os.getloadavg()
    rows = []
    for name in args.geometries:
        print(GEOMETRIES[name].name, flush=True)
        rows += bench(GEOMETRIES[name], args.repeats, torch.device(args.device))
    import diffusers

    device = torch.device(args.device)
    report = dict(
        device=device_name(device), threads=torch.get_num_threads(), dtype="bfloat16", backend="noop",
        versions={"torch": torch.__version__, "diffusers": diffusers.__version__, "vidsparse": vidsparse.__version__,
                  "python": platform.python_version()},
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        load_average_before=load_before, load_average_after=os.getloadavg(), repeats=args.repeats,
        targets_on_gpu={"static_host_ms": 0.3, "dynamic_host_ms": 2.0},
        blockified_search="not run: block importance replaced by a fixed random mass (see the module docstring)",
        results=rows,
    )
    print(table(rows))
    tag = "cpu" if device.type == "cpu" else torch.cuda.get_device_name(device).lower().replace(" ", "-")
    save(report, args.out or RESULTS / f"bench_overhead_{tag}.json")
    return 0


def save(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
