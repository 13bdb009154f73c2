"""tune/study.py, "does BiLAW beat AT?", on the smoke schedule: it trains the four arms, reuses
them when run again (nothing retrained, no stored file touched), extends AutoAttack to the same
points for every arm, and its table equals an independent computation from the stored
per-point files."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy.stats import binomtest, t as student_t

from tune import study, study_autoattack

SEEDS = (0, 1)
AA_POINTS = 30


def _argv(tmp_path):
    return ["--dataset", "smoke", "--seeds", ",".join(map(str, SEEDS)), "--aa-points", str(AA_POINTS),
            "--out", str(tmp_path / "out"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}"]


def _points(tmp_path, arm, seed, key):
    folder = tmp_path / "out" / "study" / "smoke" / arm / f"seed{seed}"
    if key == "aa":
        with np.load(folder / study.AA_NAME) as npz:
            return npz["correct"]
    with np.load(folder / "per_point.npz") as npz:
        return npz[key]


def _row(text, section, control_label, metric):
    """The cells of the paired row (control, metric) in the section ('Best state' / 'Last')."""
    part = text.split(f"## {section}")[1].split("## ")[0]
    for line in part.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 2 and cells[0] == control_label and cells[1] == metric:
            return cells[2:]
    raise AssertionError(f"no row {control_label} / {metric} in {section}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("study")
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert study.main(_argv(tmp_path)) == 0
    return tmp_path, out.getvalue()


@pytest.mark.slow
def test_the_study_trains_every_arm_then_reuses_them(trained, capsys):
    tmp_path, first = trained
    assert first.count("  training ") == 4 * len(SEEDS)
    stored = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "study").rglob("*") if p.is_file()}
    assert study.main(_argv(tmp_path)) == 0
    second = capsys.readouterr().out
    assert "\n  training " not in second and second.count("\n  reusing ") == 4 * len(SEEDS)
    assert "AutoAttack (" not in second  # the extended AutoAttack points are reused too
    assert {p: p.stat().st_mtime_ns for p in stored} == stored
    table = (tmp_path / "out" / "study_smoke.md").read_text().strip()
    assert table.startswith("# Does BiLAW beat AT?") and table in second


@pytest.mark.slow
def test_every_arm_gets_autoattack_on_the_same_points(trained):
    tmp_path, _ = trained
    for arm in study.ARMS:
        for seed in SEEDS:
            aa = _points(tmp_path, arm, seed, "aa")
            assert len(aa) == AA_POINTS
            np.testing.assert_array_equal(aa[:16], _points(tmp_path, arm, seed, "test_aa"))  # the training's own 16


@pytest.mark.slow
def test_the_paired_numbers_equal_an_independent_computation(trained):
    tmp_path, text = trained
    for control in ("at", "at_58k", "bilaw_frozen"):
        label = study.ARMS[control].label
        for section, metric, key in (("Best state", "PGD-5", "test_pgd"), ("Best state", "AA", "aa"),
                                     ("Last epoch's state", "PGD-5", "test_last_pgd")):  # smoke: PGD-5
            cells = _row(text, section, label, metric)
            diffs = []
            for i, seed in enumerate(SEEDS):
                a, b = _points(tmp_path, "bilaw", seed, key), _points(tmp_path, control, seed, key)
                only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
                diff = (only_a - only_b) / len(a)
                diffs.append(diff)
                assert cells[i].startswith(f"{100 * diff:+.2f} ["), (control, metric, cells[i])
                p = 1.0 if only_a + only_b == 0 else binomtest(only_a, only_a + only_b, 0.5).pvalue
                assert re.search(r"p=([0-9.e+-]+)", cells[i]).group(1) == f"{p:.2g}"
            mean = sum(diffs) / len(diffs)
            over = cells[len(SEEDS)]
            assert over.startswith(f"{100 * mean:+.2f} [")
            low, high = (float(x) for x in re.search(r"\[([+-][0-9.]+), ([+-][0-9.]+)\]", over).groups())
            sem = np.std(diffs, ddof=1) / math.sqrt(len(diffs))
            half = student_t.ppf(0.975, len(diffs) - 1) * sem
            # the over-seeds interval is the wider of this t-interval and the paired bootstrap
            assert low <= round(100 * (mean - half), 2) + 0.005 and high >= round(100 * (mean + half), 2) - 0.005


@pytest.mark.slow
def test_each_arms_mean_is_the_mean_of_its_stored_runs(trained):
    tmp_path, text = trained
    best = text.split("## Best state")[1].split("## ")[0]
    for arm, row in study.ARMS.items():
        line = next(l for l in best.splitlines() if l.startswith(f"| {row.label} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        for cell, key in zip(cells[1:5], ("test_clean", "test_pgd", "pgd_on_aa", "aa")):
            got = [_points(tmp_path, arm, s, key) if key != "pgd_on_aa"
                   else _points(tmp_path, arm, s, "test_pgd")[:AA_POINTS] for s in SEEDS]
            mean = np.mean([g.mean() for g in got])
            assert cell.startswith(f"{100 * mean:.2f} ["), (arm, key, cell)
        status = cells[-1]
        if arm == "bilaw_frozen":
            assert status == "untrained, untrained"
        elif arm.startswith("at"):
            assert status == "-, -"


@pytest.mark.parametrize("args, message", [
    (["--arms", "bilw"], "did you mean 'bilaw'"),
    (["--dataset", "cifar"], "dataset"),
    (["--aa-points", "-1"], "--aa-points -1: must be >= 0"),
    (["--set", "seed=3"], "the seeds are --seeds"),
    (["--set", "lr=-1"], "lr"),
])
def test_bad_arguments_are_refused_before_training(tmp_path, capsys, args, message):
    assert study.main([*_argv(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_kept_runs_hold_what_the_table_reads_and_are_reused(trained, tmp_path, capsys):
    """--keep copies the small files of each finished run; a fresh --out holding only those copies
    prints the same table without training or attacking anything."""
    source, _ = trained
    kept = tmp_path / "kept"
    assert study.main([*_argv(source), "--keep", str(kept)]) == 0
    first = capsys.readouterr().out
    for arm in study.ARMS:
        folder = kept / "study" / "smoke" / arm / "seed0"
        assert sorted(p.name for p in folder.iterdir()) == sorted(n for n in study.KEPT_FILES
                                                                  if (source / "out" / "study" / "smoke" / arm / "seed0" / n).exists())
        assert not list(folder.glob("*.pt"))  # no checkpoint or model
    fresh = ["--dataset", "smoke", "--seeds", "0,1", "--aa-points", str(AA_POINTS), "--out", str(kept),
             "--tracking-uri", f"sqlite:///{tmp_path / 'fresh.db'}"]
    assert study.main(fresh) == 0
    second = capsys.readouterr().out
    assert "\n  training " not in second and "AutoAttack (" not in second
    table = lambda text: text[text.index("# Does BiLAW"):text.index("wrote ")]  # noqa: E731
    assert table(second) == table(first)


SQUARE = ("Square Attack has decreased the robust accuracy of 0.40%. This might indicate that the robustness "
          "evaluation using AutoAttack is unreliable. Consider running Square Attack with more iterations.")


def _run_folder(tmp_path, trained_aa: int, extension_warnings=None, extension_points: int = 0):
    """A run folder as the study leaves it: the training's own AutoAttack points in per_point.npz,
    and (when extension_points) study_aa.npz, with its checks unless extension_warnings is None."""
    folder = tmp_path / "run"
    folder.mkdir()
    np.savez_compressed(folder / "per_point.npz", test_clean=np.ones(50, bool), test_aa=np.ones(trained_aa, bool))
    if extension_points:
        extra = {} if extension_warnings is None else {"warnings": np.asarray(extension_warnings, dtype=str)}
        np.savez_compressed(folder / study.AA_NAME, correct=np.ones(extension_points, bool),
                            trained_points=trained_aa, seconds=1.0, **extra)
    return folder


def test_autoattack_checks_name_the_points_each_check_was_made_on(tmp_path):
    folder = _run_folder(tmp_path, 16, [SQUARE], 30)
    checks, unrecorded = study_autoattack.autoattack_checks(folder, {"autoattack_warnings": [SQUARE]}, 30)
    said = "Square Attack has decreased the robust accuracy of 0.40%."
    assert checks == [f"points 0-15: {said}", f"points 16-29: {said}"] and unrecorded is None


def test_an_extension_stored_before_checks_were_kept_says_so(tmp_path):
    folder = _run_folder(tmp_path, 16, None, 30)
    assert study_autoattack.autoattack_checks(folder, {}, 30) == ([], "points 16-29")
    (tmp_path / "quiet").mkdir()
    quiet = _run_folder(tmp_path / "quiet", 16, [], 30)
    assert study_autoattack.autoattack_checks(quiet, {}, 30) == ([], None)  # kept, and AutoAttack said nothing
    assert study_autoattack.autoattack_checks(quiet, {}, 16) == ([], None)  # the training's own points suffice


def test_the_table_lists_flagged_and_unrecorded_runs(tmp_path):
    found = {("at", 0): {"aa_checks": ([], None)},
             ("bilaw", 0): {"aa_checks": (["points 0-15: Square beat them."], None)},
             ("bilaw", 1): {"aa_checks": ([], "points 16-29")}}
    lines = study_autoattack.check_note(found, ["at", "bilaw"], [0, 1])
    assert lines[0].endswith("flagged 1 of 3 runs:") and lines[1] == "- bilaw seed 0, points 0-15: Square beat them."
    assert lines[2] == ("The checks on the points the study added were not recorded for bilaw seed 1 (points 16-29): "
                        f"their {study.AA_NAME} was written before the checks were kept.")
    assert study_autoattack.check_note({("at", 0): {"aa_checks": ([], None)}}, ["at"], [0])[0].endswith("flagged 0 of 1 runs.")


@pytest.mark.slow
def test_the_extensions_checks_are_logged_and_stored(trained, tmp_path, monkeypatch):
    """A check AutoAttack raises on the points the study adds is printed and kept in study_aa.npz,
    and the extension, run again, breaks the same points."""
    import dataclasses
    import shutil

    import bilaw.eval.autoattack as autoattack

    source = trained[0] / "out" / "study" / "smoke" / "bilaw" / "seed0"
    folder = tmp_path / "seed0"
    shutil.copytree(source, folder)
    before = _points(trained[0], "bilaw", 0, "aa")
    (folder / study.AA_NAME).unlink()
    real = autoattack.run_autoattack
    monkeypatch.setattr(autoattack, "run_autoattack",
                        lambda *a, **k: dataclasses.replace(real(*a, **k), warnings=(SQUARE,)))
    said = []
    again = study.study_autoattack(folder, AA_POINTS, said.append)
    np.testing.assert_array_equal(again, before)
    assert f"    AutoAttack's check: {SQUARE}" in said
    with np.load(folder / study.AA_NAME) as npz:
        assert npz["warnings"].tolist() == [SQUARE] and npz["correct"].tolist() == before.tolist()
