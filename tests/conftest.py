"""Shared test configuration: ``gpu`` tests skip cleanly where CUDA is missing; every test gets fresh seeds."""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def gen():
    """A fresh CPU generator per test (fixed seed: failures reproduce; random inputs, never zeros)."""
    return torch.Generator().manual_seed(0x5EED)
