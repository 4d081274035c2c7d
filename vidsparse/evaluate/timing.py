"""Where the time of a pipeline call goes: end to end, inside the transformer, inside self-attention.

Definitions, per pipeline call (one video):
- end-to-end: wall time of the whole call (text encoding, every denoising step, VAE decode), with the device
  synchronized before and after so queued GPU work is counted.
- transformer: summed time of the transformer forwards (all steps; both CFG branches when they run separately;
  both experts of Wan 2.2 A14B).
- attention: summed time of the patched self-attention calls (planning, permutation and kernel), i.e. what
  the attention controller spends; cross-attention and projections are not included.
- attention share: attention / transformer, the fraction of a denoising step the sparse kernels can act on.

On CUDA the intervals inside a call are measured with CUDA events, which do not synchronize, so timing does not
change how work overlaps; they are resolved once at the end of the call. On CPU they are wall-clock intervals, or,
with `clock="process"`, CPU time of the process (all its threads): steadier on a shared, loaded machine, where
wall time mostly measures the other tenants; ratios (speedups, shares) stay comparable, absolute values are CPU
seconds. Several runs are summarised by their median.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import torch


def synchronize(device: torch.device) -> None:
    """Wait for all queued work on `device` (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = ("wall", "process")


def now(clock: str = "wall") -> float:
    """Seconds on the given CPU clock: "wall" (perf_counter) or "process" (CPU time of all threads)."""
    if clock == "wall":
        return time.perf_counter()
    if clock == "process":
        return time.process_time()
    raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")


class IntervalTimer:
    """Sums the durations of many intervals on one device (CUDA events on GPU, `clock` on CPU)."""

    def __init__(self, device: torch.device | str, clock: str = "wall") -> None:
        now(clock)  # validates the name
        self.device = torch.device(device)
        self.clock = clock
        self._open: list[Any] = []
        self._closed: list[tuple[Any, Any]] = []

    def _mark(self) -> Any:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
            return event
        return now(self.clock)

    def start(self) -> None:
        self._open.append(self._mark())

    def stop(self) -> None:
        if not self._open:
            raise RuntimeError("IntervalTimer.stop() without a matching start()")
        self._closed.append((self._open.pop(), self._mark()))

    @contextmanager
    def measure(self) -> Iterator[None]:
        self.start()
        try:
            yield
        finally:
            self.stop()

    @property
    def count(self) -> int:
        return len(self._closed)

    def total_seconds(self) -> float:
        """Sum of the closed intervals (synchronizes the device on CUDA)."""
        if self.device.type == "cuda":
            synchronize(self.device)
            return sum(start.elapsed_time(end) for start, end in self._closed) / 1000.0
        return sum(end - start for start, end in self._closed)

    def reset(self) -> None:
        self._open.clear()
        self._closed.clear()


class ForwardTimer:
    """Times every forward of the given modules through forward hooks (removed by `remove()`)."""

    def __init__(self, modules: list[torch.nn.Module], device: torch.device | str, clock: str = "wall") -> None:
        self.timer = IntervalTimer(device, clock)
        self._handles = []
        for module in modules:
            self._handles.append(module.register_forward_pre_hook(lambda *_: self.timer.start()))
            self._handles.append(module.register_forward_hook(lambda *_: self.timer.stop()))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class TimedController:
    """Wraps an attention controller (vidsparse.patch's protocol: call -> output) and times every call."""

    def __init__(self, inner: Callable[[Any], torch.Tensor], device: torch.device | str, clock: str = "wall") -> None:
        self.inner = inner
        self.timer = IntervalTimer(device, clock)

    def __call__(self, call: Any) -> torch.Tensor:
        with self.timer.measure():
            return self.inner(call)


@dataclass(frozen=True)
class RunTiming:
    """Timings of one pipeline call, in seconds (see the module docstring for the definitions)."""

    end_to_end_s: float
    transformer_s: float
    attention_s: float
    transformer_calls: int
    attention_calls: int
    steps: int

    @property
    def attention_share(self) -> float:
        return self.attention_s / self.transformer_s if self.transformer_s > 0 else 0.0

    @property
    def step_s(self) -> float:
        """Transformer time of one denoising step."""
        return self.transformer_s / self.steps


def time_end_to_end(fn: Callable[[], Any], device: torch.device | str, clock: str = "wall") -> tuple[Any, float]:
    """(fn(), seconds) with the device synchronized before and after (`clock`: see `now`; wall on CUDA)."""
    device = torch.device(device)
    clock = "wall" if device.type == "cuda" else clock
    synchronize(device)
    start = now(clock)
    result = fn()
    synchronize(device)
    return result, now(clock) - start


def summarize(runs: list[RunTiming]) -> dict[str, Any]:
    """Median of every timing over the runs, plus the runs themselves."""
    if not runs:
        raise ValueError("summarize needs at least one timed run")
    fields = ("end_to_end_s", "transformer_s", "attention_s", "attention_share", "step_s")
    summary: dict[str, Any] = {name: statistics.median(getattr(run, name) for run in runs) for name in fields}
    summary["num_runs"] = len(runs)
    summary["runs"] = [asdict(run) | {"attention_share": run.attention_share} for run in runs]
    return summary
