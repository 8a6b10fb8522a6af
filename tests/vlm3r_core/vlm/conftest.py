"""Shared fixtures of the VLM tests: one tiny model config, processor and small videos."""

from __future__ import annotations

import numpy as np
import pytest

from vlm3r_core import prompting
from vlm3r_core.presets import get_preset
from vlm3r_core.vlm import Vlm3rProcessor


@pytest.fixture(scope="module")
def tiny_config():
    return get_preset("tiny")


@pytest.fixture(scope="module")
def processor(tiny_config):
    return Vlm3rProcessor.from_config(tiny_config)


@pytest.fixture(scope="module")
def videos():
    """Two videos of different lengths (3 and 2 frames) and sizes, uint8 RGB."""
    rng = np.random.default_rng(0)
    return [
        rng.integers(0, 256, (3, 40, 56, 3), dtype=np.uint8),
        rng.integers(0, 256, (2, 30, 30, 3), dtype=np.uint8),
    ]


@pytest.fixture(scope="module")
def messages():
    return [
        prompting.build_user_message(
            "How many chair(s) are in this room?", timestamps=[0.0, 1.0, 2.0], duration_s=3.0
        ),
        prompting.build_user_message(
            "Which object is closest to the bed?",
            ["A. chair", "B. table"],
            timestamps=[0.0, 1.5],
            duration_s=3.0,
        ),
    ]
