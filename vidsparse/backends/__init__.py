"""Attention backends registered with `vidsparse.attention.register_backend` (one module each)."""
