"""`python -m vidsparse ...`: the `vidsparse` command (e.g. under `accelerate launch -m vidsparse profile ...`)."""

from .cli import main

raise SystemExit(main())
