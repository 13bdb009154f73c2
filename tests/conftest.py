"""Shared fixtures and the `gpu` marker's skip."""
from __future__ import annotations

import os

# torch's OpenMP threads busy-wait by default; on a shared 2-core machine that makes parallel
# work crawl (measured: 20 s vs 0.6 s for one test model). Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402


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
