"""Sample weightings: GAIRAT / MAIL / WMMR formulas (docs/methods.md sec. gairat, wmmr, mail and A1), normalisations, the
weight net, and the registered weightings' `compute`."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from bilaw.config.train_config import ConfigError, TrainConfig
from bilaw.registry import UnknownNameError
from bilaw.methods.weighting import (
    WEIGHTINGS, WeightInputs, WeightNet, as_mean_one, build_weighting, gairat_lambda, gairat_weights, mail_weights,
    normalize_guarded, normalize_mean_one, normalize_sum_one,
    wmmr_weights,
)

# hand-written logits (B=4, k=3) and labels; rows: confident correct, wrong, tie-ish, near-uniform
LOGITS = [[2.0, 0.5, -1.0], [0.1, 1.7, 0.3], [1.0, 1.0, -2.0], [0.2, -0.1, 0.05]]
LABELS = [0, 0, 1, 2]


def _softmax(row):
    e = [math.exp(v) for v in row]
    s = sum(e)
    return [v / s for v in e]


def _margin(row, y):
    p = _softmax(row)
    return p[y] - max(p[j] for j in range(len(p)) if j != y)


def _ce(row, y):
    return -math.log(_softmax(row)[y])


def _cfg(**kw) -> TrainConfig:
    return TrainConfig.from_dict(kw).resolved()


def _tensors(requires_grad=False):
    logits = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=requires_grad)
    return logits, torch.tensor(LABELS)


# ----- GAIRAT ------------------------------------------------------------------------------------
KAPPAS = [0, 1, 3, 5, 7, 10]


@pytest.mark.parametrize("lam", [-1.0, 0.0, 0.5, -3.0])
def test_gairat_tanh_matches_seed_formula_for_even_k(lam):
    w = gairat_weights(torch.tensor(KAPPAS), steps=10, lam=lam, fn="tanh")
    expected = [0.5 * (1 + math.tanh(lam + 5 * (1 - 2 * k / 10))) for k in KAPPAS]
    assert w.tolist() == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert torch.all(w[:-1] > w[1:])  # fewer correct iterates -> larger weight


def test_gairat_tanh_odd_k_uses_floor_half():
    # K = 5: h = 2 (GAIRAT's int(K/2)), z = lam + 5 (2 - kappa) / 2
    kappas = [0, 1, 2, 3, 5]
    w = gairat_weights(torch.tensor(kappas), steps=5, lam=-1.0, fn="tanh")
    expected = [0.5 * (1 + math.tanh(-1.0 + 5 * (2 - k) / 2)) for k in kappas]
    assert w.tolist() == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_gairat_k1_is_finite():
    w = gairat_weights(torch.tensor([0, 1]), steps=1, lam=-1.0, fn="tanh")
    assert torch.isfinite(w).all()
    assert w.tolist() == pytest.approx([0.5 * (1 + math.tanh(4.0)), 0.5 * (1 + math.tanh(-1.0))], rel=1e-6)


@pytest.mark.parametrize("lam", [-1.0, 1.0])
def test_gairat_sigmoid(lam):
    w = gairat_weights(torch.tensor(KAPPAS), steps=10, lam=lam, fn="sigmoid")
    expected = [1 / (1 + math.exp(-(lam + 5 * (5 - k) / 5))) for k in KAPPAS]
    assert w.tolist() == pytest.approx(expected, rel=1e-6)


def test_gairat_discrete():
    w = gairat_weights(torch.tensor(KAPPAS), steps=10, lam=-1.0, fn="discrete")
    assert w.tolist() == pytest.approx([(11 - k) / 11 for k in KAPPAS], rel=1e-6)


@pytest.mark.parametrize("fn", ["tanh", "sigmoid"])
def test_gairat_lambda_inf_gives_ones(fn):
    w = gairat_weights(torch.tensor(KAPPAS), steps=10, lam=math.inf, fn=fn)
    assert w.tolist() == [1.0] * len(KAPPAS)


def test_gairat_unknown_fn():
    with pytest.raises(ValueError, match="unknown gairat_weight_fn 'relu'"):
        gairat_weights(torch.tensor([0, 1]), steps=10, lam=-1.0, fn="relu")


def test_gairat_lambda_schedules():
    fixed = SimpleNamespace(gairat_schedule="fixed", gairat_lambda=-1.0, gairat_lambda_max=math.inf)
    assert [gairat_lambda(e, 100, fixed) for e in (0, 30, 99)] == [-1.0, -1.0, -1.0]
    # linear: lam_max - (e/E)(lam_max - lam) with e = epoch + 1
    lin = SimpleNamespace(gairat_schedule="linear", gairat_lambda=-1.0, gairat_lambda_max=3.0)
    assert gairat_lambda(9, 20, lin) == pytest.approx(3.0 - 0.5 * 4.0)
    assert gairat_lambda(19, 20, lin) == pytest.approx(-1.0)
    assert gairat_lambda(0, 20, lin) == pytest.approx(3.0 - 0.05 * 4.0)
    # piecewise (short runs): lam, then lam - 2 from 60% of training (e = epoch + 1 >= 60)
    pw = SimpleNamespace(gairat_schedule="piecewise", gairat_lambda=-1.0, gairat_lambda_max=math.inf)
    assert gairat_lambda(58, 100, pw) == -1.0
    assert gairat_lambda(59, 100, pw) == -3.0
    assert gairat_lambda(99, 100, pw) == -3.0


def test_gairat_compute_is_mean_one_and_proportional_to_raw():
    cfg = _cfg(method="gairat", pgd_steps=10, gairat_lambda=-1.0)
    weighting = build_weighting(cfg)
    assert weighting.name == "gairat" and weighting.needs_kappa and not WEIGHTINGS.facts("gairat").get("learned")
    kappa = torch.tensor([0, 2, 5, 7, 10])
    y = torch.zeros(5, dtype=torch.long)
    out = weighting.compute(WeightInputs(y, torch.zeros(5, 3), kappa, epoch=40))
    raw = [0.5 * (1 + math.tanh(-1.0 + 5 * (1 - 2 * k / 10))) for k in kappa.tolist()]
    # float32: (1 + tanh z) / 2 carries an absolute error of ~1e-7 for the tiny weights
    assert out.raw.tolist() == pytest.approx(raw, rel=1e-5, abs=1e-7)
    assert out.w.tolist() == pytest.approx([5 * r / sum(raw) for r in raw], rel=1e-5, abs=1e-6)
    assert out.w.mean().item() == pytest.approx(1.0, abs=1e-6)


def test_gairat_compute_follows_the_linear_schedule():
    cfg = _cfg(method="gairat", epochs=10, gairat_schedule="linear", gairat_lambda=-1.0,
               gairat_lambda_max=2.0)
    out = build_weighting(cfg).compute(WeightInputs(torch.zeros(3, dtype=torch.long), torch.zeros(3, 3),
                                                    torch.tensor([0, 4, 9]), epoch=4))
    lam = 2.0 - 0.5 * 3.0  # e = 5 of 10
    expected = [0.5 * (1 + math.tanh(lam + 5 * (1 - 2 * k / 10))) for k in (0, 4, 9)]
    assert out.raw.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_gairat_equal_kappa_gives_uniform_weights():
    cfg = _cfg(method="gairat")
    out = build_weighting(cfg).compute(WeightInputs(torch.zeros(4, dtype=torch.long), torch.zeros(4, 3),
                                                    torch.full((4,), 3)))
    assert out.w.tolist() == pytest.approx([1.0] * 4, abs=1e-6)


# ----- MAIL ------------------------------------------------------------------------------------------
def test_mail_weights_formula():
    m = torch.tensor([-1.0, -0.2, 0.0, 0.05, 0.5, 1.0])
    w = mail_weights(m, gamma=5.0, beta=0.05)
    assert w.tolist() == pytest.approx([1 / (1 + math.exp(5.0 * (v - 0.05))) for v in m.tolist()], rel=1e-6)


@pytest.mark.parametrize("gamma,beta", [(5.0, 0.05), (1.0, -1.5)])
def test_mail_compute_on_hand_logits(gamma, beta):
    cfg = _cfg(method="mail", mail_gamma=gamma, mail_beta=beta)
    weighting = build_weighting(cfg)
    logits, y = _tensors(requires_grad=True)
    out = weighting.compute(WeightInputs(y, logits))
    margins = [_margin(r, t) for r, t in zip(LOGITS, LABELS)]
    raw = [1 / (1 + math.exp(gamma * (m - beta))) for m in margins]
    assert out.raw.tolist() == pytest.approx(raw, rel=1e-9)
    assert out.w.tolist() == pytest.approx([3 * r for r in raw], rel=1e-9)
    assert abs(out.w.mean().item() - 1.0) > 0.1  # not batch-normalised
    assert not out.w.requires_grad  # detached


# ----- WMMR -----------------------------------------------------------------------------------------
def test_wmmr_weights_formula_and_range():
    m = torch.tensor([-1.0, -0.3, 0.0, 0.4, 1.0])
    w = wmmr_weights(m, alpha=0.1)
    assert w.tolist() == pytest.approx([math.exp(-0.1 * v) for v in m.tolist()], rel=1e-6)
    assert w.min().item() == pytest.approx(math.exp(-0.1), rel=1e-6)
    assert w.max().item() == pytest.approx(math.exp(0.1), rel=1e-6)


def _wmmr_expected(alpha):
    return [math.exp(-alpha * _margin(r, t)) for r, t in zip(LOGITS, LABELS)]


def test_wmmr_compute_unnormalised_by_default_with_gradient():
    alpha = 0.5
    cfg = _cfg(method="wmmr", wmmr_alpha=alpha)
    weighting = build_weighting(cfg)
    logits, y = _tensors(requires_grad=True)
    out = weighting.compute(WeightInputs(y, logits))
    expected = _wmmr_expected(alpha)
    assert out.w.tolist() == pytest.approx(expected, rel=1e-9)
    assert out.raw.tolist() == pytest.approx(expected, rel=1e-9) and not out.raw.requires_grad
    assert out.w.mean().item() == pytest.approx(sum(expected) / 4, rel=1e-9)
    assert abs(out.w.mean().item() - 1.0) > 1e-3
    # not detached: the gradient of sum_i w_i wrt the logits is d/dz exp(-alpha m(z)), checked by
    # central finite differences of the hand formula
    out.w.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    h = 1e-6
    for i, (row, t) in enumerate(zip(LOGITS, LABELS)):
        for j in range(3):
            up, down = list(row), list(row)
            up[j] += h
            down[j] -= h
            fd = (math.exp(-alpha * _margin(up, t)) - math.exp(-alpha * _margin(down, t))) / (2 * h)
            assert logits.grad[i, j].item() == pytest.approx(fd, rel=1e-4, abs=1e-8)


def test_wmmr_detach_stops_the_gradient():
    cfg = _cfg(method="wmmr", wmmr_alpha=0.5, wmmr_detach=True)
    logits, y = _tensors(requires_grad=True)
    out = build_weighting(cfg).compute(WeightInputs(y, logits))
    assert out.w.tolist() == pytest.approx(_wmmr_expected(0.5), rel=1e-9)
    assert not out.w.requires_grad
    # loss = sum_i w_i * sum_j z_ij: with constant w the gradient is w_i in every column
    (out.w * logits.sum(1)).sum().backward()
    assert torch.allclose(logits.grad, out.w[:, None].expand(4, 3))


def test_wmmr_not_detached_changes_the_loss_gradient():
    logits, y = _tensors(requires_grad=True)
    out = build_weighting(_cfg(method="wmmr", wmmr_alpha=0.5)).compute(WeightInputs(y, logits))
    (out.w * logits.sum(1)).sum().backward()
    assert not torch.allclose(logits.grad, out.w.detach()[:, None].expand(4, 3))


def test_wmmr_normalize_gives_mean_one():
    cfg = _cfg(method="wmmr", wmmr_alpha=0.5, wmmr_normalize=True)
    logits, y = _tensors(requires_grad=True)
    out = build_weighting(cfg).compute(WeightInputs(y, logits))
    raw = _wmmr_expected(0.5)
    assert out.w.tolist() == pytest.approx([4 * r / sum(raw) for r in raw], rel=1e-9)
    assert out.w.mean().item() == pytest.approx(1.0, abs=1e-12)
    assert out.raw.tolist() == pytest.approx(raw, rel=1e-9)
    out.w[0].backward()  # still differentiable (through the normaliser too)
    assert logits.grad.abs().sum() > 0


def test_wmmr_attack_loss_is_exp_weighted_ce_sum():
    alpha = 0.7
    weighting = build_weighting(_cfg(method="wmmr", wmmr_alpha=alpha))
    logits, y = _tensors()
    loss = weighting.attack_loss(logits, y)
    expected = sum(math.exp(-alpha * _margin(r, t)) * _ce(r, t) for r, t in zip(LOGITS, LABELS))
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_other_weightings_have_no_attack_loss_and_uniform_none():
    assert build_weighting(_cfg(method="mail")).attack_loss is None
    assert build_weighting(_cfg(method="gairat")).attack_loss is None
    none = build_weighting(_cfg(method="at"))
    out = none.compute(WeightInputs(torch.tensor([0, 1, 2]), torch.zeros(3, 3)))
    assert out.w.tolist() == [1.0, 1.0, 1.0]
    assert WEIGHTINGS.facts("bilaw")["learned"] and WEIGHTINGS.facts("nonparam")["learned"]
    assert build_weighting(_cfg(method="bilaw")).compute is None


def test_unknown_weighting_name():
    with pytest.raises(UnknownNameError, match=r"unknown weighting 'mial'.*did you mean 'mail'"):
        build_weighting(SimpleNamespace(weighting="mial"))


# ----- normalisations -------------------------------------------------------------------------------
def test_normalize_sum_one():
    w = normalize_sum_one(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    assert w.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4], rel=1e-9)
    assert w.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_normalize_guarded():
    zeros = normalize_guarded(torch.zeros(5))
    assert zeros.tolist() == [0.0] * 5 and torch.isfinite(zeros).all()
    w = normalize_guarded(torch.tensor([0.0, 1.0, 3.0]))
    assert w.tolist() == pytest.approx([0.0, 0.25, 0.75])


def test_normalize_mean_one():
    w = normalize_mean_one(torch.tensor([1.0, 2.0, 5.0]))
    assert w.tolist() == pytest.approx([0.375, 0.75, 1.875])


# ----- weight net ------------------------------------------------------------------------------------
@pytest.mark.parametrize("capacity,hidden", [("128", (128,)), ("64", (64,)), ("64-64", (64, 64)),
                                             ("256", (256,)), ("32-16-8", (32, 16, 8))])
def test_weight_net_layers_follow_capacity(capacity, hidden):
    assert TrainConfig(weight_net=capacity).weight_net_hidden == hidden
    torch.manual_seed(0)
    net = WeightNet(10, TrainConfig(weight_net=capacity).weight_net_hidden)
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    sizes = [(m.in_features, m.out_features) for m in linears]
    widths = (10, *hidden, 1)
    assert sizes == list(zip(widths[:-1], widths[1:]))
    assert sum(isinstance(m, nn.ReLU) for m in net.modules()) == len(hidden)
    x = torch.rand(7, 10) * 2 - 1
    out = net(x)
    assert out.shape == (7,)
    assert ((out > 0) & (out < 1)).all()


def test_weight_net_single_sample_and_default():
    net = WeightNet(1)
    assert net.hidden == (128,)
    assert net(torch.zeros(1, 1)).shape == (1,)


def test_capacity_from_yaml_int_is_a_string():
    assert TrainConfig.from_dict({"weight_net": 128}).weight_net_hidden == (128,)


@pytest.mark.parametrize("bad", ["abc", "0-64", "64-", "", "64--64", "-1", "64.0", "6 4"])
def test_bad_capacities_are_config_errors(bad):
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict({"weight_net": bad})
    assert f"weight_net: {bad!r} is not a capacity string" in str(info.value)
    assert "'64-64'" in str(info.value)


# ----- the epoch statistics of the logged weights -------------------------------------------------------
def test_epoch_weight_statistics_are_those_of_the_mean_one_weights():
    """The trainer's device-side sums over batches give the population statistics of the
    mean-1 weights: two batches, [1, 2, 3, 6] (mean-1: [1/3, 2/3, 1, 2]) and a uniform one."""
    from bilaw.training.epoch_stats import accumulate, finish_epoch

    acc: dict = {}
    accumulate(acc, torch.tensor(8.0), 4, torch.tensor([1.0, 2.0, 3.0, 6.0]), torch.tensor([0.5, 0.25, 0.125, 0.125]))
    accumulate(acc, torch.tensor(4.0), 4, None, None)  # uniform: four weights of 1
    ws = [1 / 3, 2 / 3, 1, 2, 1, 1, 1, 1]
    mean = sum(ws) / 8
    out = finish_epoch(acc)
    assert out["weight_std"] == pytest.approx(math.sqrt(sum((w - mean) ** 2 for w in ws) / 8), rel=1e-6)
    assert out["weight_min"] == pytest.approx(1 / 3, rel=1e-6) and out["weight_max"] == pytest.approx(2.0, rel=1e-6)
    assert out["weight_raw_mean"] == pytest.approx((1.0 + 4) / 8, rel=1e-6)
    assert out["train_loss"] == pytest.approx(12 / 8)


# ----- heuristic weightings on a real batch -------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_batch():
    from sklearn.datasets import load_digits

    from bilaw.eval.attacks import pgd
    from bilaw.models import build_model

    data = load_digits()
    x = torch.tensor(data.data[:128] / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(data.target[:128], dtype=torch.int64)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model("fc1", (1, 8, 8), 10)
    x_adv, kappa = pgd(model, x, y, norm="linf", eps=0.2, steps=10, return_kappa=True,
                       generator=torch.Generator().manual_seed(0))
    return model, x_adv, y, kappa


@pytest.mark.parametrize("method", ["gairat", "mail", "wmmr"])
def test_heuristic_weights_are_non_uniform_on_a_real_batch(digits_batch, method):
    model, x_adv, y, kappa = digits_batch
    assert kappa.unique().numel() > 1  # precondition: the attack path differs between samples
    cfg = _cfg(method=method, burn_in_epochs=0)
    weighting = build_weighting(cfg)
    logits = model(x_adv)
    out = weighting.compute(WeightInputs(y, logits, kappa if weighting.needs_kappa else None, epoch=0))
    assert out.w.shape == (128,) and torch.isfinite(out.w).all() and (out.w > 0).all()
    assert as_mean_one(out.w).std().item() > 1e-4
    assert out.w.detach().std().item() > 0
    if method == "gairat":
        # smaller kappa -> at least as large a weight
        order = torch.argsort(kappa)
        assert (out.w[order][:-1] >= out.w[order][1:] - 1e-6).all()
        assert out.w.mean().item() == pytest.approx(1.0, abs=1e-5)
    if method == "mail":
        p = np.exp(logits.detach().double().numpy())
        p /= p.sum(1, keepdims=True)
        yy = y.numpy()
        p_y = p[np.arange(128), yy]
        q = p.copy()
        q[np.arange(128), yy] = -np.inf
        m = p_y - q.max(1)
        assert out.w.tolist() == pytest.approx((3 / (1 + np.exp(5.0 * (m - 0.05)))).tolist(), rel=1e-4)
