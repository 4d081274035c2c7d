"""The offline profiler: calibration, candidate scoring, cost model and selection."""
