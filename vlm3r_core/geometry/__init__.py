"""CUT3R, the frozen 3D encoder of VLM-3R: per-frame patch tokens F'_t and camera token z'_t."""

from vlm3r_core.geometry.config import CUT3R_PRESETS, Cut3rConfig, get_cut3r_config
from vlm3r_core.geometry.cut3r import Cut3r, Cut3rFrameOutput, Cut3rOutput, Cut3rState
from vlm3r_core.geometry.heads import Cut3rPointmaps

__all__ = [
    "CUT3R_PRESETS",
    "Cut3r",
    "Cut3rConfig",
    "Cut3rFrameOutput",
    "Cut3rOutput",
    "Cut3rPointmaps",
    "Cut3rState",
    "get_cut3r_config",
]
