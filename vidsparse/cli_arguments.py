"""Arguments `vidsparse profile` and `vidsparse eval` share, checked when parsed: a wrong value is one line
naming the flag before any model is loaded."""

from __future__ import annotations

import argparse


def add_geometry_arguments(parser: argparse.ArgumentParser, steps_help: str = "denoising steps") -> None:
    """--height, --width, --frames, --steps: unset means the model's own (`vidsparse.call_defaults`)."""
    for flag, what in (("--height", "video height in pixels"), ("--width", "video width in pixels"),
                       ("--frames", "video frames"), ("--steps", steps_help)):
        parser.add_argument(flag, type=positive_int, default=None, help=f"{what} (default: the model's)")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def backend_name(text: str) -> str:
    from .attention import available_backends

    if text not in available_backends():
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(available_backends())}, got {text!r}")
    return text
