"""vidsparse: training-free per-layer, per-head sparse attention for video diffusion transformers."""

from .attention import available_backends, block_sparse_attention
from .guard import GuardConfig
from .layout import VideoLayout
from .patch import guard_report, patch, unpatch
from .plan import BlockPlan, PlanError
from .profile import Profile, ProfileError

__all__ = [
    "BlockPlan", "GuardConfig", "PlanError", "Profile", "ProfileError", "VideoLayout", "available_backends", "block_sparse_attention", "guard_report", "patch", "unpatch",
]
__version__ = "0.1.0"
