"""Evaluate a sparse configuration against the dense model: `vidsparse eval` as a script.

Same arguments as `vidsparse eval --help` (quality, timing, density, mp4s, report.json/report.md, plots):

    .venv/bin/python scripts/evaluate.py --model tiny-wan --profile profiles/tiny-wan.json \
        --prompt "a red circle moving left" --seeds 0 1 --height 64 --width 64 --frames 17 --steps 10 \
        --out out/eval
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vidsparse.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
