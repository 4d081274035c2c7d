"""`vidsparse profile` and `vidsparse inspect` (to be filled in by the profiler issue)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Add the profiler's subcommands to the `vidsparse` parser."""
