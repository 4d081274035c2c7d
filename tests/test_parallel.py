"""Sparse attention under diffusers' context parallelism (vidsparse.parallel).

The main test runs diffusers' own Ulysses context parallelism on CPU: two processes (gloo), each with the tiny Wan
pipeline (4 heads) patched with a policy whose heads all use different strategies (static and dynamic), compared
with the same patched pipeline in this process. diffusers 0.42 computes `rank % torch.accelerator.device_count()`
when it builds the mesh, which divides by zero on a machine without accelerator; the workers report one device
(the device is only recorded, tensors stay on CPU).
"""

from __future__ import annotations

import os
import socket
import traceback
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

from vidsparse.parallel import ContextParallelError, check_context_parallel
from vidsparse.patch import SparseController, install
from vidsparse.strategies import get
from vidsparse.testing import TINY_CALL, tiny_pipeline

HEADS = 4
WORLD = 2
TIMEOUT_S = 240


def _strategy_pool() -> tuple:
    return (
        get("diagonal", width=1),
        get("skip"),
        get("draft", keep_ratio=0.3),
        get("neighborhood", window=(1, 3, 3)),
    )


class RotatingPolicy:
    """Head h of layer l uses pool[(h + l) % 4]: every head of a layer differs, and so does each layer.

    `period` < HEADS repeats the first `period` heads' strategies (what a rank that ignored its global head
    indices would use).
    """

    def __init__(self, period: int = HEADS) -> None:
        self.pool = _strategy_pool()
        self.period = period
        self.asked: set[int] = set()

    def strategies(self, step, num_steps, layer, num_heads):
        self.asked.add(num_heads)
        return [self.pool[(h % self.period + layer) % len(self.pool)] for h in range(num_heads)]


class Recorder:
    """A controller that records what each call holds and passes it on."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.seen: set[tuple[range | None, int | None, int]] = set()

    def __call__(self, call):
        self.seen.add((call.heads, call.total_heads, call.q.shape[2]))
        return self.inner(call)


def _generate(policy: RotatingPolicy, seed: int, parallel: bool = False) -> tuple[torch.Tensor, Recorder]:
    pipe = tiny_pipeline("wan", num_attention_heads=HEADS)
    recorder = Recorder(SparseController(policy, backend="gather"))
    install(pipe, recorder)
    if parallel:
        from diffusers import ContextParallelConfig

        pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=WORLD))
    generator = torch.Generator().manual_seed(seed)
    embeds = torch.randn(1, 16, 32, generator=generator)
    out = pipe(
        prompt_embeds=embeds,
        negative_prompt_embeds=torch.randn(1, 16, 32, generator=generator),
        generator=generator,
        output_type="latent",
        **TINY_CALL["wan"],
    )
    return out.frames, recorder


def _worker(rank: int, port: int, seed: int, results) -> None:
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.set_num_threads(1)
        import torch.distributed as dist

        dist.init_process_group("gloo", rank=rank, world_size=WORLD)
        torch.accelerator.device_count = lambda: 1  # see the module docstring
        policy = RotatingPolicy()
        out, recorder = _generate(policy, seed, parallel=True)
        results.put((rank, out.numpy(), recorder.seen, policy.asked, recorder.inner.stats))
        dist.destroy_process_group()
    except BaseException:
        results.put((rank, traceback.format_exc(), None, None, None))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ulysses_matches_single_process_with_per_head_strategies():
    seed = torch.initial_seed() % (2**31)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, seed, results), daemon=True) for r in range(WORLD)]
    for p in procs:
        p.start()
    try:
        expected, recorder = _generate(RotatingPolicy(), seed)
        stats = recorder.inner.stats
        assert stats["sparse_calls"] > 0 and stats["dense_calls"] == 0
        assert {heads for heads, _, _ in recorder.seen} == {None}
        # What a rank would compute if it used the strategies of heads 0..H/N-1 instead of its own heads.
        unsharded, _ = _generate(RotatingPolicy(period=HEADS // WORLD), seed)
        reports = {}
        for _ in range(WORLD):
            rank, out, seen, asked, rank_stats = results.get(timeout=TIMEOUT_S)
            assert seen is not None, f"rank {rank} failed:\n{out}"
            reports[rank] = (torch.from_numpy(out), seen, asked, rank_stats)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    seq_len = 3 * 16 * 16  # 9 frames of 256 x 256 -> latent 3 x 32 x 32 -> patches (1, 2, 2)
    local = HEADS // WORLD
    for rank, (out, seen, asked, rank_stats) in sorted(reports.items()):
        # This rank's global heads, over the whole sequence (after diffusers' all-to-all).
        assert seen == {(range(rank * local, (rank + 1) * local), HEADS, seq_len)}
        assert asked == {HEADS}  # the policy is asked for the model's heads; the controller keeps this rank's
        assert rank_stats["sparse_calls"] == stats["sparse_calls"] and rank_stats["dense_calls"] == 0
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(unsharded, expected, rtol=1e-3, atol=1e-3)


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
