"""The GPU code paths checked against the CPU (or against their plain counterpart on the same
device), as plain functions: `benchmarks/gpu_check.py` calls them on a machine that may have no
pytest, and `tests/test_gpu_check.py` calls them under pytest. Each returns a dict of what it
measured, with `ok` and the tolerance it held the numbers to; none raises on a mismatch.

device "cuda" compares CUDA with the CPU; a dry run passes "cpu" and the same code runs at tiny
sizes (every comparison is then CPU against CPU).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from bilaw.config.train_config import TrainConfig
from bilaw.methods.bilevel import TrainBatch, ValAttack, bilaw_meta_step
from bilaw.methods.objectives import OBJECTIVES
from bilaw.methods.weighting import WeightNet
from bilaw.models import build_model
from bilaw.training.trainer import train

# digits, FC1, l-inf 0.2 (the dataset's default), seed 0: the short runs compared across devices
RUN = {"dataset": "digits", "model": "fc1", "method": "bilaw", "epochs": 2, "batch_size": 64, "seed": 0,
       "aa_samples": 0, "analysis_samples": 0, "plots": False, "eval_pgd_steps": 10}
TINY_RUN = {"epochs": 1, "meta_val_size": 60, "holdout_val_size": 60, "pgd_steps": 3, "eval_pgd_steps": 3}
# Tolerances. Device RNG streams differ (random starts, shuffling), so whole runs agree only
# statistically: accuracies on digits' 360 test images within 5 points, the mean training loss
# within 0.1. Same-input computations agree to float32 round-off.
ACC_TOL, LOSS_TOL, REL_TOL = 0.05, 0.10, 1e-3


def _run(device: str, dry: bool, **keys: Any) -> dict[str, float]:
    cfg = TrainConfig.from_dict({**RUN, **(TINY_RUN if dry else {}), "device": device, **keys})
    result = train(cfg, progress=False, log=lambda _: None)
    last = result.history[-1]
    return {"train_loss": float(last["train_loss"]), "weight_std": float(last.get("weight_std", 0.0)),
            "test_clean_acc": float(result.final["test_clean_acc"]), "test_pgd_acc": float(result.final["test_pgd_acc"])}


def _compare_runs(name: str, ours: dict[str, float], ref: dict[str, float], against: str) -> dict[str, Any]:
    gaps = {k: abs(ours[k] - ref[k]) for k in ("train_loss", "test_clean_acc", "test_pgd_acc")}
    ok = gaps["train_loss"] <= LOSS_TOL and gaps["test_clean_acc"] <= ACC_TOL and gaps["test_pgd_acc"] <= ACC_TOL
    return {"check": name, "ok": ok, "against": against, "run": ours, "reference": ref, "gaps": gaps,
            "tolerance": {"train_loss": LOSS_TOL, "acc": ACC_TOL}}


def bilaw_run(device: str, dry: bool = False) -> dict[str, Any]:
    """A short BiLAW run on `device` against the same run on the CPU."""
    out = _compare_runs("bilaw_run", _run(device, dry), _run("cpu", dry), "cpu")
    out["ok"] = out["ok"] and out["run"]["weight_std"] > 0  # the weight net did learn something
    return out


def amp_run(device: str, dry: bool = False) -> dict[str, Any]:
    """The same BiLAW run with bf16 attacks (amp=true) against fp32 on the same device (amp is
    active on CUDA only: on the CPU the two runs are the same)."""
    out = _compare_runs("amp_run", _run(device, dry, amp=True), _run(device, dry), f"{device} fp32")
    out["amp_active"] = torch.device(device).type == "cuda"
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def channels_last(device: str, dry: bool = False) -> dict[str, Any]:
    """tiny-CNN's logits and gradients in channels_last memory format against the default
    format on the same device, from the same weights and batch; then an AT run with it."""
    torch.manual_seed(0)
    base = build_model("tiny_cnn", (1, 28, 28), 10).to(device)
    last = copy.deepcopy(base).to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16 if dry else 128, 1, 28, 28, generator=g).to(device)
    y = torch.randint(0, 10, (len(x),), generator=g).to(device)
    errs = {}
    for name, model, xin in (("base", base, x), ("last", last, x.contiguous(memory_format=torch.channels_last))):
        logits = model(xin)
        nn.functional.cross_entropy(logits, y).backward()
        errs[name] = (logits.detach(), torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    logit_rel, grad_rel = _rel(errs["last"][0], errs["base"][0]), _rel(errs["last"][1], errs["base"][1])
    run = _run(device, dry, model="tiny_cnn", method="at", channels_last=True, dataset="digits")
    ok = logit_rel <= REL_TOL and grad_rel <= REL_TOL and all(v == v for v in run.values())
    return {"check": "channels_last", "ok": ok, "logits_rel_err": logit_rel, "grad_rel_err": grad_rel,
            "run": run, "tolerance": {"rel": REL_TOL}}


def jvp_hypergrad(device: str, dry: bool = False) -> dict[str, Any]:
    """One BiLAW meta step with the JVP hypergradient against double backward, same inputs, in
    float32 on `device` (the CPU test suite checks the two in float64 to 1e-9)."""
    k, b = 10, 32
    torch.manual_seed(0)
    model = build_model("tiny_cnn", (1, 28, 28), k).to(device).train()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(b, 1, 28, 28, generator=g).to(device)
    x_adv = (x + 0.05 * torch.randn(x.shape, generator=g).to(device)).clamp(0, 1)
    y = torch.randint(0, k, (b,), generator=g).to(device)
    x_val, y_val = torch.rand(b, 1, 28, 28, generator=g).to(device), torch.randint(0, k, (b,), generator=g).to(device)
    feats = torch.rand(b, k, generator=g).to(device)
    objective = OBJECTIVES.get("at")
    steps = {}
    for mode in ("double_backward", "jvp"):
        torch.manual_seed(5)
        net = WeightNet(k, (128,)).to(device)
        start = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
        opt = torch.optim.SGD(net.parameters(), lr=1.0)
        terms = objective.terms(model, x, x_adv, y, 6.0)
        bilaw_meta_step(model, net, opt, terms, feats, 0.1, x_val, y_val, ValAttack("linf", 0.1, 0, 0.025),
                        hypergrad=mode, batch=TrainBatch(objective.terms, x, x_adv, y, 6.0))
        steps[mode] = torch.cat([p.detach().reshape(-1) for p in net.parameters()]) - start
    rel = _rel(steps["jvp"], steps["double_backward"])
    norm = float(steps["double_backward"].norm())
    return {"check": "jvp_hypergrad", "ok": rel <= REL_TOL and norm > 0, "update_rel_err": rel, "update_norm": norm,
            "tolerance": {"rel": REL_TOL}}


CHECKS = {"bilaw_run": bilaw_run, "amp_run": amp_run, "channels_last": channels_last, "jvp_hypergrad": jvp_hypergrad}
