"""The `vidsparse` command line: `profile`, `inspect`, `eval`, `demo`, `inspect-model`.

Each subcommand lives next to the code it drives and registers itself through `register(subparsers)`, which adds
its parser and sets `func(args) -> int` (the exit status):

- `vidsparse.profiler.cli`: `profile`, `inspect`
- `vidsparse.evaluate.cli`: `eval`, `demo`
- `vidsparse.support`: `inspect-model`
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import __version__, support
from .evaluate import cli as evaluate_cli
from .profiler import cli as profiler_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidsparse", description="Training-free sparse attention for video diffusion transformers."
    )
    parser.add_argument("--version", action="version", version=f"vidsparse {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    profiler_cli.register(subparsers)
    evaluate_cli.register(subparsers)
    support.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as error:  # bad input: one clear line, no traceback
        print(f"vidsparse {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
