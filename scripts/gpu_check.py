"""The one script to run the day a GPU is lent: kernel correctness and speed, patched steps, compile, host syncs.

Runs in about 4 minutes on one H200 (2 of them compiling) with nothing but the repository and pip (random inputs and
weights, no downloads). Writes one JSON with the device, the versions and the date (default
scripts/results/gpu_check_<device>.json), rewritten after each section so that a run cut short keeps what it
measured. Sections (`--sections` runs a subset):

    correctness  bf16 output of the Triton kernel on random block plans (bench_attention's `nearest` plans, density
                 1.0 and 0.2) at Wan 2.1 480p (B=2, 12 heads) and HunyuanVideo 720p + 256 text tokens (B=1, 24
                 heads), against float64 masked attention on 64 sampled query rows, next to the error of
                 F.scaled_dot_product_attention (with the plan's mask) on the same rows and dtype
    kernel       TFLOP/s of the Triton kernel at densities 1.0/0.5/0.2/0.1/0.05 and of FlexAttention with the same
                 BlockMask (working-order tensors, kernel call only), against dense SDPA with the flash and cuDNN
                 backends, at bench_attention's CUDA shapes (Wan 480p, HunyuanVideo 720p; B=1, bf16)
    step         one forward of a random-weight Wan2.1-T2V-1.3B transformer (30 layers, 12 heads of 128) on a
                 480 x 832 x 81 latent (21 x 60 x 104, patchified to 21 x 30 x 52), bf16: dense, patched with the
                 default strategy, patched with a mixed per-head policy (bench_overhead's mixed layer); the first
                 layer stays dense in both
    compile      the same forward under torch.compile(fullgraph=True): dense vs patched with the default strategy
    overhead     host milliseconds of one patched layer call with a no-op kernel (scripts/bench_overhead.py on the
                 device: default, mixed, blockified refresh and reuse at Wan 480p and HunyuanVideo 720p); targets
                 <= 0.3 ms per static call, <= 2 ms per dynamic call
    tune         the Triton kernel's time at density 0.2 under each launch config of a grid (BLOCK_M 64/128, BLOCK_N
                 32/64/128, 4/8 warps, 2-4 stages) next to the launch table's own, at the kernel section's shapes,
                 each output compared with the table config's: the table's next entries; and the table config on
                 tensors already in working order without the token table (timing only: the cost of the table)
    syncs        host syncs of a steady-state forward (after one warm-up forward) under
                 torch.cuda.set_sync_debug_mode("warn") for dense, default and mixed, and the syncs and uploads inside
                 the patched attention op counted by vidsparse.testing.host_sync.HostSyncCounter

`--dry-run` runs every section at tiny shapes on the CPU (Triton's interpreter, float32, bench_pipeline's tiny
Wan, torch.compile with the "eager" backend) in about a minute: it checks the script, it measures nothing.

    python scripts/gpu_check.py                 # on the GPU machine, then commit scripts/results/gpu_check_*.json
    python scripts/gpu_check.py --sections kernel step
    python scripts/gpu_check.py --dry-run --out /tmp/gpu_check_dry.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

if "--dry-run" in sys.argv and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must be set before any Triton kernel is defined

import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.nn.attention.flex_attention import flex_attention  # noqa: E402

import bench_overhead  # noqa: E402
import bench_pipeline  # noqa: E402
import vidsparse  # noqa: E402
from bench_attention import CUDA_SHAPES, device_name, nearest_plan, sampled_error, timed  # noqa: E402
from bench_overhead import FixedHeads, mixed_layer, save  # noqa: E402
from vidsparse.attention import resolve_backend, run_plan, to_working_order  # noqa: E402
from vidsparse.backends.flex import _compiled_flex_attention, plan_block_mask  # noqa: E402
from vidsparse.backends.triton import triton_attention  # noqa: E402
from vidsparse.kernels import LaunchConfig  # noqa: E402
from vidsparse.controller import DenseSchedule, ScheduledPolicy, SparseController  # noqa: E402
from vidsparse.layout import VideoLayout  # noqa: E402
from vidsparse.patch import install  # noqa: E402
from vidsparse.testing.host_sync import HostSyncCounter  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ("correctness", "kernel", "overhead", "step", "compile", "syncs", "tune")
DENSITIES = (1.0, 0.5, 0.2, 0.1, 0.05)
SDPA_BACKENDS = {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION}

# name: (layout, batch, heads, head_dim, dtype)
CORRECTNESS_SHAPES = {
    "Wan2.1 480p B=2 H=12 S=32760 D=128 bf16": (VideoLayout(21, 30, 52), 2, 12, 128, torch.bfloat16),
    "HunyuanVideo 720p +256 text B=1 H=24 D=128 bf16": (VideoLayout(33, 45, 80, text_tokens=256), 1, 24, 128,
                                                         torch.bfloat16),
}
DRY_SHAPES = {"dry run: 4 x 16 x 16 +16 text, B=1 H=2 D=32 fp32": (VideoLayout(4, 16, 16, text_tokens=16), 1, 2, 32,
                                                                    torch.float32)}
DRY_OVERHEAD = bench_overhead.Geometry("dry run: 4 x 16 x 16 +16 text (B=2, H=12, D=32)",
                                       VideoLayout(4, 16, 16, text_tokens=16), batch=2, heads=12, head_dim=32)
TUNE_CONFIGS = [LaunchConfig(m, n, warps, stages) for m in (64, 128) for n in (32, 64, 128) for warps in (4, 8)
                for stages in (2, 3, 4)]
DRY_TUNE_CONFIGS = [LaunchConfig(64, 64, 4, 1)]
# Max abs error over the float64 oracle allowed beyond twice SDPA's own (accumulation order differs).
SLACK = {torch.bfloat16: 2e-2, torch.float16: 2e-3, torch.float32: 1e-4}


class Setup:
    """Device, shapes and knobs of one run: the real one or the CPU dry run."""

    def __init__(self, dry_run: bool, repeats: int | None) -> None:
        self.dry_run = dry_run
        self.device = torch.device("cpu" if dry_run and not torch.cuda.is_available() else "cuda")
        self.repeats = repeats or (1 if dry_run else 3)
        self.correctness_shapes = DRY_SHAPES if dry_run else CORRECTNESS_SHAPES
        self.kernel_shapes = DRY_SHAPES if dry_run else CUDA_SHAPES
        self.densities = (1.0, 0.2) if dry_run else DENSITIES
        self.overhead_geometries = [DRY_OVERHEAD] if dry_run else list(bench_overhead.GEOMETRIES.values())
        self.geometry = (bench_pipeline.TINY if dry_run else bench_pipeline.GEOMETRIES)["wan"]
        self.model_dtype = torch.float32 if dry_run else torch.bfloat16
        self.compile_backend = "eager" if dry_run else "inductor"
        # The CPU "auto" backend is the gather path; the dry run keeps the interpreter for the kernel sections.
        self.step_backend = "auto" if dry_run else "triton"
        self.flex = flex_attention if dry_run else _compiled_flex_attention()
        self.tune_configs = DRY_TUNE_CONFIGS if dry_run else TUNE_CONFIGS


def random_qkv(layout: VideoLayout, batch: int, heads: int, head_dim: int, dtype: torch.dtype, device: torch.device,
               generator: torch.Generator) -> list[torch.Tensor]:
    shape = (batch, heads, layout.seq_len, head_dim)
    return [torch.randn(shape, generator=generator).to(device, dtype) for _ in range(3)]


def check_correctness(setup: Setup) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    rows_out = []
    for shape, (layout, batch, heads, head_dim, dtype) in setup.correctness_shapes.items():
        q, k, v = random_qkv(layout, batch, heads, head_dim, dtype, setup.device, generator)
        rows = torch.randperm(layout.seq_len, generator=generator)[:64].to(setup.device)
        for density in (1.0, 0.2):
            plan = nearest_plan(layout, heads, density, generator).to(setup.device)
            out = run_plan(q, k, v, plan, scale=None, backend=resolve_backend("triton", setup.device))
            mask = plan.to_dense_mask(rows)
            sdpa = F.scaled_dot_product_attention(q[:, :, rows], k, v, attn_mask=mask)
            sdpa_full = torch.zeros_like(out)
            sdpa_full[:, :, rows] = sdpa
            kernel_error = sampled_error(out, q, k, v, plan, rows)
            sdpa_error = sampled_error(sdpa_full, q, k, v, plan, rows)
            difference = float((out[:, :, rows].float() - sdpa.float()).abs().max())
            ok = kernel_error <= 2 * sdpa_error + SLACK[dtype]
            rows_out.append(dict(shape=shape, target_density=density, density=plan.density(),
                                 kernel_max_error=kernel_error, sdpa_max_error=sdpa_error,
                                 kernel_vs_sdpa_max_difference=difference, ok=ok))
            print(f"  {shape} density {density}: kernel err {kernel_error:.2e}, SDPA err {sdpa_error:.2e} "
                  f"{'ok' if ok else 'FAILED'}", flush=True)
    return rows_out


def _sdpa_time(backend: SDPBackend, q, k, v, setup: Setup) -> float:
    with sdpa_kernel(backend):
        return timed(lambda: F.scaled_dot_product_attention(q, k, v), setup.repeats, setup.device)


def kernel_speed(setup: Setup) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    results = []
    for shape, (layout, batch, heads, head_dim, dtype) in setup.kernel_shapes.items():
        q, k, v = random_qkv(layout, batch, heads, head_dim, dtype, setup.device, generator)
        dense_flops = 4.0 * layout.seq_len**2 * head_dim * heads * batch

        def add(name: str, density: float, measure: Callable[[], float]) -> None:
            row = dict(shape=shape, kernel=name, density=density)
            try:
                seconds = measure()
                row.update(ms=seconds * 1e3, tflops=dense_flops * density / seconds / 1e12)
            except Exception as exc:  # a backend this machine lacks (cuDNN, flash on CPU) is reported, not fatal
                row.update(error=f"{type(exc).__name__}: {exc}"[:300])
            results.append(row)
            shown = f"{row['ms']:9.2f} ms {row['tflops']:7.1f} TFLOP/s" if "ms" in row else row["error"][:80]
            print(f"  {shape} {name:10s} {density:5.2f} {shown}", flush=True)

        for name, backend in SDPA_BACKENDS.items():
            add(name, 1.0, lambda: _sdpa_time(backend, q, k, v, setup))
        triton = resolve_backend("triton", setup.device)
        for target in setup.densities:
            plan = nearest_plan(layout, heads, target, generator).to(setup.device)
            density = plan.density()
            add("triton", density, lambda: timed(lambda: run_plan(q, k, v, plan, scale=None, backend=triton),
                                                  setup.repeats, setup.device))
            block_mask = plan_block_mask(plan, setup.device)
            qw, kw, vw = (to_working_order(x, plan) for x in (q, k, v))
            add("flex", density, lambda: timed(lambda: setup.flex(qw, kw, vw, block_mask=block_mask),
                                               setup.repeats, setup.device))
    return results


def tune_launch(setup: Setup) -> dict:
    """Each launch config's time on one density-0.2 plan per shape, and the table's (config None) for reference."""
    generator = torch.Generator().manual_seed(2)
    rows, best, no_table_ms = [], {}, {}
    for shape, (layout, batch, heads, head_dim, dtype) in setup.kernel_shapes.items():
        q, k, v = random_qkv(layout, batch, heads, head_dim, dtype, setup.device, generator)
        plan = nearest_plan(layout, heads, 0.2, generator).to(setup.device)
        flops = 4.0 * layout.seq_len**2 * head_dim * heads * batch * plan.density()
        scale = head_dim**-0.5
        reference = triton_attention(q, k, v, plan, scale)
        for config in [None, *setup.tune_configs]:
            row: dict[str, Any] = dict(shape=shape, density=plan.density(),
                                       config=None if config is None else list(config))
            try:
                run = lambda: triton_attention(q, k, v, plan, scale, config=config)  # noqa: E731
                row["max_difference_from_table"] = float((run().float() - reference.float()).abs().max())
                seconds = timed(run, setup.repeats, setup.device)
                row.update(ms=seconds * 1e3, tflops=flops / seconds / 1e12)
            except Exception as exc:  # too much shared memory for this tile, or a block size the plan refuses
                row["error"] = f"{type(exc).__name__}: {exc}"[:200]
            rows.append(row)
        # The same plan on working-order tensors with no token table: what reading through the table costs.
        # Timing only: without the layout, the packed blocks' padding keys are not masked.
        untabled = dataclasses.replace(plan, layout=None, q_len=plan.layout.padded_len,
                                       kv_len=plan.layout.padded_len, check=False)
        qw, kw, vw = (to_working_order(x, plan) for x in (q, k, v))
        seconds = timed(lambda: triton_attention(qw, kw, vw, untabled, scale), setup.repeats, setup.device)
        no_table_ms[shape] = seconds * 1e3
        timed_rows = [r for r in rows if r["shape"] == shape and "ms" in r]
        table = next((r for r in timed_rows if r["config"] is None), None)
        winner = min(timed_rows, key=lambda r: r["ms"], default=None)
        if table and winner:
            best[shape] = dict(table_ms=table["ms"], best_config=winner["config"], best_ms=winner["ms"],
                               speedup_over_table=table["ms"] / winner["ms"], no_token_table_ms=no_table_ms[shape])
            print(f"  {shape}: table {table['ms']:.2f} ms, best {winner['config']} {winner['ms']:.2f} ms, "
                  f"no token table {no_table_ms[shape]:.2f} ms", flush=True)
    return dict(rows=rows, best=best)


def host_overhead(setup: Setup) -> list[dict]:
    return [row for geometry in setup.overhead_geometries
            for row in bench_overhead.bench(geometry, setup.repeats, setup.device)]


def _mixed_controller(heads: int, backend: str) -> SparseController:
    policy = ScheduledPolicy(FixedHeads(mixed_layer(heads)), DenseSchedule(0, frozenset({0})))
    return SparseController(policy, backend)


def _patched(model, how: str, setup: Setup):
    """Patch `model` as `how` says ("default" or "mixed"); returns the controller."""
    if how == "default":
        return vidsparse.patch(model, dense_warmup_steps=0, backend=setup.step_backend)
    controller = _mixed_controller(setup.geometry.config["num_attention_heads"], setup.step_backend)
    install(model, controller)
    return controller


def _model(setup: Setup):
    torch.manual_seed(0)
    model = bench_pipeline.build(setup.geometry, setup.device, setup.model_dtype)
    return model, setup.geometry.make_inputs(setup.geometry, setup.device, setup.model_dtype)


def patched_steps(setup: Setup, model, inputs) -> dict:
    result: dict[str, Any] = dict(model=setup.geometry.name, grid=list(setup.geometry.grid), backend=setup.step_backend)
    result["dense_s"] = bench_pipeline.time_forward(model, inputs, setup.repeats, setup.device)
    for how in ("default", "mixed"):
        controller = _patched(model, how, setup)
        try:
            seconds = bench_pipeline.time_forward(model, inputs, setup.repeats, setup.device)
        finally:
            vidsparse.unpatch(model)
        stats = controller.stats
        result[f"{how}_s"] = seconds
        result[f"{how}_speedup"] = result["dense_s"] / seconds
        result[f"{how}_mean_density"] = stats["density_sum"] / max(1, stats["sparse_calls"])
        print(f"  step {how}: {seconds:.3f} s vs dense {result['dense_s']:.3f} s", flush=True)
    return result


def compiled_steps(setup: Setup, model, inputs) -> dict:
    result: dict[str, Any] = dict(compile_backend=setup.compile_backend, fullgraph=True)
    for how in ("dense", "default"):
        torch._dynamo.reset()
        if how == "default":
            _patched(model, how, setup)
        try:
            compiled = torch.compile(model, fullgraph=True, backend=setup.compile_backend)
            start = time.perf_counter()
            result[f"{how}_s"] = bench_pipeline.time_forward(compiled, inputs, setup.repeats, setup.device)
            result[f"{how}_wall_with_compile_s"] = time.perf_counter() - start
        finally:
            if how == "default":
                vidsparse.unpatch(model)
        print(f"  compiled {how}: {result[f'{how}_s']:.3f} s", flush=True)
    torch._dynamo.reset()
    result["default_speedup"] = result["dense_s"] / result["default_s"]
    return result


def host_syncs(setup: Setup, model, inputs) -> dict:
    # The dry run's CPU backend (gather) groups rows on the host: its op counts are not the GPU path's.
    result: dict[str, Any] = dict(backend=setup.step_backend)
    for how in ("dense", "default", "mixed"):
        if how != "dense":
            _patched(model, how, setup)
        try:
            with torch.inference_mode():
                model(**inputs, return_dict=False)  # the first call of a layout builds and uploads its plans
                with HostSyncCounter() as counter, warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    if setup.device.type == "cuda":
                        torch.cuda.set_sync_debug_mode("warn")
                    try:
                        model(**inputs, return_dict=False)
                    finally:
                        if setup.device.type == "cuda":
                            torch.cuda.set_sync_debug_mode(0)
        finally:
            if how != "dense":
                vidsparse.unpatch(model)
        cuda_syncs = sum("synchroniz" in str(w.message) for w in caught) if setup.device.type == "cuda" else None
        result[how] = dict(cuda_sync_warnings=cuda_syncs, op_calls=counter.calls, op_syncs=dict(counter.syncs),
                           op_uploads=dict(counter.uploads))
        print(f"  syncs {how}: cuda {cuda_syncs}, in the op {counter.total_syncs} over {counter.calls} calls, "
              f"uploads {counter.total_uploads}", flush=True)
    return result


def versions() -> dict[str, str | None]:
    import diffusers

    found: dict[str, str | None] = {"torch": torch.__version__, "diffusers": diffusers.__version__,
                                    "vidsparse": vidsparse.__version__, "python": platform.python_version(),
                                    "cuda": torch.version.cuda, "cudnn": None, "triton": None}
    if torch.backends.cudnn.is_available():
        found["cudnn"] = str(torch.backends.cudnn.version())
    try:
        import triton

        found["triton"] = triton.__version__
    except ImportError:
        pass
    return found


def run(setup: Setup, sections: list[str], out: Path) -> dict:
    report: dict[str, Any] = dict(
        device=device_name(setup.device), dry_run=setup.dry_run, versions=versions(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), repeats=setup.repeats,
        label=("CPU dry run at tiny shapes: checks the script, NOT a measurement" if setup.dry_run
               else "random inputs and weights at full-size geometry"),
    )
    model = inputs = None
    for section in sections:
        print(section, flush=True)
        start = time.perf_counter()
        try:
            if section in ("step", "compile", "syncs") and model is None:
                model, inputs = _model(setup)
            work = {"correctness": lambda: check_correctness(setup), "kernel": lambda: kernel_speed(setup),
                    "overhead": lambda: host_overhead(setup),
                    "step": lambda: patched_steps(setup, model, inputs),
                    "compile": lambda: compiled_steps(setup, model, inputs),
                    "syncs": lambda: host_syncs(setup, model, inputs), "tune": lambda: tune_launch(setup)}[section]
            report[section] = work()
        except Exception as exc:  # one failing section must not cost the others on a lent GPU
            traceback.print_exc()
            report[section] = dict(error=f"{type(exc).__name__}: {exc}"[:1000])
        report.setdefault("section_seconds", {})[section] = round(time.perf_counter() - start, 1)
        save(report, out)  # after every section: a run cut off by the lease's limit keeps what it measured
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU: checks the script only")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per setting (default 3; 1 dry)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: this script is for a GPU machine (use --dry-run to check it on the CPU)")
    setup = Setup(args.dry_run, args.repeats)
    tag = "dry_run" if args.dry_run else torch.cuda.get_device_name().lower().replace(" ", "-")
    report = run(setup, args.sections, args.out or RESULTS / f"gpu_check_{tag}.json")
    failed = [s for s in args.sections if isinstance(report.get(s), dict) and "error" in report[s]]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
