"""Test and demo helpers: the head zoo (planted attention structure) and tiny pipelines built from configs."""

from .pipelines import TINY_CALL, tiny_call, tiny_pipeline
from .zoo import HEAD_KINDS, apply_rope_3d, make_heads

__all__ = ["HEAD_KINDS", "TINY_CALL", "apply_rope_3d", "make_heads", "tiny_call", "tiny_pipeline"]
