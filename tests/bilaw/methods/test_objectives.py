"""Objectives plain / at / trades and `combine` against direct computations (docs/methods.md sec. objectives, A1, A10)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bilaw.methods.objectives import OBJECTIVES, Terms, combine, trades_kl
from bilaw.registry import UnknownNameError

# small hand-made logits (B=3, k=4); the identity "model" makes x the clean logits, x_adv the adversarial
CLEAN = [[1.0, 0.2, -0.5, 0.3], [0.0, 2.0, 0.5, -1.0], [0.3, 0.3, 0.3, 1.2]]
ADV = [[0.1, 0.9, -0.2, 0.4], [0.5, 0.4, 1.5, -1.0], [-0.3, 0.8, 0.1, 0.2]]
Y = [0, 1, 3]


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _log_softmax(row):
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


def _ce(row, y):
    return -_log_softmax(row)[y]


def _kl(clean_row, adv_row):
    lp, lq = _log_softmax(clean_row), _log_softmax(adv_row)
    return sum(math.exp(a) * (a - b) for a, b in zip(lp, lq))


def _inputs(requires_grad=False):
    x = torch.tensor(CLEAN, dtype=torch.float64, requires_grad=requires_grad)
    x_adv = torch.tensor(ADV, dtype=torch.float64, requires_grad=requires_grad)
    return x, x_adv, torch.tensor(Y)


def test_registry_and_attacks():
    assert {n: OBJECTIVES.get(n).attack for n in ("plain", "at", "trades")} == \
        {"plain": "none", "at": "pgd", "trades": "trades"}
    with pytest.raises(UnknownNameError, match=r"unknown objective 'trade'.*did you mean 'trades'"):
        OBJECTIVES.get("trade")


def test_trades_kl_per_sample():
    x, x_adv, _ = _inputs()
    kl = trades_kl(x, x_adv)
    assert kl.shape == (3,)
    assert kl.tolist() == pytest.approx([_kl(c, a) for c, a in zip(CLEAN, ADV)], rel=1e-10)
    assert trades_kl(x, x).tolist() == pytest.approx([0.0] * 3, abs=1e-12)
    # direction: KL(p_clean || p_adv) differs from KL(p_adv || p_clean) here
    assert not torch.allclose(kl, trades_kl(x_adv, x))


@pytest.mark.parametrize("beta", [6.0, 1.0, 0.5])
def test_trades_terms(beta):
    x, x_adv, y = _inputs()
    terms = OBJECTIVES.get("trades").terms(_identity, x, x_adv, y, beta)
    kls = [_kl(c, a) for c, a in zip(CLEAN, ADV)]
    ces = [_ce(c, t) for c, t in zip(CLEAN, Y)]
    assert terms.weighted.tolist() == pytest.approx([beta * k for k in kls], rel=1e-10)
    assert terms.unweighted.tolist() == pytest.approx(ces, rel=1e-10)
    assert torch.equal(terms.logits_adv, x_adv) and torch.equal(terms.logits_clean, x)
    # uniform weights give TRADES: mean CE(clean) + beta * mean KL
    expected = sum(ces) / 3 + beta * sum(kls) / 3
    assert combine(terms, None).item() == pytest.approx(expected, rel=1e-10)
    assert combine(terms, torch.ones(3, dtype=torch.float64)).item() == pytest.approx(expected, rel=1e-10)


def test_trades_default_beta_is_six():
    x, x_adv, y = _inputs()
    terms = OBJECTIVES.get("trades").terms(_identity, x, x_adv, y)
    assert terms.weighted.tolist() == pytest.approx([6.0 * _kl(c, a) for c, a in zip(CLEAN, ADV)], rel=1e-10)


def test_trades_beta_zero_is_clean_ce():
    x, x_adv, y = _inputs()
    terms = OBJECTIVES.get("trades").terms(_identity, x, x_adv, y, 0.0)
    clean_ce = sum(_ce(c, t) for c, t in zip(CLEAN, Y)) / 3
    assert combine(terms, None).item() == pytest.approx(clean_ce, rel=1e-12)
    assert combine(terms, torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64)).item() == \
        pytest.approx(clean_ce, rel=1e-12)


def test_weighted_trades_weights_only_the_kl():
    x, x_adv, y = _inputs()
    terms = OBJECTIVES.get("trades").terms(_identity, x, x_adv, y, 6.0)
    w_sum1 = [0.5, 0.3, 0.2]
    w = torch.tensor(w_sum1, dtype=torch.float64) * 3  # sum-1 weights on the mean-1 scale
    expected = sum(_ce(c, t) for c, t in zip(CLEAN, Y)) / 3 + \
        6.0 * sum(wi * _kl(c, a) for wi, c, a in zip(w_sum1, CLEAN, ADV))
    assert combine(terms, w).item() == pytest.approx(expected, rel=1e-10)


def test_at_uses_adversarial_logits():
    x, x_adv, y = _inputs()
    terms = OBJECTIVES.get("at").terms(_identity, x, x_adv, y)
    ces = [_ce(a, t) for a, t in zip(ADV, Y)]
    assert terms.weighted.tolist() == pytest.approx(ces, rel=1e-10)
    assert terms.unweighted is None and torch.equal(terms.logits_adv, x_adv)
    mean = sum(ces) / 3
    assert combine(terms, None).item() == pytest.approx(mean, rel=1e-12)
    assert combine(terms, torch.ones(3, dtype=torch.float64)).item() == pytest.approx(mean, rel=1e-12)


def test_combine_sum_one_weights_times_b_is_weighted_sum():
    x, x_adv, y = _inputs()
    terms = OBJECTIVES.get("at").terms(_identity, x, x_adv, y)
    raw = np.array([0.9, 0.1, 2.0])
    w_sum1 = raw / raw.sum()
    w = torch.tensor(w_sum1 * 3, dtype=torch.float64)
    ces = [_ce(a, t) for a, t in zip(ADV, Y)]
    assert combine(terms, w).item() == pytest.approx(float(np.dot(w_sum1, ces)), rel=1e-10)


def test_combine_on_hand_terms():
    terms = Terms(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.5, 0.5, 1.0, 2.0]), torch.zeros(4, 2))
    w = torch.tensor([0.0, 2.0, 1.0, 1.0])
    assert combine(terms, w).item() == pytest.approx((0 + 4 + 3 + 4) / 4 + 4.0 / 4)
    assert combine(terms, None).item() == pytest.approx(10 / 4 + 4.0 / 4)


def test_plain_uses_the_clean_input():
    x, x_adv, y = _inputs()
    seen = []

    def f(t):
        seen.append(t)
        return t

    terms = OBJECTIVES.get("plain").terms(f, x, x_adv, y)
    assert len(seen) == 1 and seen[0] is x
    assert terms.weighted.tolist() == pytest.approx([_ce(c, t) for c, t in zip(CLEAN, Y)], rel=1e-10)
    assert terms.unweighted is None
    assert torch.equal(terms.logits_adv, x) and torch.equal(terms.logits_clean, x)


def test_at_and_trades_forward_counts():
    x, x_adv, y = _inputs()
    seen = []

    def f(t):
        seen.append(t)
        return t

    OBJECTIVES.get("at").terms(f, x, x_adv, y)
    assert len(seen) == 1 and seen[0] is x_adv
    seen.clear()
    OBJECTIVES.get("trades").terms(f, x, x_adv, y, 6.0)
    assert len(seen) == 2 and seen[0] is x and seen[1] is x_adv  # two forwards, clean then adversarial


def _softmax_np(row):
    e = np.exp(np.asarray(row) - max(row))
    return e / e.sum()


def test_trades_kl_gradient_flows_through_both_sides():
    x, x_adv, y = _inputs(requires_grad=True)
    terms = OBJECTIVES.get("trades").terms(_identity, x, x_adv, y, 2.0)
    terms.weighted.sum().backward()  # the KL part only
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert x_adv.grad is not None and x_adv.grad.abs().sum() > 0
    # analytic: d KL(p||q) / d a = p * (log p - log q - KL); d KL / d b = q - p   (p = softmax(a), q = softmax(b))
    for i, (a, b) in enumerate(zip(CLEAN, ADV)):
        p, q = _softmax_np(a), _softmax_np(b)
        kl = float(np.sum(p * (np.log(p) - np.log(q))))
        grad_a = 2.0 * p * (np.log(p) - np.log(q) - kl)
        grad_b = 2.0 * (q - p)
        assert x.grad[i].tolist() == pytest.approx(grad_a.tolist(), rel=1e-8, abs=1e-12)
        assert x_adv.grad[i].tolist() == pytest.approx(grad_b.tolist(), rel=1e-8, abs=1e-12)


def test_trades_full_loss_gradient_on_clean_includes_ce_and_kl():
    x, x_adv, y = _inputs(requires_grad=True)
    terms = OBJECTIVES.get("trades").terms(_identity, x, x_adv, y, 6.0)
    combine(terms, None).backward()
    for i, (a, b, t) in enumerate(zip(CLEAN, ADV, Y)):
        p, q = _softmax_np(a), _softmax_np(b)
        kl = float(np.sum(p * (np.log(p) - np.log(q))))
        onehot = np.eye(4)[t]
        grad_a = ((p - onehot) + 6.0 * p * (np.log(p) - np.log(q) - kl)) / 3
        grad_b = 6.0 * (q - p) / 3
        assert x.grad[i].tolist() == pytest.approx(grad_a.tolist(), rel=1e-8, abs=1e-12)
        assert x_adv.grad[i].tolist() == pytest.approx(grad_b.tolist(), rel=1e-8, abs=1e-12)


def test_at_gradient_with_weights():
    x, x_adv, y = _inputs(requires_grad=True)
    terms = OBJECTIVES.get("at").terms(_identity, x, x_adv, y)
    w = torch.tensor([2.0, 0.5, 0.5], dtype=torch.float64)
    combine(terms, w).backward()
    assert x.grad is None  # AT never touches the clean input
    for i, (b, t) in enumerate(zip(ADV, Y)):
        expected = w[i].item() * (_softmax_np(b) - np.eye(4)[t]) / 3
        assert x_adv.grad[i].tolist() == pytest.approx(expected.tolist(), rel=1e-8, abs=1e-12)


def test_each_objective_crafts_with_its_named_attack():
    """`Objective.craft` is the attack its name says, called with the run's budget and RNG: the
    same inputs as calling that attack directly (plain: the clean batch, no kappa)."""
    from bilaw.eval.attacks import pgd, trades_attack
    from bilaw.methods.objectives import AttackSetting, Objective

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.rand(5, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1])

    def setting(**kw):
        return AttackSetting(model, "linf", 0.1, 3, 0.025, torch.Generator().manual_seed(7), **kw)

    def direct(fn, **kw):
        return fn(model, x, **kw, norm="linf", eps=0.1, steps=3, step_size=0.025,
                  generator=torch.Generator().manual_seed(7))

    x_plain, kappa = OBJECTIVES.get("plain").craft(setting(), x, y)
    assert x_plain is x and kappa is None
    x_at, kappa = OBJECTIVES.get("at").craft(setting(), x, y)
    assert kappa is None and torch.equal(x_at, direct(pgd, y=y)) and not torch.equal(x_at, x)
    x_at, kappa = OBJECTIVES.get("at").craft(setting(want_kappa=True), x, y)
    want_x, want_kappa = direct(pgd, y=y, return_kappa=True)
    assert torch.equal(x_at, want_x) and torch.equal(kappa, want_kappa)
    x_tr, kappa = OBJECTIVES.get("trades").craft(setting(want_kappa=True), x, y)
    assert kappa is None and torch.equal(x_tr, direct(trades_attack))
    with pytest.raises(ValueError, match=r"objective 'mine': unknown training attack 'fgsm'; known: none, pgd, trades"):
        Objective("mine", "fgsm", lambda *a: None)
