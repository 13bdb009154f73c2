"""Golden traces: short seeded runs reproduce the per-epoch losses, held-out accuracies and
per-sample weights recorded in tests/data/golden_runs.json (by tests/golden_runs.py, before the
trainer was restructured) to 1e-6, so a refactor that changes any drawn value or any computed
number fails here."""
from __future__ import annotations

import json

import pytest

from golden_runs import BASE, GOLDEN, METHODS, trace


@pytest.fixture(scope="module")
def golden():
    data = json.loads(GOLDEN.read_text())
    assert data["config"] == BASE, "the golden config changed: re-record only on purpose"
    return data["runs"]


@pytest.mark.parametrize("method", METHODS)
def test_seeded_run_reproduces_its_golden_trace(golden, method):
    now, then = trace(method), golden[method]
    for key in ("train_loss", "val_clean_acc", "val_pgd_acc"):
        assert now[key] == pytest.approx(then[key], rel=1e-6, abs=1e-6), key
    for epoch, (a, b) in enumerate(zip(now["weights"], then["weights"])):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-6), f"weights of epoch {epoch}"
    if method in ("gairat", "mail", "bilaw"):  # the weighted methods' traces are not trivially uniform
        assert any(abs(w - 1.0) > 1e-3 for row in then["weights"] for w in row)
