"""Procedural indoor scenes with rendered video, in the scene contract of :mod:`vlm3r_core.scene`."""

from datagen.synthetic.world import DATASET, SyntheticConfig, generate_scene, write_synthetic_scene

__all__ = ["DATASET", "SyntheticConfig", "generate_scene", "write_synthetic_scene"]
