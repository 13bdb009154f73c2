"""Evaluation metrics and the AutoAttack adapter, checked against independent computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from torch import nn

from bilaw.eval.autoattack import AutoAttack, _configure, run_autoattack
from bilaw.eval.evaluate import (accuracy, confusion_matrix, evaluate_model, pgd_accuracy,
                            pgd_predictions, predict)
from bilaw.registry import UnknownNameError

from helpers import digits_mlp

EPS = {"linf": 0.1, "l2": 1.0}
AA_CHEAP = dict(version="custom", attacks=["apgd-ce"], n_iter=10, seed=0)


@pytest.fixture(scope="module")
def digits():
    model, x, y = digits_mlp()
    return model, x[:256], y[:256]


def _dist(x_adv, x, norm):
    d = (x_adv - x).flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


# --- AutoAttack adapter ------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_autoattack_result_is_consistent(digits, norm):
    model, x, y = digits
    model.train()
    rng = torch.get_rng_state()
    res = run_autoattack(model, x, y, norm=norm, eps=EPS[norm], n=32, **AA_CHEAP)
    assert model.training  # mode restored
    assert torch.equal(torch.get_rng_state(), rng)  # the library's reseeding did not leak
    x32, y32 = x[:32], y[:32]
    assert res.n == 32 and res.x_adv.shape == x32.shape and res.y_pred.shape == (32,)
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    assert torch.equal(pred, res.y_pred)
    assert res.accuracy == pytest.approx((pred == y32).float().mean().item())
    assert _dist(res.x_adv, x32, norm).max() <= EPS[norm] + 1e-5
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert res.accuracy < accuracy(model, x32, y32)


def test_autoattack_is_seeded(digits):
    model, x, y = digits
    a = run_autoattack(model, x, y, norm="linf", eps=0.05, n=16, **AA_CHEAP)
    b = run_autoattack(model, x, y, norm="linf", eps=0.05, n=16, **AA_CHEAP)
    assert torch.equal(a.x_adv, b.x_adv) and a.accuracy == b.accuracy


class _FirstLogits(nn.Module):
    """The model restricted to its first k classes."""

    def __init__(self, model: nn.Module, k: int):
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x):
        return self.model(x)[:, : self.k]


def test_autoattack_targeted_with_fewer_than_ten_classes(digits):
    """apgd-t uses min(9, k - 1) targets, so a 5-class model works (9 would index past k)."""
    model, x, y = digits
    five_class, keep = _FirstLogits(model, 5), y < 5
    res = run_autoattack(five_class, x[keep], y[keep], norm="linf", eps=0.1, n=16,
                         version="custom", attacks=["apgd-t"], n_iter=5)
    with torch.no_grad():
        assert torch.equal(five_class(res.x_adv).argmax(1), res.y_pred)
    assert res.accuracy < accuracy(five_class, x[keep][:16], y[keep][:16])


def test_n_iter_override_recomputes_apgd_schedule(digits):
    model = digits[0]
    adversary = AutoAttack(model, attacks=["apgd-ce", "apgd-t"], version="custom", eps=0.1)
    _configure(adversary, version="custom", num_classes=10, n_iter=10)
    for apgd in (adversary.apgd, adversary.apgd_targeted):
        assert apgd.n_iter == 10 and apgd.n_iter_2 == 2 and apgd.n_iter_min == 1
        assert apgd.n_restarts == 1
    assert adversary.apgd_targeted.n_target_classes == 9


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(version="fast"), ValueError, "unknown AutoAttack version 'fast'"),
    (dict(version="custom"), ValueError, "needs a non-empty attacks list"),
    (dict(version="standard", attacks=["apgd-ce"]), ValueError, "only used with version='custom'"),
    (dict(version="custom", attacks=["pgd"]), ValueError, "unknown AutoAttack attack"),
    (dict(norm="l1"), UnknownNameError, "valid norms: l2, linf"),
    (dict(n_iter=0), ValueError, "n_iter must be"),
])
def test_autoattack_argument_errors(digits, kwargs, error, match):
    model, x, y = digits
    args = dict(norm="linf", eps=0.1, n=4) | kwargs
    with pytest.raises(error, match=match):
        run_autoattack(model, x, y, **args)


# --- accuracy helpers --------------------------------------------------------------------------
def test_accuracy_batched_and_mode_restored(digits):
    model, x, y = digits
    model.train()
    expected = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy(model, x, y, batch_size=7) == pytest.approx(expected)
    assert accuracy(model, x, y) == pytest.approx(expected)
    assert model.training
    assert predict(model, x, batch_size=7).tolist() == model(x).argmax(1).tolist()


def test_pgd_accuracy_matches_predictions(digits):
    model, x, y = digits
    gen = lambda: torch.Generator().manual_seed(1)
    preds = pgd_predictions(model, x, y, norm="l2", eps=1.0, steps=5, batch_size=50,
                            generator=gen())
    acc = pgd_accuracy(model, x, y, norm="l2", eps=1.0, steps=5, batch_size=50, generator=gen())
    assert acc == pytest.approx((preds == y).float().mean().item())
    assert acc < accuracy(model, x, y)


# --- evaluate_model ----------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_evaluate_model_matches_independent_computation(digits, norm):
    model, x, y = digits
    k, seed, bs = 10, 3, 100  # 256 points -> 3 batches
    model.train()
    m = evaluate_model(model, x, y, num_classes=k, norm=norm, eps=EPS[norm], pgd_steps=5,
                       seed=seed, batch_size=bs)
    assert model.training
    assert set(m) == {"clean_acc", "pgd_acc", "per_class_clean_acc", "per_class_pgd_acc",
                      "adv_confusion"}

    y_np = y.numpy()
    with torch.no_grad():
        clean_np = model(x).argmax(1).numpy()
    adv_np = pgd_predictions(model, x, y, norm=norm, eps=EPS[norm], steps=5, batch_size=bs,
                             generator=torch.Generator().manual_seed(seed)).numpy()

    assert m["clean_acc"] == pytest.approx(np.mean(clean_np == y_np))
    assert m["pgd_acc"] == pytest.approx(np.mean(adv_np == y_np))
    assert m["adv_confusion"] == sk_confusion_matrix(y_np, adv_np, labels=range(k)).tolist()
    counts = np.bincount(y_np, minlength=k)
    assert [sum(row) for row in m["adv_confusion"]] == counts.tolist()
    for c in range(k):
        assert m["per_class_pgd_acc"][c] == pytest.approx(np.mean(adv_np[y_np == c] == c))
        assert m["per_class_clean_acc"][c] == pytest.approx(np.mean(clean_np[y_np == c] == c))
    assert 0 <= m["pgd_acc"] < m["clean_acc"] <= 1
    assert all(isinstance(v, float) for v in (m["clean_acc"], m["pgd_acc"]))
    assert all(isinstance(v, int) for row in m["adv_confusion"] for v in row)


def test_evaluate_model_with_autoattack(digits):
    model, x, y = digits
    m = evaluate_model(model, x, y, num_classes=10, norm="linf", eps=0.1, pgd_steps=3,
                       aa_samples=32, aa_version="custom", aa_attacks=["apgd-ce"], aa_n_iter=5,
                       seed=0)
    direct = run_autoattack(model, x, y, norm="linf", eps=0.1, n=32, version="custom",
                            attacks=["apgd-ce"], n_iter=5, seed=0)
    assert m["aa_acc"] == direct.accuracy
    assert m["aa_acc"] < accuracy(model, x[:32], y[:32])


class _Probabilities(nn.Module):
    """A model that hands out softmax probabilities instead of logits (a classic evaluation bug)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).softmax(dim=1)


def test_autoattack_sanity_check_warnings_are_returned_not_printed(digits, capsys, caplog):
    model, x, y = digits
    plain = run_autoattack(model, x, y, norm="linf", eps=0.1, n=16, **AA_CHEAP)
    assert plain.warnings == ()
    probs = run_autoattack(_Probabilities(model), x, y, norm="linf", eps=0.1, n=16, **AA_CHEAP)
    assert len(probs.warnings) == 1 and "output is a probability distribution" in probs.warnings[0]
    out = capsys.readouterr()
    assert "probability" not in out.out + out.err and "probability" not in caplog.text
    m = evaluate_model(_Probabilities(model), x, y, num_classes=10, norm="linf", eps=0.1, pgd_steps=1,
                       aa_samples=16, aa_version="custom", aa_attacks=["apgd-ce"], aa_n_iter=3, seed=0)
    assert m["aa_warnings"] == list(probs.warnings)


def test_evaluate_model_absent_class_is_nan(digits):
    model, x, y = digits
    keep = y < 5
    m = evaluate_model(model, x[keep], y[keep], num_classes=10, norm="linf", eps=0.05,
                       pgd_steps=2)
    assert all(math.isnan(v) for v in m["per_class_pgd_acc"][5:])
    assert all(not math.isnan(v) for v in m["per_class_pgd_acc"][:5])
    assert m["adv_confusion"][7] == [0] * 10


def test_confusion_matrix_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), num_classes=3)
    conf = confusion_matrix(torch.tensor([0, 2, 2]), torch.tensor([1, 2, 0]), num_classes=3)
    assert conf.tolist() == [[0, 1, 0], [0, 0, 0], [1, 0, 1]]


# --- GPU ---------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_evaluate_and_autoattack_on_cuda(digits):
    model, x, y = digits
    gpu_model = digits_mlp(steps=0)[0].cuda()
    gpu_model.load_state_dict(model.state_dict())
    m = evaluate_model(gpu_model, x, y, num_classes=10, norm="linf", eps=0.1, pgd_steps=5,
                       aa_samples=32, aa_version="custom", aa_attacks=["apgd-ce"], aa_n_iter=5)
    assert 0 <= m["pgd_acc"] < m["clean_acc"] <= 1 and 0 <= m["aa_acc"] < 1
    assert predict(gpu_model, x).device.type == "cuda"  # CPU data, model's device
    res = run_autoattack(gpu_model, x.cuda(), y.cuda(), norm="l2", eps=1.0, n=32, **AA_CHEAP)
    assert res.x_adv.is_cuda and res.y_pred.is_cuda
    with torch.no_grad():
        assert torch.equal(gpu_model(res.x_adv).argmax(1), res.y_pred)
    cpu_res = run_autoattack(gpu_model, x, y, norm="linf", eps=0.1, n=16, **AA_CHEAP)
    assert cpu_res.x_adv.device == x.device  # the library returns results on the data's device
