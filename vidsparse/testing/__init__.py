"""Test and demo helpers: the head zoo (planted attention structure) and tiny pipelines built from configs."""

from .zoo import HEAD_KINDS, apply_rope_3d, make_heads

__all__ = ["HEAD_KINDS", "apply_rope_3d", "make_heads"]
