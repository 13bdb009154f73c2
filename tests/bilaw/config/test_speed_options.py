"""The speed options of issue 6 train end to end and keep the algorithm: the fast meta preset,
meta_interval = 5, the JVP hypergradient, channels_last and torch.compile."""
from __future__ import annotations

import shutil

import pytest

import bilaw.methods.learned as learned_module
from bilaw import TrainConfig
from bilaw.training.trainer import train

TINY = dict(dataset="digits", model="fc1", batch_size=32, meta_val_size=100, holdout_val_size=100,
            aa_samples=0, device="cpu", eval_pgd_steps=5, pgd_steps=5, epochs=1, burn_in_epochs=0)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, **kw})


def test_fast_preset_resolves_to_a_small_weak_validation_attack_unless_set():
    c = _cfg(method="bilaw", meta_preset="fast", pgd_steps=10).resolved()
    assert (c.val_batch_size, c.val_pgd_steps) == (32, 3)
    c = _cfg(method="bilaw", meta_preset="fast", val_batch_size=64, val_pgd_steps=5).resolved()
    assert (c.val_batch_size, c.val_pgd_steps) == (64, 5)
    c = _cfg(method="bilaw", batch_size=128, pgd_steps=10).resolved()
    assert (c.val_batch_size, c.val_pgd_steps) == (128, 10)


def test_unknown_preset_and_hypergrad_are_named_errors():
    with pytest.raises(ValueError) as err:
        _cfg(meta_preset="quick", hypergrad="forward").resolved()
    assert "unknown meta_preset 'quick'; valid meta_presets: exact, fast" in str(err.value)
    assert "unknown hypergrad 'forward'; valid hypergrads: double_backward, jvp" in str(err.value)


def _spy_meta_steps(monkeypatch):
    calls = []
    real = learned_module.bilaw_meta_step

    def spy(model, net, opt, terms, feats, lr, x_val, y_val, attack, *args):
        calls.append({"val_batch": len(y_val), "val_steps": attack.steps, "args": args})
        return real(model, net, opt, terms, feats, lr, x_val, y_val, attack, *args)

    monkeypatch.setattr(learned_module, "bilaw_meta_step", spy)
    return calls


def test_fast_preset_trains_end_to_end_with_its_validation_batch(monkeypatch):
    calls = _spy_meta_steps(monkeypatch)
    result = train(_cfg(method="bilaw", meta_preset="fast"), progress=False)
    steps = -(-(1437 - 200) // 32)
    assert len(calls) == steps
    assert {c["val_batch"] for c in calls} == {32} and {c["val_steps"] for c in calls} == {3}
    h = result.history[0]
    assert h["weight_std"] > 0 and 0 < h["val_pgd_acc"] <= h["val_clean_acc"]
    assert 0 <= result.final["test_pgd_acc"] <= result.final["test_clean_acc"]


def test_meta_interval_5_updates_the_weight_net_on_every_fifth_step(monkeypatch):
    calls = _spy_meta_steps(monkeypatch)
    result = train(_cfg(method="bilaw", meta_interval=5), progress=False)
    steps = -(-(1437 - 200) // 32)
    assert len(calls) == -(-steps // 5)
    assert result.history[0]["weight_std"] > 0 and result.final["test_clean_acc"] > 0.5


@pytest.mark.slow
def test_jvp_hypergradient_trains_like_double_backward():
    """The same run with the two exact hypergradients: equal up to float rounding, which one epoch
    of 39 steps does not amplify past these bounds."""
    a = train(_cfg(method="bilaw"), progress=False).history[0]
    b = train(_cfg(method="bilaw", hypergrad="jvp"), progress=False).history[0]
    assert a["weight_std"] > 0
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
    assert b["weight_std"] == pytest.approx(a["weight_std"], rel=1e-2)
    assert abs(b["val_pgd_acc"] - a["val_pgd_acc"]) <= 0.02


def test_channels_last_conv_model_trains_like_the_default_layout():
    base = dict(model="tiny_cnn", method="at")
    a = train(_cfg(**base), progress=False).history[0]
    b = train(_cfg(**base, channels_last=True), progress=False).history[0]
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
    assert abs(b["val_clean_acc"] - a["val_clean_acc"]) <= 0.02


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile on the CPU needs a C compiler")
def test_compiled_forward_trains_like_eager():
    a = train(_cfg(method="at"), progress=False).history[0]
    b = train(_cfg(method="at", compile=True), progress=False).history[0]
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
    assert abs(b["val_pgd_acc"] - a["val_pgd_acc"]) <= 0.02
