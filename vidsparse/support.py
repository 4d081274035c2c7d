"""Is this pipeline supported, and which of its attention modules would become sparse? Answered before running it.

    report = vidsparse.support.describe_support(pipe)      # a loaded pipeline or transformer
    print(report)                                          # family, layers, heads; sparse and dense modules

    vidsparse inspect-model Wan-AI/Wan2.1-T2V-1.3B-Diffusers   # configs only: no weights are loaded
    vidsparse inspect-model tiny-kandinsky5 --variant i2v     # a tiny pipeline (vidsparse.testing)

For a hub id or a local folder, `inspect-model` builds the pipeline's transformer(s) from their configs on the meta
device (`model_index.json` and `transformer/config.json`, or a transformer folder's `config.json`): it reads a few
kilobytes and allocates nothing, so a 14B model is inspected in a second. A hub id is resolved by diffusers (from the
local cache when offline). `tiny-wan` and `tiny-<family>` name the same models as `vidsparse profile --model`.

Attention modules are grouped by name with layer indices replaced by `*`. "sparse" modules are the spatio-temporal
self-attention vidsparse patches; every other attention module (cross-attention, text-only or audio attention)
keeps the model's own kernel.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .families import find_family
from .runtime import ModelInfo, PatchError, inspect_model, no_transformer_message

#: Video transformers of diffusers 0.42 that vidsparse knowingly leaves alone, and why.
NOT_APPLICABLE: dict[str, str] = {
    "SanaVideoTransformer3DModel": "its self-attention is linear attention (ReLU feature maps, cost linear in the "
    "tokens): there is no softmax score matrix to make sparse; its softmax attention is text cross-attention",
    "Cosmos3OmniTransformer": "its generation pathway attends from the generated tokens over [understanding tokens, "
    "generated tokens] (queries and keys of different lengths, packed items) and its understanding pathway is "
    "causal: neither is one self-attention over a token grid",
    "Kandinsky6SRTransformer3DModel": "its self-attention is already block-sparse (NABLA: a flex BlockMask over "
    "tokens reordered into 8x8 spatial blocks)",
    "WanAnimate2Transformer3DModel": "its generation pass is already block-sparse (a flex BlockMask over "
    "[generation, reference] tokens)",
    "SanaWMTransformer3DModel": "its softmax layers are plain modules calling SDPA in their forward, not diffusers "
    "attention processors the runtime could rebind (its other layers are linear GDN attention)",
    "LatteTransformer3DModel": "its attention is factorized, not spatio-temporal: spatial blocks attend within one "
    "frame (each frame its own sequence of height x width tokens, 1,024 at 512 px) and temporal blocks across the "
    "frames at one position (16 tokens); block-sparse plans over a frame grid have no joint sequence to thin out",
    "AnyFlowFARTransformer3DModel": "its self-attention is block-causal over frame chunks (a flex BlockMask from its "
    "own processor, which requires the flex backend) with a KV cache of compressed past frames, not one bidirectional "
    "attention over a grid; the bidirectional AnyFlowTransformer3DModel is supported",
    "JoyImageEditPlusTransformer3DModel": "it packs the target and reference images, of different sizes, as one token "
    "list padded per batch entry (their own RoPE offsets, a mask over [images, padding, text]): there is no single "
    "latent grid to tile; JoyImageEditTransformer3DModel (items of one size) is supported",
}


@dataclass(frozen=True)
class ModuleGroup:
    """Attention modules whose names differ only in layer indices (`pattern` has `*` for them)."""

    pattern: str
    count: int
    processor: str

    def __str__(self) -> str:
        return f"{self.pattern}  ({self.count} x {self.processor})"


@dataclass(frozen=True)
class SupportReport:
    """What `vidsparse.patch` would do to a pipeline or transformer."""

    transformer_classes: tuple[str, ...]
    supported: bool
    reason: str | None  # why not, when not supported
    info: ModelInfo | None  # family and layer shape, when supported
    sparse: tuple[ModuleGroup, ...]
    dense: tuple[ModuleGroup, ...]

    def __str__(self) -> str:
        classes = ", ".join(self.transformer_classes)
        if self.supported:
            info = self.info
            lines = [f"{classes}: supported (family {info.family}): {info.num_layers} self-attention layers, "
                     f"{info.num_heads} heads of {info.head_dim}"]
        else:
            lines = [f"{classes}: not supported: {self.reason}"]
        lines += [f"  sparse: {group}" for group in self.sparse]
        lines += [f"  dense:  {group}" for group in self.dense]
        return "\n".join(lines)


def _transformers(obj: Any) -> dict[str, torch.nn.Module]:
    if isinstance(obj, torch.nn.Module):
        return {"transformer": getattr(obj, "_orig_mod", obj)}
    found = {name: getattr(obj, name, None) for name in ("transformer", "transformer_2")}
    return {name: getattr(t, "_orig_mod", t) for name, t in found.items() if isinstance(t, torch.nn.Module)}


def _groups(named: list[tuple[str, torch.nn.Module]]) -> tuple[ModuleGroup, ...]:
    counts: dict[tuple[str, str], int] = {}
    for name, module in named:
        key = (re.sub(r"(?<=\.)\d+(?=\.|$)", "*", name), type(module.processor).__name__)
        counts[key] = counts.get(key, 0) + 1
    return tuple(ModuleGroup(pattern, count, processor) for (pattern, processor), count in counts.items())


def describe_support(pipe_or_transformer: Any) -> SupportReport:
    """Whether `vidsparse.patch` supports this pipeline (or transformer), and which attention modules it would make
    sparse. Nothing is patched or run."""
    transformers = _transformers(pipe_or_transformer)
    if not transformers:
        raise ValueError(no_transformer_message(pipe_or_transformer))
    classes = tuple(type(t).__name__ for t in transformers.values())
    try:
        info, reason = inspect_model(pipe_or_transformer), None
    except PatchError as error:
        info = None
        known = [NOT_APPLICABLE[name] for name in classes if name in NOT_APPLICABLE]
        reason = known[0] if known else str(error)
    sparse, dense = [], []
    for prefix, transformer in transformers.items():
        family = find_family(transformer) if info is not None else None
        patched = {id(m) for m in family.attention_modules(transformer)} if family is not None else set()
        for name, module in transformer.named_modules():
            if hasattr(module, "processor"):
                (sparse if id(module) in patched else dense).append((f"{prefix}.{name}", module))
    return SupportReport(classes, info is not None, reason, info, _groups(sparse), _groups(dense))


# ----- loading for the command line ------------------------------------------------------------------------------
def load_for_inspection(model: str, variant: str | None = None) -> Any:
    """A tiny pipeline for `tiny-...` names, else the transformer(s) of a hub id or folder built on the meta device."""
    if model == "tiny-wan" and variant is None:
        from .evaluate.models import load_pipeline

        return load_pipeline(model)
    if model.startswith("tiny-"):
        from .testing import tiny_pipeline

        return tiny_pipeline(model.removeprefix("tiny-").removesuffix("-random"), variant=variant)
    if variant is not None:
        raise ValueError(f"--variant applies to tiny-<family> models only, got --variant {variant!r} for {model!r}")
    return _empty_transformers(model)


def _empty_transformers(model: str) -> Any:
    """The diffusers transformer(s) of a pipeline (or transformer) folder or hub id, from configs, without weights."""
    import diffusers
    from accelerate import init_empty_weights
    from diffusers import DiffusionPipeline

    def build(class_name: str, subfolder: str | None = None) -> torch.nn.Module:
        cls = getattr(diffusers, class_name, None)
        if cls is None:
            raise ValueError(f"{model}: {class_name} is not a diffusers {diffusers.__version__} class")
        config = cls.load_config(model, subfolder=subfolder)
        with init_empty_weights():
            return cls.from_config(config)

    if (Path(model) / "config.json").is_file():  # a transformer folder
        return build(json.loads((Path(model) / "config.json").read_text())["_class_name"])
    index = DiffusionPipeline.load_config(model)
    components = {}
    for name in ("transformer", "transformer_2"):
        library, class_name = index.get(name) or (None, None)
        if library == "diffusers" and class_name:
            components[name] = build(class_name, subfolder=name)
    if not components:
        raise ValueError(f"{model}: the pipeline {index.get('_class_name')} has no diffusers `transformer` component")
    return types.SimpleNamespace(**components)


def register(subparsers: Any) -> None:
    """Add `inspect-model` to the `vidsparse` parser."""
    p = subparsers.add_parser(
        "inspect-model", help="say whether a model is supported and which attention modules become sparse",
        description="Build the model's transformer(s) from their configs (no weights) and report whether "
                    "vidsparse.patch supports them, the self-attention layers it would make sparse and the "
                    "attention modules that stay dense. Exit status 0 if supported, 1 if not.",
    )
    p.add_argument("model", help="hub id, local pipeline or transformer folder, tiny-wan or tiny-<family>")
    p.add_argument("--variant", default=None, help="variant of a tiny-<family> pipeline (e.g. i2v)")
    p.set_defaults(func=run_inspect_model)


def run_inspect_model(args: argparse.Namespace) -> int:
    report = describe_support(load_for_inspection(args.model, args.variant))
    print(f"{args.model}\n{report}", file=sys.stdout)
    return 0 if report.supported else 1
