"""Sparse attention under diffusers' context parallelism (head-parallel "Ulysses"; ring attention is refused).

With `transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=N))`, every rank runs the model on
1/N of the sequence, and the attention processors pass the parallel config to `dispatch_attention_fn`, whose backend
hands the call to diffusers' `TemplatedUlyssesAttention`: an all-to-all turns q/k/v [B, S/N, H, D] into
[B, S, H/N, D] (rank r holds global heads r*H/N .. (r+1)*H/N - 1), a `forward_op` computes plain attention on that,
and a second all-to-all brings the output back to [B, S/N, H, D].

vidsparse keeps all of diffusers' communication and only supplies the `forward_op`: a patched processor's
intercepted call that carries a parallel config is given to `context_parallel_attention`, which runs diffusers'
templated context-parallel attention with `_local_attention` as the forward op. That op calls the patched kernel
again, without the parallel config, on the full-sequence, local-head tensors, while `head_shard()` says which
global heads they are; the runtime records them in `AttentionCall.heads` / `AttentionCall.total_heads`, so a
per-head policy picks the strategies of this rank's heads and every plan sees the whole sequence, exactly as on
one process. The dense fallbacks of the runtime (dense warm-up, dropout, masks it cannot represent, ...) then run
the model's own kernel (its attention backend, without the parallel config) on the local heads, which is what
diffusers' own forward op computes. `ulysses_anything=True` (H not a multiple of N) works too: rank r holds heads
r*ceil(H/N) onwards, the last rank fewer. The templated function is private diffusers API (checked against 0.42).

Ring attention (`ring_degree > 1`, alone or with Ulysses) splits the sequence of every head across ranks and
merges partial softmaxes; a block plan over the whole sequence does not apply to a slice of it, so those
configurations raise `ContextParallelError` rather than silently losing the speed-up. Inference only: the
backward pass of a sparse context-parallel call raises.
"""

from __future__ import annotations

import contextvars
import functools
from typing import Any, Callable, NamedTuple

import torch


class ContextParallelError(RuntimeError):
    """A context-parallel configuration vidsparse cannot run sparse (ring attention), or a backward pass."""


class HeadShard(NamedTuple):
    """Which heads of the model a head-parallel attention call holds."""

    heads: range  # global head indices of the call's heads, in order
    total: int  # heads of the model's attention layer


_SHARD: contextvars.ContextVar[HeadShard | None] = contextvars.ContextVar("vidsparse_head_shard", default=None)


def head_shard() -> HeadShard | None:
    """The head shard of the attention call being computed inside a Ulysses forward op, None elsewhere."""
    return _SHARD.get()


def check_context_parallel(parallel_config: Any) -> None:
    """Raise ContextParallelError unless `parallel_config` is head-parallel only (Ulysses, ring degree 1)."""
    cp = getattr(parallel_config, "context_parallel_config", None)
    if cp is None:
        raise ContextParallelError(
            "vidsparse: the attention call carries a parallel config without a context-parallel config; only "
            "diffusers' ContextParallelConfig(ulysses_degree=N) is supported"
        )
    if cp.ring_degree > 1:
        raise ContextParallelError(
            f"vidsparse: ring attention (ring_degree={cp.ring_degree}) splits every head's sequence across ranks, so "
            f"per-head block plans over the whole sequence cannot be applied. Use ContextParallelConfig("
            f"ulysses_degree=N) (head parallelism; add ulysses_anything=True if N does not divide the number of "
            f"heads), or vidsparse.unpatch(pipe) to run ring attention densely."
        )


def context_parallel_attention(kernel: Callable[..., torch.Tensor], arguments: dict[str, Any]) -> torch.Tensor:
    """One `dispatch_attention_fn` call with a context-parallel config, with `kernel` as the per-rank attention.

    Args:
        kernel: the patched kernel (takes `dispatch_attention_fn`'s arguments); called back with the full-sequence,
            local-head q/k/v ([B, S, H/N, D]) and `parallel_config=None`.
        arguments: the intercepted call's arguments by name (`dispatch_attention_fn`'s signature), q/k/v as
            [B, S/N, H, D].

    Returns:
        The attention output [B, S/N, H, D], like the unpatched call.
    """
    from diffusers.models.attention_dispatch import _templated_context_parallel_attention

    config = arguments["parallel_config"]
    check_context_parallel(config)
    local = {**arguments, "parallel_config": None}
    forward_op = functools.partial(_local_attention, kernel, local, arguments["query"].shape[2])
    return _templated_context_parallel_attention(
        arguments["query"],
        arguments["key"],
        arguments["value"],
        arguments["attn_mask"],
        arguments["dropout_p"],
        arguments["is_causal"],
        arguments["scale"],
        arguments["enable_gqa"],
        False,
        forward_op=forward_op,
        backward_op=_no_backward,
        _parallel_config=config,
    )


def _local_attention(
    kernel: Callable[..., torch.Tensor],
    arguments: dict[str, Any],
    total_heads: int,
    ctx: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    dropout_p: float,
    is_causal: bool,
    scale: float | None,
    enable_gqa: bool,
    return_lse: bool,
    _save_ctx: bool = True,
    _parallel_config: Any = None,
) -> torch.Tensor:
    """diffusers' `forward_op` protocol: attention of [B, S, H_local, D] tensors after the Ulysses all-to-all."""
    if return_lse:
        raise ContextParallelError("vidsparse: a log-sum-exp output was requested from a sparse attention call")
    cp = _parallel_config.context_parallel_config
    # Rank r holds heads r*ceil(H/N) ...: with "Ulysses anything" (H not a multiple of N) diffusers pads the head
    # count up to a multiple of N for the all-to-all and drops the padding before this op, so the last rank has fewer.
    first = cp._ulysses_local_rank * -(-total_heads // cp.ulysses_degree)
    heads = range(first, first + query.shape[2])
    if heads.stop > total_heads:
        raise ContextParallelError(f"vidsparse: rank holds heads {heads} of a {total_heads}-head layer")
    call = {
        **arguments,
        "query": query,
        "key": key,
        "value": value,
        "attn_mask": attn_mask,
        "dropout_p": dropout_p,
        "is_causal": is_causal,
        "scale": scale,
        "enable_gqa": enable_gqa,
    }
    token = _SHARD.set(HeadShard(heads, total_heads))
    try:
        return kernel(**call)
    finally:
        _SHARD.reset(token)


def _no_backward(ctx: Any, grad_out: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    raise ContextParallelError(
        "vidsparse: sparse attention under context parallelism is inference-only (no backward pass); "
        "run training with vidsparse.unpatch(pipe)"
    )
