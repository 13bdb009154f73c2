"""PGD (l-inf, l2, kappa) and the TRADES inner maximisation: constraints, strength, bookkeeping."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bilaw.eval.attacks import NORMS, eval_mode, pgd, trades_attack
from bilaw.registry import UnknownNameError

from helpers import digits_mlp

EPS = {"linf": 0.1, "l2": 1.0}  # digits are 8x8 in [0, 1]; both budgets break an undefended MLP


@pytest.fixture(scope="module")
def digits():
    model, x, y = digits_mlp()
    assert (model(x).argmax(1) == y).float().mean() > 0.95  # the attacks below need a real model
    return model, x[:128], y[:128]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _dist(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample distance (B,) in the given norm."""
    d = (x_adv - x).flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


# --- constraints -------------------------------------------------------------------------------
@pytest.mark.parametrize("random_start", [True, False])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_ball_and_box(digits, norm, random_start):
    model, x, y = digits
    eps = EPS[norm]
    x_adv = pgd(model, x, y, norm=norm, eps=eps, steps=10, random_start=random_start,
                generator=_gen())
    tol = 1e-6 if norm == "linf" else 1e-5
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert _dist(x_adv, x, norm).max() <= eps + tol
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not x_adv.requires_grad
    # the budget is used: most points end on the sphere (l-inf: some coordinate at +-eps)
    assert (_dist(x_adv, x, norm) > 0.9 * eps).float().mean() > 0.5


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_inside_ball(digits, norm):
    _, x, y = digits
    eps = EPS[norm]
    start = pgd(nn.Flatten(), x, y, norm=norm, eps=eps, steps=0, generator=_gen())
    dist = _dist(start, x, norm)
    assert dist.max() <= eps + 1e-5 and dist.min() > 0
    assert start.min() >= 0 and start.max() <= 1
    raw = NORMS.get(norm).random_start(x, eps, _gen())  # before the [0, 1] clamp
    assert _dist(raw, torch.zeros_like(raw), norm).max() <= eps + 1e-5
    if norm == "l2":  # uniform by volume in d = 64 dims: radii concentrate just below eps
        radius = raw.flatten(1).norm(dim=1)
        assert radius.min() > 0.8 * eps


def test_no_random_start_and_zero_steps_returns_x(digits):
    model, x, y = digits
    out = pgd(model, x, y, norm="linf", eps=0.1, steps=0, random_start=False)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


# --- strength ----------------------------------------------------------------------------------
@pytest.mark.parametrize("random_start", [True, False])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_raises_loss(digits, norm, random_start):
    model, x, y = digits
    x_adv = pgd(model, x, y, norm=norm, eps=EPS[norm], steps=10, random_start=random_start,
                generator=_gen())
    with torch.no_grad():
        clean_loss = F.cross_entropy(model(x), y)
        adv_loss = F.cross_entropy(model(x_adv), y)
        adv_acc = (model(x_adv).argmax(1) == y).float().mean()
    assert adv_loss > clean_loss + 1.0
    assert adv_acc < 0.5


def test_more_steps_is_stronger(digits):
    model, x, y = digits
    losses = []
    for steps in (1, 10):
        x_adv = pgd(model, x, y, norm="linf", eps=0.1, steps=steps, random_start=False)
        with torch.no_grad():
            losses.append(F.cross_entropy(model(x_adv), y))
    assert losses[1] > losses[0]


def test_loss_fn_is_per_sample(digits):
    """A per-sample objective that zeroes half the batch leaves that half at its start."""
    model, x, y = digits
    weights = torch.zeros(len(x))
    weights[::2] = 1.0

    def weighted_ce(logits, labels):
        return weights * F.cross_entropy(logits, labels, reduction="none")  # (B,)

    x_adv = pgd(model, x, y, norm="linf", eps=0.1, steps=5, random_start=False,
                loss_fn=weighted_ce)
    assert torch.equal(x_adv[1::2], x[1::2])  # zero gradient -> sign 0 -> no move
    assert not torch.equal(x_adv[::2], x[::2])


# --- kappa on a hand-built 1-D model ----------------------------------------------------------
class _Zigzag(nn.Module):
    """1-D input x (B, 1) -> logits [0, z(x)]: class 1 iff z(x) > 0.

    z(x) = 0.05 - |x - 0.38| for x < 0.5 (a tent: ascent oscillates across its peak),
    z(x) = x - 0.85 for x >= 0.5 (monotone: ascent walks right into class 1).
    """

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        z = torch.where(x < 0.5, 0.05 - (x - 0.38).abs(), x - 0.85)
        return torch.cat([torch.zeros_like(z), z], dim=1)


def test_kappa_hand_built():
    # step 0.1, eps 1 (ball covers [0, 1]), K = 3. Label 0 is correct iff z < 0.
    # A: 0.3 (c) -> 0.4 (w, on the far side of the tent, gradient flips) -> 0.3 (c) -> 0.4
    #    kappa = 2: the point that flips back to correct is counted again.
    # B: 0.6 (c) -> 0.7 (c) -> 0.8 (c) -> 0.9 (w): only the final iterate is wrong, kappa = K.
    # C: label 1 at 0.3 (z < 0, wrong) -> 0.2 -> 0.1 -> 0.0, always wrong: kappa = 0.
    # D: label 0 at 0.0 -> 0.1 -> 0.2 -> 0.3, always correct: kappa = K.
    model = _Zigzag()
    x = torch.tensor([[0.3], [0.6], [0.3], [0.0]])
    y = torch.tensor([0, 0, 1, 0])
    x_adv, kappa = pgd(model, x, y, norm="linf", eps=1.0, steps=3, step_size=0.1,
                       random_start=False, return_kappa=True)
    assert kappa.dtype == torch.int64 and kappa.shape == (4,)
    assert kappa.tolist() == [2, 3, 0, 3]
    torch.testing.assert_close(x_adv, torch.tensor([[0.4], [0.9], [0.0], [0.3]]))
    assert model.calls == 3  # kappa comes from the gradient's forward, no extra forward


def test_kappa_with_projection():
    # eps 0.15 stops B at 0.75 < 0.85: it never becomes wrong; A still oscillates.
    x_adv, kappa = pgd(_Zigzag(), torch.tensor([[0.3], [0.6]]), torch.tensor([0, 0]),
                       norm="linf", eps=0.15, steps=4, step_size=0.1, random_start=False,
                       return_kappa=True)
    assert kappa.tolist() == [2, 4]
    torch.testing.assert_close(x_adv, torch.tensor([[0.3], [0.75]]))


def test_kappa_zero_steps_and_range(digits):
    model, x, y = digits
    _, k0 = pgd(model, x, y, norm="linf", eps=0.1, steps=0, return_kappa=True)
    assert k0.tolist() == [0] * len(x)
    _, k = pgd(model, x, y, norm="linf", eps=0.1, steps=5, return_kappa=True, generator=_gen())
    assert k.min() >= 0 and k.max() <= 5
    assert k.max() == 5  # some points survive the whole attack


# --- model state -------------------------------------------------------------------------------
class _ModeSpy(nn.Module):
    """Small net with BatchNorm that records the mode of each forward."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(),
                                 nn.Linear(16, 10))
        self.seen = []

    def forward(self, x):
        self.seen.append(self.training)
        return self.net(x)


ATTACKS = {
    "pgd": lambda m, x, y, **kw: pgd(m, x, y, norm="linf", eps=0.1, steps=3, **kw),
    "pgd_l2_kappa": lambda m, x, y, **kw: pgd(m, x, y, norm="l2", eps=1.0, steps=3,
                                              return_kappa=True, **kw),
    "trades": lambda m, x, y, **kw: trades_attack(m, x, norm="linf", eps=0.1, steps=3, **kw),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("start_training", [True, False])
def test_mode_restored_and_params_untouched(digits, attack, start_training):
    _, x, y = digits
    model = _ModeSpy().train(start_training)
    model.net[2].eval()  # a mixed state must come back as it was
    bn = model.net[2]
    stats = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    params = [p.detach().clone() for p in model.parameters()]
    model.net[1].weight.grad = torch.ones_like(model.net[1].weight)  # existing grad stays as is

    ATTACKS[attack](model, x, y, generator=_gen())

    assert model.seen and not any(model.seen)  # crafted in eval mode
    assert model.training is start_training and model.net[0].training is start_training
    assert bn.training is False
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert torch.equal(bn.num_batches_tracked, stats[2])
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    assert torch.equal(model.net[1].weight.grad, torch.ones_like(model.net[1].weight))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "net.1.weight")


def test_mode_restored_on_error(digits):
    _, x, y = digits

    class Boom(_ModeSpy):
        def forward(self, x):
            if len(self.seen) == 2:
                raise RuntimeError("boom")
            return super().forward(x)

    model = Boom().train()
    with pytest.raises(RuntimeError, match="boom"):
        pgd(model, x, y, norm="linf", eps=0.1, steps=5)
    assert model.training and all(m.training for m in model.modules())


def test_eval_mode_passes_plain_callables_through():
    """A functional wrapper is not a module: eval_mode leaves it, and the module it closes over, as they are."""
    inner = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()

    def wrapper(x):
        return inner(x)

    with eval_mode(wrapper):
        assert inner.training and all(m.training for m in inner.modules())
    with eval_mode(inner):
        assert not any(m.training for m in inner.modules())
    assert inner.training and all(m.training for m in inner.modules())


def test_pgd_works_under_no_grad(digits):
    model, x, y = digits
    with torch.no_grad():
        x_adv = pgd(model, x, y, norm="linf", eps=0.1, steps=2, random_start=False)
    assert not torch.equal(x_adv, x)


# --- TRADES inner maximisation ------------------------------------------------------------------
def _kl_sum(model, x, x_adv):
    with torch.no_grad():
        return F.kl_div(F.log_softmax(model(x_adv), 1), F.softmax(model(x), 1), reduction="sum")


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_trades_attack_in_ball_and_raises_kl(digits, norm):
    model, x, _ = digits
    eps = EPS[norm]
    start = trades_attack(model, x, norm=norm, eps=eps, steps=0, generator=_gen(1))
    x_adv = trades_attack(model, x, norm=norm, eps=eps, steps=10, generator=_gen(1))
    tol = 1e-6 if norm == "linf" else 1e-5
    for out in (start, x_adv):
        assert _dist(out, x, norm).max() <= eps + tol
        assert out.min() >= 0 and out.max() <= 1
    assert _dist(start, x, "linf").max() < 0.01  # the 0.001 * N(0, I) start
    kl_adv = _kl_sum(model, x, x_adv)
    assert kl_adv > 10 * _kl_sum(model, x, start) + 1.0
    # and it is an ascent, not a random walk: far above a random point on the sphere
    noise = torch.randn(x.shape, generator=_gen(2))
    if norm == "linf":
        noise = eps * noise.sign()
    else:
        noise = eps * noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert kl_adv > 5 * _kl_sum(model, x, (x + noise).clamp(0, 1))


# --- determinism and validation ----------------------------------------------------------------
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_same_seed_same_output(digits, norm):
    model, x, y = digits
    run = lambda seed: pgd(model, x, y, norm=norm, eps=EPS[norm], steps=3, generator=_gen(seed))
    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))
    trades = lambda seed: trades_attack(model, x, norm=norm, eps=EPS[norm], steps=3,
                                        generator=_gen(seed))
    assert torch.equal(trades(3), trades(3))


def test_step_size_defaults_to_quarter_eps():
    # one step from 0.3 with label 0 on the zigzag moves right by eps / 4
    x_adv = pgd(_Zigzag(), torch.tensor([[0.3]]), torch.tensor([0]), norm="linf", eps=0.2,
                steps=1, random_start=False)
    torch.testing.assert_close(x_adv, torch.tensor([[0.35]]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(eps=0.0), "eps must be > 0"),
    (dict(eps=-0.1), "eps must be > 0"),
    (dict(steps=-1), "steps must be an int >= 0"),
    (dict(step_size=0.0), "step_size must be > 0"),
])
def test_invalid_budget(digits, kwargs, match):
    model, x, y = digits
    args = dict(norm="linf", eps=0.1, steps=2) | kwargs
    with pytest.raises(ValueError, match=match):
        pgd(model, x, y, **args)
    with pytest.raises(ValueError, match=match):
        trades_attack(model, x, **args)


def test_unknown_norm(digits):
    model, x, y = digits
    with pytest.raises(UnknownNameError, match=r"valid norms: l2, linf.*did you mean 'linf'"):
        pgd(model, x, y, norm="lnf", eps=0.1, steps=1)
    with pytest.raises(UnknownNameError):
        trades_attack(model, x, norm="l1", eps=0.1, steps=1)
    assert NORMS.names() == ["l2", "linf"]


# --- GPU ---------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("gen_device", ["cpu", "cuda"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_on_cuda(digits, norm, gen_device):
    model, x, y = digits
    gpu_model = digits_mlp(steps=0)[0].cuda()
    gpu_model.load_state_dict(model.state_dict())
    xc, yc = x.cuda(), y.cuda()
    gen = torch.Generator(device=gen_device).manual_seed(0)
    x_adv, kappa = pgd(gpu_model, xc, yc, norm=norm, eps=EPS[norm], steps=5, generator=gen,
                       return_kappa=True)
    assert x_adv.device == xc.device and kappa.device == xc.device
    assert _dist(x_adv, xc, norm).max() <= EPS[norm] + 1e-5
    assert gpu_model(x_adv).device == xc.device
    assert (gpu_model(x_adv).argmax(1) == yc).float().mean() < 0.5
    t = trades_attack(gpu_model, xc, norm=norm, eps=EPS[norm], steps=3, generator=gen)
    assert t.device == xc.device
    if gen_device == "cpu":  # a CPU generator gives the same start as on the CPU
        s_gpu = pgd(gpu_model, xc, yc, norm=norm, eps=EPS[norm], steps=0, generator=_gen(5))
        s_cpu = pgd(model, x, y, norm=norm, eps=EPS[norm], steps=0, generator=_gen(5))
        torch.testing.assert_close(s_gpu.cpu(), s_cpu)
