"""Choosing one candidate per (step bucket, layer, head) from the measured scores and the cost model.

Which error is budgeted (`Selection`): the measured errors are means over a few sampled calls, so the candidate
with the lowest estimate is often the one whose error was under-estimated (the winner's bias). By default the
selection budgets the mean plus `margin` (2) standard errors of the mean (`statistic="mean"`), so a candidate
must be within budget with a safety margin from its own sampling noise; `statistic="max"` budgets the largest
error of any scored call instead (a tail statistic: no call of the calibration exceeded the budget);
`statistic="prediction"` budgets the upper prediction bound for one new generation, the mean plus `margin` times
the spread of the per-prompt means x sqrt(1 + 1 / prompts) (`ScoreTable.mean`'s `error_spread`). Only the last
holds the budget for a prompt the calibration never saw: a head's error moves from one generation to the next by
that spread (on tiny-wan 30-50% of the mean, with the seed as much as with the prompt), and the standard error of
the mean is that spread / sqrt(prompts).

Two objectives:

- error budget e: every head takes its cheapest candidate whose budgeted error is at most e (dense, error
  0, always qualifies). Ties go to the lower error.
- speed target x: minimize the total budgeted error subject to total predicted attention time <= dense time / x.
  This is a multiple-choice knapsack (one choice per head); the Lagrangian relaxation decouples it per head:
  head choice(lambda) = argmin_c  error_c + lambda * cost_c,  and a bisection on lambda finds the smallest
  multiplier whose choices meet the time target (the relaxation's solutions are the convex hull points of each
  head's error/cost curve, which is how the Lagrangian sweep of MoA-style searches works).

Costs per head: dense = dense_ms / heads; skip = 0; a sparse candidate = its share of the fixed cost of a sparse
call + ms_per_block * its computed block pairs + its planning time / heads (dynamic strategies). Bucket weights
are the number of sparse denoising steps in the bucket.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import torch

from ..strategies import Strategy
from .cost import CostModel

logger = logging.getLogger(__name__)


STATISTICS = ("mean", "max", "prediction")


@dataclass(frozen=True)
class Selection:
    """Which error the selection budgets: mean + margin x standard error (statistic "mean"), the largest error
    of a scored call (statistic "max") or mean + margin x the spread of one new prompt's error (statistic
    "prediction"; the largest call error where the spread is unknown, with one prompt)."""

    statistic: str = "mean"
    margin: float = 2.0

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}, got {self.statistic!r}")
        margin = self.margin
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < math.inf:
            raise ValueError(f"margin must be a finite number of standard errors >= 0, got {self.margin!r}")


@dataclass
class LayerScores:
    """Scores of every candidate ([C, H] each) for one (bucket, layer) and the bucket's step weight: means over
    the scored calls, the standard error of the mean error (NaN if one prompt), the largest error of a call and
    the spread of one new prompt's mean error (NaN if one prompt) (all default to the mean's exactness: se 0,
    max = mean, spread 0)."""

    bucket: int
    layer: int
    weight: float
    error: torch.Tensor
    recall: torch.Tensor
    density: torch.Tensor
    blocks: torch.Tensor
    plan_ms: torch.Tensor
    error_se: torch.Tensor | None = None
    error_max: torch.Tensor | None = None
    error_spread: torch.Tensor | None = None

    def budgeted(self, selection: Selection) -> torch.Tensor:
        """float64 [C, H]: the error `selection` compares with the budget (an unknown standard error counts 0; an
        unknown spread makes the prediction bound the largest call error)."""
        largest = self.error if self.error_max is None else torch.maximum(self.error_max, self.error)
        if selection.statistic == "max":
            return largest
        if selection.statistic == "prediction":
            bound = self.bound(selection.margin)
            return torch.where(torch.isnan(bound), largest, bound)
        if self.error_se is None:
            return self.error
        return self.error + selection.margin * torch.nan_to_num(self.error_se, nan=0.0)

    def bound(self, margin: float) -> torch.Tensor:
        """float64 [C, H]: the upper prediction bound for one new generation, mean + margin x spread (NaN where
        the spread is unknown)."""
        spread = torch.full_like(self.error, math.nan) if self.error_spread is None else self.error_spread
        return self.error + margin * spread


def pool_relative_spread(layers: list[LayerScores]) -> list[LayerScores]:
    """The layers with each spread raised to at least its candidate's pooled relative spread x its mean.

    A head's spread between prompts is estimated from the few calibration prompts (with two prompts, from one
    difference: a quarter of the time under a third of the true spread), so a bound from it alone often falls short on
    a new prompt. The candidate's relative spread (spread / mean), pooled as a root mean square over every
    (bucket, layer, head) it was scored on, rests on all of them; the per-head estimate only raises it (a head known
    to vary more keeps its own).
    """
    ratios = [torch.where(s.error > 0, s.error_spread / s.error, torch.nan) for s in layers
              if s.error_spread is not None]
    if not ratios:
        return layers
    squares = torch.cat([r.square() for r in ratios], dim=1)  # [C, all heads]
    pooled = torch.nanmean(squares, dim=1).sqrt()  # [C]; NaN where no spread is known
    return [dataclasses.replace(s, error_spread=torch.fmax(s.error_spread, pooled[:, None] * s.error))
            if s.error_spread is not None else s for s in layers]


def head_costs(candidates: list[Strategy], scores: LayerScores, cost: CostModel) -> torch.Tensor:
    """float64 [C, H]: predicted milliseconds per head and call of each candidate."""
    heads = scores.error.shape[1]
    costs = torch.empty_like(scores.error)
    for i, candidate in enumerate(candidates):
        if candidate.name == "dense":
            costs[i] = cost.dense_ms / heads
        elif candidate.name == "skip":
            costs[i] = 0.0
        else:
            costs[i] = cost.head_ms(0.0) + cost.ms_per_block * scores.blocks[i] + scores.plan_ms[i] / heads
    return costs


def layer_ms(candidates: list[Strategy], choice: torch.Tensor, scores: LayerScores, cost: CostModel) -> float:
    """Predicted milliseconds of one call of this layer with per-head choices `choice` [H] (long)."""
    chosen = [candidates[int(c)] for c in choice]
    if all(s.name == "dense" for s in chosen):
        return cost.dense_ms
    heads = torch.arange(choice.numel())
    blocks = scores.blocks[choice, heads].clone()
    full = scores.blocks.max()  # a dense head inside a sparse call computes every block pair
    for h, s in enumerate(chosen):
        if s.name == "dense":
            blocks[h] = full
        elif s.name == "skip":
            blocks[h] = 0
    planning = sum(float(scores.plan_ms[int(c)].mean()) for c in set(choice.tolist()) if candidates[int(c)].is_dynamic)
    return cost.sparse_ms(float(blocks.sum())) + planning


def _dense_index(candidates: list[Strategy]) -> int | None:
    return next((i for i, c in enumerate(candidates) if c.name == "dense"), None)


def select_within_budget(candidates: list[Strategy], layers: list[LayerScores], cost: CostModel, budget: float,
                         selection: Selection = Selection()) -> list[torch.Tensor]:
    """Per layer scores, the chosen candidate index per head ([H] long): cheapest whose budgeted error
    (`selection`) is <= budget.

    A layer whose sparse call would still be slower than the dense kernel (fixed costs, or a slow sparse backend)
    stays dense: same cost or less, and no error.
    """
    choices = []
    dense = _dense_index(candidates)
    for scores in layers:
        costs = head_costs(candidates, scores, cost)
        allowed = scores.budgeted(selection) <= budget
        if dense is not None:
            allowed[dense] = True
        # Cheapest first, then lowest error: a tiny error tie-breaker term.
        key = torch.where(allowed, costs + 1e-9 * scores.error, torch.full_like(costs, math.inf))
        pick = key.argmin(0)
        if dense is not None and layer_ms(candidates, pick, scores, cost) >= cost.dense_ms:
            pick = torch.full_like(pick, dense)
        choices.append(pick)
    return choices


def select_for_speedup(
    candidates: list[Strategy], layers: list[LayerScores], cost: CostModel, *, target_ms: float, fixed_ms: float,
    selection: Selection = Selection(),
) -> list[torch.Tensor]:
    """Least total (weighted) budgeted error (`selection`) whose predicted time fits `target_ms`, by a Lagrangian
    sweep.

    Args:
        target_ms: total attention milliseconds allowed for the whole run (dense time / speed target).
        fixed_ms: milliseconds of the calls that stay dense whatever the choice (warm-up steps, dense layers).
    """
    unit = cost.dense_ms / max(layers[0].error.shape[1], 1) if layers else 1.0  # lambda in errors per dense head
    costs = [head_costs(candidates, s, cost) / max(unit, 1e-12) for s in layers]
    errors = [s.budgeted(selection) for s in layers]

    dense = _dense_index(candidates)

    def choose(lam: float) -> tuple[list[torch.Tensor], float]:
        picks, total = [], fixed_ms
        for scores, error, c in zip(layers, errors, costs):
            pick = (error + lam * c + 1e-9 * c).argmin(0)
            ms = layer_ms(candidates, pick, scores, cost)
            # The per-head costs miss a sparse call's fixed cost: compare the layer's choice with all-dense.
            heads = torch.arange(pick.numel())
            if dense is not None and lam * cost.dense_ms / unit <= float(error[pick, heads].sum()) + lam * ms / unit:
                pick, ms = torch.full_like(pick, dense), cost.dense_ms
            picks.append(pick)
            total += scores.weight * ms
        return picks, total

    low, high = 1e-6, 1e6
    picks, total = choose(low)
    if total <= target_ms:
        return picks
    picks, total = choose(high)
    if total > target_ms:
        logger.warning("speed target not reachable: the fastest choices found take %.3g ms for a target of %.3g ms; "
                       "using them", total, target_ms)
        return picks
    while high / low > 1.01:  # bisection in log space: the smallest multiplier that meets the target
        mid = math.sqrt(low * high)
        mid_picks, mid_total = choose(mid)
        if mid_total <= target_ms:
            high, picks = mid, mid_picks
        else:
            low = mid
    return picks
