"""Hooking a controller into a diffusers video transformer without vendoring model code.

How a call flows, for one patched self-attention module:

1. A forward pre-hook on the transformer reads the latent grid (F, H, W) of the call from its inputs (the family
   adapter knows the patch sizes), and, for a bare transformer, the timestep.
2. The module's processor is replaced by an instance of a subclass of its own class whose `__call__` runs the
   *original* processor code object with one global name rebound (`dispatch_attention_fn`, or `F` for processors
   that call `F.scaled_dot_product_attention` directly). So diffusers still computes the projections, the norms
   and RoPE; only the attention kernel call lands in vidsparse.
3. The intercepted call becomes an `AttentionCall` (q, k, v as [B, H, S, D] in the model's order, a VideoLayout,
   the layer index and the denoising step) and goes to the controller, which returns the attention output.
   Anything vidsparse cannot represent exactly (dropout, causal, an unexpected sequence length, a mask that is
   not a key-padding mask) runs the original kernel unchanged, with a warning once. Calls under diffusers'
   context parallelism go through `vidsparse.parallel` (Ulysses: this rank's heads over the whole sequence).

Key-padding masks (HunyuanVideo pads text and masks the padded keys for every query): the batch is split by
valid length, the controller sees each group trimmed to its valid tokens (padded keys dropped, which is exactly
what the mask does), and the padded query rows, whose outputs the model discards, are computed by the model's
own kernel with its own mask.

Step tracking: for a pipeline, the scheduler's `set_timesteps` (start of a call: step 0, number of steps) and
`step` (one denoising step done) are wrapped on the scheduler instance. This counts steps, not transformer calls,
so classifier-free guidance (one or two transformer calls per step), batch > 1, Wan 2.2's two experts (one shared
count), CPU offload and `torch.compile` of the transformer do not change it. A bare transformer has no scheduler:
its step is counted from changes of the `timestep` input (a new call starts when the timestep goes up) and the
number of steps is unknown (None).
"""

from __future__ import annotations

import functools
import inspect
import types
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F

from .families import Family, find_family, get_family, supported_classes
from .families.base import bind_forward_inputs
from .layout import VideoLayout
from .parallel import context_parallel_attention, head_shard


class DenseFallbackWarning(UserWarning):
    """A patched attention call ran the model's own dense kernel because vidsparse could not represent it."""


class PatchError(RuntimeError):
    """vidsparse cannot be installed on (or removed from) this object; nothing was changed."""


# ----- what a controller sees --------------------------------------------------------------------------------
@dataclass(eq=False)
class AttentionCall:
    """One self-attention call of one patched layer.

    Attributes:
        layer: index among the patched self-attention modules (0..L-1) in model order; for pipelines with two
            transformers (Wan 2.2 A14B) `transformer` has layers 0..L1-1 and `transformer_2` L1..L1+L2-1.
        step, num_steps: denoising step index in the current pipeline call and number of steps (None if unknown).
        q, k, v: [B, H, S, D] in the model's token order, after the model's norms and RoPE.
        layout: where the tokens sit (latent grid, text tokens and their position).
        scale: softmax scale the model asked for (None = 1/sqrt(D)).
        attention_mask: the model's mask for exactly these tokens, or None when none is needed (key padding is
            trimmed away by the runtime before the controller is called).
        heads, total_heads: under head-parallel context parallelism (see vidsparse.parallel), the global indices of
            q/k/v's heads and the model's head count; None when q/k/v hold all heads.
    """

    layer: int
    step: int | None
    num_steps: int | None
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    layout: VideoLayout
    scale: float | None
    attention_mask: torch.Tensor | None = None
    heads: range | None = None
    total_heads: int | None = None
    _dense: Callable[[], torch.Tensor] | None = field(default=None, repr=False)

    def dense(self) -> torch.Tensor:
        """What the unpatched model computes for this call, [B, H, S, D] (the model's own kernel when patched)."""
        if self._dense is not None:
            return self._dense()
        return F.scaled_dot_product_attention(self.q, self.k, self.v, attn_mask=self.attention_mask, scale=self.scale)


class AttentionController(Protocol):
    def __call__(self, call: AttentionCall) -> torch.Tensor:
        """The attention output for `call`, [B, H, S, D] in the model's order."""


# ----- the two calling conventions of attention kernels in diffusers ----------------------------------------
def _sdpa_signature(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None, enable_gqa=False):
    """Signature of torch.nn.functional.scaled_dot_product_attention (a builtin without introspectable one)."""


@dataclass(frozen=True)
class _Convention:
    """How an intercepted kernel takes its arguments: parameter names and tensor layout."""

    signature: inspect.Signature
    sequence_dim: int  # 1: [B, S, H, D] (diffusers' dispatch_attention_fn), 2: [B, H, S, D] (SDPA)

    def to_bhsd(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.sequence_dim == 2 else x.transpose(1, 2)

    def from_bhsd(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.sequence_dim == 2 else x.transpose(1, 2)


def _convention(kernel_global: str, original: Callable) -> _Convention:
    if kernel_global == "F":
        return _Convention(inspect.signature(_sdpa_signature), sequence_dim=2)
    return _Convention(inspect.signature(original), sequence_dim=1)


# ----- step tracking -------------------------------------------------------------------------------------------
_MISSING = object()


class _SchedulerStepTracker:
    """Counts `scheduler.step` calls since the last `scheduler.set_timesteps` (see the module docstring)."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.count: int | None = None
        self.num_steps: int | None = None
        self._saved: dict[str, Any] = {}

    def attach(self) -> None:
        sch = self.scheduler
        self._saved = {name: sch.__dict__.get(name, _MISSING) for name in ("set_timesteps", "step")}
        set_timesteps, step = sch.set_timesteps, sch.step

        @functools.wraps(set_timesteps)
        def tracked_set_timesteps(*args: Any, **kwargs: Any) -> Any:
            out = set_timesteps(*args, **kwargs)
            self.count, self.num_steps = 0, len(sch.timesteps)
            return out

        @functools.wraps(step)
        def tracked_step(*args: Any, **kwargs: Any) -> Any:
            out = step(*args, **kwargs)
            if self.count is not None:
                self.count += 1
            return out

        sch.set_timesteps, sch.step = tracked_set_timesteps, tracked_step

    def detach(self) -> None:
        for name, saved in self._saved.items():
            if saved is _MISSING:
                self.scheduler.__dict__.pop(name, None)
            else:
                setattr(self.scheduler, name, saved)

    def observe(self, inputs: dict[str, Any]) -> None:
        """Nothing to read from the transformer's inputs: the scheduler says where the loop is."""

    def current(self) -> tuple[int | None, int | None]:
        if self.count is None:
            return None, None
        # Video-to-video pipelines start part-way into the schedule and say so with set_begin_index.
        begin = getattr(self.scheduler, "begin_index", None) or 0
        return begin + self.count, self.num_steps


class _TimestepTracker:
    """Bare transformer: a step is a run of calls with the same timestep; a larger timestep starts a new call.

    Timesteps cast to bfloat16 by a pipeline may make two adjacent steps look equal; pass the pipeline to
    `patch` for exact counts.
    """

    def __init__(self) -> None:
        self.last: float | None = None
        self.step: int | None = None

    def attach(self) -> None:
        pass

    def detach(self) -> None:
        pass

    def observe(self, inputs: dict[str, Any]) -> None:
        timestep = inputs.get("timestep")
        if timestep is None:
            return
        # Per-token timesteps (Wan 2.2 TI2V) are 0 on conditioning frames: the step's timestep is the largest.
        value = float(torch.as_tensor(timestep).max())
        if self.last is None or value > self.last:
            self.step = 0
        elif value < self.last:
            self.step += 1
        self.last = value

    def current(self) -> tuple[int | None, int | None]:
        return self.step, None


# ----- the installation ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelInfo:
    """What a profile must match: the family and the shape of the patched self-attention layers."""

    family: str
    transformer_classes: tuple[str, ...]
    layers_per_transformer: tuple[int, ...]
    num_layers: int
    num_heads: int
    head_dim: int

    @property
    def first_layers(self) -> tuple[int, ...]:
        """Global index of the first self-attention layer of each transformer."""
        starts, offset = [], 0
        for count in self.layers_per_transformer:
            starts.append(offset)
            offset += count
        return tuple(starts)


@dataclass
class _Target:
    transformer: torch.nn.Module
    family: Family
    modules: list[torch.nn.Module]
    layer_offset: int


@dataclass
class _PatchedTransformer:
    transformer: torch.nn.Module
    family: Family
    grid: tuple[int, int, int] | None = None
    hook: Any = None
    swapped: list[tuple[torch.nn.Module, Any]] = field(default_factory=list)


# Installations by transformer (weak: a patched transformer that is garbage collected leaves nothing behind).
_INSTALLED: "weakref.WeakKeyDictionary[torch.nn.Module, _Installation]" = weakref.WeakKeyDictionary()


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module under a `torch.compile` wrapper (OptimizedModule), or the module itself."""
    return getattr(module, "_orig_mod", module)


def _resolve(obj: Any) -> tuple[list[torch.nn.Module], Any]:
    """(transformers in layer-numbering order, the pipeline's scheduler or None) of a pipeline or transformer."""
    if isinstance(obj, torch.nn.Module):
        return [_unwrap(obj)], None
    transformers = [getattr(obj, name, None) for name in ("transformer", "transformer_2")]
    transformers = [_unwrap(t) for t in transformers if isinstance(t, torch.nn.Module)]
    if not transformers:
        raise PatchError(
            f"expected a diffusers pipeline (with a `transformer`) or a transformer module, got {type(obj).__name__}"
        )
    return transformers, getattr(obj, "scheduler", None)


def _targets(transformers: list[torch.nn.Module], family: str | None) -> list[_Target]:
    targets, offset = [], 0
    for transformer in transformers:
        fam = get_family(family) if family is not None else find_family(transformer)
        if fam is None or not fam.matches(transformer):
            what = f"family {family!r}" if family is not None else "vidsparse"
            raise PatchError(
                f"{type(transformer).__name__} is not supported by {what}; supported transformers: "
                f"{', '.join(supported_classes())}"
            )
        modules = fam.attention_modules(transformer)
        if not modules:
            raise PatchError(f"{type(transformer).__name__} has no self-attention layers to patch")
        known = fam.processor_types()
        for index, module in enumerate(modules):
            if type(module.processor) not in known:
                raise PatchError(
                    f"layer {offset + index} of {type(transformer).__name__} uses processor "
                    f"{type(module.processor).__name__}; vidsparse ({fam.name}) knows "
                    f"{', '.join(t.__name__ for t in known)}. Restore the default processor before patching."
                )
        targets.append(_Target(transformer, fam, modules, offset))
        offset += len(modules)
    return targets


def inspect_model(pipe_or_transformer: Any, *, family: str | None = None) -> ModelInfo:
    """Family and layer shape of what `install` / `patch` would patch (raises PatchError if unsupported)."""
    transformers, _ = _resolve(pipe_or_transformer)
    targets = _targets(transformers, family)
    modules = [m for t in targets for m in t.modules]
    heads = {t.family.num_heads(m) for t in targets for m in t.modules}
    if len(heads) != 1:
        raise PatchError(f"self-attention layers have different head counts {sorted(heads)}")
    num_heads = heads.pop()
    head_dim = targets[0].family.head_dim(modules[0])
    return ModelInfo(
        family=targets[0].family.name,
        transformer_classes=tuple(type(t.transformer).__name__ for t in targets),
        layers_per_transformer=tuple(len(t.modules) for t in targets),
        num_layers=len(modules),
        num_heads=num_heads,
        head_dim=head_dim,
    )


def installed_controller(pipe_or_transformer: Any) -> AttentionController | None:
    """The controller installed on this pipeline or transformer, or None."""
    transformers, _ = _resolve(pipe_or_transformer)
    for transformer in transformers:
        if transformer in _INSTALLED:
            return _INSTALLED[transformer].controller
    return None


def install(pipe_or_transformer: Any, controller: AttentionController, *, family: str | None = None) -> None:
    """Route every spatio-temporal self-attention call of the pipeline's transformer(s) to `controller`.

    Either everything is installed or nothing is: an unsupported model, an unknown processor or an object that
    is already patched raises PatchError and leaves it as it was.
    """
    transformers, scheduler = _resolve(pipe_or_transformer)
    patched = [t for t in transformers if t in _INSTALLED]
    if patched:
        raise PatchError(
            f"{type(patched[0]).__name__} is already patched by vidsparse; call vidsparse.unpatch(...) first"
        )
    targets = _targets(transformers, family)
    tracker = _SchedulerStepTracker(scheduler) if scheduler is not None else _TimestepTracker()
    _Installation(targets, tracker, controller).apply()


def uninstall(pipe_or_transformer: Any) -> None:
    """Remove vidsparse from the pipeline or transformer, restoring its processors, hooks and scheduler exactly.

    A pipeline patched as a whole is unpatched as a whole, whichever of its transformers is given.
    """
    transformers, _ = _resolve(pipe_or_transformer)
    installations = {id(_INSTALLED[t]): _INSTALLED[t] for t in transformers if t in _INSTALLED}
    if not installations:
        raise PatchError(f"{type(pipe_or_transformer).__name__} is not patched by vidsparse")
    for installation in installations.values():
        installation.remove()


class _Installation:
    def __init__(self, targets: list[_Target], tracker: Any, controller: AttentionController) -> None:
        self.targets = targets
        self.tracker = tracker
        self.controller = controller
        self.models = [_PatchedTransformer(t.transformer, t.family) for t in targets]
        self._warned: set[str] = set()
        self._layouts: dict[tuple, VideoLayout] = {}

    # -- install / remove -------------------------------------------------------------------------------
    def apply(self) -> None:
        try:
            for target, model in zip(self.targets, self.models):
                model.hook = target.transformer.register_forward_pre_hook(
                    functools.partial(self._pre_hook, model), with_kwargs=True
                )
                for index, module in enumerate(target.modules):
                    original = module.processor
                    module.processor = self._sparse_processor(original, model, target.layer_offset + index)
                    model.swapped.append((module, original))
            self.tracker.attach()
        except BaseException:
            self._undo()
            raise
        for model in self.models:
            _INSTALLED[model.transformer] = self

    def remove(self) -> None:
        self._undo()
        for model in self.models:
            _INSTALLED.pop(model.transformer, None)

    def _undo(self) -> None:
        self.tracker.detach()
        for model in self.models:
            for module, original in reversed(model.swapped):
                # Keep attribute changes made through the wrapper (e.g. set_attention_backend) on the original.
                for name, value in vars(module.processor).items():
                    if not name.startswith("_vidsparse_"):
                        setattr(original, name, value)
                module.processor = original
            model.swapped.clear()
            if model.hook is not None:
                model.hook.remove()
                model.hook = None

    def _sparse_processor(self, original: Any, model: _PatchedTransformer, layer: int) -> Any:
        cls = type(original)
        kernel_name = model.family.kernel_global
        call = cls.__call__
        original_kernel = call.__globals__[kernel_name]
        if kernel_name == "F":
            original_kernel = original_kernel.scaled_dot_product_attention
        slot = _Slot(self, model, layer, original_kernel, _convention(kernel_name, original_kernel))
        replacement: Any = slot
        if kernel_name == "F":
            # A copy of torch.nn.functional whose scaled_dot_product_attention is the slot: F.pad etc. unchanged.
            replacement = types.ModuleType(F.__name__)
            replacement.__dict__.update(F.__dict__)
            replacement.scaled_dot_product_attention = slot
        rebound_globals = dict(call.__globals__)
        rebound_globals[kernel_name] = replacement
        # A code object of its own: torch.compile caches compiled frames per code object, and a cache entry made for
        # the original processor refers to names in the original globals.
        code = call.__code__.replace()
        rebound = types.FunctionType(code, rebound_globals, call.__name__, call.__defaults__, call.__closure__)
        rebound.__kwdefaults__ = call.__kwdefaults__
        processor = object.__new__(_sparse_class(cls))
        processor.__dict__.update(vars(original))
        processor._vidsparse_call = rebound
        processor._vidsparse_layer = layer
        return processor

    # -- per call ---------------------------------------------------------------------------------------
    @torch.compiler.disable
    def _pre_hook(self, model: _PatchedTransformer, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        inputs = bind_forward_inputs(module, args, kwargs)
        model.grid = model.family.grid(module, inputs)
        self.tracker.observe(inputs)

    def warn_once(self, reason: str, layer: int) -> None:
        """One warning per reason (not per layer: a 60-layer model would repeat it 60 times a step)."""
        if reason not in self._warned:
            self._warned.add(reason)
            warnings.warn(
                f"vidsparse: {reason} (layer {layer}, and any other layer where it recurs); running the model's "
                f"dense attention", DenseFallbackWarning, stacklevel=4,
            )

    def layout(self, grid: tuple[int, int, int], text_tokens: int, text_position: str | None) -> VideoLayout:
        key = (grid, text_tokens, text_position)
        if key not in self._layouts:
            self._layouts[key] = VideoLayout(*grid, text_tokens=text_tokens, text_position=text_position or "suffix")
        return self._layouts[key]


def _sparse_class(cls: type) -> type:
    """Subclass of a processor class whose `__call__` runs the rebound copy of the original `__call__`."""
    if cls not in _SPARSE_CLASSES:

        def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
            return self._vidsparse_call(self, *args, **kwargs)

        # diffusers' Attention.forward filters kwargs by the processor's signature: keep the original one.
        __call__.__signature__ = inspect.signature(cls.__call__)
        _SPARSE_CLASSES[cls] = type(f"Sparse{cls.__name__}", (cls,), {"__call__": __call__, "__module__": __name__})
    return _SPARSE_CLASSES[cls]


_SPARSE_CLASSES: dict[type, type] = {}


class _Slot:
    """Stands in for the attention kernel inside one patched processor."""

    def __init__(
        self, installation: _Installation, model: _PatchedTransformer, layer: int, original: Callable,
        convention: _Convention,
    ) -> None:
        self.installation = installation
        self.model = model
        self.layer = layer
        self.original = original
        self.convention = convention

    @torch.compiler.disable
    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        bound = self.convention.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        if bound.arguments.get("parallel_config") is not None:
            # Context parallelism: diffusers' all-to-all, then this kernel again on this rank's heads.
            return context_parallel_attention(self, bound.arguments)
        q, k, v = (self.convention.to_bhsd(bound.arguments[name]) for name in ("query", "key", "value"))
        prepared = self._prepare(bound.arguments, q, k, v)
        if isinstance(prepared, str):
            self.installation.warn_once(prepared, self.layer)
            return self.original(*args, **kwargs)
        layout, lengths = prepared
        if lengths is None:
            out = self._run(bound, q, k, v, layout, None)
        else:
            out = self._run_padded(bound, q, k, v, layout, lengths)
        return self.convention.from_bhsd(out)

    def _prepare(
        self, arguments: dict, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[VideoLayout, torch.Tensor | None] | str:
        """(layout, valid key lengths or None) of a call vidsparse can run, or why it cannot."""
        reason = self._unsupported(arguments, q, k, v)
        if reason is not None:
            return reason
        layout = self._layout(q.shape[2])
        if isinstance(layout, str):
            return layout
        mask = arguments["attn_mask"]
        if mask is None:
            return layout, None
        lengths = _key_prefix_lengths(mask, q.shape[0], q.shape[2])
        if lengths is None:
            return "the attention mask is not a boolean key-padding mask over a valid prefix"
        if bool((lengths == q.shape[2]).all()):
            return layout, None
        if layout.text_position != "suffix" or int(lengths.min()) < layout.num_video_tokens:
            return "the attention mask masks video tokens"
        return layout, lengths

    def _unsupported(self, arguments: dict, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
        if arguments.get("dropout_p", 0.0):
            return "attention dropout is on"
        if arguments.get("is_causal", False):
            return "causal attention"
        if arguments.get("attention_kwargs"):
            return "backend-specific attention_kwargs were given"
        if q.shape[1] != k.shape[1] or q.shape[2] != k.shape[2] or k.shape != v.shape:
            return f"q {tuple(q.shape)} / k {tuple(k.shape)} is not one self-attention over the same tokens"
        return None

    def _layout(self, seq_len: int) -> VideoLayout | str:
        grid = self.model.grid
        family = self.model.family
        if grid is None:
            return "the latent grid of this call is unknown"
        text = seq_len - grid[0] * grid[1] * grid[2]
        if text < 0 or (text > 0 and family.text_position is None):
            return f"sequence length {seq_len} does not match the latent grid {grid}"
        return self.installation.layout(grid, text, family.text_position if text else None)

    def _call_original(self, bound: inspect.BoundArguments, q, k, v, mask) -> torch.Tensor:
        arguments = dict(bound.arguments)
        arguments.update(
            query=self.convention.from_bhsd(q), key=self.convention.from_bhsd(k), value=self.convention.from_bhsd(v),
            attn_mask=mask,
        )
        call = inspect.BoundArguments(self.convention.signature, arguments)
        return self.convention.to_bhsd(self.original(*call.args, **call.kwargs))

    def _run(self, bound, q, k, v, layout: VideoLayout, mask) -> torch.Tensor:
        step, num_steps = self.installation.tracker.current()
        shard = head_shard()
        call = AttentionCall(
            layer=self.layer, step=step, num_steps=num_steps, q=q, k=k, v=v, layout=layout,
            scale=bound.arguments.get("scale"), attention_mask=mask,
            heads=shard.heads if shard else None, total_heads=shard.total if shard else None,
            _dense=functools.partial(self._call_original, bound, q, k, v, mask),
        )
        out = self.installation.controller(call)
        if not isinstance(out, torch.Tensor) or out.shape != q.shape:
            raise RuntimeError(
                f"vidsparse controller returned {getattr(out, 'shape', type(out).__name__)} for layer {self.layer}, "
                f"expected {tuple(q.shape)}"
            )
        return out

    def _run_padded(self, bound, q, k, v, layout: VideoLayout, lengths: torch.Tensor) -> torch.Tensor:
        """Split the batch by valid length; padded query rows go through the model's kernel with its mask."""
        out = torch.empty_like(q)
        mask = bound.arguments["attn_mask"]
        full_mask = (mask if mask.dim() == 4 else mask[:, None, None, :]).expand(q.shape[0], 1, 1, q.shape[2])
        for length in sorted(set(lengths.tolist())):
            rows = torch.nonzero(lengths == length).squeeze(1)
            qg, kg, vg = q[rows], k[rows], v[rows]
            text = length - layout.num_video_tokens
            group_layout = self.installation.layout(layout.grid, text, self.model.family.text_position if text else None)
            out[rows, :, :length] = self._run(
                bound, qg[:, :, :length], kg[:, :, :length], vg[:, :, :length], group_layout, None
            )
            if length < q.shape[2]:
                out[rows, :, length:] = self._call_original(bound, qg[:, :, length:], kg, vg, full_mask[rows])
        return out


def _key_prefix_lengths(mask: torch.Tensor | None, batch: int, seq_len: int) -> torch.Tensor | None:
    """Valid key count per batch element if `mask` is a boolean key-padding mask whose valid keys are a prefix.

    Accepted shapes: [B, S] or [B, 1, 1, S] (broadcast over heads and queries), as HunyuanVideo builds it.
    """
    if mask is None or mask.dtype != torch.bool:
        return None
    if mask.dim() == 2:
        mask = mask[:, None, None, :]
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2] != 1 or mask.shape[3] != seq_len:
        return None
    keys = mask.expand(batch, 1, 1, seq_len)[:, 0, 0]
    lengths = keys.sum(-1)
    prefix = torch.arange(seq_len, device=keys.device) < lengths[:, None]
    return lengths if torch.equal(keys, prefix) else None
