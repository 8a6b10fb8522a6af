"""Dataset readers: ScanNet v2, ScanNet++ (iPhone) and ARKitScenes into the scene contract.

One module per source dataset (``scannet``, ``scannetpp``, ``arkitscenes``), what they share in
``common``, and the conversion of a source folder into scene folders in ``convert``.
"""

from datagen.readers.common import ReadResult, SourceFormatError
from datagen.readers.convert import (
    READERS,
    ConvertedScene,
    ConvertScenesConfig,
    SourceScene,
    convert_scene,
    list_source_scenes,
    official_splits,
    plan_conversion,
    read_source_scene,
    scene_split,
)

__all__ = [
    "READERS",
    "ConvertScenesConfig",
    "ConvertedScene",
    "ReadResult",
    "SourceFormatError",
    "SourceScene",
    "convert_scene",
    "list_source_scenes",
    "official_splits",
    "plan_conversion",
    "read_source_scene",
    "scene_split",
]
