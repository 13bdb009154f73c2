"""The one training loop end to end on `digits`: every method, exact resume, best/last state,
load_run, weights of every weighting, the single-run CLI."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from bilaw import TrainConfig, load_run
from bilaw.training.trainer import train
from bilaw.config.train_config import METHODS
from bilaw.eval.evaluate import accuracy, pgd_predictions
from bilaw.data.datasets import load_data
from bilaw.train import main as train_main
from bilaw.training.trainer import NonFiniteLossError, lr_at

TINY = dict(dataset="digits", model="fc1", batch_size=32, meta_val_size=100, holdout_val_size=100,
            aa_samples=0, device="cpu", eval_pgd_steps=10)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, **kw})


def _strip_times(history):
    return [{k: v for k, v in h.items() if not k.endswith("_time_s")} for h in history]


@pytest.mark.parametrize("method, extra", [
    ("bilaw", {}),
    pytest.param("bilaw", {"meta_optimizer": "adamw", "meta_grad_scale": "per_lr"}, marks=pytest.mark.slow),
    pytest.param("bilaw", {"meta_optimizer": "sgd", "meta_grad_scale": "per_lr", "meta_lr": 0.1},
                 marks=pytest.mark.slow),
    pytest.param("gairat", {}, marks=pytest.mark.slow), pytest.param("trades", {}, marks=pytest.mark.slow)])
def test_resume_is_bit_exact(tmp_path, method, extra):
    cfg = _cfg(method=method, epochs=3, burn_in_epochs=1, meta_val_size=60, holdout_val_size=60, **extra)
    full = train(cfg, checkpoint_dir=tmp_path / "full", progress=False)
    train(cfg, checkpoint_dir=tmp_path / "split", stop_after=1, progress=False)
    resumed = train(cfg, checkpoint_dir=tmp_path / "split", progress=False)
    assert _strip_times(resumed.history) == _strip_times(full.history)
    assert _strip_times([resumed.final]) == _strip_times([full.final])
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    if method == "bilaw":
        for a, b in zip(full.weight_net.parameters(), resumed.weight_net.parameters()):
            assert torch.equal(a, b)


def test_resume_refuses_a_different_config(tmp_path):
    train(_cfg(epochs=2), checkpoint_dir=tmp_path, stop_after=1, progress=False)
    with pytest.raises(ValueError, match=r"different config \(lr: checkpoint 0.1 vs now 0.05"):
        train(_cfg(epochs=2, lr=0.05), checkpoint_dir=tmp_path, progress=False)


@pytest.fixture(scope="module")
def all_methods(tmp_path_factory):
    """Every named method, 2 epochs on digits through the CLI (shared by the tests below)."""
    root = tmp_path_factory.mktemp("methods")
    out = {}
    for method in METHODS:
        d = root / method
        argv = ["--out", str(d), "--no-progress", "--set", f"method={method}", "--set", "epochs=2"]
        argv += [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
        assert train_main(argv) == 0
        out[method] = d
    return out


@pytest.mark.slow
def test_every_method_writes_its_metrics(all_methods):
    keys = {"epoch", "train_loss", "val_clean_acc", "val_pgd_acc", "best_val_pgd_acc", "lr", "weight_std",
            "weight_min", "weight_max", "weight_raw_mean", "epoch_time_s", "eval_time_s"}
    for method, d in all_methods.items():
        metrics = json.loads((d / "metrics.json").read_text())
        assert [h["epoch"] for h in metrics["history"]] == [1, 2] and metrics["epochs_from"] == 1, method
        assert "test_clean_acc" not in metrics["history"][-1], method  # the final metrics are in "final" only
        assert keys <= set(metrics["history"][0]), method
        final = metrics["final"]
        for k in ("test_clean_acc", "test_pgd_acc", "last_test_clean_acc", "last_test_pgd_acc"):
            assert 0.0 <= final[k] <= 1.0, (method, k)
        best = max(h["val_pgd_acc"] for h in metrics["history"])
        assert metrics["history"][-1]["best_val_pgd_acc"] == best
        assert metrics["history"][final["best_epoch"] - 1]["val_pgd_acc"] == best  # the first best, from 1
        assert all(h["val_pgd_acc"] < best for h in metrics["history"][:final["best_epoch"] - 1])
        assert final["robust_overfit_gap"] == best - metrics["history"][-1]["val_pgd_acc"]  # >= 0, 0 if last is best
        assert yaml.safe_load((d / "config.yaml").read_text())["method"] == method


@pytest.mark.slow
def test_adversarial_training_beats_plain_on_pgd(all_methods):
    pgd = {m: json.loads((d / "metrics.json").read_text())["final"]["test_pgd_acc"] for m, d in all_methods.items()}
    for method, acc in pgd.items():
        if method != "plain":
            assert acc > pgd["plain"], (method, pgd)


@pytest.mark.slow
def test_load_run_reproduces_recorded_clean_accuracy(all_methods):
    d = all_methods["bilaw"]
    model, cfg = load_run(d)
    assert not model.training and next(model.parameters()).device.type == "cpu"
    data = load_data(cfg.dataset, meta_val_size=cfg.meta_val_size, holdout_val_size=cfg.holdout_val_size, seed=cfg.seed)
    recorded = json.loads((d / "metrics.json").read_text())["final"]["test_clean_acc"]
    assert accuracy(model, data.x_test, data.y_test) == recorded


@pytest.mark.parametrize("method", ["gairat", "wmmr", "mail", "nonparam", "bilaw"])
def test_every_weighting_is_non_uniform_without_burn_in(method):
    result = train(_cfg(method=method, epochs=1, burn_in_epochs=0), progress=False)
    assert result.history[0]["weight_std"] > 0


def test_burn_in_epochs_are_unweighted():
    result = train(_cfg(method="mail", epochs=2, burn_in_epochs=1), progress=False)
    assert result.history[0]["weight_std"] == 0 and result.history[1]["weight_std"] > 0


def test_lr_schedule_divides_at_fractions():
    cfg = _cfg(epochs=10, lr=0.1).resolved()
    assert [round(lr_at(cfg, e), 6) for e in range(10)] == [0.1] * 3 + [0.01] * 3 + [0.001] * 4


def test_nan_loss_stops_with_a_clear_error():
    with pytest.raises(NonFiniteLossError, match="training loss became (nan|inf)"):
        train(_cfg(method="plain", epochs=1, lr=1e30, momentum=0.0), progress=False)


def test_final_metrics_include_autoattack_when_asked():
    result = train(_cfg(epochs=1, aa_samples=16, aa_attacks=["apgd-ce"], aa_n_iter=5), progress=False)
    assert 0.0 <= result.final["test_aa_acc"] <= result.final["test_clean_acc"]
    # PGD on exactly AutoAttack's 16 points: the same attack as test_pgd_acc (same starts), first 16 points
    cfg, data = result.config, load_data("digits", meta_val_size=100, holdout_val_size=100, seed=0)
    preds = pgd_predictions(result.model, data.x_test, data.y_test, norm=cfg.norm, eps=cfg.eps,
                            steps=cfg.eval_pgd_steps, batch_size=cfg.eval_batch_size,
                            generator=torch.Generator().manual_seed(cfg.seed))
    assert (preds == data.y_test).sum().item() / len(data.y_test) == result.final["test_pgd_acc"]
    correct = sum(int(p == t) for p, t in zip(preds[:16].tolist(), data.y_test[:16].tolist()))
    assert result.final["test_pgd_acc_aa_subset"] == correct / 16


def test_a_checkpoint_older_than_meta_grad_scale_resumes_as_raw(tmp_path):
    """A stored config without a key reads it as what runs did before the key existed."""
    from bilaw.training.checkpoint import load_checkpoint, save_checkpoint

    train(_cfg(method="bilaw", epochs=2), checkpoint_dir=tmp_path, stop_after=1, progress=False)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    del state["config"]["meta_grad_scale"]
    save_checkpoint(state, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"meta_grad_scale: checkpoint 'raw' vs now 'per_lr'"):
        train(_cfg(method="bilaw", epochs=2, meta_grad_scale="per_lr"), checkpoint_dir=tmp_path, progress=False)
    resumed = train(_cfg(method="bilaw", epochs=2, meta_grad_scale="raw"), checkpoint_dir=tmp_path, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2]


@pytest.mark.parametrize("key, value, allowed", [
    ("meta_optimizer", "adamx", "adam, adamw, sgd"), ("meta_grad_scale", "per-lr", "raw, per_lr")])
def test_meta_optimiser_options_are_validated_and_listed(key, value, allowed, capsys):
    with pytest.raises(ValueError, match=rf"{key}: .*{value!r}"):
        _cfg(**{key: value})
    with pytest.raises(SystemExit):
        train_main(["--help"])
    assert f"(one of: {allowed})" in capsys.readouterr().out


def test_cli_errors_are_messages_not_tracebacks(tmp_path, capsys):
    assert train_main(["--out", str(tmp_path), "--set", "methd=bilaw"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'methd'" in err and "did you mean 'method'" in err and "Traceback" not in err
    assert not (tmp_path / "metrics.json").exists()


def test_every_registered_metric_is_reported_where_registered():
    """bilaw/metrics.py is what search spaces may rank by: each epoch metric is in every epoch's
    report and each final metric in the final ones (a run with AutoAttack)."""
    from bilaw.metrics import METRICS

    result = train(_cfg(epochs=1, aa_samples=16, aa_attacks=["apgd-ce"], aa_n_iter=5), progress=False)
    for name in METRICS.names():
        where = result.history[-1] if METRICS.facts(name)["when"] == "epoch" else result.final
        assert isinstance(where.get(name), float), name
