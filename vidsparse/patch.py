"""The one-line diffusers patch: `vidsparse.patch(pipe, ...)` and `vidsparse.unpatch(pipe)`.

```python
pipe = WanPipeline.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", torch_dtype=torch.bfloat16).to("cuda")
vidsparse.patch(pipe, profile="profiles/wan2.1-t2v-1.3b.json")   # or strategy="draft", or nothing
video = pipe(prompt, num_frames=81, height=480, width=832).frames[0]
```

The low-level hook-in (`install`, `uninstall`, `AttentionCall`) lives in `vidsparse.runtime`, the policies and the
controller in `vidsparse.controller`; this module chooses the policy from the arguments and re-exports both.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterable
from typing import Any

from .attention import available_backends
from .controller import DenseSchedule, HeadPolicy, ScheduledPolicy, SparseController, StrategyPolicy
from .guard import Guard, GuardConfig, guard_budgets, profile_buckets
from .runtime import (
    AttentionCall,
    AttentionController,
    DenseFallbackWarning,
    ModelInfo,
    PatchError,
    inspect_model,
    install,
    installed_controller,
    uninstall,
)
from .strategies import Strategy, available, get

#: Frames on either side that the default's multi-diagonal keeps: more than any model generates, i.e. all frames.
_ALL_FRAMES = 1024

__all__ = [
    "AttentionCall",
    "AttentionController",
    "DenseFallbackWarning",
    "DenseSchedule",
    "HeadPolicy",
    "ModelInfo",
    "PatchError",
    "ScheduledPolicy",
    "SparseController",
    "StrategyPolicy",
    "guard_report",
    "inspect_model",
    "install",
    "installed_controller",
    "patch",
    "resolve_strategy",
    "uninstall",
    "unpatch",
]


def resolve_strategy(strategy: str | tuple[str, dict[str, Any]] | Strategy) -> Strategy:
    """A Strategy from a registered name, a (name, params) pair, or a Strategy object."""
    if isinstance(strategy, Strategy):
        return strategy
    if isinstance(strategy, str):
        return get(strategy)
    if isinstance(strategy, tuple) and len(strategy) == 2 and isinstance(strategy[0], str) and isinstance(
        strategy[1], dict
    ):
        return get(strategy[0], **strategy[1])
    raise ValueError(
        f"strategy must be a name, a (name, params) pair or a Strategy, got {strategy!r}; names: {available()}"
    )


def default_strategy() -> Strategy:
    """The strategy of `patch(pipe)` with neither profile nor strategy: a static pattern that needs no profiling.

    Every query keeps (1) its own latent frames and one frame on either side in full, the spatial heads' band of
    Sparse VideoGen; (2) the tiles at its own spatial position in every frame, their temporal heads' multi-diagonal;
    (3) the first latent frame, the attention sink that Radial Attention and Sparse-vDiT keep. About 0.37 of the
    attention at Wan 480p x 81 frames and 0.15 at HunyuanVideo 720p x 129 frames; together with the dense
    warm-up steps and first layer. It is a conservative starting point, not a measured-quality setting: a profile
    chooses per head.
    """
    return get("diagonal", width=1, temporal=_ALL_FRAMES, column=0) | get("stripe", first_frames=1)


def patch(
    pipe_or_transformer: Any,
    profile: Any = None,
    *,
    strategy: str | tuple[str, dict[str, Any]] | Strategy | None = None,
    dense_warmup_steps: int | float | None = None,
    dense_layers: int | Iterable[int] | None = None,
    backend: str = "auto",
    guard: GuardConfig | bool | None = None,
) -> SparseController:
    """Make a diffusers video pipeline (or transformer) use sparse self-attention. Returns the controller.

    Args:
        pipe_or_transformer: a diffusers pipeline (every transformer it has is patched: Wan 2.2 A14B's
            `transformer` and `transformer_2` share one layer numbering, `transformer` first) or a transformer.
        profile: path to a profile JSON or a loaded `vidsparse.profile.Profile`; its model must match.
        strategy: one strategy for every head, instead of a profile: a registered name, (name, params) or a
            Strategy object.
        dense_warmup_steps: dense steps at the start (int count, or float fraction in [0, 1) of the steps).
            Default: the profile's schedule, else 0.2.
        dense_layers: layers kept dense (one index or several). Default: the profile's schedule, else the first
            layer of each transformer.
        backend: attention backend for the sparse calls ("auto", "triton", "flex", "gather", "reference").
        guard: the quality guard (`vidsparse.guard`): a GuardConfig, True (GuardConfig()) or False. Default (None):
            on with a profile (its per-head errors are the budgets), off otherwise; a strategy has no budget
            unless GuardConfig(budget=...) gives one. `vidsparse.guard_report(pipe)` says what it measured.

    With neither profile nor strategy, `default_strategy()` applies (no profiling needed). Patching twice, a
    profile for another model, or an unsupported model raises and leaves the pipeline as it was.
    """
    if profile is not None and strategy is not None:
        raise ValueError("give either profile or strategy, not both")
    dense_layers = _layer_indices(dense_layers)
    if not isinstance(backend, str) or backend not in available_backends():
        raise ValueError(f"backend must be one of {available_backends()}, got {backend!r}")
    if installed_controller(pipe_or_transformer) is not None:
        raise PatchError("this pipeline is already patched by vidsparse; call vidsparse.unpatch(...) first")
    if guard is not None and not isinstance(guard, (bool, GuardConfig)):
        raise ValueError(f"guard must be a vidsparse.GuardConfig, True, False or None, got {guard!r}")
    info = inspect_model(pipe_or_transformer)  # raises PatchError for unsupported models before anything else
    if profile is not None:
        profile = _load_profile(profile)
        policy = _profile_policy(profile, info, dense_warmup_steps, dense_layers)
    else:
        chosen = resolve_strategy(strategy) if strategy is not None else default_strategy()
        policy = StrategyPolicy(chosen, _schedule(info, dense_warmup_steps, dense_layers))
    controller = SparseController(policy, backend, guard=_guard(guard, profile))
    install(pipe_or_transformer, controller)
    return controller


def guard_report(pipe_or_transformer: Any) -> dict[str, Any] | None:
    """What the quality guard of a patched pipeline measured (`Guard.report`), None when it runs without one."""
    controller = installed_controller(pipe_or_transformer)
    if controller is None:
        raise PatchError(f"{type(pipe_or_transformer).__name__} is not patched by vidsparse")
    guard = getattr(controller, "guard", None)
    return guard.report() if guard is not None else None


def unpatch(pipe_or_transformer: Any) -> None:
    """Undo `patch`: processors, hooks and scheduler exactly as before."""
    uninstall(pipe_or_transformer)


def _layer_indices(layers: Any) -> tuple[int, ...] | None:
    """`dense_layers` as a user may give it: None, one layer index, or an iterable of indices (not a str)."""
    if layers is None:
        return None
    if isinstance(layers, numbers.Integral) and not isinstance(layers, bool):
        return (int(layers),)
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
        raise ValueError(f"dense_layers must be a layer index or an iterable of layer indices, got {layers!r}")
    layers = tuple(layers)
    if any(isinstance(i, bool) or not isinstance(i, numbers.Integral) for i in layers):
        raise ValueError(f"dense_layers must be integer layer indices, got {list(layers)!r}")
    return tuple(int(i) for i in layers)


def _schedule(info: ModelInfo, warmup: int | float | None, layers: Iterable[int] | None) -> DenseSchedule:
    layers = frozenset(info.first_layers if layers is None else layers)
    out_of_range = sorted(i for i in layers if not (isinstance(i, int) and 0 <= i < info.num_layers))
    if out_of_range:
        raise ValueError(f"dense_layers {out_of_range} are outside the model's layers 0..{info.num_layers - 1}")
    return DenseSchedule(0.2 if warmup is None else warmup, layers)


def _guard(guard: GuardConfig | bool | None, profile: Any) -> Guard | None:
    """The Guard `patch` installs: see its `guard` argument."""
    if guard is False or (guard is None and profile is None):
        return None
    config = guard if isinstance(guard, GuardConfig) else GuardConfig()
    return Guard(config, guard_budgets(config, profile), profile_buckets(profile))


def _load_profile(profile: Any) -> Any:
    if isinstance(profile, (str, os.PathLike)):
        from .profile import Profile  # lazily: loading a profile file is the only use of the profile module here

        return Profile.load(profile)
    return profile


def _profile_policy(
    profile: Any, info: ModelInfo, warmup: int | float | None, layers: Iterable[int] | None
) -> HeadPolicy:
    missing = [name for name in ("model", "schedule", "policy") if not hasattr(profile, name)]
    if missing:
        raise ValueError(
            f"profile must be a path or a loaded vidsparse Profile, got {type(profile).__name__} "
            f"(no {', '.join(missing)})"
        )
    _check_profile_model(profile, info)
    policy = profile.policy()
    if warmup is None and layers is None:
        return policy
    schedule = DenseSchedule(
        profile_schedule_warmup(profile) if warmup is None else warmup,
        frozenset(profile_schedule_layers(profile) if layers is None else layers),
    )
    return ScheduledPolicy(policy, schedule)


def _check_profile_model(profile: Any, info: ModelInfo) -> None:
    """Raise ValueError naming what differs between the profile's model and the pipeline's."""
    model = profile.model
    expected = {"family": info.family, "num_layers": info.num_layers, "num_heads": info.num_heads,
                "head_dim": info.head_dim}
    for name, value in expected.items():
        recorded = getattr(model, name, value)  # head_dim is optional in hand-made profiles
        if recorded != value:
            raise ValueError(f"profile was made for {name}={recorded!r} but this pipeline has {name}={value!r}")


def profile_schedule_warmup(profile: Any) -> int | float:
    return profile.schedule.dense_warmup_steps


def profile_schedule_layers(profile: Any) -> Iterable[int]:
    return profile.schedule.dense_layers
