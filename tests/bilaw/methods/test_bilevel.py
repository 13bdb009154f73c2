"""The bilevel step against independent computations: finite differences of the look-ahead
validation loss, the seed's Eq. 6 from per-sample gradients, BN buffers, and the L2RW weights."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from bilaw.methods.bilevel import (TrainBatch, ValAttack, bilaw_meta_step, bilaw_weights, lookahead_val_loss,
                           nonparam_weights)
from bilaw.methods.objectives import OBJECTIVES
from bilaw.methods.weighting import WeightNet

B, N_VAL, D, K, LR = 8, 6, 5, 4, 0.3


def _problem(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(D, 7), nn.Tanh(), nn.Linear(7, K)).to(dtype)
    net = WeightNet(K, (6,)).to(dtype)
    x = torch.rand(B, D, generator=g, dtype=dtype)
    y = torch.randint(0, K, (B,), generator=g)
    x_adv = (x + 0.1 * torch.randn(B, D, generator=g, dtype=dtype)).clamp(0, 1)  # held fixed
    x_val_adv = torch.rand(N_VAL, D, generator=g, dtype=dtype)
    y_val = torch.randint(0, K, (N_VAL,), generator=g)
    feats = torch.rand(B, K, generator=g, dtype=dtype) * 2 - 1  # detached margin inputs
    return model, net, x, y, x_adv, x_val_adv, y_val, feats


NO_ATTACK = ValAttack("linf", 0.1, 0, 0.025)


def _val_loss(model, net, x, y, x_adv, x_val_adv, y_val, feats, objective="at"):
    terms = OBJECTIVES.get(objective).terms(model, x, x_adv, y, 6.0)
    w, _ = bilaw_weights(net, feats)
    return lookahead_val_loss(model, terms, w, LR, x_val_adv, y_val, NO_ATTACK, x_val_adv)


@pytest.mark.parametrize("objective", ["at", "trades"])
def test_meta_gradient_matches_finite_differences(objective):
    model, net, *rest = _problem()
    params = list(net.parameters())
    analytic = torch.autograd.grad(_val_loss(model, net, *rest, objective=objective), params)
    analytic = torch.cat([g.reshape(-1) for g in analytic])
    h, numeric = 1e-4, []
    for p in params:
        for i in range(p.numel()):
            old = p.data.view(-1)[i].item()
            p.data.view(-1)[i] = old + h
            up = _val_loss(model, net, *rest, objective=objective).item()
            p.data.view(-1)[i] = old - h
            down = _val_loss(model, net, *rest, objective=objective).item()
            p.data.view(-1)[i] = old
            numeric.append((up - down) / (2 * h))
    numeric = torch.tensor(numeric, dtype=torch.float64)
    assert numeric.norm() > 1e-8  # the check is not vacuous
    assert ((analytic - numeric).norm() / numeric.norm()).item() < 1e-4


def test_meta_gradient_equals_eq6_from_per_sample_gradients():
    model, net, x, y, x_adv, x_val_adv, y_val, feats = _problem(seed=1)
    auto = torch.autograd.grad(_val_loss(model, net, x, y, x_adv, x_val_adv, y_val, feats), list(net.parameters()))

    # Eq. 6 computed independently: dL_val/dw_j = -(lr/B) <grad L_val(theta~), grad l_j(theta)>.
    params = {n: p.detach() for n, p in model.named_parameters()}

    def sample_loss(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x_adv, y)   # each (B, *shape)
    with torch.no_grad():
        w = B * net(feats) / net(feats).sum()
    theta_tilde = {n: params[n] - LR * (w.view(-1, *[1] * params[n].dim()) * per_sample[n]).mean(0) for n in params}
    g_val = grad(lambda p: F.cross_entropy(functional_call(model, p, (x_val_adv,)), y_val))(theta_tilde)
    align = sum((per_sample[n] * g_val[n]).flatten(1).sum(1) for n in params)      # (B,)
    dl_dw = -(LR / B) * align
    weights_of_mu = lambda: B * net(feats) / net(feats).sum()  # noqa: E731
    eq6 = torch.autograd.grad(weights_of_mu(), list(net.parameters()), grad_outputs=dl_dw)
    for a, e in zip(auto, eq6):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-12)


def test_batchnorm_statistics_untouched_by_the_pseudo_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 10))
    net = WeightNet(10)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    x_val, y_val = torch.rand(12, 1, 8, 8), torch.randint(0, 10, (12,))
    model.train()
    terms = OBJECTIVES.get("at").terms(model, x, x, y)   # the real step's forward: BN moves once here
    before = copy.deepcopy(dict(model.named_buffers()))
    params_before = copy.deepcopy(dict(model.named_parameters()))
    attack = ValAttack("linf", 0.1, 3, 0.025, torch.Generator().manual_seed(0))
    net_before = copy.deepcopy(net.state_dict())
    bilaw_meta_step(model, net, opt, terms, torch.rand(16, 10), 0.1, x_val, y_val, attack)
    for name, buf in model.named_buffers():
        assert torch.equal(buf, before[name]), name
    for name, p in model.named_parameters():
        assert torch.equal(p, params_before[name]) and p.grad is None, name
    assert model.training
    # ... while the weight net did take a step
    assert any(not torch.equal(v, net_before[k]) for k, v in net.state_dict().items())


def test_real_step_moves_bn_statistics_exactly_like_one_plain_forward():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 10))
    reference = copy.deepcopy(model)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    net, opt = WeightNet(10), None
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    model.train(), reference.train()
    terms = OBJECTIVES.get("at").terms(model, x, x, y)
    bilaw_meta_step(model, net, opt, terms, torch.rand(16, 10), 0.1, torch.rand(8, 1, 8, 8),
                    torch.randint(0, 10, (8,)), ValAttack("linf", 0.1, 2, 0.025))
    with torch.no_grad():
        reference(x)  # one plain forward on the same batch
    for (name, a), b in zip(model.named_buffers(), reference.buffers()):
        assert torch.equal(a, b), name


def test_nonparam_weights_are_clipped_normalised_gradient_alignment():
    model, _, x, y, x_adv, x_val_adv, y_val, _ = _problem(seed=2)
    terms = OBJECTIVES.get("at").terms(model, x, x_adv, y)
    w, raw = nonparam_weights(model, terms, LR, x_val_adv, y_val, NO_ATTACK.__class__("linf", 0.1, 0, 0.025))
    # independent: at eps = 0 theta~ = theta, so raw_j = (lr/B) max(<grad L_val(theta), grad l_j(theta)>, 0)
    params = {n: p.detach() for n, p in model.named_parameters()}
    per_sample = vmap(grad(lambda p, xi, yi: F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])),
                      in_dims=(None, 0, 0))(params, x_adv, y)
    g_val = grad(lambda p: F.cross_entropy(functional_call(model, p, (x_val_adv,)), y_val))(params)
    align = sum((per_sample[n] * g_val[n]).flatten(1).sum(1) for n in params)
    expected_raw = (LR / B) * align.clamp(min=0)
    torch.testing.assert_close(raw, expected_raw, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(w, B * expected_raw / expected_raw.sum())
    assert (align < 0).any() and (w[align < 0] == 0).all()


def test_nonparam_all_negative_alignment_gives_zero_weights_not_nan():
    model, _, x, y, x_adv, _, _, _ = _problem(seed=3)
    terms = OBJECTIVES.get("at").terms(model, x[:1], x_adv[:1], y[:1])
    # One sample validated on itself: the alignment is |grad l|^2 > 0; a negative look-ahead step
    # flips its sign, so every raw weight is clipped to 0 and the guard must keep w at 0.
    w, raw = nonparam_weights(model, terms, -LR, x_adv[:1], y[:1], ValAttack("linf", 0.1, 0, 0.025))
    assert raw.tolist() == [0.0] and w.tolist() == [0.0]


def test_val_attack_at_pseudo_parameters_is_inside_the_ball():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    net = WeightNet(10)
    opt = torch.optim.Adam(net.parameters())
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    terms = OBJECTIVES.get("at").terms(model, x, x, y)
    seen = {}
    attack = ValAttack("linf", 0.1, 3, 0.025, torch.Generator().manual_seed(0))
    craft = attack.craft

    def spy(m, xv, yv):
        seen["x_adv"] = out = craft(m, xv, yv)
        seen["x"] = xv
        return out

    attack.craft = spy
    bilaw_meta_step(model, net, opt, terms, torch.rand(8, 10), 0.1, torch.rand(8, 1, 8, 8),
                    torch.randint(0, 10, (8,)), attack)
    delta = seen["x_adv"] - seen["x"]
    assert delta.abs().max() <= 0.1 + 1e-6 and delta.abs().max() > 0


def _bn_problem(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 6 * 6, K)).to(dtype)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 1, 6, 6, generator=g, dtype=dtype)
    x_adv = (x + 0.05 * torch.randn(x.shape, generator=g, dtype=dtype)).clamp(0, 1)
    y = torch.randint(0, K, (B,), generator=g)
    x_val, y_val = torch.rand(N_VAL, 1, 6, 6, generator=g, dtype=dtype), torch.randint(0, K, (N_VAL,), generator=g)
    return model, x, x_adv, y, x_val, y_val


@pytest.mark.parametrize("objective", ["at", "trades"])
def test_jvp_meta_step_equals_double_backward_with_batchnorm(objective):
    """Eq. 6 as one JVP gives the same weight-net update as differentiating through the
    pseudo-step, for a BN model in train mode (batch statistics couple the samples)."""
    model, x, x_adv, y, x_val, y_val = _bn_problem()
    model.train()
    feats = torch.rand(B, K, dtype=torch.float64)
    updated = {}
    for mode in ("double_backward", "jvp"):
        torch.manual_seed(5)
        net = WeightNet(K, (6,)).to(torch.float64)
        opt = torch.optim.SGD(net.parameters(), lr=1.0)
        terms = OBJECTIVES.get(objective).terms(model, x, x_adv, y, 6.0)
        batch = TrainBatch(OBJECTIVES.get(objective).terms, x, x_adv, y, 6.0)
        before = copy.deepcopy(dict(model.named_buffers()))
        bilaw_meta_step(model, net, opt, terms, feats, LR, x_val, y_val, NO_ATTACK, hypergrad=mode, batch=batch)
        for name, buf in model.named_buffers():
            assert torch.equal(buf, before[name]), (mode, name)
        assert all(p.grad is None for p in model.parameters())
        updated[mode] = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    torch.manual_seed(5)
    start = torch.cat([p.detach().reshape(-1) for p in WeightNet(K, (6,)).to(torch.float64).parameters()])
    step_db, step_jvp = updated["double_backward"] - start, updated["jvp"] - start
    assert step_db.norm() > 1e-8
    torch.testing.assert_close(step_jvp, step_db, rtol=1e-9, atol=1e-13)


def test_jvp_nonparam_weights_equal_double_backward():
    model, x, x_adv, y, x_val, y_val = _bn_problem(seed=4)
    model.train()
    terms = OBJECTIVES.get("at").terms(model, x, x_adv, y)
    batch = TrainBatch(OBJECTIVES.get("at").terms, x, x_adv, y, 0.0)
    w_db, raw_db = nonparam_weights(model, terms, LR, x_val, y_val, NO_ATTACK)
    w_jvp, raw_jvp = nonparam_weights(model, terms, LR, x_val, y_val, NO_ATTACK, hypergrad="jvp", batch=batch)
    assert (raw_db > 0).any()
    torch.testing.assert_close(raw_jvp, raw_db, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(w_jvp, w_db, rtol=1e-9, atol=1e-12)


def test_jvp_without_the_training_batch_is_a_clear_error():
    model, net, x, y, x_adv, x_val_adv, y_val, feats = _problem()
    terms = OBJECTIVES.get("at").terms(model, x, x_adv, y)
    with pytest.raises(ValueError, match="hypergrad='jvp' needs the training batch"):
        bilaw_meta_step(model, net, torch.optim.SGD(net.parameters(), lr=0.1), terms, feats, LR,
                        x_val_adv, y_val, NO_ATTACK, hypergrad="jvp")


class _GradRecorder(torch.optim.Optimizer):
    """An optimiser that only records the gradients it is handed."""

    def __init__(self, params):
        super().__init__(params, {})
        self.seen: list[torch.Tensor] = []

    def step(self, closure=None):
        self.seen = [p.grad.clone() for group in self.param_groups for p in group["params"]]


@pytest.mark.parametrize("lr", [0.1, 0.01, 0.001])
def test_per_lr_scaling_divides_the_meta_gradient_by_the_current_lr(lr):
    model, net, x, y, x_adv, x_val_adv, y_val, feats = _problem(seed=2)
    terms = OBJECTIVES.get("at").terms(model, x, x_adv, y, 6.0)
    seen, norms = {}, {}
    for scale in ("raw", "per_lr"):
        rec = _GradRecorder(net.parameters())
        _, norms[scale] = bilaw_meta_step(model, net, rec, terms, feats, lr, x_val_adv, y_val, NO_ATTACK,
                                          grad_scale=scale)
        seen[scale] = rec.seen
    for raw, scaled in zip(seen["raw"], seen["per_lr"]):
        assert raw.abs().max() > 0
        assert torch.equal(scaled, raw / lr)
    # the reported norm is the raw meta-gradient's, whatever the scaling
    expected = torch.cat([g.reshape(-1) for g in seen["raw"]]).norm()
    assert torch.equal(norms["raw"], norms["per_lr"])
    torch.testing.assert_close(norms["raw"], expected, rtol=1e-12, atol=0)
