"""`vidsparse eval` and `vidsparse demo`."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Add the evaluation subcommands to the `vidsparse` parser."""
    demo = subparsers.add_parser("demo", help="profile and evaluate the built-in tiny model (no network)")
    demo.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    print("vidsparse demo: not yet available (the evaluation issue is open)")
    return 0
