"""Shared fixtures and the `gpu` marker's skip."""
from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _two_threads():
    """Tests run on 2-core machines; keep torch from oversubscribing them."""
    torch.set_num_threads(2)
    yield
