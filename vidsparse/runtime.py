"""Hooking a controller into a diffusers video transformer without vendoring model code.

How a call flows, for one patched self-attention module:

1. A forward pre-hook on the transformer reads the latent grid (F, H, W) of the call from its inputs (the family
   adapter knows the patch sizes), and, for a bare transformer, the timestep.
2. The module's processor is replaced by a patched copy (`vidsparse.attention_op`) whose `__call__` runs the
   original processor code with the attention kernel call rebound to `torch.ops.vidsparse.attention`, one opaque op
   for torch.compile. diffusers still computes the projections, the norms and RoPE.
3. Inside the op, the installation turns the call into an `AttentionCall` (q, k, v as [B, H, S, D] in the model's
   order, a VideoLayout, the layer, the denoising step and CFG branch) and hands it to the controller, which
   returns the attention output. Anything vidsparse cannot represent exactly (dropout, causal, an unexpected
   sequence length, a mask that is not a key-padding mask) runs the original kernel unchanged, with a warning once.
   Calls under diffusers' context parallelism go through `vidsparse.parallel` (Ulysses: this rank's heads over the
   whole sequence).
4. If a patched module's processor is replaced after `patch` (`set_attn_processor`, `fuse_qkv_projections`), the
   next forward warns once, naming the layers that now run without vidsparse; `unpatch` and `patch` again to
   re-install. A patched processor that escapes (saved by the user, put back after `unpatch`) runs the model's own
   kernel. Likewise a transformer loaded or swapped into a patched pipeline after `patch` (`update_components` of a
   modular pipeline, assignment) warns once when the next pipeline call sets its timesteps.

Key-padding masks (HunyuanVideo pads text and masks the padded keys for every query): the batch is split by
valid length, the controller sees each group trimmed to its valid tokens (padded keys dropped, which is exactly
what the mask does), and the padded query rows, whose outputs the model discards, are computed by the model's
own kernel with its own mask.

Step tracking: for a pipeline, the scheduler's `set_timesteps` (start of a call: step 0, number of steps) and
`step` (one denoising step done) are wrapped on the scheduler instance. This counts steps, not transformer calls,
so classifier-free guidance (one or two transformer calls per step), batch > 1, Wan 2.2's two experts (one shared
count), CPU offload and `torch.compile` of the transformer do not change it. Deep copies of the scheduler step
themselves, uncounted (LTX-2's audio latents). A pipeline that never steps its scheduler but only copies of it
(SkyReels V2 diffusion forcing: one copy per latent frame, each stepped when its frame is updated) is counted by
the pipeline's progress bar instead, which it opens with its number of iterations and updates once per iteration:
from its second iteration on (at the first, the scheduler's count is 0 as well) the step is the number of updates
and the number of steps the bar's total (with asynchronous diffusion forcing more iterations than
`num_inference_steps`, the first reports the latter). Ordinary pipelines step their scheduler before the bar's
first update, so their count is the scheduler's. A bare transformer has no scheduler:
its step is counted from changes of the `timestep` input (a new call starts when the timestep goes up) and the
number of steps is unknown (None).
"""

from __future__ import annotations

import copy
import functools
import itertools
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F

from .attention_op import LIVE, KernelCall, in_call_layout, sparse_processor
from .families import Family, find_family, get_family, supported_classes
from .families.base import bind_forward_inputs
from .layout import VideoLayout
from .parallel import head_shard


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
        step, num_steps: denoising step index in the current pipeline call and number of steps (None if unknown);
            for diffusion forcing, the iteration of its frame-wise schedule and the number of iterations.
        q, k, v: [B, H, S, D] in the model's token order, after the model's norms and RoPE.
        layout: where the tokens sit (latent grid, text tokens and their position, prefix tokens).
        scale: softmax scale the model asked for (None = 1/sqrt(D)).
        attention_mask: the model's mask for exactly these tokens, or None when none is needed (key padding is
            trimmed away by the runtime before the controller is called).
        heads, total_heads: under head-parallel context parallelism (see vidsparse.parallel), the global indices of
            q/k/v's heads and the model's head count; None when q/k/v hold all heads.
        branch: which transformer call of this denoising step this is (0, then 1 for the second classifier-free
            guidance pass of pipelines that run the two separately): plans reused across steps are kept per branch.
        out: where the controller may write the output ([B, H, S, D] view of the buffer the model gets back),
            None to return a new tensor.
        dense_backend: what `dense()` runs: "diffusers:<backend>" (the attention backend the user set, "default"
            when none) or "torch:sdpa" for processors that call torch's SDPA directly.
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
    branch: int = 0
    out: torch.Tensor | None = field(default=None, repr=False)
    dense_backend: str = "torch:sdpa"
    _dense: Callable[[], torch.Tensor] | None = field(default=None, repr=False)

    def dense(self) -> torch.Tensor:
        """What the unpatched model computes for this call, [B, H, S, D] (the model's own kernel when patched)."""
        if self._dense is not None:
            return self._dense()
        return F.scaled_dot_product_attention(self.q, self.k, self.v, attn_mask=self.attention_mask, scale=self.scale)


class AttentionController(Protocol):
    def __call__(self, call: AttentionCall) -> torch.Tensor:
        """The attention output for `call`, [B, H, S, D] in the model's order."""


# ----- step tracking -------------------------------------------------------------------------------------------
_MISSING = object()


class _SchedulerStepTracker:
    """Counts `scheduler.step` calls since the last `scheduler.set_timesteps`, or the pipeline's progress-bar updates
    when only copies of the scheduler step (see the module docstring)."""

    def __init__(self, scheduler: Any, pipeline: Any) -> None:
        self.scheduler = scheduler
        self.pipeline = pipeline
        self.count: int | None = None
        self.num_steps: int | None = None
        self.progress: list | None = None  # [updates, total] of the pipeline's progress bar opened since set_timesteps
        self.on_start: Callable[[], None] | None = None  # called when a pipeline call sets its timesteps
        self._saved: list[tuple[Any, str, Any]] = []  # (object, attribute, its own value before, or _MISSING)

    def _replace(self, obj: Any, name: str, value: Any) -> None:
        self._saved.append((obj, name, obj.__dict__.get(name, _MISSING)))
        setattr(obj, name, value)

    def attach(self) -> None:
        sch = self.scheduler
        set_timesteps, step = sch.set_timesteps, sch.step

        @functools.wraps(set_timesteps)
        def tracked_set_timesteps(*args: Any, **kwargs: Any) -> Any:
            out = set_timesteps(*args, **kwargs)
            self.count, self.num_steps, self.progress = 0, len(sch.timesteps), None
            if self.on_start is not None:
                self.on_start()
            return out

        @functools.wraps(step)
        def tracked_step(*args: Any, **kwargs: Any) -> Any:
            out = step(*args, **kwargs)
            if self.count is not None:
                self.count += 1
            return out

        def untracked_deepcopy(memo: dict) -> Any:
            # Pipelines copy their scheduler (LTX-2's audio latents, diffusion forcing's per-frame schedulers): the
            # copy must step itself, not this one through the wrappers, and is not counted.
            wrappers = {name: sch.__dict__.pop(name) for name in ("set_timesteps", "step", "__deepcopy__")}
            try:
                return copy.deepcopy(sch, memo)
            finally:
                sch.__dict__.update(wrappers)

        for name, wrapper in (("set_timesteps", tracked_set_timesteps), ("step", tracked_step),
                              ("__deepcopy__", untracked_deepcopy)):
            self._replace(sch, name, wrapper)
        progress_bar = getattr(self.pipeline, "progress_bar", None)
        if callable(progress_bar):
            self._replace(self.pipeline, "progress_bar", self._counting(progress_bar))

    def _counting(self, progress_bar: Callable[..., Any]) -> Callable[..., Any]:
        """The pipeline's `progress_bar(iterable=None, total=None)`, its bars counting their updates."""

        @functools.wraps(progress_bar)
        def tracked_progress_bar(*args: Any, **kwargs: Any) -> Any:
            bar = progress_bar(*args, **kwargs)
            progress = self.progress = [0, kwargs.get("total", args[1] if len(args) > 1 else None)]
            update = bar.update

            def counted_update(n: int = 1) -> Any:
                progress[0] += n
                return update(n)

            bar.update = counted_update
            return bar

        return tracked_progress_bar

    def detach(self) -> None:
        for obj, name, saved in reversed(self._saved):
            if saved is _MISSING:
                obj.__dict__.pop(name, None)
            else:
                setattr(obj, name, saved)
        self._saved.clear()

    def observe(self, inputs: dict[str, Any]) -> None:
        """Nothing to read from the transformer's inputs: the scheduler says where the loop is."""

    def current(self) -> tuple[int | None, int | None]:
        if self.count is None:
            return None, None
        if self.count == 0 and self.progress is not None and self.progress[0] > 0:
            return self.progress[0], self.progress[1]  # only copies of the scheduler step (diffusion forcing)
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
    prefix: int = 0  # tokens before the video in self-attention (Framepack's history latents)
    hook: Any = None
    swapped: list[tuple[torch.nn.Module, Any, Any, int]] = field(default_factory=list)  # module, original, ours, layer


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
        raise PatchError(no_transformer_message(obj))
    return transformers, getattr(obj, "scheduler", None)


def no_transformer_message(obj: Any) -> str:
    """Why `obj`, which has no transformer module, cannot be patched.

    A diffusers modular pipeline keeps its components as attributes too, but its blocks only declare them
    (`_component_specs`): until they are loaded (`load_components`, `update_components`) the attribute is None.
    """
    declared = getattr(obj, "_component_specs", None)
    if isinstance(declared, dict) and "transformer" in declared:
        return (
            f"the transformer of this {type(obj).__name__} is not loaded; load it first (pipe.load_components() or "
            f"pipe.update_components(transformer=...), and transformer_2 where the blocks use it), then patch"
        )
    return f"expected a diffusers pipeline (with a `transformer`) or a transformer module, got {type(obj).__name__}"


def _targets(transformers: list[torch.nn.Module], family: str | None) -> list[_Target]:
    targets, offset = [], 0
    for transformer in transformers:
        fam = get_family(family) if family is not None else find_family(transformer)
        if fam is None or not fam.matches(transformer):
            from .support import NOT_APPLICABLE  # why a known model is left alone (support imports this module)

            what = f"family {family!r}" if family is not None else "vidsparse"
            reason = NOT_APPLICABLE.get(type(transformer).__name__)
            raise PatchError(
                f"{type(transformer).__name__} is not supported by {what}: {reason}" if reason is not None else
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
    tracker = _SchedulerStepTracker(scheduler, pipe_or_transformer) if scheduler is not None else _TimestepTracker()
    installation = _Installation(targets, tracker, controller)
    if scheduler is not None:
        tracker.on_start = functools.partial(installation.check_transformers, pipe_or_transformer)
    installation.apply()


def uninstall(pipe_or_transformer: Any) -> None:
    """Remove vidsparse from the pipeline or transformer, restoring its processors, hooks and scheduler exactly.

    A pipeline patched as a whole is unpatched as a whole, whichever of its transformers is given.
    """
    transformers, _ = _resolve(pipe_or_transformer)
    installations = {id(_INSTALLED[t]): _INSTALLED[t] for t in transformers if t in _INSTALLED}
    if not installations:
        replaced = "" if isinstance(pipe_or_transformer, torch.nn.Module) else (
            "; if its transformer was replaced after vidsparse.patch (update_components, assignment), pass the patched "
            "transformer to vidsparse.unpatch")
        raise PatchError(f"{type(pipe_or_transformer).__name__} is not patched by vidsparse{replaced}")
    for installation in installations.values():
        installation.remove()


class BypassWarning(UserWarning):
    """A patched layer's attention processor, or a patched pipeline's transformer, was replaced after `patch`: that
    layer or transformer runs without vidsparse."""


@dataclass(frozen=True)
class _KeyPadding:
    """A boolean key-padding mask over a valid prefix, read once per transformer forward (it is shared by layers).

    Attributes:
        min_length, full: the shortest valid prefix, and whether every key is valid (the mask masks nothing).
        groups: (valid length, batch rows with that length) for each distinct length.
    """

    min_length: int
    full: bool
    groups: tuple[tuple[int, torch.Tensor], ...]


_INSTALLATION_KEYS = itertools.count(1)


class _Installation:
    """Everything one `install` changed, and what runs inside `torch.ops.vidsparse.attention` for its layers."""

    def __init__(self, targets: list[_Target], tracker: Any, controller: AttentionController) -> None:
        self.key = next(_INSTALLATION_KEYS)
        self.targets = targets
        self.tracker = tracker
        self.controller = controller
        self.models = [_PatchedTransformer(t.transformer, t.family) for t in targets]
        self.model_of_layer = [model for t, model in zip(targets, self.models) for _ in t.modules]
        self.bypassed: set[int] = set()  # layers whose processor the user replaced after patching
        self._warned: set[str] = set()
        self._layouts: dict[tuple, VideoLayout] = {}
        self._branch, self._branch_step = 0, _MISSING
        self._masks: dict[int, tuple[torch.Tensor, _KeyPadding | None]] = {}  # id -> (mask, what it is)

    # -- install / remove -------------------------------------------------------------------------------
    def apply(self) -> None:
        try:
            for target, model in zip(self.targets, self.models):
                model.hook = target.transformer.register_forward_pre_hook(
                    functools.partial(self._pre_hook, model), with_kwargs=True
                )
                for index, module in enumerate(target.modules):
                    original = module.processor
                    layer = target.layer_offset + index
                    module.processor = sparse_processor(original, model.family.kernel_global, self.key, layer)
                    model.swapped.append((module, original, module.processor, layer))
            self.tracker.attach()
        except BaseException:
            self._undo()
            raise
        LIVE[self.key] = self
        for model in self.models:
            _INSTALLED[model.transformer] = self

    def remove(self) -> None:
        self._undo()
        LIVE.pop(self.key, None)  # processors that escaped now run the original kernel
        for model in self.models:
            _INSTALLED.pop(model.transformer, None)

    def _undo(self) -> None:
        self.tracker.detach()
        for model in self.models:
            for module, original, installed, _ in reversed(model.swapped):
                if module.processor is not installed:
                    continue  # replaced by the user after patching: theirs stays
                # Keep attribute changes made through the wrapper (e.g. set_attention_backend) on the original.
                for name, value in vars(installed).items():
                    if not name.startswith("_vidsparse_"):
                        setattr(original, name, value)
                module.processor = original
            model.swapped.clear()
            if model.hook is not None:
                model.hook.remove()
                model.hook = None

    # -- per transformer forward ---------------------------------------------------------------------------
    @torch.compiler.disable
    def _pre_hook(self, model: _PatchedTransformer, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        inputs = bind_forward_inputs(module, args, kwargs)
        model.grid = model.family.grid(module, inputs)
        model.prefix = model.family.prefix_tokens(module, inputs)
        self.tracker.observe(inputs)
        step = self.tracker.current()[0]
        if step is not None and step == self._branch_step:
            self._branch += 1
        else:
            self._branch, self._branch_step = 0, step
        self._masks.clear()
        self._check_processors(model)

    def _check_processors(self, model: _PatchedTransformer) -> None:
        replaced = [layer for module, _, installed, layer in model.swapped
                    if module.processor is not installed and layer not in self.bypassed]
        if replaced:
            self.bypassed.update(replaced)
            warnings.warn(
                f"vidsparse: the attention processor of layer(s) {replaced} of {type(model.transformer).__name__} was "
                f"replaced after vidsparse.patch (set_attn_processor, fuse_qkv_projections, ...); those layers now run "
                f"without vidsparse. Call vidsparse.unpatch(...) and vidsparse.patch(...) again to make them sparse.",
                BypassWarning, stacklevel=2,
            )

    def check_transformers(self, pipeline: Any) -> None:
        """Warn once if the pipeline holds a transformer this installation did not patch (loaded or swapped in after
        `patch`: `update_components`, assignment). vidsparse hooks modules, not the pipeline's attributes, so it would
        run without vidsparse, silently."""
        patched = {id(model.transformer) for model in self.models}
        held = {name: getattr(pipeline, name, None) for name in ("transformer", "transformer_2")}
        new = [name for name, t in held.items() if isinstance(t, torch.nn.Module) and id(_unwrap(t)) not in patched]
        if new and "transformers" not in self._warned:
            self._warned.add("transformers")
            warnings.warn(
                f"vidsparse: the {' and '.join(new)} of this {type(pipeline).__name__} was loaded or replaced after "
                f"vidsparse.patch and runs without vidsparse. Call vidsparse.unpatch on the patched transformer, then "
                f"vidsparse.patch(pipe) again.", BypassWarning, stacklevel=3,
            )

    def warn_once(self, reason: str, layer: int) -> None:
        """One warning per reason (not per layer: a 60-layer model would repeat it 60 times a step)."""
        if reason not in self._warned:
            self._warned.add(reason)
            warnings.warn(
                f"vidsparse: {reason} (layer {layer}, and any other layer where it recurs); running the model's "
                f"dense attention", DenseFallbackWarning, stacklevel=2,
            )

    def layout(self, family: Family, grid: tuple[int, int, int], prefix: int, text: int) -> VideoLayout:
        """The layout of `prefix` tokens, the grid and `text` tokens placed where `family` puts text (cached)."""
        key = (family.text_position if text else None, grid, prefix, text)
        if key not in self._layouts:
            self._layouts[key] = VideoLayout(*grid, text_tokens=text, text_position=key[0] or "suffix",
                                             prefix_tokens=prefix)
        return self._layouts[key]

    # -- per attention call (inside torch.ops.vidsparse.attention) ----------------------------------------------
    def __call__(self, layer: int, call: KernelCall) -> torch.Tensor:
        q, k, v = call.bhsd(call.query), call.bhsd(call.key), call.bhsd(call.value)
        model = self.model_of_layer[layer]
        prepared = self._prepare(model, call.attn_mask, q, k, v)
        if isinstance(prepared, str):
            self.warn_once(prepared, layer)
            return in_call_layout(call, call.original())
        layout, padding = prepared
        out = call.new_output()
        if padding is None:
            self._run(layer, call, q, k, v, layout, call.bhsd(out))
        else:
            self._run_padded(layer, call, q, k, v, layout, padding, call.bhsd(out))
        return out

    def _prepare(
        self, model: _PatchedTransformer, mask: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[VideoLayout, _KeyPadding | None] | str:
        """(layout, key padding or None) of a call vidsparse can run, or why it cannot."""
        if q.shape[1] != k.shape[1] or q.shape[2] != k.shape[2] or k.shape != v.shape:
            return f"q {tuple(q.shape)} / k {tuple(k.shape)} is not one self-attention over the same tokens"
        layout = self._layout(model, q.shape[2])
        if isinstance(layout, str) or mask is None:
            return layout if isinstance(layout, str) else (layout, None)
        padding = self._key_padding(mask, q.shape[0], q.shape[2])
        if padding is None:
            return "the attention mask is not a boolean key-padding mask over a valid prefix"
        if padding.full:
            return layout, None
        if layout.text_position != "suffix" or padding.min_length < layout.seq_len - layout.text_tokens:
            return "the attention mask masks video tokens"
        return layout, padding

    def _layout(self, model: _PatchedTransformer, seq_len: int) -> VideoLayout | str:
        grid = model.grid
        if grid is None:
            return "the latent grid of this call is unknown"
        text = seq_len - model.prefix - grid[0] * grid[1] * grid[2]
        if text < 0 or (text > 0 and model.family.text_position is None):
            prefix = f" and {model.prefix} prefix tokens" if model.prefix else ""
            return f"sequence length {seq_len} does not match the latent grid {grid}{prefix}"
        return self.layout(model.family, grid, model.prefix, text)

    def _key_padding(self, mask: torch.Tensor, batch: int, seq_len: int) -> _KeyPadding | None:
        """The mask read once per forward: every layer gets the same mask object, and reading it syncs."""
        cached = self._masks.get(id(mask))
        if cached is None or cached[0] is not mask:
            cached = self._masks[id(mask)] = (mask, _read_key_padding(mask, batch, seq_len))
        return cached[1]

    def _run(
        self, layer: int, call: KernelCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: VideoLayout,
        out: torch.Tensor,
    ) -> None:
        step, num_steps = self.tracker.current()
        shard = head_shard()
        attention_call = AttentionCall(
            layer=layer, step=step, num_steps=num_steps, q=q, k=k, v=v, layout=layout, scale=call.scale,
            heads=shard.heads if shard else None, total_heads=shard.total if shard else None, branch=self._branch,
            # Kernels write into `out` in place, which autograd cannot follow: with gradients, copy instead.
            out=None if torch.is_grad_enabled() and q.requires_grad else out,
            dense_backend="torch:sdpa" if call.sdpa else f"diffusers:{call.backend or 'default'}",
            _dense=functools.partial(call.original, q, k, v, None),
        )
        result = self.controller(attention_call)
        if not isinstance(result, torch.Tensor) or result.shape != q.shape:
            raise RuntimeError(
                f"vidsparse controller returned {getattr(result, 'shape', type(result).__name__)} for layer {layer}, "
                f"expected {tuple(q.shape)}"
            )
        if result is not out:
            out.copy_(result)

    def _run_padded(
        self, layer: int, call: KernelCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: VideoLayout,
        padding: _KeyPadding, out: torch.Tensor,
    ) -> None:
        """Split the batch by valid length; padded query rows go through the model's kernel with its mask."""
        mask = call.attn_mask
        # [B, 1, 1, S] key padding, or [B, 1, S, S] valid(query) & valid(key) (HunyuanVideo 1.5).
        full_mask = (mask if mask.dim() == 4 else mask[:, None, None, :]).expand(q.shape[0], 1, -1, q.shape[2])
        family = self.model_of_layer[layer].family
        for length, rows in padding.groups:
            qg, kg, vg = q[rows], k[rows], v[rows]
            text = length - (layout.seq_len - layout.text_tokens)
            group_layout = self.layout(family, layout.grid, layout.prefix_tokens, text)
            group_out = torch.empty_like(qg[:, :, :length])
            self._run(layer, call, qg[:, :, :length], kg[:, :, :length], vg[:, :, :length], group_layout, group_out)
            out[rows, :, :length] = group_out
            if length < q.shape[2]:
                rows_mask = full_mask[rows] if full_mask.shape[2] == 1 else full_mask[rows][:, :, length:]
                out[rows, :, length:] = call.original(qg[:, :, length:], kg, vg, rows_mask)


def _read_key_padding(mask: torch.Tensor, batch: int, seq_len: int) -> _KeyPadding | None:
    """`mask` as a key-padding mask over a valid prefix (a few host reads), None if it is anything else.

    Accepted: boolean [B, S] or [B, 1, 1, S] (broadcast over heads and queries), as HunyuanVideo builds it, and
    [B, 1, S, S] = valid(query) & valid(key), as HunyuanVideo 1.5's processor builds it (its first row, a video
    query, is the key mask).
    """
    if mask.dtype != torch.bool:
        return None
    if mask.dim() == 2:
        mask = mask[:, None, None, :]
    square = mask.dim() == 4 and mask.shape[1] == 1 and mask.shape[2] == seq_len == mask.shape[3]
    if not square and (mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2] != 1 or mask.shape[3] != seq_len):
        return None
    keys = mask.expand(batch, 1, mask.shape[2], seq_len)[:, 0, 0]
    lengths = keys.sum(-1)
    prefix = torch.arange(seq_len, device=keys.device) < lengths[:, None]
    if not torch.equal(keys, prefix):
        return None
    pairs = prefix[:, :, None] & prefix[:, None, :]
    if square and not torch.equal(mask.expand(batch, 1, seq_len, seq_len)[:, 0], pairs):
        return None
    host = lengths.tolist()
    groups = tuple(
        (length, torch.tensor([i for i, n in enumerate(host) if n == length], device=mask.device))
        for length in sorted(set(host))
    )
    return _KeyPadding(min(host), min(host) == seq_len, groups)
