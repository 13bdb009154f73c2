"""The per-class robust accuracy a search trial writes into its saved run (bilaw/analysis/plots.py
`write_per_class`): the JSON holds exactly the values, a class the test set lacks stays NaN, and
the bar plot is a real PNG."""
from __future__ import annotations

import json
import math

from bilaw.analysis.plots import PER_CLASS_JSON, write_per_class
from bilaw.metrics import TEST_PGD_ACC


def test_the_per_class_accuracies_are_written_as_json_and_a_plot(tmp_path):
    accs = [0.5, 0.25, float("nan"), 1.0]
    written = write_per_class(tmp_path, accs)
    assert written == [tmp_path / PER_CLASS_JSON, tmp_path / "plots" / "per_class_pgd_acc.png"]
    data = json.loads((tmp_path / PER_CLASS_JSON).read_text())
    values = data[TEST_PGD_ACC]
    assert list(values) == ["0", "1", "2", "3"]
    assert [values[k] for k in ("0", "1", "3")] == [0.5, 0.25, 1.0] and math.isnan(values["2"])
    png = (tmp_path / "plots" / "per_class_pgd_acc.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_without_plots_only_the_json_is_written(tmp_path):
    assert write_per_class(tmp_path, [0.5, 0.75], plot=False) == [tmp_path / PER_CLASS_JSON]
    assert [p.name for p in tmp_path.iterdir()] == [PER_CLASS_JSON]
    assert json.loads((tmp_path / PER_CLASS_JSON).read_text())[TEST_PGD_ACC] == {"0": 0.5, "1": 0.75}


def test_a_run_without_per_class_accuracies_writes_nothing(tmp_path):
    assert write_per_class(tmp_path, None) == [] and write_per_class(tmp_path, []) == []
    assert list(tmp_path.iterdir()) == []
