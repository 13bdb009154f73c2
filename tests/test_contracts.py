"""Contract tests: every name of every registry goes through the same checks.

A *contract* here is what the rest of the code assumes about any registered name, whatever it
is: a model maps (B, C, H, W) images in [0, 1] to finite (B, k) logits that an attack can
differentiate; a weighting trains one epoch through the unchanged trainer and gives mean-1 weights;
an objective gives finite per-sample terms; a norm's PGD stays in its ball and in [0, 1]; a margin
input has the width its `dim` fact promises; a dataset loads as float32 NCHW images in [0, 1] with
labels in [0, k) and fills the config's derived values from its facts. As in timm's model tests,
the tests are parametrised over `REGISTRY.names()`, so one registration adds its tests and a new
name that breaks a contract fails here. Each check compares against an independent computation
where that is cheap (a parameter count by formula, a norm measured directly, a file's bytes).

Checks that need something per name which a registration cannot give (a reference parameter
count, a writer for a new on-disk format) skip that name with a reason instead of failing; every
other check runs for every name.

Nothing here touches the network: dataset downloads are replaced by a stub that fails, the
files are small synthetic ones in their real formats (IDX, pickled CIFAR batches), and the
machine's Debian copy of Fashion-MNIST is hidden.
"""
from __future__ import annotations

import dataclasses
import gzip
import io
import math
import pickle
import re
import struct
import urllib.error
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bilaw.data import datasets as data_module
from bilaw.eval.attacks import NORMS, pgd, trades_attack
from bilaw.eval.autoattack import run_autoattack
from bilaw.config.train_config import KEYS, REGISTRY_KEYS, ConfigError, TrainConfig, default_burn_in
from bilaw.data.datasets import DATASETS, RawDataset, load_data
import bilaw.methods.learned  # noqa: F401  (registers the learned weightings bilaw and nonparam)
from bilaw.methods.margins import MARGIN_INPUTS, MarginSources, compute_margin_input, margin_input_dim
from bilaw.models import MODELS, build_model
from bilaw.methods.objectives import OBJECTIVES, TRAINING_ATTACKS, Terms, combine
from bilaw.registry import Registry, UnknownNameError
from bilaw.training.trainer import RunState, lr_at, train
from bilaw.methods.weighting import WEIGHTINGS, StepInputs, WeightNet

# ==================================================================================================
# every registry: names, facts, lookup, selection from a config
# ==================================================================================================

REGISTRIES: dict[str, Registry] = {
    "model": MODELS, "weighting": WEIGHTINGS, "objective": OBJECTIVES, "norm": NORMS,
    "margin_input": MARGIN_INPUTS, "dataset": DATASETS,
}
# The facts the code reads for each kind of name: (required, optional). A fact outside these is a
# typo nothing would ever read (e.g. `burnin=` instead of `burn_in=`).
FACTS: dict[str, tuple[set[str], set[str]]] = {
    "model": ({"gpu_share"}, set()),
    "weighting": (set(), {"burn_in", "learned", "own_keys", "holds_out_validation"}),
    "objective": (set(), set()),
    "norm": ({"autoattack"}, set()),
    "margin_input": ({"dim"}, set()),
    "dataset": ({"val_size", "disk"}, {"eps"}),
}
ALL_NAMES = [pytest.param(kind, name, id=f"{kind}-{name}") for kind, reg in REGISTRIES.items() for name in reg.names()]



def test_every_registry_is_covered_here():
    """A registry added to the config (a new kind of name) must get its contract here too."""
    assert set(REGISTRY_KEYS) == set(REGISTRIES)
    for key, reg in REGISTRY_KEYS.items():
        assert reg is REGISTRIES[key], key


@pytest.mark.parametrize("kind, name", ALL_NAMES)
def test_name_lookup_and_facts(kind, name):
    reg = REGISTRIES[kind]
    assert re.fullmatch(r"[a-z][a-z0-9_]*", name), f"{kind} name {name!r} is not a lower-case identifier"
    assert reg.names().count(name) == 1 and name in reg
    assert reg.get(name) is not None
    facts = reg.facts(name)
    with pytest.raises(TypeError):  # read-only: nobody changes a registration by accident
        facts["x"] = 1
    required, optional = FACTS[kind]
    assert required <= set(facts), f"{kind} {name!r} lacks the facts {sorted(required - set(facts))}"
    unknown = sorted(set(facts) - required - optional)
    assert not unknown, f"{kind} {name!r} has facts nothing reads: {unknown}"
    assert set(facts.get("own_keys", ())) <= set(KEYS), f"{kind} {name!r} owns keys that are no config keys"
    # a typo of the name is an UnknownNameError that lists the names and suggests this one
    typo = name + "_"
    assert typo not in reg
    with pytest.raises(UnknownNameError) as info:
        reg.get(typo)
    msg = str(info.value)
    assert f"did you mean {name!r}" in msg
    assert all(n in msg for n in reg.names())


_SELECTABLE = [(key, name) for key, reg in REGISTRY_KEYS.items() for name in reg.names()]


@pytest.mark.parametrize("key, name", _SELECTABLE)
def test_every_name_can_be_chosen_in_a_config(key, name):
    """`{key: name}` in a config (what YAML files, --set and search spaces give) selects `name`."""
    cfg = TrainConfig.from_dict({key: name})
    assert getattr(cfg, key) == name
    assert getattr(cfg.resolved(), key) == name


# ==================================================================================================
# models
# ==================================================================================================

# The inputs of the registered datasets: (C, H, W) and the number of classes.
MODEL_INPUTS = {"digits": ((1, 8, 8), 10), "mnist": ((1, 28, 28), 10), "cifar100": ((3, 32, 32), 100)}
# Size arguments that make a configurable model small enough for a CPU test (the smallest WRN).
MODEL_TEST_KWARGS = {"wrn": {"depth": 10, "widen_factor": 1}}
# Full-size models (tens of millions of parameters): their forwards beyond 8x8 take seconds on a CPU.
HEAVY_MODELS = {"wrn32_10", "wrn34_10"}


def _model_cases():
    for name in MODELS.names():
        for data_name in MODEL_INPUTS:
            marks = [pytest.mark.slow] if name in HEAVY_MODELS and data_name != "digits" else []
            yield pytest.param(name, data_name, id=f"{name}-{data_name}", marks=marks)


def _bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.named_buffers() if "running_" in n}


@pytest.mark.parametrize("name, data_name", list(_model_cases()))
def test_model_forward_backward_and_modes(name, data_name):
    shape, k = MODEL_INPUTS[data_name]
    torch.manual_seed(0)
    model = build_model(name, shape, k, **MODEL_TEST_KWARGS.get(name, {}))
    assert all(p.requires_grad for p in model.parameters())
    x = torch.rand(2, *shape)
    y = torch.tensor([0, k - 1])

    # eval: (B, k) finite logits; every sample's input gradient is finite and non-zero (attackable)
    model.eval()
    before = _bn_buffers(model)
    x_grad = x.clone().requires_grad_(True)
    out = model(x_grad)
    assert out.shape == (2, k) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    (grad,) = torch.autograd.grad(F.cross_entropy(out, y, reduction="sum"), x_grad)
    assert grad.shape == x.shape and torch.isfinite(grad).all()
    assert (grad.flatten(1).abs().sum(1) > 0).all(), "the loss does not reach some input: not attackable"
    assert all(p.grad is None for p in model.parameters())  # a gradient w.r.t. the input only
    # eval is per sample (no batch statistics) and leaves the running statistics alone
    with torch.no_grad():
        torch.testing.assert_close(model(x[1:]), out[1:].detach(), rtol=1e-4, atol=1e-5)
    for n, b in _bn_buffers(model).items():
        assert torch.equal(b, before[n]), f"eval forward changed {n}"

    # train: finite (B, k) logits, gradients on every parameter, BatchNorm statistics move
    model.train()
    assert all(m.training for m in model.modules())
    out = model(x)
    assert out.shape == (2, k) and torch.isfinite(out).all()
    F.cross_entropy(out, y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    for n, b in _bn_buffers(model).items():
        if n.endswith("running_mean"):
            assert not torch.equal(b, before[n]), f"train forward did not update {n}"
    model.eval()
    assert not any(m.training for m in model.modules())


def _conv(c_in: int, c_out: int, kernel: int, bias: bool = True) -> int:
    return c_in * c_out * kernel * kernel + (c_out if bias else 0)


def _linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def _wrn_params(shape, k, blocks: int, widen: int) -> int:
    """Madry's WideResNet: conv3x3 16, three stages of pre-activation blocks, BN, FC."""
    total = _conv(shape[0], 16, 3, bias=False)
    c = 16
    for width, stride in ((16 * widen, 1), (32 * widen, 2), (64 * widen, 2)):
        for i in range(blocks):
            c_in = c if i == 0 else width
            total += 2 * c_in + _conv(c_in, width, 3, False) + 2 * width + _conv(width, width, 3, False)
            if i == 0 and (c_in != width or stride != 1):  # 1x1 shortcut where the shape changes
                total += _conv(c_in, width, 1, False)
        c = width
    return total + 2 * c + _linear(c, k)


def _small_cnn_params(shape, k) -> int:
    total, c = 0, shape[0]
    for width in (64, 128, 196):
        total += _conv(c, width, 3) + 2 * width + _conv(width, width, 3) + 2 * width
        c = width
    return total + _linear(196 * (shape[1] // 8) * (shape[2] // 8), 256) + _linear(256, k)


# Parameter counts computed from each architecture's description (default size arguments).
REFERENCE_PARAMS = {
    "fc1": lambda s, k: _linear(s[0] * s[1] * s[2], 1024) + _linear(1024, k),
    "tiny_cnn": lambda s, k: (_conv(s[0], 16, 4) + _conv(16, 32, 4)
                              + _linear(32 * (s[1] // 4) * (s[2] // 4), 100) + _linear(100, k)),
    "small_cnn": _small_cnn_params,
    "wrn": lambda s, k: _wrn_params(s, k, blocks=5, widen=10),       # default depth 32, width 10
    "wrn32_10": lambda s, k: _wrn_params(s, k, blocks=5, widen=10),  # (32 - 2) / 6 blocks per stage
    "wrn34_10": lambda s, k: _wrn_params(s, k, blocks=5, widen=10),  # TRADES: (34 - 4) / 6
}


@pytest.mark.parametrize("name", MODELS.names())
def test_model_facts_and_parameter_count(name):
    share = MODELS.facts(name)["gpu_share"]
    assert isinstance(share, (int, float)) and not isinstance(share, bool)
    assert 0 < share <= 1
    for data_name, (shape, k) in MODEL_INPUTS.items():
        with torch.device("meta"):  # the full-size model, allocating nothing
            model = build_model(name, shape, k)
        count = sum(p.numel() for p in model.parameters())
        assert count > 0
        if name not in REFERENCE_PARAMS:
            pytest.skip(f"no reference parameter count for model {name!r} (add one to REFERENCE_PARAMS)")
        assert count == REFERENCE_PARAMS[name](shape, k), data_name
    if name in ("wrn32_10", "wrn34_10"):  # the published size of WRN-34-10 on CIFAR-10: 46.16M
        with torch.device("meta"):
            count = sum(p.numel() for p in build_model(name, (3, 32, 32), 10).parameters())
        assert count == pytest.approx(46.16e6, abs=0.01e6)


# ==================================================================================================
# weightings
# ==================================================================================================

WEIGHTING_RUN = dict(dataset="digits", model="fc1", batch_size=128, epochs=1, burn_in_epochs=0, pgd_steps=3,
                     eval_pgd_steps=3, meta_val_size=60, holdout_val_size=60, aa_samples=0, analysis_samples=0,
                     plots=False, device="cpu", method="custom", objective="at")


def weighting_config(name: str) -> TrainConfig:
    """WEIGHTING_RUN with weighting `name`. Set after `from_dict`, which would read 'none' as None."""
    cfg = TrainConfig.from_dict({**WEIGHTING_RUN, "weighting": "gairat"})
    cfg = dataclasses.replace(cfg, weighting=name)
    cfg.validate()
    return cfg


@pytest.fixture(scope="module", params=WEIGHTINGS.names())
def weighting_run(request):
    """One epoch of AT on digits with each weighting (shared by the tests that read the result)."""
    return request.param, train(weighting_config(request.param), progress=False)


def test_weighting_trains_one_epoch_with_mean_one_weights(weighting_run):
    name, result = weighting_run
    uniform = WEIGHTINGS.get(name)(result.config).uniform
    (h,) = result.history
    assert result.config.weighting == name
    assert math.isfinite(h["train_loss"]) and h["train_loss"] > 0
    assert h["weight_min"] <= 1.0 + 1e-6 and h["weight_max"] >= 1.0 - 1e-6
    assert h["weight_min"] >= 0.0 and math.isfinite(h["weight_max"])
    if uniform:
        assert h["weight_std"] == 0.0 and h["weight_min"] == h["weight_max"] == 1.0
    else:
        assert h["weight_std"] > 0 and h["weight_min"] < h["weight_max"], f"{name} gave uniform weights"
    # the per-sample weights the trainer recorded: every training sample once, each batch mean 1
    w = result.sample_weights
    assert w.shape == (1, len(w[0])) and torch.isfinite(w).all()
    assert float(w.mean()) == pytest.approx(1.0, abs=1e-5)
    assert float(w.min()) == pytest.approx(h["weight_min"], rel=1e-5, abs=1e-7)
    assert float(w.max()) == pytest.approx(h["weight_max"], rel=1e-5)
    # abs: `finish_epoch` takes sqrt(E[w^2] - E[w]^2) of float32 sums, which is off by ~1e-4 for
    # nearly uniform weights (a fresh weight net's std is ~1e-3: BiLAW's reads 8.6e-4 for a true 7.4e-4)
    assert float(w.double().std(unbiased=False)) == pytest.approx(h["weight_std"], rel=1e-3, abs=2e-5)
    for key in ("test_clean_acc", "test_pgd_acc"):
        assert 0.0 <= result.final[key] <= 1.0


@pytest.mark.parametrize("name", WEIGHTINGS.names())
def test_weighting_facts(name):
    facts = WEIGHTINGS.facts(name)
    if "learned" in facts:
        assert isinstance(facts["learned"], bool)
    rule = facts.get("burn_in")
    if rule is not None:
        assert callable(rule)
    for epochs in (1, 2, 3, 5, 10, 59, 60, 100, 109, 110, 120, 200):
        expected = 0 if rule is None else rule(epochs)
        assert isinstance(expected, int) and not isinstance(expected, bool), (epochs, expected)
        assert 0 <= expected <= epochs, (epochs, expected)
        assert default_burn_in(name, epochs) == expected
        assert TrainConfig(weighting=name, epochs=epochs).resolved().burn_in_epochs == expected


def _assert_same_state(a, b, path="state"):
    """Nested dicts / lists / tensors / plain values equal."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            _assert_same_state(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            _assert_same_state(u, v, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.mark.parametrize("name", WEIGHTINGS.names())
def test_weighting_step_protocol_and_state(name):
    """One training step by hand: `batch_weights`, the loss it weights, `on_subset`, and a state
    that survives a weights-only checkpoint into a fresh run."""
    cfg = weighting_config(name).resolved()
    run = RunState(cfg)
    weighting = run.weighting
    assert weighting.name == name
    x, y = run.data.x_train[:48], run.data.y_train[:48]
    x_adv, kappa = run.craft(x, y, active=True)
    assert torch.all((x_adv - x).abs() <= cfg.eps + 1e-6)
    if weighting.needs_kappa:
        assert kappa is not None and kappa.shape == (48,) and kappa.dtype == torch.int64
        assert int(kappa.min()) >= 0 and int(kappa.max()) <= cfg.pgd_steps
    else:
        assert kappa is None
    run.model.train()
    terms = run.objective.terms(run.model, x, x_adv, y, cfg.trades_beta)
    w, raw = weighting.batch_weights(StepInputs(x, x_adv, y, terms, run.objective.terms, kappa, 0, lr_at(cfg, 0), 0))
    if weighting.uniform:
        assert w is None and raw is None
    else:
        assert w is not None and raw is not None, f"{name} gave no weights on a step where it is active"
        assert w.shape == raw.shape == (48,)
        assert torch.isfinite(w).all() and torch.isfinite(raw).all() and (w >= 0).all()
        assert float((w.max() - w.min()).detach()) > 0, f"{name} gave uniform weights"
    loss = combine(terms, w)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for pname, p in run.model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname

    run.model.eval()
    with torch.no_grad():
        logits_clean, logits_adv = run.model(x), run.model(x_adv)

    def subset_weights(wt):
        return wt.on_subset(y, logits_adv, logits_clean, logits_adv, kappa, 0)

    on_subset = subset_weights(weighting)
    if weighting.uniform or not weighting.per_sample_formula:
        assert on_subset is None
    else:
        assert on_subset.shape == (48,) and torch.isfinite(on_subset).all() and (on_subset >= 0).all()
        assert float(on_subset.mean()) == pytest.approx(1.0, abs=1e-5)

    # the state goes through a weights-only checkpoint (as bilaw/training/checkpoint.py loads it) into a fresh run
    state = weighting.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    fresh = RunState(cfg)
    fresh.weighting.load_state_dict(loaded)
    _assert_same_state(fresh.weighting.state_dict(), state)
    fresh_subset = subset_weights(fresh.weighting)
    if on_subset is None:
        assert fresh_subset is None
    else:
        assert torch.equal(fresh_subset, on_subset)


# ==================================================================================================
# objectives
# ==================================================================================================



def _objective_batch():
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    x = torch.rand(6, 1, 8, 8, generator=g)
    x_adv = (x + 0.1 * torch.randn(x.shape, generator=g).sign()).clamp(0, 1)
    y = torch.tensor([0, 1, 2, 9, 9, 5])
    return model, x, x_adv, y


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_objective_terms_and_combine(name):
    objective = OBJECTIVES.get(name)
    assert objective.name == name and {"none", "pgd", "trades"} <= set(TRAINING_ATTACKS)
    model, x, x_adv, y = _objective_batch()
    terms = objective.terms(model, x, x_adv, y, 6.0)
    assert isinstance(terms, Terms)
    assert terms.weighted.shape == (6,) and torch.isfinite(terms.weighted).all()
    assert (terms.weighted >= -1e-6).all()  # losses / divergences are non-negative
    assert terms.weighted.requires_grad
    if terms.unweighted is not None:
        assert terms.unweighted.shape == (6,) and torch.isfinite(terms.unweighted).all()
    assert terms.logits_adv.shape == (6, 10) and torch.isfinite(terms.logits_adv).all()
    if terms.logits_clean is not None:
        assert terms.logits_clean.shape == (6, 10)
    # combine: no weights == uniform weights of 1 == the direct mean(s)
    plain = combine(terms, None)
    assert plain.dim() == 0 and torch.isfinite(plain)
    assert torch.equal(plain, combine(terms, torch.ones(6)))
    direct = terms.weighted.mean() + (0 if terms.unweighted is None else terms.unweighted.mean())
    torch.testing.assert_close(plain, direct)
    # weights scale only the weighted part: w = 0 leaves the unweighted mean, w = e_i picks term i / B
    zero = 0.0 if terms.unweighted is None else float(terms.unweighted.mean().detach())
    assert float(combine(terms, torch.zeros(6)).detach()) == pytest.approx(zero, abs=1e-6)
    e2 = torch.zeros(6)
    e2[2] = 6.0
    assert float(combine(terms, e2).detach()) == pytest.approx(float(terms.weighted[2].detach()) + zero,
                                                                rel=1e-5, abs=1e-6)
    # the loss reaches every parameter
    plain.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_objective_trains_one_epoch(name):
    cfg = TrainConfig.from_dict({**WEIGHTING_RUN, "method": "at", "objective": name})
    result = train(cfg, progress=False)
    assert result.config.objective == name and result.config.weighting == "none"
    (h,) = result.history
    assert math.isfinite(h["train_loss"]) and h["train_loss"] > 0
    assert 0.0 <= result.final["test_clean_acc"] <= 1.0


# ==================================================================================================
# norms (attacks)
# ==================================================================================================


def _p_of(norm: str) -> float:
    """The exponent of an l_p norm from its name ("linf" -> inf, "l2" -> 2)."""
    if norm == "linf":
        return math.inf
    match = re.fullmatch(r"l(\d+(?:\.\d+)?)", norm)
    if match is None:
        pytest.skip(f"norm {norm!r} is not named l<p> / linf: add how to measure it to _p_of")
    return float(match.group(1))


def _dist(delta: torch.Tensor, p: float) -> torch.Tensor:
    """Per-sample l_p norm, computed directly."""
    flat = delta.flatten(1).double()
    if math.isinf(p):
        return flat.abs().amax(1)
    return flat.abs().pow(p).sum(1).pow(1 / p)


def _budget(norm: str) -> float:
    return DATASETS.facts("digits").get("eps", {}).get(norm, 0.5)


@pytest.fixture(scope="module")
def digits_model():
    """A small MLP trained a little on digits (about 90% clean accuracy) and 64 of its images."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(bunch.target, dtype=torch.int64)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(60):
            opt.zero_grad()
            F.cross_entropy(model(x[:600]), y[:600]).backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    model.eval()
    x_eval, y_eval = x[1000:1064], y[1000:1064]
    with torch.no_grad():
        assert (model(x_eval).argmax(1) == y_eval).float().mean() > 0.8  # trained-ish
    return model, x_eval, y_eval


@pytest.mark.parametrize("name", NORMS.names())
def test_pgd_stays_in_its_ball_and_raises_the_loss(name, digits_model):
    model, x, y = digits_model
    p, eps = _p_of(name), _budget(name)
    model.train()  # pgd crafts in eval mode and restores the flags
    x_adv = pgd(model, x, y, norm=name, eps=eps, steps=10, generator=torch.Generator().manual_seed(0))
    assert model.training
    model.eval()
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert (_dist(x_adv - x, p) <= eps * (1 + 1e-5) + 1e-6).all()
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y, reduction="none")
        adv = F.cross_entropy(model(x_adv), y, reduction="none")
    assert float(adv.mean()) > float(clean.mean()) + 0.1, (float(clean.mean()), float(adv.mean()))
    assert (adv >= clean - 1e-4).float().mean() > 0.9  # almost every sample's loss goes up
    # GAIRAT's kappa counts correct iterates: an int in [0, K]
    _, kappa = pgd(model, x, y, norm=name, eps=eps, steps=4, return_kappa=True, generator=torch.Generator())
    assert kappa.dtype == torch.int64 and int(kappa.min()) >= 0 and int(kappa.max()) <= 4
    # no steps and no random start: the clean point
    assert torch.equal(pgd(model, x, y, norm=name, eps=eps, steps=0, random_start=False), x)


@pytest.mark.parametrize("name", NORMS.names())
def test_trades_attack_stays_in_its_ball(name, digits_model):
    model, x, _ = digits_model
    p, eps = _p_of(name), _budget(name)
    x_adv = trades_attack(model, x, norm=name, eps=eps, steps=5, generator=torch.Generator().manual_seed(0))
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert (_dist(x_adv - x, p) <= eps * (1 + 1e-5) + 1e-6).all()
    with torch.no_grad():
        kl = F.kl_div(F.log_softmax(model(x_adv), 1), F.softmax(model(x), 1), reduction="batchmean")
    assert float(kl) > 1e-3


@pytest.mark.parametrize("name", NORMS.names())
def test_norm_plugin_geometry(name):
    """The start is inside the ball, the projection lands in it (and keeps what is inside), and a
    step has length step_size in the norm's own measure."""
    spec = NORMS.get(name)
    assert spec.name == name
    p, eps = _p_of(name), 0.3
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 8, 8, generator=g)
    start = spec.random_start(x, eps, g)
    assert start.shape == x.shape and (_dist(start, p) <= eps * (1 + 1e-5)).all()
    assert (_dist(start, p) > 0).all()
    big = 10 * torch.randn(x.shape, generator=g)
    projected = spec.project_(big.clone(), eps)
    assert torch.allclose(_dist(projected, p), torch.full((16,), eps, dtype=torch.float64), rtol=1e-5)
    assert torch.allclose(spec.project_(projected.clone(), eps), projected)  # idempotent
    small = start * 0.5
    assert torch.allclose(spec.project_(small.clone(), eps), small)  # inside: unchanged
    grad = torch.randn(x.shape, generator=g)
    step = spec.step_(grad.clone(), 0.05)
    assert torch.allclose(_dist(step, p), torch.full((16,), 0.05, dtype=torch.float64), rtol=1e-5)
    assert ((step * grad).flatten(1).sum(1) > 0).all()  # an ascent direction


@pytest.mark.parametrize("name", NORMS.names())
def test_norm_autoattack_name(name, digits_model):
    fact = NORMS.facts(name)["autoattack"]
    assert isinstance(fact, str) and fact.lower() == name.lower()
    assert fact in ("Linf", "L2", "L1")  # the norms pyautoattack 0.2.0 accepts
    model, x, y = digits_model
    eps, p = _budget(name), _p_of(name)
    res = run_autoattack(model, x[:8], y[:8], norm=name, eps=eps, n=8, version="custom",
                         attacks=["apgd-ce"], n_iter=2)
    assert res.n == 8 and 0.0 <= res.accuracy <= 1.0
    assert (_dist(res.x_adv - x[:8], p) <= eps * (1 + 1e-4) + 1e-6).all()


# ==================================================================================================
# margin inputs
# ==================================================================================================


def _margin_sources(k: int, b: int = 7, seed: int = 0) -> MarginSources:
    g = torch.Generator().manual_seed(seed)
    logits_clean = torch.randn(b, k, generator=g)
    logits_adv = logits_clean + torch.randn(b, k, generator=g)
    y = torch.randint(0, k, (b,), generator=g)
    return MarginSources(probs=F.softmax(logits_clean, 1), y=y,
                         robust_loss=F.cross_entropy(logits_adv, y, reduction="none"),
                         clean_loss=F.cross_entropy(logits_clean, y, reduction="none"))


@pytest.mark.parametrize("name", MARGIN_INPUTS.names())
def test_margin_input_shape_and_per_sample(name):
    for k in (2, 10, 100):
        dim = margin_input_dim(name, k)
        assert isinstance(dim, int) and dim >= 1
        s = _margin_sources(k)
        m = compute_margin_input(name, s)
        assert m.shape == (7, dim) and m.dtype == torch.float32 and torch.isfinite(m).all()
        # row i depends only on sample i: permuting the batch permutes the rows
        perm = torch.tensor([3, 0, 6, 1, 5, 2, 4])
        permuted = MarginSources(s.probs[perm], s.y[perm], s.robust_loss[perm], s.clean_loss[perm])
        torch.testing.assert_close(compute_margin_input(name, permuted), m[perm])
        # and the weight net takes it
        w = WeightNet(dim)(m)
        assert w.shape == (7,) and ((w > 0) & (w < 1)).all()
    # it varies with the samples (a constant input would give the weight net nothing to learn from)
    m = compute_margin_input(name, _margin_sources(10, b=32, seed=1))
    assert float(m.std(0).max()) > 0


@pytest.mark.parametrize("name", MARGIN_INPUTS.names())
def test_margin_input_trains_bilaw(name):
    cfg = dataclasses.replace(weighting_config("bilaw"), margin_input=name)
    result = train(cfg, progress=False)
    (h,) = result.history
    assert math.isfinite(h["train_loss"]) and h["weight_std"] > 0
    assert result.weight_net.in_dim == margin_input_dim(name, 10)


# ==================================================================================================
# datasets
# ==================================================================================================


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Downloads fail like a blocked network; Debian's Fashion-MNIST and BILAW_DATA_DIR are hidden."""
    calls = []

    def refuse(dataset, root):
        calls.append(dataset)
        raise urllib.error.URLError("no network in the contract tests")

    monkeypatch.setattr(data_module, "download_with_torchvision", refuse)
    monkeypatch.setattr(data_module, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian-copy")
    monkeypatch.delenv(data_module.DATA_DIR_ENV, raising=False)
    return calls


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: 0, 0, type 0x08 (uint8), ndim, each dim big-endian uint32, then the bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def _labels(rng, n: int, k: int) -> np.ndarray:
    y = rng.integers(0, k, n)
    y[:2] = [0, k - 1]  # both ends of the label range
    return y


def _write_mnist_like(folder: Path, rng) -> dict:
    """The four MNIST files (train plain, test gzipped: both are allowed)."""
    x_train = rng.integers(0, 256, (60, 28, 28), dtype=np.uint8)
    x_test = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    y_train, y_test = _labels(rng, 60, 10), _labels(rng, 20, 10)
    _write_idx(folder / "train-images-idx3-ubyte", x_train)
    _write_idx(folder / "train-labels-idx1-ubyte", y_train)
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", x_test)
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", y_test)
    return dict(x_train=x_train[:, None], y_train=y_train, x_test=x_test[:, None], y_test=y_test, num_classes=10)


def _write_cifar_files(folder: Path, rng, train_files, test_file, label_key: bytes, k: int, extra=()) -> dict:
    """Pickled CIFAR batches: a dict of bytes keys, `data` uint8 (N, 3072) rows of R, G, B planes."""
    xs, ys = [], []
    for name in [*train_files, test_file]:
        n = 12 if name != test_file else 10
        rows, y = rng.integers(0, 256, (n, 3072), dtype=np.uint8), _labels(rng, n, k)
        entry = {b"batch_label": name.encode(), b"data": rows, label_key: [int(v) for v in y],
                 b"filenames": [b"img.png"] * n, **{key: [0] * n for key in extra}}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        xs.append(rows.reshape(n, 3, 32, 32))
        ys.append(y)
    return dict(x_train=np.concatenate(xs[:-1]), y_train=np.concatenate(ys[:-1]), x_test=xs[-1], y_test=ys[-1],
                num_classes=k)


# Writers of small synthetic files in each on-disk format, by the dataset's torchvision class.
WRITERS = {
    "MNIST": _write_mnist_like,
    "FashionMNIST": _write_mnist_like,
    "CIFAR10": lambda folder, rng: _write_cifar_files(
        folder, rng, [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels", 10),
    "CIFAR100": lambda folder, rng: _write_cifar_files(
        folder, rng, ["train"], "test", b"fine_labels", 100, extra=(b"coarse_labels",)),
}


def _synthetic(name: str, root: Path) -> dict | None:
    """Write `name`'s files under `root` where the loader looks for them; None for datasets that
    need no files."""
    disk = DATASETS.facts(name)["disk"]
    if disk is None:
        return None
    writer = WRITERS.get(disk.torchvision_class)
    if writer is None:
        pytest.skip(f"no synthetic writer for {name!r} ({disk.torchvision_class}): add one to WRITERS")
    folder = root / disk.folder
    folder.mkdir(parents=True)
    return writer(folder, np.random.default_rng(zlib.crc32(name.encode())))


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_loads_from_its_files(name, tmp_path, offline):
    expected = _synthetic(name, tmp_path)
    raw = DATASETS.get(name)(data_dir=tmp_path)
    assert isinstance(raw, RawDataset) and raw.name == name
    assert isinstance(raw.num_classes, int) and raw.num_classes >= 2
    for x, y in ((raw.x_train, raw.y_train), (raw.x_test, raw.y_test)):
        assert x.dtype == torch.float32 and x.dim() == 4 and x.is_contiguous()
        assert x.shape[1:] == raw.x_train.shape[1:] and x.shape[1] in (1, 3)
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and torch.isfinite(x).all()
        assert y.dtype == torch.int64 and y.shape == (len(x),) and len(x) > 0
        assert int(y.min()) >= 0 and int(y.max()) < raw.num_classes
    assert offline == [], "the loader tried to download although the files were there"
    if expected is not None:  # the pixels and labels written, exactly
        assert raw.num_classes == expected["num_classes"]
        for split in ("train", "test"):
            want = torch.from_numpy(expected[f"x_{split}"].astype(np.float32) / np.float32(255.0))
            assert torch.equal(getattr(raw, f"x_{split}"), want), split
            assert getattr(raw, f"y_{split}").tolist() == expected[f"y_{split}"].tolist(), split
    # through load_data: the split sizes asked for, the input shape, everything on the device
    m = max(1, len(raw.y_train) // 5)
    bundle = load_data(name, data_dir=tmp_path, meta_val_size=m, holdout_val_size=m, seed=0)
    assert bundle.input_shape == tuple(raw.x_train.shape[1:]) and bundle.num_classes == raw.num_classes
    assert (len(bundle.y_meta), len(bundle.y_holdout)) == (m, m)
    assert len(bundle.y_train) == len(raw.y_train) - 2 * m and len(bundle.y_test) == len(raw.y_test)
    assert bundle.x_train.dtype == torch.float32 and bundle.augment == raw.augment


def _dataset_norm_cases():
    for name in DATASETS.names():
        for norm in NORMS.names():
            yield pytest.param(name, norm, id=f"{name}-{norm}")


@pytest.mark.parametrize("name, norm", list(_dataset_norm_cases()))
def test_dataset_facts_fill_the_config(name, norm):
    facts = DATASETS.facts(name)
    val_size = facts["val_size"]
    assert isinstance(val_size, int) and val_size > 0
    budgets = facts.get("eps", {})
    assert set(budgets) <= set(NORMS.names()), f"budgets for unknown norms: {set(budgets) - set(NORMS.names())}"
    if norm not in budgets:
        with pytest.raises(ConfigError, match="no default budget"):
            TrainConfig(dataset=name, norm=norm).resolved()
        return
    assert 0 < budgets[norm]
    cfg = TrainConfig(dataset=name, norm=norm).resolved()
    assert cfg.eps == budgets[norm]
    assert cfg.pgd_step_size == pytest.approx(budgets[norm] / 4)
    assert cfg.meta_val_size == cfg.holdout_val_size == val_size
    if norm == "linf":  # the default norm
        assert TrainConfig(dataset=name).resolved().eps == budgets["linf"]
