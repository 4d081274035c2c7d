"""What a model generates when it is not told: the frames, size and denoising steps of a plain `pipe(prompt)`.

`vidsparse profile` and `vidsparse eval` fill whichever of --height, --width, --frames and --steps is not given
from here, so a user need not look up numbers the model already knows:

- `tiny-wan`, or a folder exported by `scripts/train_tiny_wan.py` (its `training.json` says so: models/tiny-wan,
  models/tiny-wan-next): the call the trained tiny models are made for (`TINY_WAN_CALL`: 17 frames of 64 x 64,
  20 steps), not the 480 x 832 x 81 of the WanPipeline they load as;
- `tiny-<family>` / `tiny-<family>-random`: the tiny pipeline's call (`vidsparse.testing.TINY_CALL`);
- any other pipeline: the defaults of its own `__call__` (Wan 2.1: 480 x 832, 81 frames, 50 steps). Where
  `__call__` defaults to None and derives the value itself, the same rule is applied here: Mochi's
  `default_height` / `default_width`; CogVideoX's (and Allegro's size) `transformer.config.sample_*` scaled by
  the VAE. A value no rule gives (Allegro's frames) must come from its flag.

For the tiny models the call also holds the text arguments they need (max_sequence_length, prompt templates).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

#: pipeline call argument -> the CLI flag that sets it
GEOMETRY_FLAGS: dict[str, str] = {
    "height": "--height", "width": "--width", "num_frames": "--frames", "num_inference_steps": "--steps",
}


def native_call(model: str, pipe: Any) -> dict[str, Any]:
    """The call arguments `model` (a `--model` value; `pipe` is what it loaded) generates with by default."""
    if model == "tiny-wan" or is_trained_tiny_folder(model):
        from .tiny_model import TINY_WAN_CALL

        return dict(TINY_WAN_CALL)
    if model.startswith("tiny-"):
        from .testing import TINY_CALL

        family = model.removeprefix("tiny-").removesuffix("-random")
        if family in TINY_CALL:
            return dict(TINY_CALL[family])
    return pipeline_defaults(pipe)


def is_trained_tiny_folder(model: str) -> bool:
    """Whether `model` is a folder `scripts/train_tiny_wan.py export` wrote: its training.json counts flow steps."""
    training = Path(model) / "training.json"
    try:
        return "flow_steps" in json.loads(training.read_text())
    except (OSError, ValueError):
        return False


def pipeline_defaults(pipe: Any) -> dict[str, int]:
    """Height, width, frames and steps a plain `pipe(prompt)` generates with (those the pipeline determines)."""
    parameters = inspect.signature(pipe.__call__).parameters
    defaults: dict[str, int] = {}
    for name in GEOMETRY_FLAGS:
        value = parameters[name].default if name in parameters else None
        if value is None or value is inspect.Parameter.empty:
            value = _derived_default(pipe, name)
        if value is not None:
            defaults[name] = int(value)
    return defaults


def _derived_default(pipe: Any, name: str) -> int | None:
    """What `__call__` substitutes for `name=None`, for the pipelines that derive it (None when unknown)."""
    if (own := getattr(pipe, f"default_{name}", None)) is not None:  # Mochi: default_height = 480
        return own
    config = getattr(getattr(pipe, "transformer", None), "config", None)
    if name in ("height", "width"):  # CogVideoX, Allegro: `height or sample_height * vae_scale_factor_spatial`
        sample, scale = getattr(config, f"sample_{name}", None), getattr(pipe, "vae_scale_factor_spatial", None)
        return sample * scale if sample is not None and scale is not None else None
    if name == "num_frames" and hasattr(config, "sample_frames"):
        from diffusers import CogVideoXPipeline

        # CogVideoX: `num_frames or sample_frames`. Allegro counts sample_frames in latent frames and scales them by
        # its VAE: left to --frames rather than guessed for every pipeline with a sample_frames.
        return config.sample_frames if isinstance(pipe, CogVideoXPipeline) else None
    return None


def fill_geometry(given: dict[str, int | None], native: dict[str, Any], model: str) -> tuple[dict[str, int], str]:
    """Height, width, frames and steps to generate at: the flags `given` (not None) win, the rest come from the
    model's `native` call. Also returns a line saying what is used and where it came from, for the user."""
    geometry, defaulted = {}, []
    for name, flag in GEOMETRY_FLAGS.items():
        if given.get(name) is not None:
            geometry[name] = given[name]
        elif name in native:
            geometry[name] = int(native[name])
            defaulted.append(flag)
        else:
            raise ValueError(f"{flag}: {model} does not determine its {name}; give {flag}")
    line = (f"{geometry['num_frames']} frames of {geometry['height']} x {geometry['width']}, "
            f"{geometry['num_inference_steps']} steps")
    if defaulted:
        line += f" ({', '.join(defaulted)}: {model}'s own default{'s' if len(defaulted) > 1 else ''})"
    return geometry, line
