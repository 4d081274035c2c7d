"""The hardware cost model: what a layer call costs on this device, as a function of the computed blocks.

Measured, not assumed: the block-sparse kernel ("auto" backend: Triton on CUDA, gather on CPU) runs one layer
call of the calibration geometry (heads, tokens, head_dim, dtype) with random block plans of a few densities;
a least-squares line through (computed block pairs, milliseconds) gives a fixed cost per call and a cost per
block pair. The dense call is timed with the dense kernel the model itself uses (SDPA). Dynamic strategies add
their planning time, measured on the real q/k during calibration. On a device where the sparse kernel is slower
than dense even at moderate density (the CPU gather backend), the selection sees it and keeps heads dense.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..attention import block_sparse_attention, resolve_backend
from ..layout import VideoLayout
from ..plan import BlockPlan

#: Fractions of block pairs kept by the timed random plans.
DENSITIES = (0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class CostModel:
    """Predicted milliseconds of one layer call (all heads): see the module docstring."""

    dense_ms: float
    fixed_ms: float
    ms_per_block: float
    heads: int
    points: tuple[tuple[int, float], ...] = ()
    planning_ms: tuple[tuple[str, float], ...] = ()

    def sparse_ms(self, blocks: float) -> float:
        """A sparse layer call computing `blocks` block pairs summed over its heads."""
        return max(self.fixed_ms + self.ms_per_block * blocks, 0.0)

    def head_ms(self, blocks: float) -> float:
        """One head's share of a sparse call: its blocks plus 1 / heads of the fixed cost."""
        return self.fixed_ms / self.heads + self.ms_per_block * blocks


def _timed(fn, device: torch.device, repeats: int) -> float:
    """Median wall milliseconds of fn() after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def measure_cost_model(
    layout: VideoLayout,
    num_heads: int,
    head_dim: int,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    backend: str = "auto",
    repeats: int = 3,
    generator: torch.Generator | None = None,
) -> CostModel:
    """Time dense and block-sparse calls of this geometry on `device` and fit the linear cost model."""
    device = torch.device(device)
    shape = (1, num_heads, layout.seq_len, head_dim)
    q, k, v = (torch.randn(shape, generator=generator).to(device=device, dtype=dtype) for _ in range(3))
    dense_ms = _timed(lambda: F.scaled_dot_product_attention(q, k, v), device, repeats)
    m = layout.num_blocks
    points = []
    for density in DENSITIES:
        mask = torch.rand(1, num_heads, m, m, generator=generator) < density
        mask |= torch.eye(m, dtype=torch.bool)  # every query block keeps at least its own block
        plan = BlockPlan.from_mask(mask, layout=layout).to(device)
        ms = _timed(lambda: block_sparse_attention(q, k, v, plan, backend=backend), device, repeats)
        points.append((int(mask.sum()), ms))
    x = torch.tensor([p[0] for p in points], dtype=torch.float64)
    y = torch.tensor([p[1] for p in points], dtype=torch.float64)
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()).square().sum().clamp(min=1e-12)))
    slope = max(slope, 0.0)
    fixed = max(float(y.mean() - slope * x.mean()), 0.0)
    return CostModel(dense_ms, fixed, slope, num_heads, tuple(points))


def ideal_cost_model(measured: CostModel, layout: VideoLayout) -> CostModel:
    """The same table with the sparse kernel idealized: no fixed cost and the dense kernel's time per block pair.

    For profiling on a machine other than the one the profile is for (e.g. a CPU, where the gather backend is
    slower than dense SDPA at any density): choices then follow computed blocks, and planning times stay measured.
    A block pair costs what block_size^2 real token pairs cost the dense kernel, so padding slots are charged as
    the work they are and a plan computing every block costs `layout.padding_ratio` times a dense call.
    """
    per_block = measured.dense_ms / (measured.heads * (layout.seq_len / layout.block_size) ** 2)
    return CostModel(measured.dense_ms, 0.0, per_block, measured.heads, measured.points, measured.planning_ms)


def backend_name(backend: str, device: torch.device | str) -> str:
    return resolve_backend(backend, torch.device(device))
