"""The profiler's parts on planted heads: scoring vs the metrics oracle, selection on the head zoo, the knapsack."""

from __future__ import annotations

import itertools

import pytest
import torch

from vidsparse.layout import VideoLayout
from vidsparse.metrics import attention_recall, relative_l2_error
from vidsparse.profiler.calibrate import bucket_edges, sampled_steps
from vidsparse.profiler.candidates import DESIGNED_FOR, default_candidates, family
from vidsparse.profiler.cost import CostModel
from vidsparse.profiler.scoring import ScoreTable, sample_rows, score_call
from vidsparse.profiler.select import (
    LayerScores,
    Selection,
    head_costs,
    layer_ms,
    select_for_speedup,
    select_within_budget,
)
from vidsparse.strategies import get
from vidsparse.testing import make_heads


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(torch.initial_seed())


@pytest.mark.parametrize("text_tokens", [0, 40])
def test_scores_match_metrics(text_tokens):
    layout = VideoLayout(4, 8, 16, text_tokens=text_tokens, tile=(2, 4, 8))
    g = _generator()
    q, k, v = make_heads(layout, ["spatial", "sink", "block"], batch=2, head_dim=32, generator=g)
    candidates = [get("dense"), get("skip"), get("diagonal", width=0), get("stripe", first_frames=1),
                  get("draft", keep_ratio=0.25), get("vmoba", partition="cycle") | get("stripe", sinks=1)]
    rows = sample_rows(layout, 50, g)
    assert 50 <= rows.numel() < 50 + layout.num_blocks and int(rows.min()) >= layout.video_offset
    scale = 0.3
    scores = score_call(candidates, q, k, v, layout, rows=rows, scale=scale, layer=1)
    for i, candidate in enumerate(candidates):
        strategy = candidate.at_layer(1)
        plan = strategy.plan(layout, q, k)
        expected_error = relative_l2_error(q, k, v, plan, rows=rows, scale=scale).mean(0)
        expected_recall = attention_recall(q, k, plan, rows=rows, scale=scale).mean(0)
        torch.testing.assert_close(scores.error[i], expected_error, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(scores.recall[i], expected_recall, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(scores.density[i], plan.density(per_head=True).expand(2, 3).mean(0))
        assert bool((scores.plan_ms[i] > 0) == strategy.is_dynamic)


def test_score_table_means():
    table = ScoreTable([get("dense"), get("skip")], num_heads=2)
    for value in (0.2, 0.4):
        s = torch.full((2, 2), value, dtype=torch.float64)
        from vidsparse.profiler.scoring import CallScores

        table.add(1, 3, CallScores(s, s, s, s, torch.full((2,), value)))
        table.add(1, 3, CallScores(s, s, s, s, torch.full((2,), value)))
        table.end_prompt()  # two prompts, two calls each: the standard error is over the two prompt means
    means = table.mean(1, 3)
    torch.testing.assert_close(means["error"], torch.full((2, 2), 0.3, dtype=torch.float64))
    torch.testing.assert_close(means["plan_ms"], torch.full((2, 2), 0.3, dtype=torch.float64))
    # Standard error of the mean of the prompt means {0.2, 0.4}: sample std 0.1414 / sqrt(2) = 0.1; largest 0.4.
    torch.testing.assert_close(means["error_se"], torch.full((2, 2), 0.1, dtype=torch.float64))
    torch.testing.assert_close(means["error_max"], torch.full((2, 2), 0.4, dtype=torch.float64))
    # One new prompt's error moves by the prompts' own spread, plus the mean's: 0.1414 x sqrt(1 + 1/2).
    torch.testing.assert_close(means["error_spread"], torch.full((2, 2), 0.02 ** 0.5 * 1.5 ** 0.5,
                                                                 dtype=torch.float64))
    assert table.mean(0, 3) is None
    single = ScoreTable([get("dense")], num_heads=1)
    one = torch.full((1, 1), 0.2, dtype=torch.float64)
    for _ in range(3):
        single.add(0, 0, CallScores(one, one, one, one, torch.zeros(1)))
    single.end_prompt()
    assert torch.isnan(single.mean(0, 0)["error_se"]).all()  # one prompt: no spread over prompts to estimate
    assert torch.isnan(single.mean(0, 0)["error_spread"]).all()


def test_spread_and_bound_match_the_statistics_module():
    """Per-prompt mean errors of five prompts: the table's spread and `prediction_bound` are the textbook upper
    prediction bound for one new sample, mean + margin x stdev x sqrt(1 + 1/n)."""
    import statistics

    from vidsparse.profiler.calibrate import prediction_bound
    from vidsparse.profiler.scoring import CallScores

    prompt_means = [0.05, 0.11, 0.07, 0.16, 0.08]
    table = ScoreTable([get("dense")], num_heads=1)
    for mean in prompt_means:
        for offset in (-0.01, 0.01):  # two calls per prompt around the prompt's mean
            e = torch.full((1, 1), mean + offset, dtype=torch.float64)
            table.add(0, 0, CallScores(e, e, e, e, torch.zeros(1)))
        table.end_prompt()
    expected = statistics.stdev(prompt_means) * (1 + 1 / 5) ** 0.5
    assert float(table.mean(0, 0)["error_spread"]) == pytest.approx(expected, rel=1e-9)
    # Few samples: the Student t quantile (4 degrees of freedom) of the normal 97.72% point, 2.869.
    assert prediction_bound(prompt_means, 2.0) == pytest.approx(statistics.mean(prompt_means) + 2.869 * expected,
                                                                rel=2e-3)
    assert prediction_bound([0.1, 0.1], 2.0) == pytest.approx(0.1)
    assert prediction_bound([0.1], 2.0) is None


def test_scaled_bound_counts_the_level_runs_not_the_spread_runs():
    """The level from one unseen run, the spread relative to the mean from five other runs: level x (1 + t x
    relative stdev x sqrt(1 + 1/1)), wider than scaling the level by the five runs' own bound / mean (which takes the
    level as known as their mean)."""
    import statistics

    from vidsparse.profiler.calibrate import prediction_bound, scaled_prediction_bound

    spread = [0.05, 0.11, 0.07, 0.16, 0.08]
    relative = statistics.stdev(spread) / statistics.mean(spread)
    assert scaled_prediction_bound([0.12], spread, 2.0) == pytest.approx(0.12 * (1 + 2.869 * relative * 2 ** 0.5),
                                                                         rel=2e-3)
    assert scaled_prediction_bound([0.10, 0.14], spread, 2.0) == pytest.approx(
        0.12 * (1 + 2.869 * relative * 1.5 ** 0.5), rel=2e-3)
    assert scaled_prediction_bound([0.12], spread, 2.0) > 0.12 * prediction_bound(spread, 2.0) / statistics.mean(spread)
    assert scaled_prediction_bound([0.12], [0.1], 2.0) is None


@pytest.mark.parametrize("grid,text_tokens,count", [((4, 8, 16), 0, 50), ((5, 12, 20), 40, 100), ((3, 9, 17), 0, 1)])
def test_rows_cover_every_query_block(grid, text_tokens, count):
    """Stratified rows: every block holding video tokens gets rows in proportion to its video tokens (at least
    one), no text row, no repeat; the error estimate therefore sees borders, first frames and packed edge tiles."""
    layout = VideoLayout(*grid, text_tokens=text_tokens)
    rows = sample_rows(layout, count, _generator())
    video = range(layout.video_offset, layout.video_offset + layout.num_video_tokens)
    assert rows.unique().numel() == rows.numel() and all(int(r) in video for r in rows)
    block_of = layout.inverse_permutation // layout.block_size
    sizes = torch.bincount(block_of[list(video)], minlength=layout.num_blocks)
    got = torch.bincount(block_of[rows], minlength=layout.num_blocks)
    assert bool(((got >= 1) == (sizes >= 1)).all()), "a query block holding video tokens got no row"
    expected = torch.ceil(count * sizes / layout.num_video_tokens)
    assert bool((got[sizes > 0] == torch.minimum(expected, sizes)[sizes > 0]).all())
    assert count <= rows.numel() < count + layout.num_blocks
    everything = sample_rows(layout, layout.num_video_tokens, _generator())
    assert everything.tolist() == list(video)
    with pytest.raises(ValueError, match="count must be an integer >= 1"):
        sample_rows(layout, 0)


def test_selection_margin_and_tail_statistic():
    """A cheap candidate whose mean error is within budget but whose mean + 2 standard errors is not loses to a
    costlier one; with statistic "max" the largest call error decides; margin 0 is the plain mean."""
    candidates = [get("dense"), get("diagonal", width=0), get("diagonal", width=1)]
    cost = CostModel(dense_ms=36.0, fixed_ms=0.0, ms_per_block=1.0, heads=1)
    error = torch.tensor([[0.0], [0.04], [0.03]], dtype=torch.float64)
    se = torch.tensor([[0.0], [0.01], [0.002]], dtype=torch.float64)
    worst = torch.tensor([[0.0], [0.045], [0.07]], dtype=torch.float64)
    blocks = torch.tensor([[36.0], [6.0], [12.0]], dtype=torch.float64)
    layer = LayerScores(0, 0, 1.0, error, 1 - error, blocks / 36, blocks, torch.zeros(3, dtype=torch.float64),
                        se, worst)
    pick = lambda selection: int(select_within_budget(candidates, [layer], cost, 0.05, selection)[0][0])  # noqa: E731
    assert pick(Selection("mean", 0.0)) == 1  # cheapest by its mean 0.04
    assert pick(Selection("mean", 2.0)) == 2  # 0.04 + 2 x 0.01 > 0.05; 0.03 + 2 x 0.002 fits
    assert pick(Selection("max")) == 1  # largest errors 0.045 vs 0.07
    target = select_for_speedup(candidates, [layer], cost, target_ms=12.0, fixed_ms=0.0, selection=Selection())
    assert int(target[0][0]) == 2  # both fit the time; 0.034 < 0.06 budgeted error
    # The prediction bound for a new prompt: the candidate whose error moves little between prompts wins.
    spread = torch.tensor([[0.0], [0.004], [0.02]], dtype=torch.float64)
    steady = LayerScores(0, 0, 1.0, error, 1 - error, blocks / 36, blocks, torch.zeros(3, dtype=torch.float64),
                         se, worst, spread)
    assert pick(Selection("prediction", 2.0)) == 1  # no spread known: the largest call errors decide, as for max
    predict = lambda margin: int(select_within_budget(candidates, [steady], cost, 0.05,  # noqa: E731
                                                      Selection("prediction", margin))[0][0])
    assert predict(2.0) == 1  # 0.04 + 2 x 0.004 = 0.048 fits; 0.03 + 2 x 0.02 = 0.07 does not
    assert predict(3.0) == 0  # 0.052 and 0.09: only dense is within the budget
    torch.testing.assert_close(steady.bound(2.0), error + 2 * spread)
    for bad in (dict(statistic="p99"), dict(margin=-1.0)):
        with pytest.raises(ValueError):
            Selection(**bad)


def test_zoo_heads_get_their_family_or_cheaper():
    """Planted heads of known type: the choice is the family designed for the type, or cheaper within budget."""
    layout = VideoLayout(8, 8, 16, tile=(2, 4, 8))
    kinds = ["spatial", "temporal", "sink", "block", "diffuse"] * 2
    g = _generator()
    q, k, v = make_heads(layout, kinds, head_dim=64, generator=g)
    candidates = default_candidates(layout)
    rows = sample_rows(layout, 128, g)
    scores = score_call(candidates, q, k, v, layout, rows=rows)
    heads, m = len(kinds), layout.num_blocks
    cost = CostModel(dense_ms=heads * m * m, fixed_ms=0.0, ms_per_block=1.0, heads=heads)  # cost = blocks
    # Planning time is wall time; the zoo checks pattern identification, so it is left out here.
    layer = LayerScores(0, 0, 1.0, scores.error, scores.recall, scores.density, scores.blocks,
                        torch.zeros_like(scores.plan_ms))
    budget = 0.05
    choice = select_within_budget(candidates, [layer], cost, budget)[0]
    costs = head_costs(candidates, layer, cost)
    good = 0
    for head, kind in enumerate(kinds):
        chosen = candidates[int(choice[head])]
        # The oracle: the chosen plan's error on all video rows, recomputed by the metrics.
        plan = chosen.plan(layout, q[:, head : head + 1], k[:, head : head + 1])
        video = torch.arange(layout.video_offset, layout.video_offset + layout.num_video_tokens)
        error = float(relative_l2_error(q[:, head : head + 1], k[:, head : head + 1], v[:, head : head + 1], plan,
                                        rows=video))
        designed = [i for i, c in enumerate(candidates)
                    if family(c) in DESIGNED_FOR[kind] and scores.error[i, head] <= budget]
        cheapest = min((float(costs[i, head]) for i in designed), default=None)
        if family(chosen) in DESIGNED_FOR[kind] or (
            cheapest is not None and float(costs[int(choice[head]), head]) <= cheapest and error <= 2 * budget
        ):
            good += 1
        assert float(scores.error[int(choice[head]), head]) <= budget
    assert good >= 0.9 * heads, f"{good} of {heads} heads"


def _random_layer(candidates, heads, g, weight=1.0):
    c = len(candidates)
    error = torch.rand(c, heads, generator=g, dtype=torch.float64)
    blocks = torch.randint(1, 36, (c, heads), generator=g).double()
    for i, s in enumerate(candidates):
        if s.name == "skip":
            error[i], blocks[i] = 1.0, 0.0
    density = blocks / 36
    return LayerScores(0, 0, weight, error, 1 - error, density, blocks, torch.zeros(c, dtype=torch.float64))


def test_budget_selection_is_cheapest_within_budget():
    g = _generator()
    candidates = [get("dense"), get("skip"), get("diagonal", width=0), get("diagonal", width=1),
                  get("stripe", first_frames=1)]
    cost = CostModel(dense_ms=4 * 36 * 0.5, fixed_ms=0.4, ms_per_block=0.5, heads=4)
    layer = _random_layer(candidates, 4, g)
    layer.blocks[0] = 36.0
    choice = select_within_budget(candidates, [layer], cost, 0.3)[0]
    costs = head_costs(candidates, layer, cost)
    for head in range(4):
        allowed = [i for i in range(len(candidates)) if layer.error[i, head] <= 0.3 or candidates[i].name == "dense"]
        assert int(choice[head]) in allowed
        assert float(costs[choice[head], head]) == min(float(costs[i, head]) for i in allowed)


def test_speed_target_is_optimal_at_its_cost():
    """The Lagrangian choice meets the time target and no other choice of at most its cost has less error."""
    g = _generator()
    candidates = [get("skip"), get("diagonal", width=0), get("diagonal", width=1), get("stripe", first_frames=1)]
    cost = CostModel(dense_ms=2 * 36.0, fixed_ms=0.0, ms_per_block=1.0, heads=2)
    layers = [_random_layer(candidates, 2, g, weight=w) for w in (2.0, 3.0)]
    for layer_index, layer in enumerate(layers):
        layer.layer = layer_index
    full = sum(layer.weight * 2 * 36 for layer in layers)
    target = full / 2.5
    picks = select_for_speedup(candidates, layers, cost, target_ms=target, fixed_ms=0.0)
    total = sum(layer.weight * layer_ms(candidates, p, layer, cost) for layer, p in zip(layers, picks))
    assert total <= target + 1e-9

    def weighted_error(choice):
        return sum(layer.weight * float(layer.error[p, torch.arange(2)].sum()) for layer, p in zip(layers, choice))

    best = min(
        weighted_error(choice)
        for choice in (
            [torch.tensor(flat[:2]), torch.tensor(flat[2:])]
            for flat in itertools.product(range(len(candidates)), repeat=4)
        )
        if sum(layer.weight * layer_ms(candidates, p, layer, cost) for layer, p in zip(layers, choice)) <= total + 1e-9
    )
    assert weighted_error(picks) <= best + 1e-9


def test_sampled_steps_and_buckets():
    assert sampled_steps(10, 2, 3) == [2, 6, 9]
    assert sampled_steps(4, 1, 5) == [1, 2, 3]
    samples = sampled_steps(50, 10, 4)
    edges = bucket_edges(50, 10, samples, 2)
    assert edges[0] == 0.0 and edges[-1] == 1.0 and len(edges) == 3
    for lo, hi in zip(edges, edges[1:]):
        assert any(lo <= s / 50 < hi for s in samples)
    # More buckets than sampled steps: buckets without a sample are merged away.
    edges = bucket_edges(10, 2, [5], 3)
    assert edges == [0.0, 1.0]


def test_dense_generation_units_by_hand():
    """Two dense runs, one sparse at 2x attention speed-up with attention 70% of a run, and 10 scored calls of a
    100-call generation, each scoring 1% of a dense call's work in float64 at 15x plus one blockified search."""
    from vidsparse.profiler.accounting import ProfilingWork, dense_generation_units

    work = ProfilingWork(dense_generations=2, sparse_generations=1, calls_per_generation=100)
    for _ in range(10):
        work.add_scored_call(1, 2, 1000, 64, rows=10, masks=0, key_blocks=8, dynamic=["blockified", "draft"])
    assert work.scored_calls == 10 and work.scored_rows == 100 and work.plans == {"blockified": 10, "draft": 10}
    assert work.scoring_flops == pytest.approx(10 * 0.01 * work.dense_call_flops)
    units = dense_generation_units(work, attention_share=0.7, speedup=2.0, fp64_slowdown=15.0)
    assert units["dense"] == 2 and units["sparse"] == pytest.approx(0.3 + 0.35)
    assert units["scoring"] == pytest.approx(0.7 * (10 * 0.01 * 15 + 10) / 100)
    assert units["total"] == pytest.approx(units["dense"] + units["sparse"] + units["scoring"])
    for bad, message in ((dict(attention_share=0.0), "attention_share"), (dict(speedup=0.0), "speedup"),
                         (dict(fp64_slowdown=-1.0), "fp64_slowdown")):
        with pytest.raises(ValueError, match=message):
            dense_generation_units(work, **{**dict(attention_share=0.7, speedup=2.0, fp64_slowdown=15.0), **bad})


def test_pooled_relative_spread_raises_unreliable_head_spreads():
    """Per candidate, the root-mean-square spread / mean over every (bucket, layer, head) is a floor for each head's
    spread; a larger own spread stays; dense (error 0) keeps 0; an unknown spread everywhere stays unknown."""
    from vidsparse.profiler.select import pool_relative_spread

    def layer(error, spread):
        error = torch.tensor(error, dtype=torch.float64)
        zeros = torch.zeros_like(error)
        return LayerScores(0, 0, 1.0, error, 1 - error, zeros, zeros, zeros[:, 0], zeros, error,
                           torch.tensor(spread, dtype=torch.float64))

    # Candidate 0 is dense; candidate 1 has relative spreads 0.1, 0.5 (layer a) and 0.7, 0.1 (layer b).
    a = layer([[0.0, 0.0], [0.1, 0.2]], [[0.0, 0.0], [0.01, 0.1]])
    b = layer([[0.0, 0.0], [0.1, 0.3]], [[0.0, 0.0], [0.07, 0.03]])
    pooled = ((0.1 ** 2 + 0.5 ** 2 + 0.7 ** 2 + 0.1 ** 2) / 4) ** 0.5
    new_a, new_b = pool_relative_spread([a, b])
    torch.testing.assert_close(new_a.error_spread[1], torch.tensor([pooled * 0.1, 0.1], dtype=torch.float64))
    torch.testing.assert_close(new_b.error_spread[1], torch.tensor([0.07, pooled * 0.3], dtype=torch.float64))
    assert float(new_a.error_spread[0].abs().sum()) == 0.0
    unknown = layer([[0.0], [0.1]], [[float("nan")], [float("nan")]])
    assert torch.isnan(pool_relative_spread([unknown])[0].error_spread[1]).all()
