"""Sparse attention under diffusers' context parallelism (vidsparse.parallel).

Two processes (gloo, set up by accelerate's PartialState) run diffusers' own Ulysses context parallelism on CPU,
each with the tiny Wan pipeline (4 heads) patched with a policy whose heads all use different strategies (static
and dynamic), compared with the same patched pipeline in this process; the same processes merge calibration score
tables (vidsparse.profiler.distributed), compared with one table filled with every call, and run `profile_pipeline`
with one calibration prompt each, which must leave both ranks with the statistics of both prompts.

diffusers 0.42 computes `rank % torch.accelerator.device_count()` when it builds the mesh, which divides by zero on
a machine without accelerator; the workers report one device (it is only recorded; tensors stay on the CPU).
"""

from __future__ import annotations

import os
import socket
import traceback
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from vidsparse.parallel import ContextParallelError, check_context_parallel
from vidsparse.patch import SparseController, install
from vidsparse.profiler import profile_pipeline
from vidsparse.profiler.distributed import all_reduce_score_table, split_prompts
from vidsparse.profiler.scoring import CallScores, ScoreTable
from vidsparse.strategies import get
from vidsparse.testing import TINY_CALL, tiny_pipeline

HEADS = 4  # of the score tables
WORLD = 2
TIMEOUT_S = 240


def _strategy_pool() -> tuple:
    return (
        get("diagonal", width=1),
        get("skip"),
        get("draft", keep_ratio=0.3),
        get("neighborhood", window=(1, 3, 3)),
    )


#: The context-parallel runs: (heads, ulysses_anything). 3 heads on 2 ranks: diffusers' "Ulysses anything" gives
#: rank 0 heads 0-1 and rank 1 head 2.
CASES = {"even": (4, False), "anything": (3, True)}


class RotatingPolicy:
    """Head h of layer l uses pool[(h + l) % 4]: every head of a layer differs, and so does each layer.

    `period` repeats the first `period` heads' strategies (what a rank that ignored its global head indices would
    use).
    """

    def __init__(self, period: int | None = None) -> None:
        self.pool = _strategy_pool()
        self.period = period
        self.asked: set[int] = set()

    def strategies(self, step, num_steps, layer, num_heads):
        self.asked.add(num_heads)
        period = self.period or num_heads
        return [self.pool[(h % period + layer) % len(self.pool)] for h in range(num_heads)]


class Recorder:
    """A controller that records what each call holds and passes it on."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.seen: set[tuple[range | None, int | None, int]] = set()

    def __call__(self, call):
        self.seen.add((call.heads, call.total_heads, call.q.shape[2]))
        return self.inner(call)


def _generate(policy: RotatingPolicy, seed: int, heads: int, parallel: Any = None, patch_first: bool = True):
    """(latents, recorder) of the patched tiny Wan pipeline; `parallel`: a ContextParallelConfig to enable, before
    or after patching."""
    pipe = tiny_pipeline("wan", num_attention_heads=heads)
    recorder = Recorder(SparseController(policy, backend="gather"))
    if parallel is not None and not patch_first:
        pipe.transformer.enable_parallelism(config=parallel)
    install(pipe, recorder)
    if parallel is not None and patch_first:
        pipe.transformer.enable_parallelism(config=parallel)
    generator = torch.Generator().manual_seed(seed)
    embeds = torch.randn(1, 16, 32, generator=generator)
    # guidance_scale=1: one transformer call per step (no classifier-free guidance), to keep the test short.
    out = pipe(prompt_embeds=embeds, guidance_scale=1.0, generator=generator, output_type="latent", **TINY_CALL["wan"])
    return out.frames, recorder


def _score_calls(seed: int) -> list[tuple[int, int, CallScores]]:
    """Scores of five calibration calls as (bucket, layer, scores); key (1, 3) only in the last call."""
    generator = torch.Generator().manual_seed(seed)
    keys = [(0, 1), (0, 1), (1, 1), (0, 2), (1, 3)]
    shape = (len(_strategy_pool()), HEADS)

    def draw(*size):
        return torch.rand(*size, generator=generator, dtype=torch.float64)

    return [(b, layer, CallScores(draw(*shape), draw(*shape), draw(*shape), draw(*shape), draw(shape[0])))
            for b, layer in keys]


#: Static families, the ideal cost model and a loose budget (random weights): selection then depends on the merged statistics only, not on what
#: each rank timed.
PROFILE_FAMILIES = ("diagonal", "neighborhood")
PROFILE_PROMPTS = ["a red circle moving left", "two blue squares bouncing"]
PROFILE_GEOMETRY = dict(height=TINY_CALL["wan"]["height"], width=TINY_CALL["wan"]["width"],
                        frames=TINY_CALL["wan"]["num_frames"], steps=4, sample_steps=2, rows=16)


def _scored(profile) -> list[tuple[float, float]]:
    """(error, recall, density) of every scored head entry: the merged statistics, independent of the timed costs."""
    return [(choice.error, choice.recall, choice.density) for bucket in profile.buckets for layer in bucket.heads
            for choice in layer if choice.strategy.name != "dense"]


def _worker(rank: int, port: int, seed: int, results) -> None:
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                          WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD))
        torch.set_num_threads(1)
        from accelerate import PartialState
        from diffusers import ContextParallelConfig

        state = PartialState(cpu=True)  # initializes the gloo process group from the environment
        report: dict[str, Any] = {}
        # Calibration statistics: this rank's share of the calls, merged over ranks.
        calls = _score_calls(seed)
        mine = split_prompts([f"prompt {i}" for i in range(len(calls))], state)
        table = ScoreTable(list(_strategy_pool()), HEADS)
        for index, _ in mine:
            table.add(*calls[index])
        all_reduce_score_table(table)
        # Plain arrays: tensors sent through a queue are shared memory, gone when this process ends.
        report["share"] = [index for index, _ in mine]
        report["merged"] = (
            {key: {name: t.numpy() for name, t in sums.items()} for key, sums in table.sums.items()},
            table.counts,
            {key: t.numpy() for key, t in table.max_error.items()},
        )
        # profile_pipeline on two processes: one prompt each, statistics merged.
        profile = profile_pipeline(tiny_pipeline("wan", num_attention_heads=HEADS), PROFILE_PROMPTS, progress=False,
                                   seed=seed, budget=0.6, cost_model="ideal", families=PROFILE_FAMILIES, call_kwargs=dict(guidance_scale=1.0),
                                   **PROFILE_GEOMETRY)
        report["profile"] = (profile.calibration.prompts, _scored(profile))
        # Ulysses context parallelism; rank 0 patches before enable_parallelism, rank 1 after.
        torch.accelerator.device_count = lambda: 1  # see the module docstring
        for case, (heads, anything) in CASES.items():
            policy = RotatingPolicy()
            config = ContextParallelConfig(ulysses_degree=WORLD, ulysses_anything=anything)
            out, recorder = _generate(policy, seed, heads, config, patch_first=rank == 0)
            report[case] = (out.numpy(), recorder.seen, policy.asked, recorder.inner.stats)
        # Ring attention is refused at the first patched attention call, on every rank alike.
        try:
            _generate(RotatingPolicy(), seed, HEADS, ContextParallelConfig(ring_degree=WORLD))
            report["ring"] = None
        except ContextParallelError as error:
            report["ring"] = str(error)
        results.put((rank, report))
    except BaseException:
        results.put((rank, traceback.format_exc()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks():
    """(seed, {rank: report}) of the two spawned ranks (see `_worker`)."""
    seed = torch.initial_seed() % (2**31)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, seed, results), daemon=True) for r in range(WORLD)]
    for p in procs:
        p.start()
    try:
        reports = {}
        for _ in range(WORLD):
            rank, report = results.get(timeout=TIMEOUT_S)
            assert isinstance(report, dict), f"rank {rank} failed:\n{report}"
            reports[rank] = report
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return seed, reports


@pytest.mark.parametrize("case", list(CASES))
def test_ulysses_matches_single_process_with_per_head_strategies(ranks, case):
    seed, reports = ranks
    heads, _ = CASES[case]
    expected, recorder = _generate(RotatingPolicy(), seed, heads)
    stats = recorder.inner.stats
    assert stats["sparse_calls"] > 0 and stats["dense_calls"] == 0
    assert {shard for shard, _, _ in recorder.seen} == {None}
    seq_len = 3 * 16 * 16  # 9 frames of 256 x 256 -> latent 3 x 32 x 32 -> patches (1, 2, 2)
    per_rank = -(-heads // WORLD)
    for rank, report in sorted(reports.items()):
        out, seen, asked, rank_stats = report[case]
        # This rank's global heads, over the whole sequence (after diffusers' all-to-all).
        mine = range(rank * per_rank, min((rank + 1) * per_rank, heads))
        assert seen == {(mine, heads, seq_len)}
        assert asked == {heads}  # the policy is asked for the model's heads; the controller keeps this rank's
        assert rank_stats["sparse_calls"] == stats["sparse_calls"] and rank_stats["dense_calls"] == 0
        torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-4, atol=1e-5)
    # What the ranks would compute if each used the strategies of heads 0..H/N-1 instead of its own: different.
    unsharded, _ = _generate(RotatingPolicy(period=per_rank), seed, heads)
    assert not torch.allclose(unsharded, expected, rtol=1e-3, atol=1e-3)


def test_score_tables_merged_across_ranks_equal_one_process_table(ranks):
    seed, reports = ranks
    calls = _score_calls(seed)
    shares = [reports[rank]["share"] for rank in range(WORLD)]
    assert sorted(i for share in shares for i in share) == list(range(len(calls))) and all(shares)
    single = ScoreTable(list(_strategy_pool()), HEADS)
    for call in calls:
        single.add(*call)
    for rank in range(WORLD):
        sums, counts, worst = reports[rank]["merged"]
        assert counts == single.counts
        assert sums.keys() == single.sums.keys()
        for key in single.sums:
            for name, total in single.sums[key].items():
                torch.testing.assert_close(torch.from_numpy(sums[key][name]), total, rtol=1e-12, atol=1e-12)
            assert torch.equal(torch.from_numpy(worst[key]), single.max_error[key])


def test_profiling_on_two_processes_merges_both_prompts(ranks):
    """Each rank generated one prompt; after the merge both select from the same statistics of both prompts."""
    _, reports = ranks
    (prompts0, scored0), (prompts1, scored1) = reports[0]["profile"], reports[1]["profile"]
    assert prompts0 == prompts1 == len(PROFILE_PROMPTS)
    assert scored0 and scored0 == scored1


def test_all_reduce_without_process_group_leaves_the_table():
    table = ScoreTable(list(_strategy_pool()), HEADS)
    bucket, layer, scores = _score_calls(torch.initial_seed())[0]
    table.add(bucket, layer, scores)
    before = {name: t.clone() for name, t in table.sums[(bucket, layer)].items()}
    assert all_reduce_score_table(table) is table
    assert table.counts == {(bucket, layer): 1}
    for name, total in before.items():
        assert torch.equal(table.sums[(bucket, layer)][name], total)


def test_ring_attention_is_refused_on_every_rank(ranks):
    _, reports = ranks
    for report in reports.values():
        assert report["ring"] is not None and "ring attention (ring_degree=2)" in report["ring"]


@pytest.mark.parametrize(
    "cp, message",
    [
        (SimpleNamespace(ring_degree=2, ulysses_degree=1), "ring attention"),
        (SimpleNamespace(ring_degree=2, ulysses_degree=2), "ring attention"),
        (None, "ContextParallelConfig"),
    ],
)
def test_ring_and_non_context_parallel_configs_are_refused(cp, message):
    with pytest.raises(ContextParallelError, match=message):
        check_context_parallel(SimpleNamespace(context_parallel_config=cp))


def test_ulysses_config_is_accepted():
    check_context_parallel(SimpleNamespace(context_parallel_config=SimpleNamespace(ring_degree=1, ulysses_degree=4)))
