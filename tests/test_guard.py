"""The quality guard: it switches exactly the heads over budget, its estimate agrees with the full error, and it
costs no host sync between checks.

The oracle is float64 dense attention. The zoo's planted heads give errors far from the thresholds (about 0.001
for a spatial head under the default pattern, 0.5 for a diffuse or block head), so the sampled estimate decides
the same way the full error does.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vidsparse
from vidsparse.controller import DenseSchedule, SparseController, StrategyPolicy
from vidsparse.evaluate.report import summary_table, write_report
from vidsparse.evaluate.runner import EvalSettings, Variant, run_evaluation
from vidsparse.guard import Guard, GuardConfig, exact_rows
from vidsparse.layout import VideoLayout
from vidsparse.patch import default_strategy, install, uninstall
from vidsparse.runtime import AttentionCall, installed_controller
from vidsparse.strategies import get
from vidsparse.testing import tiny_call, tiny_pipeline
from vidsparse.testing.host_sync import HostSyncCounter
from vidsparse.testing.zoo import make_heads

LAYOUT = VideoLayout(8, 16, 16)  # 16 query blocks of 128 tokens
STEPS = 8
CHANGE_STEP = 3
#: Heads at calibration, and what two of them turn into from CHANGE_STEP on (the others keep their kind).
CALIBRATION_KINDS = ("spatial", "temporal", "sink", "spatial")
CHANGED = {0: "block", 3: "diffuse"}


def _kinds(step: int) -> list[str]:
    return [CHANGED.get(h, kind) if step >= CHANGE_STEP else kind for h, kind in enumerate(CALIBRATION_KINDS)]


@functools.lru_cache(maxsize=None)
def _activations(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return make_heads(LAYOUT, _kinds(step), generator=torch.Generator().manual_seed(100 + step))


def _dense(q, k, v) -> torch.Tensor:
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double())


def _full_error(out: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """float64 [H]: the relative L2 error of every row, batch mean (what the guard estimates)."""
    diff = (out.double() - dense).square().sum((-1, -2))
    return (diff / dense.square().sum((-1, -2))).sqrt().mean(0)


def _controller(guard: Guard | None) -> SparseController:
    return SparseController(StrategyPolicy(default_strategy(), DenseSchedule(0, frozenset())), guard=guard)


def _call(step: int) -> AttentionCall:
    q, k, v = _activations(step)
    return AttentionCall(layer=0, step=step, num_steps=STEPS, q=q, k=k, v=v, layout=LAYOUT, scale=None)


@functools.lru_cache(maxsize=None)
def _calibration_budgets() -> tuple[float, ...]:
    """What a profiler records: each head's full error on a calibration call (step 0's kinds, another seed)."""
    q, k, v = make_heads(LAYOUT, CALIBRATION_KINDS, generator=torch.Generator().manual_seed(7))
    out = _controller(None)(AttentionCall(layer=0, step=0, num_steps=1, q=q, k=k, v=v, layout=LAYOUT, scale=None))
    return tuple(_full_error(out, _dense(q, k, v)).tolist())


def _generate(controller: SparseController) -> list[torch.Tensor]:
    return [controller(_call(step)) for step in range(STEPS)]


def test_guard_switches_exactly_the_heads_over_budget_and_lowers_the_final_error(caplog):
    config = GuardConfig(every=2)
    budgets = [max(config.min_budget, b) for b in _calibration_budgets()]
    guard = Guard(config, lambda bucket, layer, head: budgets[head])
    with caplog.at_level(logging.WARNING, logger="vidsparse.guard"):
        guarded = _generate(_controller(guard))
    unguarded = _generate(_controller(None))

    # Checks at steps 0, 2, 4, 6: the first after the change (step 4) sees heads 0 and 3 over budget.
    full_at_check = _full_error(unguarded[4], _dense(*_activations(4)))
    over = {h for h in range(4) if full_at_check[h] > budgets[h] * (1 + config.margin)}
    assert over == set(CHANGED)
    assert {(s.step, s.layer, s.head) for s in guard.switches} == {(4, 0, h) for h in over}
    assert len([r for r in caplog.records if "runs dense" in r.getMessage()]) == len(over)
    for step in range(STEPS):  # heads within budget never switch: their output is the sparse one at every step
        within = [h for h in range(4) if h not in over or step < 4]
        torch.testing.assert_close(guarded[step][:, within], unguarded[step][:, within], rtol=0, atol=0)
    final_dense = _dense(*_activations(STEPS - 1))
    guarded_error, unguarded_error = _full_error(guarded[-1], final_dense), _full_error(unguarded[-1], final_dense)
    assert guarded_error[list(over)].max() < 1e-5 < 0.1 < unguarded_error[list(over)].min()  # switched heads: dense
    assert guarded_error.mean() < unguarded_error.mean() / 10

    report = guard.report()
    assert report["switched_heads"] == 2 and report["checked_calls"] == 4
    by_head = {row["head"]: row for row in report["heads"]}
    assert [by_head[h]["checks"] for h in range(4)] == [3, 4, 4, 3]  # switched heads are not checked once dense
    assert [by_head[h]["switches"] for h in range(4)] == [1, 0, 0, 1]


def test_a_new_generation_clears_the_switches():
    guard = Guard(GuardConfig(every=2), lambda bucket, layer, head: 0.05)
    controller = _controller(guard)
    controller(_call(CHANGE_STEP + 1))
    assert {s.head for s in guard.switches} == set(CHANGED)
    out = controller(_call(0))  # step went back: a new generation, every head sparse again and checked
    unguarded = _controller(None)(_call(0))
    torch.testing.assert_close(out, unguarded, rtol=0, atol=0)
    assert guard.generation == 1 and guard.report()["checked_calls"] == 2


@pytest.mark.parametrize("rows_per_block", [1, 4])
def test_the_estimate_agrees_with_the_full_error_on_zoo_heads(rows_per_block):
    """Several patterns on every zoo head kind: the sampled error tracks the full one (correlation, ratio)."""
    layout = VideoLayout(4, 16, 32, text_tokens=20, text_position="prefix")
    kinds = ["spatial", "temporal", "sink", "block", "diffuse"]
    strategies = [default_strategy(), get("neighborhood", window=1),
                  get("diagonal", width=1)]
    estimated, full = [], []
    for seed in range(2):
        q, k, v = make_heads(layout, kinds, generator=torch.Generator().manual_seed(seed))
        dense = _dense(q, k, v)
        for strategy in strategies:
            controller = SparseController(StrategyPolicy(strategy, DenseSchedule(0, frozenset())))
            out = controller(AttentionCall(layer=1, step=0, num_steps=1, q=q, k=k, v=v, layout=layout, scale=None))
            guard = Guard(GuardConfig(rows_per_block=rows_per_block, seed=seed), lambda b, l, h: 1.0)
            estimated += guard.estimate(q, k, v, out, layout, None).tolist()
            video = slice(layout.video_offset, layout.video_offset + layout.num_video_tokens)
            full += _full_error(out[:, :, video], dense[:, :, video]).tolist()
    estimated, full = np.array(estimated), np.array(full)
    assert np.corrcoef(estimated, full)[0, 1] > 0.95
    large = full > 0.05  # the ratio of errors that matter (small ones are a few rows' worth)
    ratio = estimated[large] / full[large]
    assert large.sum() >= 10 and 0.8 < np.median(ratio) < 1.25 and ratio.min() > 0.5


def test_sampled_rows_are_video_rows_stratified_over_the_query_blocks():
    layout = VideoLayout(3, 10, 20, text_tokens=7, text_position="prefix")  # edge tiles: partly filled blocks
    guard = Guard(GuardConfig(rows_per_block=3), lambda b, l, h: 1.0)
    rows = guard.sample_rows(layout, torch.device("cpu"))
    assert rows.shape == (layout.num_video_blocks * 3,)
    blocks = layout.inverse_permutation[rows] // layout.block_size
    assert blocks.tolist() == [b for b in range(layout.num_video_blocks) for _ in range(3)]
    assert (rows >= layout.video_offset).all() and (rows < layout.video_offset + layout.num_video_tokens).all()


def test_exact_rows_match_float64_attention_with_head_chunks(monkeypatch):
    q, k, v = (torch.randn(2, 5, 64, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    rows = torch.tensor([0, 9, 33, 63])
    monkeypatch.setattr("vidsparse.guard._MAX_SCORE_ELEMENTS", 2 * 4 * 64 * 2)  # two heads per chunk
    got = exact_rows(q[:, :, rows], k, v, 0.3)
    torch.testing.assert_close(got.double(), F.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                                                            scale=0.3)[:, :, rows], rtol=1e-5, atol=1e-6)


# ----- on a patched pipeline -----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _wan():
    return tiny_pipeline("wan")


def _run(pipe, steps: int) -> torch.Tensor:
    call = {**tiny_call("wan"), "num_inference_steps": steps}
    return pipe("a fox", generator=torch.Generator().manual_seed(0), output_type="latent", **call).frames


def test_calls_between_checks_force_no_host_sync_and_a_check_reads_once():
    pipe = _wan()
    guard = Guard(GuardConfig(every=2, budget=100.0), lambda b, l, h: 100.0)
    controller = SparseController(StrategyPolicy(default_strategy(), DenseSchedule(0, frozenset())),
                                  backend="triton", guard=guard)
    install(pipe, controller)
    try:
        _run(pipe, 1)  # first calls build and upload the plans and the row sampler
        with HostSyncCounter() as counter:
            _run(pipe, 4)  # a new generation: checks at steps 0 and 2
    finally:
        uninstall(pipe)
    layers, branches = 2, 2
    assert counter.calls == 4 * layers * branches
    assert guard.checked_calls == 1 * layers * branches + 2 * layers * branches
    assert dict(counter.syncs) == {"tolist": 2 * layers * branches} and dict(counter.uploads) == {}


def test_patch_guard_argument_report_and_switches(caplog):
    pipe = _wan()
    assert vidsparse.patch(pipe).guard is None  # no profile, no budget: off by default
    vidsparse.unpatch(pipe)
    with pytest.raises(ValueError, match="guard needs an error budget"):
        vidsparse.patch(pipe, strategy="neighborhood", guard=True)
    with pytest.raises(ValueError, match="guard must be a vidsparse.GuardConfig"):
        vidsparse.patch(pipe, guard="on")
    assert installed_controller(pipe) is None

    vidsparse.patch(pipe, dense_warmup_steps=0, dense_layers=(), guard=GuardConfig(budget=1e-6, every=3))
    try:
        with caplog.at_level(logging.WARNING, logger="vidsparse.guard"):
            _run(pipe, 2)
        report = vidsparse.guard_report(pipe)
    finally:
        vidsparse.unpatch(pipe)
    heads = pipe.transformer.config.num_attention_heads
    assert report["checked_heads"] == report["switched_heads"] == 2 * heads  # every head over a tiny budget
    assert report["checked_calls"] == 2  # step 0, branch 0 of both layers; branch 1 and step 1 already run dense
    assert len([r for r in caplog.records if "runs dense" in r.getMessage()]) == 2 * heads
    assert {(s["step"], s["budget"]) for s in report["switches"]} == {(0, 1e-6)}


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(every=0), "every must be an integer >= 1"), (dict(rows_per_block=1.5), "rows_per_block must be"),
     (dict(margin=-1), "margin must be a finite number >= 0"), (dict(budget=0), "budget must be a finite number > 0"),
     (dict(min_budget=float("nan")), "min_budget must be"), (dict(seed="x"), "seed must be an integer")],
)
def test_config_errors_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GuardConfig(**kwargs)


def test_eval_report_has_a_guard_column_table_and_heatmap(tmp_path):
    """A guard with a tiny budget in `vidsparse eval`: every head checked at step 0 and switched, which the density
    recorder confirms (only the checked calls ran sparse)."""
    pipe = tiny_pipeline("wan", patch_size=(1, 1, 1))  # latent grid 3 x 8 x 8 at 64 x 64 px, 9 frames
    variant = Variant("guarded", lambda p: vidsparse.patch(
        p, strategy=("neighborhood", {"window": 1}), dense_warmup_steps=0, dense_layers=(),
        guard=GuardConfig(budget=1e-6)))
    settings = EvalSettings(prompts=["a red circle moving left"], seeds=[0], height=64, width=64, num_frames=9,
                            num_inference_steps=2, call_kwargs={"max_sequence_length": 16}, warmup=1,
                            save_videos=False)
    report = run_evaluation(pipe, [variant], settings, progress=False).to_json()
    write_report(report, tmp_path)
    guarded = report["variants"][0]
    heads = 2 * pipe.transformer.config.num_attention_heads
    assert guarded["guard"]["checked_heads"] == guarded["guard"]["switched_heads"] == heads
    assert guarded["guard"]["checked_calls"] == guarded["density"]["sparse_calls"] == 2  # warm-up run not counted
    assert f"{heads} checked, {heads} switched" in summary_table(report)
    assert (tmp_path / guarded["plots"]["guard_heatmap"]).is_file()
    markdown = (tmp_path / "report.md").read_text()
    assert "Quality guard" in markdown and "layer 1 head 1 error" in markdown


def test_profile_budgets_buckets_and_cadence():
    """Per-head budgets are the profile's errors (floored), an explicit budget overrides them, and the cadence
    restarts at each bucket's first sparse step."""
    from test_profile import make_dict  # the profile test's valid random profile, kept current with the format

    from vidsparse.guard import guard_budgets, profile_buckets
    from vidsparse.profile import Profile

    profile = Profile.from_dict(make_dict(layers=3, heads=4, buckets=2))  # buckets [0, 0.6) and [0.6, 1)
    budget_of = guard_budgets(GuardConfig(min_budget=0.02), profile)
    for bucket, layer, head in [(0, 0, 0), (1, 2, 3), (1, 1, 2)]:
        assert budget_of(bucket, layer, head) == max(0.02, profile.buckets[bucket].heads[layer][head].error)
    assert guard_budgets(GuardConfig(budget=0.3), profile)(1, 2, 3) == 0.3
    bucket_of = profile_buckets(profile)
    assert [bucket_of(step, 10) for step in range(10)] == [0] * 6 + [1] * 4 and bucket_of(0, None) == 1
    guard = Guard(GuardConfig(every=3), budget_of, bucket_of)
    due = [s for s in range(2, 10) if guard.due(AttentionCall(layer=1, step=s, num_steps=10, q=None, k=None, v=None,
                                                                     layout=LAYOUT, scale=None))]
    assert due == [2, 5, 6, 9]  # bucket 0 from its first sparse step 2, bucket 1 from step 6
