"""The sparse-attention families, each one module registering one Strategy (see base.py for the protocol)."""

from . import dense, skip  # noqa: F401  (registration)
from .base import Strategy, available, get, register_strategy, with_dense_text

__all__ = ["Strategy", "available", "get", "register_strategy", "with_dense_text"]
