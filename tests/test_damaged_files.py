"""Every file the project reads, when missing, empty, cut short, garbage, a folder, unreadable or
of the wrong content, stops with one clear error that names the file, what is wrong and what to
do; the command-line tools print it without a traceback and exit 2; a damaged latest training
checkpoint falls back to checkpoint.prev.pt.

`READERS` lists each file the project reads with the function that reads it; the parametrised
test runs every (reader, case) pair in-process. A new file the project reads gets a `Reader`.
An unreadable file is one with mode 0; root may read it anyway, so under root os.access is told
that it may not (the readers ask os.access before opening)."""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest
import torch
import yaml
from test_data import write_cifar_batch, write_idx, write_idx_dataset

from bilaw.config.train_config import ConfigError, TrainConfig
from bilaw.data import datasets as data
from bilaw.file_errors import DamagedFileError
from bilaw.runs.saved import load_analysis, load_run, read_metrics, read_run_config, save_run
from bilaw.train import load_config
from bilaw.training.checkpoint import load_checkpoint, previous_path, save_checkpoint
from bilaw.training.trainer import CHECKPOINT_NAME, train
from tune import spaces as sp
from tune.state_files import DRIVER_FILE, OPTUNA_DB, check_study, read_driver_record

CFG = TrainConfig.from_dict(dict(dataset="digits", model="fc1", batch_size=128, meta_val_size=100,
                                 holdout_val_size=100, aa_samples=0, device="cpu", pgd_steps=2, eval_pgd_steps=2,
                                 epochs=2, analysis_samples=50, plots=False))
STUDY = "exp"
# what to do: for a damaged file, how to get a whole one; for wrong content, what is allowed
FIX = re.compile(r"delete|re-install|re-run|replace|restore|write|pass |start|leave|make it readable|copy|"
                 r"use another|check the path|did you mean|allowed|is required|needs|expected")


# ----- the good files every case starts from ---------------------------------------------------------
@pytest.fixture(scope="module")
def good(tmp_path_factory) -> SimpleNamespace:
    """A finished run (best.pt, analysis.pt, config.yaml, metrics.json, checkpoint.pt) and an
    Optuna study, written once; each case copies the file it damages."""
    import optuna

    root = tmp_path_factory.mktemp("good")
    result = train(CFG, checkpoint_dir=root / "run", progress=False)
    save_run(result, root / "run")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name=STUDY, storage=f"sqlite:///{root / OPTUNA_DB}")
    return SimpleNamespace(run=root / "run", study=root / OPTUNA_DB)


def _copy_run(good, tmp_path: Path, names=("best.pt", "analysis.pt", "config.yaml", "metrics.json")) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    for name in names:
        shutil.copy2(good.run / name, run / name)
    return run


def _edit_pt(key: str, edit: Callable[[Any], Any]) -> Callable[[Path], None]:
    """A writer that loads a .pt file, replaces state[key] with edit(state[key]) and saves it."""
    def write(path: Path) -> None:
        state = torch.load(path, weights_only=True)
        state[key] = edit(state[key])
        torch.save(state, path)
    return write


def _other_model(weights: dict) -> dict:
    return {k: v[..., :1].clone() for k, v in weights.items()}


def _wrong_study(path: Path) -> None:
    with sqlite3.connect(path) as con:
        con.execute("update studies set study_name = 'another_search'")


def _foreign_sqlite(path: Path) -> None:
    path.unlink()
    with sqlite3.connect(path) as con:
        con.execute("create table runs (run_uuid text)")


def _mnist(tmp_path: Path) -> Path:
    write_idx_dataset(tmp_path / "MNIST" / "raw", gz=False)
    return tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte"


def _fashion_gz(tmp_path: Path) -> Path:
    write_idx_dataset(tmp_path / "FashionMNIST" / "raw", gz=True)
    return tmp_path / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte.gz"


def _cifar10(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in data.CIFAR10_FILES:
        write_cifar_batch(tmp_path / "cifar-10-batches-py" / name, rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                          rng.integers(0, 10, 4), b"labels")
    return tmp_path / "cifar-10-batches-py" / "data_batch_2"


def _best_config(tmp_path: Path) -> Path:
    CFG.to_yaml(tmp_path / "best_config.yaml")
    return tmp_path / "best_config.yaml"


def _driver_record(tmp_path: Path) -> Path:
    record = {"pid": 1, "pgid": 1, "session_dir": "", "joined_cluster": False}
    (tmp_path / DRIVER_FILE).write_text(json.dumps(record))
    return tmp_path / DRIVER_FILE


def _cifar_batch(images: np.ndarray, labels: list[int]) -> Callable[[Path], None]:
    return lambda path: write_cifar_batch(path, images, np.array(labels), b"labels")


# ----- the readers ---------------------------------------------------------------------------------
@dataclass
class Reader:
    """A file the project reads: `place(tmp_path, good)` writes a whole copy and returns its path,
    `read(path)` reads it as the project does, `error` is what a damaged file raises, `wrong`
    maps each wrong-content case to (writer over the file, a fragment of the message, error)."""

    place: Callable[[Path, SimpleNamespace], Path]
    read: Callable[[Path], Any]
    error: type[Exception]
    wrong: dict[str, tuple[Callable[[Path], None], str, type[Exception] | None]] = field(default_factory=dict)
    missing: type[Exception] | None = None      # None: a missing file is not an error for this reader
    uses_downloads: bool = False


READERS: dict[str, Reader] = {
    "mnist IDX": Reader(
        lambda t, g: _mnist(t), lambda p: data.load_mnist(data_dir=p.parents[2]), DamagedFileError,
        {"labels out of range": (lambda p: write_idx(p, np.full(50, 12)), "labels outside [0, 10)", None),
         "wrong label count": (lambda p: write_idx(p, np.zeros(49)), "49 labels for the 50 images", None)},
        missing=data.MissingDatasetError, uses_downloads=True),
    "fashion_mnist IDX .gz": Reader(
        lambda t, g: _fashion_gz(t), lambda p: data.load_fashion_mnist(data_dir=p.parents[2]), DamagedFileError,
        {"wrong image shape": (lambda p: write_idx(p, np.zeros((20, 32, 32))), "(20, 32, 32)", None),
         "labels, not images": (lambda p: write_idx(p, np.zeros(20)), "not this dataset's images", None)},
        missing=data.MissingDatasetError, uses_downloads=True),
    "cifar10 pickle": Reader(
        lambda t, g: _cifar10(t), lambda p: data.load_cifar10(data_dir=p.parents[1]), DamagedFileError,
        {"labels out of range": (_cifar_batch(np.zeros((4, 3072), np.uint8), [0, 1, 10, 2]), "outside [0, 10)", None),
         "wrong image shape": (_cifar_batch(np.zeros((4, 1024), np.uint8), [0, 1, 2, 3]), "(4, 1024)", None)},
        missing=data.MissingDatasetError, uses_downloads=True),
    "best.pt": Reader(
        lambda t, g: _copy_run(g, t) / "best.pt", lambda p: load_run(p.parent), DamagedFileError,
        {"weights of another model": (_edit_pt("model", _other_model), "do not fit the model", None),
         "an invalid config": (_edit_pt("config", lambda c: {**c, "method": "bogus"}), "unknown method", None),
         "not a best.pt": (lambda p: torch.save({"model": {}}, p), "lacks 'config'", None)},
        missing=DamagedFileError),
    "analysis.pt": Reader(
        lambda t, g: _copy_run(g, t) / "analysis.pt", lambda p: load_analysis(p.parent), DamagedFileError,
        {"not an analysis": (lambda p: torch.save({"weights": torch.zeros(3)}, p), "lacks 'analysis'", None)},
        missing=DamagedFileError),
    "checkpoint.pt (no previous one)": Reader(
        lambda t, g: _copy_run(g, t, names=(CHECKPOINT_NAME, "best.pt")) / CHECKPOINT_NAME,
        lambda p: train(CFG, checkpoint_dir=p.parent, progress=False), DamagedFileError,
        {"weights of another model": (_edit_pt("model", _other_model), "does not fit this run", None),
         "another config": (_edit_pt("config", lambda c: {**c, "lr": 0.5}), "different config", ConfigError),
         "a best.pt": (lambda p: shutil.copy2(p.parent / "best.pt", p), "lacks 'step'", None)}),
    "config.yaml": Reader(
        lambda t, g: _copy_run(g, t) / "config.yaml", lambda p: read_run_config(p.parent), DamagedFileError,
        {"a list": (lambda p: p.write_text("- a\n- b\n"), "holds a list", None),
         "an invalid value": (lambda p: p.write_text(p.read_text().replace("method: at", "method: bogus")),
                              "unknown method", None)},
        missing=DamagedFileError),
    "metrics.json": Reader(
        lambda t, g: _copy_run(g, t) / "metrics.json", lambda p: read_metrics(p.parent), DamagedFileError,
        {"no final metrics": (lambda p: p.write_text('{"history": [], "final": {}}'), "lack 'test_clean_acc'", None),
         "no history": (lambda p: p.write_text('{"final": {}}'), "lacks 'history'", None)},
        missing=DamagedFileError),
    "search space YAML": Reader(
        lambda t, g: Path(shutil.copy2(sp.SPACES_DIR / "ablation_capacity.yaml", t / "space.yaml")),
        lambda p: sp.load_space(str(p)), sp.SpaceError,
        {"a list": (lambda p: p.write_text("- a\n"), "expected a mapping", None),
         "an unknown key": (lambda p: p.write_text(p.read_text().replace("sampler:", "smapler:")),
                            "did you mean 'sampler'", None)},
        missing=sp.SpaceError),
    "workloads YAML": Reader(
        lambda t, g: Path(shutil.copy2(sp.WORKLOADS_FILE, t / "workloads.yaml")),
        lambda p: sp.load_workloads(p), sp.SpaceError,
        {"an invalid config": (lambda p: p.write_text("w:\n  description: x\n  config: {eps: 2.0}\n"), "eps", None)},
        missing=sp.SpaceError),
    "best_config.yaml": Reader(
        lambda t, g: _best_config(t), lambda p: load_config(str(p), []), ConfigError,
        {"an out-of-range value": (lambda p: p.write_text("eps: 7.0\n"), "eps: 7.0 is out of range", None)},
        missing=ConfigError),
    "optuna.db": Reader(
        lambda t, g: Path(shutil.copy2(g.study, t / OPTUNA_DB)),
        lambda p: check_study(p, STUDY, "start a new search"), DamagedFileError,
        {"another search's study": (_wrong_study, "holds no study named 'exp'", None),
         "another database": (_foreign_sqlite, "not an Optuna study", None)},
        missing=DamagedFileError),
    "driver.json": Reader(
        lambda t, g: _driver_record(t), lambda p: read_driver_record(p.parent), DamagedFileError,
        {"a list": (lambda p: p.write_text("[1, 2]"), "holds a list", None),
         "a pid that is no number": (lambda p: p.write_text('{"pid": "abc"}'), "wrong type", None)}),
}


def _truncate(path: Path) -> None:
    """Cut the file near its middle. A text file is cut where the rest no longer parses (a text
    cut at a line end, or after `key:`, can still be a whole YAML or JSON document, which no
    reader can tell from a finished file: the readers' documented limit)."""
    raw = path.read_bytes()
    cut = len(raw) // 2
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        path.write_bytes(raw[:cut])
        return
    while cut > 1 and _parses(raw[:cut]):
        cut -= 1
    path.write_bytes(raw[:cut])


def _parses(text: bytes) -> bool:
    try:
        yaml.safe_load(text)
        return True
    except yaml.YAMLError:
        return False


def _folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing": (lambda p: p.unlink(), r"does not exist|not on disk"),
    "empty": (lambda p: p.write_bytes(b""), r"empty"),
    "truncated": (_truncate, r"cut short|damaged|lacks|not a valid|malformed"),
    "garbage": (lambda p: p.write_bytes(random.Random(0).randbytes(600)), r"not an? |garbage|malformed"),
    "folder": (_folder, r"folder"),
    "unreadable": (lambda p: p.chmod(0), r"permission denied|cannot be read"),
}
PAIRS = [(r, c) for r in READERS for c in [*CASES, *READERS[r].wrong]]


@pytest.mark.parametrize("reader, case", PAIRS)
def test_a_damaged_file_is_one_clear_error(reader, case, good, tmp_path, request, monkeypatch):
    spec = READERS[reader]
    if spec.uses_downloads:
        request.getfixturevalue("no_download")
    if case == "unreadable" and os.geteuid() == 0:  # root may read a chmod 0 file: os.access is told it may not
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: real_access(p, mode) and os.stat(p).st_mode & 0o444 != 0)
    if case == "missing" and spec.missing is None:
        pytest.skip("a missing file is not an error here (no checkpoint yet: a fresh run; no driver record)")
    path = spec.place(tmp_path, good)
    spec.read(path)  # the whole file reads
    if case in CASES:
        damage, problem = CASES[case]
        expected = spec.missing if case == "missing" else spec.error
    else:
        damage, fragment, error = spec.wrong[case]
        problem, expected = re.escape(fragment), error or spec.error
    damage(path)
    with pytest.raises(expected) as info:
        spec.read(path)
    msg = str(info.value)
    name = path.name.removesuffix(".gz") if expected is data.MissingDatasetError else path.name  # "(plain or .gz)"
    assert str(path) in msg or (name in msg and str(path.parent) in msg), msg        # names the file
    assert re.search(problem, msg), msg                                                # and the problem
    # and what to do: the fix itself (a DamagedFileError keeps it apart), else the text after the problem
    fix = info.value.fix if isinstance(info.value, DamagedFileError) else msg[re.search(problem, msg).end():]
    assert FIX.search(fix), msg
    assert "Traceback" not in msg and len(msg.splitlines()) <= 12, msg


def test_the_reader_table_keeps_the_files_listed_here_each_with_wrong_content_cases():
    # the list is kept by hand: a new kind of file the project reads must be added to it and to READERS
    files = {"mnist IDX", "fashion_mnist IDX .gz", "cifar10 pickle", "best.pt", "analysis.pt",
             "checkpoint.pt (no previous one)", "config.yaml", "metrics.json", "search space YAML", "workloads YAML",
             "best_config.yaml", "optuna.db", "driver.json"}
    assert set(READERS) == files and all(spec.wrong for spec in READERS.values())


# ----- the previous checkpoint -----------------------------------------------------------------------
def _history(result) -> list[dict]:
    return [{k: v for k, v in h.items() if not k.endswith("_time_s")} for h in result.history]


def test_a_truncated_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    cfg = CFG.replace(epochs=3)
    straight = train(cfg, progress=False)
    folder = tmp_path / "run"
    train(cfg, checkpoint_dir=folder, stop_after=2, progress=False)
    latest, prev = folder / CHECKPOINT_NAME, previous_path(folder / CHECKPOINT_NAME)
    assert prev.name == "checkpoint.prev.pt"
    assert (load_checkpoint(latest)["epoch"], load_checkpoint(prev)["epoch"]) == (2, 1)
    _truncate(latest)
    said, reported = [], []
    resumed = train(cfg, lambda m, _: reported.append(m["epoch"]), checkpoint_dir=folder, progress=False,
                    log=said.append)
    warning = next(s for s in said if s.startswith("warning"))
    assert str(latest) in warning and str(prev) in warning and "cut short" in warning
    assert reported == [2, 3]                                   # epoch 2 is trained again, from epoch 1's end
    assert _history(resumed) == _history(straight)              # nothing already logged is lost
    assert (folder / "checkpoint.damaged.pt").is_file()         # kept, and not rotated into prev
    assert (load_checkpoint(latest)["epoch"], load_checkpoint(prev)["epoch"]) == (3, 2)


def test_a_missing_latest_checkpoint_falls_back_and_two_damaged_ones_stop(tmp_path):
    folder = tmp_path / "run"
    train(CFG, checkpoint_dir=folder, stop_after=2, progress=False)
    latest, prev = folder / CHECKPOINT_NAME, previous_path(folder / CHECKPOINT_NAME)
    shutil.copy2(prev, tmp_path / "prev.pt")
    latest.unlink()
    said = []
    assert train(CFG, checkpoint_dir=folder, progress=False, log=said.append).final["epochs_trained"] == 2
    assert any(str(prev) in s and "does not exist" in s for s in said)
    latest.write_bytes(b"")
    prev.write_bytes(b"garbage")
    with pytest.raises(DamagedFileError) as info:
        train(CFG, checkpoint_dir=folder, progress=False)
    msg = str(info.value)
    assert str(latest) in msg and str(prev) in msg and "delete both" in msg


def test_saving_keeps_the_previous_checkpoint_whole(tmp_path):
    path = tmp_path / CHECKPOINT_NAME
    for epoch in range(3):
        save_checkpoint({"epoch": epoch}, path, keep_previous=True)
    assert load_checkpoint(path)["epoch"] == 2 and load_checkpoint(previous_path(path))["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]  # no temp files
    save_checkpoint({"epoch": 9}, tmp_path / "best.pt")
    assert not previous_path(tmp_path / "best.pt").exists()       # only where asked for


def test_a_complete_checkpoint_holding_other_objects_is_not_called_cut_short(tmp_path):
    path = tmp_path / CHECKPOINT_NAME
    torch.save({"epoch": 3, "maps": [np.arange(4)]}, path)   # complete, but numpy is refused
    with pytest.raises(DamagedFileError) as info:
        load_checkpoint(path)
    assert "holds objects other than tensors and plain data" in str(info.value)
    assert "numpy" in str(info.value) and "cut short" not in str(info.value)


# ----- the command-line tools --------------------------------------------------------------------------
def _clean_error(capsys, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert re.search(r"^error: ", err, re.MULTILINE) and "Traceback" not in err, err
    assert all(f in err for f in fragments), err
    return err


def test_cli_train_with_a_damaged_checkpoint(tmp_path, capsys):
    from bilaw.train import main

    out = tmp_path / "run"
    out.mkdir()
    (out / CHECKPOINT_NAME).write_bytes(b"\x00" * 100)
    args = [f"--set={k}={v}" for k, v in CFG.to_dict().items() if k in ("dataset", "model", "epochs", "device")]
    assert main([*args, "--out", str(out), "--no-progress"]) == 2
    _clean_error(capsys, str(out / CHECKPOINT_NAME), "not a PyTorch file", "delete it")


def test_cli_evaluate_with_a_truncated_best_pt(good, tmp_path, capsys):
    from bilaw.evaluate import main as evaluate_main

    run = _copy_run(good, tmp_path)
    _truncate(run / "best.pt")
    assert evaluate_main([str(run)]) == 2
    _clean_error(capsys, str(run / "best.pt"), "cut short", "python -m bilaw.train --config")


def test_cli_run_search_resume_with_a_damaged_study(tmp_path, capsys, monkeypatch):
    from tune.run_search import main

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "rr" / "ablation_capacity"
    folder.mkdir(parents=True)
    (folder / "experiment_state-2026.json").write_text("{}")
    (folder / OPTUNA_DB).write_bytes(b"SQLite format 3\x00" + b"\x07" * 100)
    argv = ["--space", "ablation_capacity", "--workload", "smoke", "--storage-path", str(tmp_path / "rr"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}", "--resume"]
    assert main(argv) == 2
    _clean_error(capsys, str(folder / OPTUNA_DB), "--experiment NEW_NAME")
    space = tmp_path / "mine.yaml"
    space.write_bytes(b"\xff\xfe garbage \x00")
    assert main(["--space", str(space)]) == 2
    _clean_error(capsys, str(space), "not a text file")


def test_cli_reproduce_with_a_damaged_metrics_json(tmp_path, capsys):
    from tune.reproduce import main

    folder = tmp_path / "out" / "table1" / "digits" / "at" / "seed0"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text('{"history": [{"epoch": 0}], "fin')
    argv = ["--table", "1", "--dataset", "digits", "--model", "fc1", "--norm", "linf", "--methods", "at",
            "--seeds", "1", "--epochs", "1", "--out", str(tmp_path / "out"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}"]
    assert main(argv) == 2
    _clean_error(capsys, str(folder / "metrics.json"), "not valid JSON", "delete the run folder")
    assert not (tmp_path / "mlruns.db").exists()  # stopped before tracking and training


def _fake_run(run_id: str, artifacts: Path, value: str) -> SimpleNamespace:
    from tune.tracking.runs import PARENT_TAG

    return SimpleNamespace(info=SimpleNamespace(run_id=run_id, run_name=run_id, artifact_uri=str(artifacts),
                                                status="FINISHED"),
                           data=SimpleNamespace(params={"lr": value, "seed": "0"}, tags={PARENT_TAG: "parent"},
                                                metrics={"test_clean_acc": 0.5, "test_pgd_acc": 0.3,
                                                         "best_val_pgd_acc": 0.3}))


@pytest.mark.slow
def test_cli_report_importance_with_a_damaged_study(tmp_path, capsys, monkeypatch):
    from tune import report

    db = tmp_path / "mlruns.db"
    db.write_bytes(b"")  # the tracking store is MLflow's (not read here: its runs are given below)
    runs = [_fake_run("a", tmp_path, "0.1"), _fake_run("b", tmp_path, "0.2")]
    folder = tmp_path / "ray_results" / STUDY
    folder.mkdir(parents=True)
    (folder / OPTUNA_DB).write_bytes(random.Random(1).randbytes(4096))
    monkeypatch.setattr(report, "finished_runs", lambda uri, experiment, reruns=None: runs)
    monkeypatch.setattr(report, "study_folders", lambda runs, uri: [folder])
    assert report.main(["--experiment", STUDY, "--importance", "--tracking-uri", f"sqlite:///{db}"]) == 2
    _clean_error(capsys, str(folder / OPTUNA_DB), "not a readable SQLite database", "leave that option out")


def test_cli_rerun_best_with_a_damaged_config_artifact(tmp_path, capsys, monkeypatch):
    from tune import rerun_best

    db = tmp_path / "mlruns.db"
    db.write_bytes(b"")
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / "config.yaml").write_text("method: at\nlr: [0.1\n")
    monkeypatch.setattr(rerun_best, "pick_run", lambda *a: _fake_run("r1", artifacts, "0.1"))
    assert rerun_best.main(["--experiment", STUDY, "--tracking-uri", f"sqlite:///{db}"]) == 2
    _clean_error(capsys, str(artifacts / "config.yaml"), "run r1", "malformed YAML", "--run-id")


def test_a_restored_ray_trial_gets_both_checkpoints_and_falls_back(tmp_path):
    """A Ray trial restores by copying its last Ray checkpoint into a fresh work folder: both the
    latest and the previous checkpoint travel, so a damaged latest falls back as in a plain run."""
    from tune.trainable import copy_training_checkpoints

    ray_ckpt = tmp_path / "ray_checkpoint"
    train(CFG, checkpoint_dir=ray_ckpt, stop_after=2, progress=False)
    _truncate(ray_ckpt / CHECKPOINT_NAME)
    work = tmp_path / "work"
    work.mkdir()
    assert copy_training_checkpoints(ray_ckpt, work) == [CHECKPOINT_NAME, "checkpoint.prev.pt"]
    said = []
    assert train(CFG, checkpoint_dir=work, progress=False, log=said.append).final["epochs_trained"] == CFG.epochs
    assert any("resumed from the previous checkpoint" in s and str(work / "checkpoint.prev.pt") in s for s in said)
