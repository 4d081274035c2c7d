"""Achieved attention density per layer and head, recorded from the controller while a pipeline runs.

Definition: for one attention call and one head, the density is the share of a dense call's work the kernel
computed (`BlockPlan.density`: computed slot pairs, padding included, over real token pairs); a call the controller
ran dense counts 1, a skipped head 0.
The density of a (layer, head) is the mean over the calls of that layer (every denoising step, both CFG branches,
batch entries averaged), so dense warm-up steps are included: it is the fraction of the dense attention work that
was actually done. `sparse_only` gives the same mean over the sparse calls alone.

How the plan of a call is seen: `vidsparse.controller.SparseController.__call__` looks its plan up through
`self.plan(...)`; during one call the recorder shadows that method on the instance to keep what it returns, so the
numbers are those of the plans that ran (dynamic plans included) and nothing is planned twice.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch


class DensityRecorder:
    """Wraps an attention controller (call -> output) and records each call's per-head density."""

    def __init__(self, inner: Callable[[Any], torch.Tensor], controller: Any) -> None:
        """`inner` is what runs the call (possibly a timing wrapper); `controller` is the SparseController under it."""
        self.inner = inner
        self.controller = controller
        # layer -> list of per-head density arrays [H], and whether the call was sparse
        self._calls: dict[int, list[tuple[np.ndarray, bool]]] = {}

    def __call__(self, call: Any) -> torch.Tensor:
        planned: list[Any] = []
        plan_method = getattr(self.controller, "plan", None)
        if plan_method is not None:

            def recording_plan(*args: Any, **kwargs: Any) -> Any:
                plan = plan_method(*args, **kwargs)
                planned.append(plan)
                return plan

            self.controller.plan = recording_plan
        try:
            out = self.inner(call)
        finally:
            if plan_method is not None:
                del self.controller.plan
        num_heads = call.q.shape[1]
        if planned:
            per_head = planned[-1].density(per_head=True).double().mean(0).cpu().numpy()
            self._calls.setdefault(call.layer, []).append((per_head, True))
        else:
            self._calls.setdefault(call.layer, []).append((np.ones(num_heads), False))
        return out

    def reset(self) -> None:
        self._calls.clear()

    @property
    def num_calls(self) -> int:
        return sum(len(calls) for calls in self._calls.values())

    def per_layer_head(self, sparse_only: bool = False) -> np.ndarray:
        """float64 [layers, heads]: mean density of each (layer, head) over its calls (NaN where none counted)."""
        if not self._calls:
            return np.zeros((0, 0))
        num_layers = max(self._calls) + 1
        num_heads = max(d.shape[0] for calls in self._calls.values() for d, _ in calls)
        table = np.full((num_layers, num_heads), np.nan)
        for layer, calls in self._calls.items():
            kept = [d for d, sparse in calls if sparse or not sparse_only]
            if kept:
                table[layer] = np.mean(kept, axis=0)
        return table

    def summary(self) -> dict[str, Any]:
        """Overall and sparse-call densities, the per-(layer, head) table and call counts, as plain data."""
        table = self.per_layer_head()
        sparse_table = self.per_layer_head(sparse_only=True)
        sparse_calls = sum(1 for calls in self._calls.values() for _, sparse in calls if sparse)
        return {
            "mean_density": float(np.nanmean(table)) if table.size else None,
            "mean_density_sparse_calls": float(np.nanmean(sparse_table)) if sparse_calls else None,
            "attention_calls": self.num_calls,
            "sparse_calls": sparse_calls,
            "per_layer_head": [[None if np.isnan(x) else float(x) for x in row] for row in table],
            # Which kernel ran the calls (all runs of this controller): vidsparse's for sparse ones, the model's own
            # attention backend for dense ones.
            "calls_by_backend": dict(getattr(self.controller, "stats", {}).get("calls_by_backend", {})),
        }
