"""What a re-run needs besides a config's keys: the torch thread count, applied and recorded
(bilaw.train, a search trial, tune/rerun_best.py), and the one definition of the paper's
evaluation that `--full-eval`, rerun_best and report.py's headings share."""
from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from bilaw.config.reproducibility import FULL_EVAL, aa_label, evaluation_label, threads_note, use_threads
from bilaw.config.train_config import TrainConfig
from bilaw.train import build_parser, load_config


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_paper_evaluation_is_pgd20_and_standard_autoattack_on_1000_points():
    """The definition itself, against the paper's protocol (docs/methods.md: PGD-20, standard
    AutoAttack with its own iterations on the first 1,000 test points)."""
    assert FULL_EVAL == {"eval_pgd_steps": 20, "aa_version": "standard", "aa_attacks": None, "aa_n_iter": None,
                         "aa_samples": 1000}
    full = TrainConfig.from_dict({"dataset": "digits", **FULL_EVAL})
    assert evaluation_label(full.to_dict()) == "PGD-20, AutoAttack standard on 1000 test points (the paper's evaluation)"
    cheap = TrainConfig.from_dict({"eval_pgd_steps": 10, "aa_samples": 100, "aa_attacks": ["apgd-ce", "apgd-t"],
                                   "aa_n_iter": 20})
    assert evaluation_label(cheap.to_dict()) == "PGD-10, AutoAttack apgd-ce+apgd-t, 20 iterations on 100 test points"
    assert evaluation_label(TrainConfig(aa_samples=0).to_dict()) == "PGD-20, no AutoAttack"


def test_full_eval_sets_exactly_the_shared_definition(tmp_path):
    """--full-eval changes the digits workload's config in exactly FULL_EVAL's keys, to its values;
    a --set after it still wins, and the file's other keys stay."""
    path = tmp_path / "c.yaml"
    path.write_text("method: bilaw\nepochs: 3\neval_pgd_steps: 10\naa_samples: 100\naa_attacks: [apgd-ce, apgd-t]\n"
                    "aa_n_iter: 20\naa_version: rand\nthreads: 1\n")  # every evaluation key off the paper's
    args = build_parser().parse_args(["--config", str(path), "--full-eval", "--out", "x"])
    plain = load_config(args.config, []).to_dict()
    full = load_config(args.config, [], full_eval=args.full_eval).to_dict()
    assert {k for k in plain if plain[k] != full[k]} == set(FULL_EVAL)
    assert {k: full[k] for k in FULL_EVAL} == FULL_EVAL
    assert full["epochs"] == 3 and full["threads"] == 1 and full["method"] == "bilaw"
    assert load_config(args.config, ["aa_samples=500"], full_eval=True).aa_samples == 500


def test_rerun_best_applies_the_same_definition_and_the_trials_threads(tmp_path, capsys, monkeypatch):
    """rerun_best re-runs with FULL_EVAL (its --aa-samples) and the thread count the trial
    recorded; --threads overrides it, with a note naming the trial's count."""
    from types import SimpleNamespace

    from tune import rerun_best

    db = tmp_path / "m.db"
    MlflowClient(f"sqlite:///{db}").create_experiment("s")
    trial = TrainConfig.from_dict({"method": "bilaw", "eval_pgd_steps": 5, "aa_samples": 16,
                                   "aa_attacks": ["apgd-ce"], "aa_n_iter": 5, "threads": 1, "seed": 0}).to_dict()
    best = SimpleNamespace(info=SimpleNamespace(run_id="r1", run_name="trial"),
                           data=SimpleNamespace(metrics={"best_val_pgd_acc": 0.5}, tags={}))
    handed = []
    monkeypatch.setattr(rerun_best, "pick_run", lambda *a: best)
    monkeypatch.setattr(rerun_best, "run_config", lambda uri, run: dict(trial))
    monkeypatch.setattr(rerun_best, "_run", lambda args, uri, run, config: handed.append(config) or 0)
    argv = ["--experiment", "s", "--tracking-uri", f"sqlite:///{db}"]
    assert rerun_best.main(argv) == 0
    out = capsys.readouterr().out
    assert {k: handed[0][k] for k in FULL_EVAL} == FULL_EVAL and handed[0]["threads"] == 1
    assert "evaluation: PGD-20, AutoAttack standard on 1000 test points (the paper's evaluation)" in out
    assert "1 torch thread per re-run, as the trial ran" in out and "note:" not in out
    assert rerun_best.main([*argv, "--threads", "2", "--aa-samples", "200"]) == 0
    out = capsys.readouterr().out
    assert handed[1]["threads"] == 2 and handed[1]["aa_samples"] == 200
    assert "note: running with 2 torch threads, not the 1 run r1's config.yaml records" in out
    assert rerun_best.main([*argv, "--threads", "0"]) == 2
    assert "threads: 0 is out of range (allowed: >= 1)" in capsys.readouterr().err


def test_use_threads_applies_and_records_the_count(keep_threads):
    torch.set_num_threads(3)
    assert use_threads(TrainConfig()).threads == 3 and torch.get_num_threads() == 3  # None: torch's default
    assert use_threads(TrainConfig(threads=1)).threads == 1 and torch.get_num_threads() == 1


def test_threads_note_only_where_the_count_differs_from_the_recorded_one():
    assert threads_note(1, 1, "best_config.yaml") is None
    assert threads_note(None, 2, "best_config.yaml") is None  # nothing recorded: nothing to differ from
    note = threads_note(1, 2, "best_config.yaml")
    assert note.startswith("note: running with 2 torch threads, not the 1 best_config.yaml records")


def test_a_trial_records_its_thread_count():
    """A search trial runs with the search's count (one per CPU of the trial) unless its config
    has one; trial_config carries it, so the saved run and best_config.yaml record it."""
    from tune.trainable import META_KEY, trial_config

    assert trial_config({"method": "at", META_KEY: {"threads": 3}}).threads == 3
    assert trial_config({"method": "at", "threads": 2, META_KEY: {"threads": 3}}).threads == 2
    assert trial_config({"method": "at"}).threads == 1


@pytest.mark.parametrize("params, label", [
    ({"aa_version": "standard", "aa_attacks": "None", "aa_n_iter": "None", "aa_samples": "1000"}, "standard"),
    ({"aa_version": "standard", "aa_attacks": "apgd-ce,apgd-t", "aa_n_iter": "20", "aa_samples": "100"},
     "apgd-ce+apgd-t, 20 iterations"),
    ({"aa_version": "plus", "aa_attacks": "None", "aa_n_iter": "None", "aa_samples": "10"}, "plus"),
    ({"aa_version": "standard", "aa_attacks": "None", "aa_n_iter": "None", "aa_samples": "0"}, "none"),
])
def test_aa_label_reads_mlflow_params(params, label):
    """MLflow logs None as 'None' and a list joined by commas (tune/tracking/runs.py flatten_params)."""
    assert aa_label(params) == label
