"""Fixtures for the CUT3R tests: a tiny model with and without the point heads."""

from __future__ import annotations

import pytest
import torch

from vlm3r_core.geometry import Cut3r, get_cut3r_config


@pytest.fixture(autouse=True)
def single_thread():
    """Toy-sized ops gain nothing from intra-op threads, and on a shared 2-core machine OpenMP
    waiting makes them 10x slower; the previous setting is restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_model() -> Cut3r:
    torch.manual_seed(0)
    return Cut3r.from_config(get_cut3r_config("tiny"))


@pytest.fixture(scope="module")
def tiny_full_model() -> Cut3r:
    """The tiny model with every head, as stored in an official checkpoint."""
    torch.manual_seed(1)
    return Cut3r.from_config(get_cut3r_config("tiny", enable_point_heads=True))
