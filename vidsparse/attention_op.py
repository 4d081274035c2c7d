"""The patched attention kernel as one opaque op, `torch.ops.vidsparse.attention`, and the processors that call it.

A patched processor is an instance of a subclass of the model's own processor class whose `__call__` runs the
original `__call__` code with one global name rebound: diffusers' `dispatch_attention_fn` (or `F`, for processors
that call `F.scaled_dot_product_attention` directly) becomes a *slot* of this module. diffusers still computes the
projections, norms and RoPE; only the attention kernel call lands in vidsparse.

Made for torch.compile:
- The slot calls a `torch.library.custom_op` with a fake implementation, so a compiled patched transformer is one
  graph (`fullgraph=True` works) in which the sparse call is a single node. Which layer, which denoising step,
  dense or sparse, which plan: all of it is decided inside the op at run time, never baked into the graph.
- Every patched processor of one class shares one rebound function (one code object, one globals dict), so the
  layers do not compile separately. The layer reaches the op as a tensor: each processor holds a small CPU int64
  tensor `[installation, layer]`, which its `__call__` hands to the slot through `_CURRENT`. A tensor is a graph
  input, not a constant, so a 30-layer model compiles once, not once per layer (an int would be guarded on and
  hit the recompile limit). Reading it inside the op is a host read of host memory: no device sync.
- An op whose installation is gone (a processor saved by the user and put back after `unpatch`) runs the original
  kernel: nothing sparse escapes an unpatch.

Calls the op cannot represent (dropout, causal masks, backend-specific `attention_kwargs`, masks that are not
tensors, such as the FlexAttention BlockMask of Kandinsky 5's NABLA checkpoints) and calls under
diffusers' context parallelism stay outside it, in eager Python (a graph break, for those cases only).
"""

from __future__ import annotations

import inspect
import sys
import types
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from .parallel import context_parallel_attention


class Attend(Protocol):
    def __call__(self, layer: int, call: "KernelCall") -> torch.Tensor:
        """The output of one intercepted kernel call of patched layer `layer`, in the call's own layout."""

    def warn_once(self, reason: str, layer: int) -> None:
        """Tell the user once that calls like this one run the model's dense kernel."""


#: Installations by key (see `vidsparse.runtime`); a processor's token names one of them.
LIVE: dict[int, Attend] = {}


class _Current:
    """The token of the processor whose attention call is being traced or run (set by its `__call__`)."""

    token: torch.Tensor | None = None


_CURRENT = _Current()


@dataclass
class KernelCall:
    """One intercepted call of the model's attention kernel.

    Attributes:
        query, key, value: as the model passed them: [B, S, H, D] for `dispatch_attention_fn`, [B, H, S, D] for SDPA.
        sdpa: whether the kernel was `F.scaled_dot_product_attention` (else diffusers' `dispatch_attention_fn`).
        backend: the diffusers attention backend the model asked for (its name), None for the default.
    """

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    attn_mask: torch.Tensor | None
    scale: float | None
    enable_gqa: bool
    backend: str | None
    sdpa: bool

    def bhsd(self, x: torch.Tensor) -> torch.Tensor:
        """A tensor in the call's layout viewed as [B, H, S, D]."""
        return x if self.sdpa else x.transpose(1, 2)

    def new_output(self) -> torch.Tensor:
        """An uninitialised output in the call's layout, contiguous (as the fake implementation promises)."""
        return torch.empty_like(self.query, memory_format=torch.contiguous_format)

    def original(
        self, q: torch.Tensor | None = None, k: torch.Tensor | None = None, v: torch.Tensor | None = None,
        mask: Any = ...,
    ) -> torch.Tensor:
        """The model's own kernel on [B, H, S, D] q/k/v (default: the call's own tensors and mask), as [B, H, S, D]."""
        q = self.bhsd(self.query) if q is None else q
        k = self.bhsd(self.key) if k is None else k
        v = self.bhsd(self.value) if v is None else v
        mask = self.attn_mask if mask is ... else mask
        if self.sdpa:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=self.enable_gqa)
        from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

        out = dispatch_attention_fn(
            *(x.transpose(1, 2) for x in (q, k, v)), attn_mask=mask, scale=self.scale, enable_gqa=self.enable_gqa,
            backend=None if self.backend is None else AttentionBackendName(self.backend),
        )
        return out.transpose(1, 2)


def run_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    token: torch.Tensor,
    scale: float | None,
    enable_gqa: bool,
    backend: str | None,
    sdpa: bool,
) -> torch.Tensor:
    """A patched layer's attention, sparse or dense as its installation decides at run time (see module doc).

    This is what `torch.ops.vidsparse.attention` runs; a plain function too, so tests can step into the op.
    """
    call = KernelCall(query, key, value, attn_mask, scale, enable_gqa, backend, sdpa)
    installation_key, layer = token.tolist()  # a host tensor: no device sync
    installation = LIVE.get(installation_key)
    if installation is None:  # the processor outlived its installation
        return in_call_layout(call, call.original())
    return installation(layer, call)


#: The op itself: `run_attention`, opaque to torch.compile (a patched layer's attention, decided at run time).
attention = torch.library.custom_op("vidsparse::attention", mutates_args=())(run_attention)


@attention.register_fake
def _attention_fake(query, key, value, attn_mask, token, scale, enable_gqa, backend, sdpa) -> torch.Tensor:
    return torch.empty_like(query, memory_format=torch.contiguous_format)


def in_call_layout(call: KernelCall, out_bhsd: torch.Tensor) -> torch.Tensor:
    """A [B, H, S, D] result in the call's layout, contiguous (the op's promise to the compiler)."""
    return (out_bhsd if call.sdpa else out_bhsd.transpose(1, 2)).contiguous()


# ----- the slots: what the rebound processor code calls instead of the kernel -------------------------------------
def dispatch_slot(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    attention_kwargs: dict[str, Any] | None = None,
    *,
    backend: Any = None,
    parallel_config: Any = None,
) -> torch.Tensor:
    """Stands in for diffusers' `dispatch_attention_fn` (same signature) inside patched processors."""
    if parallel_config is not None or dropout_p or is_causal or attention_kwargs or not _tensor_or_none(attn_mask):
        return _outside_the_op(
            dict(query=query, key=key, value=value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                 scale=scale, enable_gqa=enable_gqa, attention_kwargs=attention_kwargs, backend=backend,
                 parallel_config=parallel_config),
        )
    backend_name = None if backend is None else getattr(backend, "value", backend)
    return _attention(query, key, value, attn_mask, _CURRENT.token, scale, enable_gqa, backend_name, False)


def sdpa_slot(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """Stands in for `F.scaled_dot_product_attention` inside patched processors that call it directly."""
    if dropout_p or is_causal or not _tensor_or_none(attn_mask):
        return _outside_the_op(
            dict(query=query, key=key, value=value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                 scale=scale, enable_gqa=enable_gqa),
        )
    return _attention(query, key, value, attn_mask, _CURRENT.token, scale, enable_gqa, None, True)


def _attention(query: torch.Tensor, *args: Any) -> torch.Tensor:
    """The op for inference; with gradients wanted (training through a patched model), its body in plain torch ops,
    which autograd differentiates (the op has no backward formula of its own)."""
    if torch.is_grad_enabled() and query.requires_grad:
        return run_attention(query, *args)
    return torch.ops.vidsparse.attention(query, *args)


def _tensor_or_none(mask: Any) -> bool:
    return mask is None or isinstance(mask, torch.Tensor)


@torch.compiler.disable
def _outside_the_op(arguments: dict[str, Any]) -> torch.Tensor:
    """Context parallelism (this rank's heads, then the op again), or a call vidsparse cannot represent (dense)."""
    sdpa = "parallel_config" not in arguments
    if not sdpa and arguments["parallel_config"] is not None:
        return context_parallel_attention(dispatch_slot, arguments)
    installation_key, layer = _CURRENT.token.tolist()
    installation = LIVE.get(installation_key)
    if installation is not None:
        reason = "attention dropout is on" if arguments["dropout_p"] else "causal attention"
        if not sdpa and arguments["attention_kwargs"]:
            reason = "backend-specific attention_kwargs were given"
        if not _tensor_or_none(arguments["attn_mask"]):
            reason = f"the attention mask is a {type(arguments['attn_mask']).__name__}, not a tensor"
        installation.warn_once(reason, layer)
    if sdpa:
        return F.scaled_dot_product_attention(**arguments)
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    return dispatch_attention_fn(**arguments)


# ----- patched processor classes ---------------------------------------------------------------------------------
_SPARSE_CLASSES: dict[tuple[type, str], type] = {}


def sparse_processor_class(cls: type, kernel_global: str) -> type:
    """The subclass of processor class `cls` whose `__call__` runs its code with `kernel_global` rebound to a slot.

    One per (class, kernel name), shared by every layer and every installation (see the module docstring).
    """
    if (cls, kernel_global) not in _SPARSE_CLASSES:
        call = cls.__call__
        rebound_globals = _patched_module(call.__globals__, f"{cls.__name__}.{kernel_global}").__dict__
        if kernel_global == "F":
            # A copy of torch.nn.functional whose scaled_dot_product_attention is the slot: F.pad etc. unchanged.
            functional = types.ModuleType(F.__name__)
            functional.__dict__.update(F.__dict__)
            functional.scaled_dot_product_attention = sdpa_slot
            rebound_globals["F"] = functional
        else:
            rebound_globals[kernel_global] = dispatch_slot
        # A code object of its own: torch.compile caches compiled frames per code object, and the original
        # processor's entries guard on the original globals.
        rebound = types.FunctionType(
            call.__code__.replace(), rebound_globals, call.__name__, call.__defaults__, call.__closure__
        )
        rebound.__kwdefaults__ = call.__kwdefaults__

        def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
            _CURRENT.token = self._vidsparse_token
            return rebound(self, *args, **kwargs)

        # diffusers' Attention.forward filters kwargs by the processor's signature: keep the original one.
        __call__.__signature__ = inspect.signature(call)  # type: ignore[attr-defined]
        _SPARSE_CLASSES[(cls, kernel_global)] = type(
            f"Sparse{cls.__name__}", (cls,), {"__call__": __call__, "__module__": __name__}
        )
    return _SPARSE_CLASSES[(cls, kernel_global)]


def _patched_module(source_globals: dict[str, Any], what: str) -> types.ModuleType:
    """A module (registered in sys.modules) holding a copy of a processor module's globals, to rebind one name in.

    torch.compile resolves the globals of inlined functions through their module's `__name__`: a rebound copy
    that kept the original name would leak the slot into the original processors (cross-attention) of the same
    module, so the copy is a module of its own.
    """
    name = f"{__name__}.patched.{source_globals['__name__']}.{what}"
    module = sys.modules.get(name)
    if module is None:
        module = types.ModuleType(name)
        module.__dict__.update({k: v for k, v in source_globals.items() if k != "__name__"})
        sys.modules[name] = module
    return module


def sparse_processor(original: Any, kernel_global: str, installation_key: int, layer: int) -> Any:
    """A patched copy of processor `original` for layer `layer` of installation `installation_key`."""
    processor = object.__new__(sparse_processor_class(type(original), kernel_global))
    processor.__dict__.update(vars(original))
    processor._vidsparse_token = token = torch.tensor([installation_key, layer], dtype=torch.int64)
    token.vidsparse_layer_token = True  # read on the host on purpose (see vidsparse.testing.host_sync)
    return processor
