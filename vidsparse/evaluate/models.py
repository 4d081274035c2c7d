"""What `--model` names: the built-in trained tiny model, a random tiny pipeline, or a diffusers pipeline folder.

- `tiny-wan`: the trained tiny Wan model shipped with vidsparse (`vidsparse.tiny_model.load_tiny_wan`).
- `tiny-<family>` or `tiny-<family>-random` (e.g. `tiny-hunyuan`): a random-weight tiny pipeline of that family
  built from configs (`vidsparse.testing.tiny_pipeline`), for trying the tools; its attention is nearly uniform,
  so its quality numbers mean little.
- anything else: a local folder or a hub id, loaded with `DiffusionPipeline.from_pretrained` (from the local cache
  when offline; vidsparse itself never downloads).
"""

from __future__ import annotations

from typing import Any

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


def load_pipeline(model: str, *, device: str = "cpu", dtype: str = "float32") -> Any:
    """The pipeline `model` names (see the module docstring), on `device`, with its progress bar off."""
    torch_dtype = parse_dtype(dtype)
    if model == "tiny-wan":
        from ..tiny_model import load_tiny_wan  # imported here: the module ships with the trained weights

        pipe = load_tiny_wan(device=device)
    elif model.startswith("tiny-"):
        from ..testing import tiny_pipeline

        # `tiny-<family>-random` is what `vidsparse profile` records for these pipelines: the same model.
        pipe = tiny_pipeline(model.removeprefix("tiny-").removesuffix("-random")).to(device)
    else:
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(model, torch_dtype=torch_dtype).to(device)
    if torch_dtype != torch.float32:
        pipe = pipe.to(dtype=torch_dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe
