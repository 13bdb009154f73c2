"""tune/report.py's PGD and AA headings say which evaluation the runs beneath them had, from each
run's logged config: never a PGD-10 number under a PGD-20 heading, and a column of runs evaluated
differently flagged in its heading and a note that names the rows."""
from __future__ import annotations

import csv
import io
from types import SimpleNamespace

from tune.report import build_rows, format_csv, format_markdown, trial_table

DIGITS = {"eval_pgd_steps": "10", "aa_version": "standard", "aa_attacks": "apgd-ce,apgd-t", "aa_n_iter": "20",
          "aa_samples": "100"}
PAPER = {"eval_pgd_steps": "20", "aa_version": "standard", "aa_attacks": "None", "aa_n_iter": "None",
         "aa_samples": "1000"}


def _run(name: str, net: str, evaluation: dict, pgd: float) -> SimpleNamespace:
    metrics = {"best_val_pgd_acc": pgd, "test_clean_acc": 0.9, "test_pgd_acc": pgd, "test_aa_acc": pgd - 0.1,
               "test_points": 360.0}
    return SimpleNamespace(info=SimpleNamespace(run_name=name),
                           data=SimpleNamespace(params={"weight_net": net, **evaluation}, metrics=metrics, tags={}))


def _head(text: str) -> list[str]:
    return [cell.strip() for cell in text.splitlines()[0].strip("|").split("|")]


def test_headings_name_the_steps_and_autoattack_the_runs_had():
    digits = [_run("a", "64", DIGITS, 0.45), _run("b", "128", DIGITS, 0.50)]
    text = format_markdown(build_rows(digits, "weight_net"), "weight_net")
    assert _head(text) == ["weight_net", "Clean", "PGD-10", "AA (apgd-ce+apgd-t, 20 iterations)", "PGD - Clean", "n"]
    assert "mixes" not in text
    paper = [_run("a", "64", PAPER, 0.45), _run("b", "128", PAPER, 0.50)]
    assert _head(format_markdown(build_rows(paper, "weight_net"), "weight_net"))[2:4] == ["PGD-20", "AA"]
    header, _ = trial_table(digits)
    assert header[header.index("Clean") + 1:][:2] == ["PGD-10", "AA (apgd-ce+apgd-t, 20 iterations)"]


def test_a_column_of_runs_evaluated_differently_is_flagged_with_its_rows():
    runs = [_run("a", "64", DIGITS, 0.45), _run("b", "128", PAPER, 0.50), _run("c", "128", DIGITS, 0.40)]
    rows = build_rows(runs, "weight_net")
    text = format_markdown(rows, "weight_net")
    assert _head(text)[2:4] == ["PGD (mixed: PGD-10 / PGD-20)", "AA (mixed: apgd-ce+apgd-t, 20 iterations / standard)"]
    assert ("note: the PGD column mixes evaluations (PGD-10: 64, 128; PGD-20: 128); only accuracies measured alike "
            "compare") in text
    header, _ = trial_table(runs)
    assert "PGD (mixed: PGD-10 / PGD-20)" in header
    table = list(csv.DictReader(io.StringIO(format_csv(rows, "weight_net"))))
    assert {r["weight_net"]: r["pgd_eval"] for r in table} == {"64": "PGD-10", "128": "PGD-10 / PGD-20"}
    assert {r["weight_net"]: r["aa_eval"] for r in table} == {"64": "apgd-ce+apgd-t, 20 iterations",
                                                              "128": "apgd-ce+apgd-t, 20 iterations / standard"}


def test_runs_that_do_not_log_their_evaluation_keep_the_bare_heading():
    runs = [_run("a", "64", {}, 0.45), _run("b", "128", {}, 0.5)]
    assert _head(format_markdown(build_rows(runs, "weight_net"), "weight_net"))[2:4] == ["PGD", "AA"]
