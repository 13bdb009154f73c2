"""`python -m bilaw.export RUN --format robustbench --out DIR` (bilaw/export.py).

A real CIFAR-10 run is trained once, on small files written here in CIFAR's own format
(WRN-8-1, one epoch, a short custom AutoAttack on 8 points), so nothing is downloaded. The
export's checkpoint must load with strict=True into a freshly built model, directly and through
the model_def.py it writes, and reproduce the run's logits and clean accuracy; its model_info
must hold every leaderboard field; a digits run is refused with one `error:` line, exit 2."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import REPO
import torch

from bilaw.data import datasets as data
from bilaw.config.train_config import TrainConfig
from bilaw.eval.evaluate import accuracy
from bilaw.export import (CHECKPOINT_NAME, MODEL_DEF_NAME, MODEL_INFO_NAME, ExportError, eps_footnote,
                          export_robustbench, format_eps, main)
from bilaw.models import Normalize, build_model
from bilaw.runs.saved import load_run, read_metrics, save_run
from bilaw.training.trainer import train

from test_data import write_cifar_batch

LEADERBOARD_FIELDS = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                      "architecture", "eps", "clean_acc", "reported", "autoattack_acc")
PROJECT_FIELDS = ("threat_model", "clean_acc_n_examples", "autoattack_acc_n_examples", "autoattack_version", "inputs")
N_TRAIN_PER_BATCH, N_TEST, AA_SAMPLES = 24, 20, 8


def _write_cifar10(root: Path) -> None:
    """The six CIFAR-10 batch files (uint8 rows, red/green/blue planes), random images and labels."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    for name, n in [(f"data_batch_{i}", N_TRAIN_PER_BATCH) for i in range(1, 6)] + [("test_batch", N_TEST)]:
        write_cifar_batch(folder / name, rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n),
                          b"labels")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> SimpleNamespace:
    """A CIFAR-10 WRN-8-1 run (l-inf 0.031, AutoAttack on 8 points) and a digits run, both saved."""
    root = tmp_path_factory.mktemp("export")
    _write_cifar10(root / "cifar")
    common = dict(epochs=1, pgd_steps=1, eval_pgd_steps=1, analysis_samples=0, plots=False, device="cpu")
    cifar_cfg = TrainConfig.from_dict(dict(common, dataset="cifar10", data_dir=str(root / "cifar"), model="wrn",
                                           wrn_depth=8, wrn_width=1, batch_size=50, meta_val_size=10,
                                           holdout_val_size=10, aa_samples=AA_SAMPLES, aa_attacks=["apgd-ce"],
                                           aa_n_iter=2))
    save_run(train(cifar_cfg, progress=False), root / "cifar_run")
    digits_cfg = TrainConfig.from_dict(dict(common, dataset="digits", model="fc1", aa_samples=0,
                                            meta_val_size=100, holdout_val_size=100))
    save_run(train(digits_cfg, progress=False), root / "digits_run")
    return SimpleNamespace(root=root, cifar=root / "cifar_run", digits=root / "digits_run", data_dir=root / "cifar")


@pytest.fixture(scope="module")
def exported(runs) -> SimpleNamespace:
    out = runs.root / "export"
    result = export_robustbench(runs.cifar, out)
    raw = data.DATASETS.get("cifar10")(data_dir=runs.data_dir)
    reference, cfg = load_run(runs.cifar)
    return SimpleNamespace(out=out, result=result, x=raw.x_test, y=raw.y_test, reference=reference, cfg=cfg,
                           final=read_metrics(runs.cifar)["final"],
                           info=json.loads((out / MODEL_INFO_NAME).read_text()))


def test_checkpoint_loads_strict_into_a_fresh_model_and_reproduces_the_clean_accuracy(exported):
    checkpoint = torch.load(exported.out / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert list(checkpoint) == ["state_dict"]
    state = checkpoint["state_dict"]
    # RobustBench's loader strips "module." and "model." from any key holding them: none may.
    assert not [k for k in state if "module." in k or "model." in k]
    fresh = build_model("wrn", (3, 32, 32), 10, depth=8, widen_factor=1)
    assert not any(isinstance(m, Normalize) for m in fresh.modules())  # it takes [0, 1] images as they are
    result = fresh.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    fresh.eval()
    assert 0 <= exported.x.min() and exported.x.max() <= 1
    with torch.no_grad():
        assert torch.equal(fresh(exported.x), exported.reference(exported.x))
    clean = accuracy(fresh, exported.x, exported.y, batch_size=exported.cfg.eval_batch_size)
    assert clean == exported.final["test_clean_acc"]
    assert exported.info["clean_acc"] == f"{100 * clean:.2f}"
    assert exported.info["clean_acc_n_examples"] == len(exported.y) == N_TEST


def test_model_def_rebuilds_the_network_and_loads_the_checkpoint(exported):
    spec = importlib.util.spec_from_file_location("exported_model_def", exported.out / MODEL_DEF_NAME)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.load_model()
    assert not model.training
    with torch.no_grad():
        assert torch.equal(model(exported.x), exported.reference(exported.x))
    untrained = module.get_model()
    untrained.load_state_dict(torch.load(module.CHECKPOINT, weights_only=True)["state_dict"], strict=True)
    assert accuracy(untrained, exported.x, exported.y) == exported.final["test_clean_acc"]


def test_model_info_has_every_leaderboard_field(exported, runs):
    info, final = exported.info, exported.final
    assert set(LEADERBOARD_FIELDS + PROJECT_FIELDS) <= set(info)
    assert list(info)[:len(LEADERBOARD_FIELDS) - 1] == list(LEADERBOARD_FIELDS[:-1])  # RobustBench's order
    assert info["name"] == runs.cifar.name and info["link"] == "" and info["authors"] == ""
    assert info["venue"] == "Unpublished" and info["additional_data"] is False and info["number_forward_passes"] == 1
    assert info["dataset"] == "cifar10" and info["architecture"] == "WideResNet-8-1"
    assert info["threat_model"] == "Linf" and info["eps"] == "0.031"
    assert "0.031" in info["footnote"] and "8/255" in info["footnote"] and "7.9/255" in info["footnote"]
    assert info["autoattack_acc"] == info["reported"] == f"{100 * final['test_aa_acc']:.2f}"
    assert info["autoattack_acc_n_examples"] == AA_SAMPLES
    assert info["autoattack_version"] == "custom (apgd-ce)"
    assert "[0, 1]" in info["inputs"] and "no normalisation" in info["inputs"]
    notes = " ".join(exported.result.notes)
    assert f"first {AA_SAMPLES} of the {N_TEST} test points" in notes and "'standard'" in notes


def test_user_fields_and_a_run_without_autoattack(runs, tmp_path, capsys):
    run = tmp_path / "no_aa"
    shutil.copytree(runs.cifar, run)
    metrics = json.loads((run / "metrics.json").read_text())
    del metrics["final"]["test_aa_acc"]  # what a run with aa_samples: 0 writes
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert main([str(run), "--format", "robustbench", "--out", str(tmp_path / "out"), "--name", "My Paper",
                 "--authors", "A, B", "--link", "https://example.org", "--venue", "NeurIPS 2099",
                 "--reported", "47.04", "--architecture", "WRN"]) == 0
    info = json.loads((tmp_path / "out" / MODEL_INFO_NAME).read_text())
    assert (info["name"], info["authors"], info["link"], info["venue"], info["reported"], info["architecture"]) == \
        ("My Paper", "A, B", "https://example.org", "NeurIPS 2099", "47.04", "WRN")
    assert info["autoattack_acc"] is None and info["autoattack_acc_n_examples"] is None
    err = capsys.readouterr().err
    assert "note: the run has no AutoAttack accuracy" in err and "Traceback" not in err


def test_eps_as_robustbench_writes_it():
    assert format_eps(8 / 255, "Linf") == "8/255" and format_eps(8 / 255 + 1e-12, "Linf") == "8/255"
    assert format_eps(0.031, "Linf") == "0.031" and format_eps(0.5, "L2") == "0.5"
    assert eps_footnote(8 / 255, "cifar10", "Linf") is None and eps_footnote(0.5, "cifar10", "L2") is None
    assert "0.031" in eps_footnote(0.031, "cifar100", "Linf")
    assert "leaderboard's 8/255" in eps_footnote(4 / 255, "cifar10", "Linf")
    assert "no CIFAR-100 L2 leaderboard" in eps_footnote(0.5, "cifar100", "L2")


def test_a_digits_run_is_refused(runs, tmp_path, capsys):
    with pytest.raises(ExportError, match=r"digits run: RobustBench's leaderboards cover CIFAR-10, CIFAR-100 and "
                                          r"ImageNet"):
        export_robustbench(runs.digits, tmp_path / "out")
    assert main([str(runs.digits), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "digits" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_module_command_refuses_a_digits_run_without_a_traceback(runs, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bilaw.export", str(runs.digits), "--format", "robustbench",
                           "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and "CIFAR-10, CIFAR-100 and ImageNet" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_format_missing_and_damaged_runs(runs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(runs.cifar), "--format", "onnx", "--out", str(tmp_path / "out")])
    assert exc.value.code == 2 and "invalid choice: 'onnx'" in capsys.readouterr().err
    assert main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a run folder" in err
    run = tmp_path / "damaged"
    shutil.copytree(runs.cifar, run)
    (run / "best.pt").write_bytes(b"not a checkpoint")
    assert main([str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "best.pt" in err and "Traceback" not in err
