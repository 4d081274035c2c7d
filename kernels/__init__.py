"""Triton kernels of vidsparse, importable as `vidsparse.kernels`."""
