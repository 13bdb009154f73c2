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


@pytest.fixture
def no_download(monkeypatch, tmp_path):
    """Downloads fail like a blocked network; Debian's copy and BILAW_DATA_DIR are hidden.
    Returns the (dataset, root) of each download tried."""
    import urllib.error
    from pathlib import Path

    from bilaw.data import datasets as data

    calls = []

    def refuse(dataset, root):
        calls.append((dataset, Path(root)))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(data, "download_with_torchvision", refuse)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian-copy")
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    return calls
