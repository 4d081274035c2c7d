"""The per-call path as a GPU sees it, counted on the CPU: host syncs and uploads, plan reuse, per-layer strategies.

The sync counts run the Triton backend (the GPU path; Triton's interpreter on the CPU): the CPU backend "gather"
groups rows by their key lists on the host, which costs nothing on a CPU and is never used on a GPU.
Counts come from `vidsparse.testing.host_sync.HostSyncCounter`, which steps into `torch.ops.vidsparse.attention`
and counts the operations that would read device memory back to the host, or upload host memory, on a GPU.
"""

from __future__ import annotations

import functools

import pytest
import torch

from vidsparse.controller import DenseSchedule, SparseController, StrategyPolicy
from vidsparse.patch import default_strategy, install, uninstall
from vidsparse.strategies import get
from vidsparse.testing import tiny_call, tiny_pipeline
from vidsparse.testing.host_sync import HostSyncCounter


@functools.lru_cache(maxsize=None)
def _wan():
    return tiny_pipeline("wan")


def run(pipe, steps: int, **kwargs) -> torch.Tensor:
    call = {**tiny_call("wan"), "num_inference_steps": steps, **kwargs}
    return pipe("a fox", generator=torch.Generator().manual_seed(0), output_type="latent", **call).frames


class MixedPolicy:
    """Heads of one layer on different strategies, static and dynamic (the issue's mixed layer, scaled to 2 heads
    per group): what a profile gives."""

    def __init__(self, parts):
        self.parts = parts

    def strategies(self, step, num_steps, layer, num_heads):
        return [self.parts[head % len(self.parts)].at_layer(layer) for head in range(num_heads)]


STRATEGIES = {
    "default": default_strategy(),
    "neighborhood": get("neighborhood", window=1),
    "draft": get("draft"),
    "vmoba": get("vmoba"),
    "stripe-sampled": get("stripe", top_k=2),
    "blockified": get("blockified", refresh_every=2),
    "draft|stripe": get("draft") | get("stripe", first_frames=1),
}


def _policy(name: str):
    if name == "mixed":
        return MixedPolicy([get("draft"), get("diagonal"), get("vmoba"), get("stripe", top_k=2)])
    return StrategyPolicy(STRATEGIES[name], DenseSchedule(0, frozenset()))


@pytest.mark.parametrize("name", [*STRATEGIES, "mixed"])
def test_steady_state_calls_force_no_host_sync_and_upload_nothing(name):
    pipe = _wan()
    controller = SparseController(_policy(name), backend="triton")  # the GPU path (Triton's interpreter here)
    install(pipe, controller)
    try:
        run(pipe, 1)  # first calls of this layout build and upload the plans
        with HostSyncCounter() as counter:
            run(pipe, 2)
    finally:
        uninstall(pipe)
    assert counter.calls == 2 * 2 * 2  # steps x layers x CFG passes, all inside the op
    assert controller.stats["sparse_calls"] == 3 * 2 * 2
    assert dict(counter.syncs) == {} and dict(counter.uploads) == {}


def test_the_counter_sees_a_sync_inside_the_op():
    """The same run with a controller that re-validates its plan per call (what the old path did) is caught."""
    pipe = _wan()
    inner = SparseController(_policy("draft"))

    def validating(call):
        out = inner(call)
        inner.plan(call.layout, [get("draft")] * call.q.shape[1], call.q, call.k).validate()
        return out

    install(pipe, validating)
    try:
        run(pipe, 1)
        with HostSyncCounter() as counter:
            run(pipe, 1)
    finally:
        uninstall(pipe)
    assert counter.total_syncs >= counter.calls > 0


def test_blockified_searches_once_per_refresh_per_layer_and_cfg_branch():
    """Wan runs the two CFG passes as separate transformer calls: each (layer, branch) keeps its own plan."""
    pipe = _wan()
    strategy = get("blockified", refresh_every=2)
    controller = SparseController(StrategyPolicy(strategy, DenseSchedule(0, frozenset())))
    searches = []
    install(pipe, controller)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(type(strategy), "_plan_dynamic", _counting(type(strategy)._plan_dynamic, searches))
            run(pipe, 5)
    finally:
        uninstall(pipe)
    layers, branches, refreshes = 2, 2, 3  # steps 0, 2, 4 search; 1 and 3 reuse
    assert len(searches) == layers * branches * refreshes
    assert controller.reuse.plans_made == len(searches)
    assert controller.reuse.plans_reused == layers * branches * (5 - refreshes)


def _counting(fn, calls):
    def wrapped(self, *args, **kwargs):
        calls.append(1)
        return fn(self, *args, **kwargs)

    return wrapped


def test_reused_plans_are_the_refresh_steps_plans():
    """At a reuse step the layer runs the plan searched at the refresh step on that step's activations."""
    pipe = _wan()
    strategy = get("blockified", refresh_every=3, recall=0.5)
    controller = SparseController(StrategyPolicy(strategy, DenseSchedule(0, frozenset())))
    seen = []

    def recording(call):
        out = controller(call)
        used = controller.reuse._entries[((call.layer, call.branch), "all")].plan
        seen.append((call.layer, call.branch, call.step, used, strategy.plan(call.layout, call.q, call.k)))
        return out

    install(pipe, recording)
    try:
        run(pipe, 3)
    finally:
        uninstall(pipe)
    by_site = {}
    for layer, branch, step, used, fresh in seen:
        by_site.setdefault((layer, branch), []).append((step, used, fresh))
    assert len(by_site) == 4
    for calls in by_site.values():
        (s0, used0, fresh0), *later = calls
        assert s0 == 0 and torch.equal(used0.to_block_mask(), fresh0.to_block_mask())
        for step, used, _ in later:
            assert used is used0  # searched once, at step 0


def test_vmoba_partition_cycles_across_patched_layers():
    """patch(strategy="vmoba") runs layer l with the partition ("1d", "2d", "3d")[l % 3], as VMoBA prescribes."""
    policy = StrategyPolicy(get("vmoba"), DenseSchedule(0, frozenset()))
    partitions = [policy.strategies(3, 10, layer, 2)[0].active_partition for layer in range(5)]
    assert partitions == ["1d", "2d", "3d", "1d", "2d"]
    pipe = _wan()
    controller = SparseController(policy)
    plans = []

    def recording(call):
        out = controller(call)
        expected = get("vmoba", layer=call.layer).plan(call.layout, call.q, call.k)
        other = get("vmoba", layer=call.layer + 1).plan(call.layout, call.q, call.k)
        used = controller.reuse._entries[((call.layer, call.branch), "all")].plan
        plans.append((torch.equal(used.to_block_mask(), expected.to_block_mask()),
                      torch.equal(expected.to_block_mask(), other.to_block_mask())))
        return out

    install(pipe, recording)
    try:
        run(pipe, 1)
    finally:
        uninstall(pipe)
    assert plans and all(same for same, _ in plans)
    assert not all(indistinct for _, indistinct in plans)  # the partitions do give other plans


def test_the_profiler_charges_a_reused_plan_once_per_refresh():
    """What the profiler divides a dynamic candidate's measured planning time by: the steps one plan serves."""
    from vidsparse.profiler.scoring import steps_served

    assert steps_served(get("blockified", refresh_every=10)) == 10
    assert steps_served(get("blockified", refresh_every=1)) == 1
    assert steps_served(get("draft")) == steps_served(get("vmoba")) == 1  # planned on every call
    assert steps_served(get("draft") | get("blockified", refresh_every=4)) == 1  # a union re-plans with its draft part
