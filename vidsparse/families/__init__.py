"""Model-family adapters: one module per diffusers video DiT family, registered with @register_family.

Every module of this package is imported on first use, so supporting a new family is adding one file.
"""

import importlib
import pkgutil

from .base import Family, available_families, find_family, get_family, register_family, supported_classes

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Family", "available_families", "find_family", "get_family", "register_family", "supported_classes"]
