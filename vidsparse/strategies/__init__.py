"""The sparse-attention families, each one module registering one Strategy (see base.py for the protocol).

Every module of this package is imported on first use, so adding a family is adding one file.
"""

import importlib
import pkgutil

from .base import Strategy, available, get, register_strategy, with_dense_text

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Strategy", "available", "get", "register_strategy", "with_dense_text"]
