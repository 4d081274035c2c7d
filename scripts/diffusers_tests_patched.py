"""Run diffusers' own model tests with every supported transformer patched by vidsparse at full density.

A pytest plugin: each instance of a transformer class vidsparse supports is patched as soon as it is constructed
(`vidsparse.patch(model, strategy=FULL)`: every self-attention call goes through vidsparse's plan and kernel with a
plan that keeps every block), so the suite's numerical and behavioural checks see the patched model. Run the same
test files with and without `-p diffusers_tests_patched` and compare the outcomes; the session summary says how
many calls the patch served (so a run where nothing was patched is visible).

    cd <diffusers checkout>   # its tests/ folder; vidsparse's venv with the pinned diffusers installed
    PYTHONPATH=/path/to/vidsparse/scripts python -m pytest tests/models/transformers/test_models_transformer_allegro.py \
        -p diffusers_tests_patched -q
"""

from __future__ import annotations

import functools
from typing import Any

import diffusers

import vidsparse
from vidsparse.families import available_families, get_family

#: A neighborhood window wider than any tiny test grid: density 1, computed by vidsparse's kernel.
FULL = ("neighborhood", {"window": (1023, 1023, 1023)})

_CONTROLLERS: list[Any] = []


def _patch_on_construction(cls: type) -> None:
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if type(self) is cls:
            _CONTROLLERS.append(vidsparse.patch(self, strategy=FULL, dense_warmup_steps=0, dense_layers=()))

    cls.__init__ = __init__


def pytest_configure(config: Any) -> None:
    for family in available_families():
        for name in get_family(family).transformer_class_names:
            if hasattr(diffusers, name):
                _patch_on_construction(getattr(diffusers, name))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    calls = sum(int(c.stats["sparse_calls"]) for c in _CONTROLLERS)
    dense = sum(int(c.stats["dense_calls"]) for c in _CONTROLLERS)
    terminalreporter.write_line(
        f"vidsparse: {len(_CONTROLLERS)} transformers patched at full density; {calls} attention calls through "
        f"vidsparse's kernel, {dense} through the model's own"
    )
