"""What vidsparse must know about one model family to hook into its diffusers transformer.

A family adapter never re-implements the model: diffusers' own processor still computes projections, norms and
RoPE. The adapter only says

- which transformer classes it handles (`matches`),
- which attention modules are the spatio-temporal self-attention (`attention_modules`, model order; cross-attention
  is never listed, so it stays dense),
- which processor classes it knows, and which name their `__call__` looks up to run the attention kernel
  (`kernel_global`: `dispatch_attention_fn`, diffusers' dispatcher, or `F`, for processors that call
  `F.scaled_dot_product_attention` directly),
- the latent grid `(frames, height, width)` of a transformer call, read from the forward's arguments
  (`grid`, patch sizes from the config),
- where text tokens sit in the self-attention sequence (`text_position`: None when text lives in cross-attention),
- how many tokens outside the grid come right before the video (`prefix_tokens`: 0 unless the model packs other
  tokens there, as Framepack does its history latents); they are attended densely, like text.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import torch

from ..layout import TextPosition

KernelGlobal = Literal["dispatch_attention_fn", "F"]

_FAMILIES: dict[str, "Family"] = {}


def register_family(cls: type["Family"]) -> type["Family"]:
    """Class decorator: make the family available under `cls.name`."""
    _FAMILIES[cls.name] = cls()
    return cls


def available_families() -> list[str]:
    return sorted(_FAMILIES)


def get_family(name: str) -> "Family":
    if name not in _FAMILIES:
        raise ValueError(f"unknown family {name!r}; available: {', '.join(available_families())}")
    return _FAMILIES[name]


def find_family(transformer: torch.nn.Module) -> "Family | None":
    """The registered family handling this transformer (None if unsupported)."""
    for family in _FAMILIES.values():
        if family.matches(transformer):
            return family
    return None


def supported_classes() -> list[str]:
    return sorted(name for family in _FAMILIES.values() for name in family.transformer_class_names)


class Family(ABC):
    """One model family (one module in `vidsparse/families/`, registered with @register_family)."""

    name: ClassVar[str]
    #: Names of the diffusers transformer classes handled (matched on the class and its bases).
    transformer_class_names: ClassVar[tuple[str, ...]]
    #: "prefix" / "suffix" when text tokens share the self-attention sequence, None otherwise.
    text_position: ClassVar[TextPosition | None] = None
    #: The global name the processors' `__call__` resolves to run attention.
    kernel_global: ClassVar[KernelGlobal]

    def matches(self, transformer: torch.nn.Module) -> bool:
        return any(cls.__name__ in self.transformer_class_names for cls in type(transformer).__mro__)

    @abstractmethod
    def attention_modules(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        """The spatio-temporal self-attention modules, in model order (layer 0 first)."""

    @abstractmethod
    def processor_types(self) -> tuple[type, ...]:
        """Processor classes whose `__call__` vidsparse can intercept (exact types: subclasses may differ)."""

    @abstractmethod
    def grid(self, transformer: torch.nn.Module, inputs: dict[str, Any]) -> tuple[int, int, int] | None:
        """Latent token grid (frames, height, width) after patchify for a forward call, None if unknown.

        `inputs` are the forward's arguments by name (positional ones bound to their parameter names).
        """

    def prefix_tokens(self, transformer: torch.nn.Module, inputs: dict[str, Any]) -> int:
        """Tokens the model puts before the video in self-attention for this forward call (none by default)."""
        return 0

    def num_heads(self, module: torch.nn.Module) -> int:
        return int(module.heads)

    def head_dim(self, module: torch.nn.Module) -> int:
        """Channels per head of a self-attention module (diffusers' `Attention` names its query projection `to_q`)."""
        return module.to_q.out_features // self.num_heads(module)


def bind_forward_inputs(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments of `module.forward(*args, **kwargs)` by parameter name."""
    signature = inspect.signature(type(module).forward)
    bound = signature.bind_partial(module, *args, **kwargs)
    return dict(bound.arguments)


def video_grid_from_5d(
    hidden_states: torch.Tensor, patch: tuple[int, int, int], *, channels_first: bool = True
) -> tuple[int, int, int]:
    """(F, H, W) tokens of a [B, C, F, H, W] (or [B, F, C, H, W]) latent patchified by `patch` = (pt, ph, pw).

    Every axis rounds down like the models' strided Conv3d / reshape patchify.
    """
    if hidden_states.dim() != 5:
        raise ValueError(f"expected a 5-D latent, got shape {tuple(hidden_states.shape)}")
    if channels_first:
        _, _, frames, height, width = hidden_states.shape
    else:
        _, frames, _, height, width = hidden_states.shape
    pt, ph, pw = patch
    return (frames // pt, height // ph, width // pw)


#: One kind of history latent packed before the video: (latents argument, the indices argument without which the model
#: does not pack it, the patch embedding's kernel over (F, H, W), the multiple each axis is padded to first or None).
HistoryInput = tuple[str, str, tuple[int, int, int], "tuple[int, int, int] | None"]


def packed_history_tokens(inputs: dict[str, Any], history: tuple[HistoryInput, ...]) -> int:
    """Tokens of the history latents a forward call packs before the video (Framepack, Helios): each [B, C, F, H, W]
    latent given with its indices, padded (replicated) to whole multiples where the model pads, then patchified by
    its kernel, every axis rounding down like a strided Conv3d."""
    total = 0
    for latents, indices, kernel, pad_to in history:
        x = inputs.get(latents)
        if x is not None and inputs.get(indices) is not None:
            sizes = x.shape[2:] if pad_to is None else [-(-n // m) * m for n, m in zip(x.shape[2:], pad_to)]
            total += math.prod(n // k for n, k in zip(sizes, kernel))
    return total

