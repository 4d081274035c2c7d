"""Profiling on several processes: calibration prompts split across ranks, score statistics merged into one table.

Each rank runs the dense calibration on its share of the prompts (accelerate's `split_between_processes`, with each
prompt keeping its global index, so prompt i is generated with seed + i as on one process) and fills its own
`ScoreTable`; `all_reduce_score_table` then adds the running sums and sample counts of every (bucket, layer,
candidate, head) over the ranks and takes the maximum of the worst-case errors. Every rank ends with the table a
single process would have built from all prompts (up to the order of float64 additions, and the query rows sampled
for the error, which each rank draws from its own generator), so selection can run anywhere; rank 0 writes the
profile.

    from accelerate import PartialState                  # `accelerate launch --num_processes N script.py`
    state = PartialState()
    for index, prompt in split_prompts(prompts, state):  # this rank's prompts
        ...                                              # calibrate with seed + index, scores into `table`
    all_reduce_score_table(table)                        # now identical on every rank
    if state.is_main_process:
        profile.save(path)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from .scoring import SUMMED, ScoreTable


def split_prompts(prompts: Sequence[str], state: Any = None) -> list[tuple[int, str]]:
    """This process's calibration prompts as (global index, prompt), split by accelerate (contiguous shares).

    Args:
        state: an `accelerate.PartialState` (default: a new one, which reads the launcher's environment).
    """
    if state is None:
        from accelerate import PartialState

        state = PartialState()
    with state.split_between_processes(list(enumerate(prompts))) as mine:
        return list(mine)


def all_reduce_score_table(table: ScoreTable, group: Any = None) -> ScoreTable:
    """Merge `table` in place with the tables of every rank of `group` (a collective: call it on all ranks).

    Sums and counts are added, `max_error` is the maximum over ranks, and (bucket, layer) keys seen by any rank
    appear on all. The ranks must score the same candidates for the same number of heads (checked). Without an
    initialized process group, or with one process, the table is returned unchanged.
    """
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size(group) == 1:
        return table
    world = dist.get_world_size(group)
    described = (tuple(repr(c) for c in table.candidates), table.num_heads, sorted(table.sums))
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, described, group=group)
    for rank, (candidates, heads, _) in enumerate(gathered):
        if candidates != described[0] or heads != table.num_heads:
            raise ValueError(
                f"rank {rank} scored {len(candidates)} candidates for {heads} heads, this rank "
                f"{len(described[0])} for {table.num_heads}: calibrate every rank at the same geometry and settings"
            )
    keys = sorted({tuple(key) for _, _, rank_keys in gathered for key in rank_keys})
    if not keys:
        return table
    device = _collective_device(group)
    zeros = torch.zeros(len(table.candidates), table.num_heads, dtype=torch.float64)
    sums = torch.stack(
        [torch.stack([table.sums[key][name] if key in table.sums else zeros for name in SUMMED]) for key in keys]
    ).to(device)  # [K, fields, C, H]
    counts = torch.tensor([table.counts.get(key, 0) for key in keys], dtype=torch.float64, device=device)
    worst = torch.stack([table.max_error.get(key, zeros) for key in keys]).to(device)  # [K, C, H]
    dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
    dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=group)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX, group=group)
    sums, counts, worst = sums.cpu(), counts.cpu(), worst.cpu()
    for index, key in enumerate(keys):
        table.sums[key] = {name: sums[index, f].clone() for f, name in enumerate(SUMMED)}
        table.counts[key] = int(counts[index])
        table.max_error[key] = worst[index].clone()
    return table


def _collective_device(group: Any) -> torch.device:
    """Where the group's backend wants tensors: the current GPU for NCCL, the CPU otherwise (gloo)."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
