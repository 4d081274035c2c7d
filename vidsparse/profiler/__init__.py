"""The offline profiler: calibration, candidate scoring, cost model and selection.

`profile_pipeline(pipe, prompts, height=..., width=..., frames=..., steps=..., budget=0.05)` returns a
`vidsparse.profile.Profile`; `vidsparse profile` / `vidsparse inspect` are its command line (`cli.py`).
"""

from .calibrate import profile_pipeline
from .validate import measure_achieved_error

__all__ = ["measure_achieved_error", "profile_pipeline"]
