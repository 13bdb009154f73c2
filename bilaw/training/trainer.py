"""The one training loop. A method is an objective plus a weighting (`config.METHODS`): the loop
crafts the training attack, asks the objective for per-sample terms and the weighting (or the
bilevel step) for weights, and combines them (`objectives.combine`). `train(cfg, callback)`
returns a `TrainResult` and reports each epoch's metrics to `callback`; with `checkpoint_dir` it
writes a checkpoint after every epoch and resumes from one exactly.
"""
from __future__ import annotations

import contextlib
import functools
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from bilaw.analysis.weight_maps import map_snapshot, snapshot_epochs
from bilaw.analysis.weights import TRACE_SIZE, collect, fixed_subset, noise_weight_means, trace_weights, weight_auroc
from bilaw.config.run_data import run_data_args
from bilaw.config.train_config import RESUME_FREE_KEYS, ConfigError, TrainConfig, config_differences
from bilaw.data.datasets import DataBundle, augment_crop_flip, batch_indices, load_data
from bilaw.epochs import EPOCHS_FROM, renumbered_checkpoint
from bilaw.eval.evaluate import evaluate_model
from bilaw.eval.per_point import holdout_correct, holdout_points, masking_check
from bilaw.methods.learned import RunContext
from bilaw.methods.objectives import OBJECTIVES, AttackSetting, Objective, combine
from bilaw.methods.weight_health import collapse_message, collapsed_epoch, health_warning
from bilaw.methods.weighting import StepInputs, Weighting, WeightNet, as_mean_one, build_weighting, is_learned
from bilaw.metrics import (BEST_VAL_PGD_ACC, LAST_TEST_CLEAN_ACC, LAST_TEST_PGD_ACC, ROBUST_OVERFIT_GAP, TEST_AA_ACC,
                           TEST_CLEAN_ACC, TEST_PGD_ACC, TEST_PGD_ACC_AA_SUBSET, TRAIN_LOSS, VAL_CLEAN_ACC, VAL_PGD_ACC,
                           final_report)
from bilaw.models import build_model, model_kwargs
from bilaw.training.checkpoint import resume_checkpoint, rng_state, save_checkpoint, set_rng_state
from bilaw.training.epoch_stats import accumulate, finish_epoch
from bilaw.training.progress import batch_progress, format_epoch

CHECKPOINT_NAME = "checkpoint.pt"
EpochCallback = Callable[[dict[str, Any], "Path | None"], None]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the run stops instead of training on garbage."""


@dataclass
class TrainResult:
    """history: one metrics dict per epoch; final: test metrics; model: the best state (eval
    mode); weight_net: BiLAW's net at the best state, else None."""

    config: TrainConfig
    history: list[dict[str, Any]]
    final: dict[str, Any]
    model: nn.Module
    weight_net: WeightNet | None = None
    best_state: dict[str, Any] = field(default_factory=dict)
    analysis: dict[str, Any] | None = None        # bilaw/analysis/weights.py `collect`, at the last state
    sample_weights: torch.Tensor | None = None    # (epochs, n_train) recorded training weights
    trace: list[dict[str, list[float]]] = field(default_factory=list)  # Fig. 5, per epoch
    per_point: dict[str, Any] | None = None       # bilaw/eval/per_point.py: {"test": ..., "holdout": ...}
    weight_maps: list[dict[str, Any]] = field(default_factory=list)  # bilaw/analysis/weight_maps.py snapshots
    data_record: dict[str, Any] = field(default_factory=dict)  # bilaw/data/record.py: the data it trained on


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(["device: 'cuda' was asked for but torch sees no CUDA device (use auto or cpu)"])
    return torch.device(name)


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Piecewise constant: lr * gamma^(milestones passed), milestones fractions of training (paper: /10 at 30%, 60%)."""
    passed = sum(epoch >= round(m * cfg.epochs) for m in cfg.lr_milestones)
    return cfg.lr * cfg.lr_gamma ** passed


class RunState:
    """State of one training run: data, model, optimiser, weighting, generators, best state,
    history. Public for the analysis (`bilaw.analysis.weights.AnalysedRun`) and the step-cost benchmark;
    `train` is the way to run one."""

    def __init__(self, cfg: TrainConfig, data: DataBundle | None = None) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.data = data or load_data(cfg.dataset, device=self.device, **run_data_args(cfg))
        self.model = build_model(cfg.model, self.data.input_shape, self.data.num_classes,
                                 **model_kwargs(cfg)).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # The attacks and the real step call `forward` (compiled when asked); the bilevel look-ahead
        # and evaluation call the eager module, which shares its parameters.
        self.forward: nn.Module = torch.compile(self.model) if cfg.compile else self.model
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.objective: Objective = OBJECTIVES.get(cfg.objective)
        self.gens = {name: torch.Generator(device=self.device).manual_seed(cfg.seed * 1000 + i)
                     for i, name in enumerate(("data", "attack", "meta"), start=1)}
        self.weighting: Weighting = build_weighting(cfg)
        self.weighting.bind(RunContext(self.model, self.data.x_meta, self.data.y_meta, self.data.num_classes,
                                       self.device, self.gens["attack"], self.gens["meta"], self.amp))
        self.epoch, self.step = 0, 0
        n_train = len(self.data.y_train)
        self.epoch_weights = torch.ones(n_train, device=self.device)  # this epoch's weight per sample
        self.sample_weights: list[torch.Tensor] = []                  # one (n_train,) CPU tensor per epoch
        self.noisy_mask = None
        if len(self.data.noisy_idx):
            self.noisy_mask = torch.zeros(n_train, dtype=torch.bool, device=self.device)
            self.noisy_mask[self.data.noisy_idx] = True
        self.trace_idx = fixed_subset(n_train, TRACE_SIZE, cfg.seed).to(self.device)
        self.trace: list[dict[str, list[float]]] = []                 # Fig. 5, one entry per epoch
        self.weight_maps: list[dict[str, Any]] = []                   # map snapshots (weight_maps.py)
        self.map_epochs = set(snapshot_epochs(cfg)) if self.weight_net is not None else set()
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {VAL_PGD_ACC: -1.0, "epoch": 0, "model": None, "weight_net": None}

    @property
    def amp(self) -> bool:
        return self.cfg.amp and self.device.type == "cuda"

    @property
    def weight_net(self) -> WeightNet | None:
        return self.weighting.weight_net

    # ----- one step --------------------------------------------------------------------------
    def autocast(self):
        """bf16 autocast for the attack loops only (the meta-gradient stays in fp32)."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)

    def craft(self, x: torch.Tensor, y: torch.Tensor, active: bool):
        cfg = self.cfg
        setting = AttackSetting(self.forward, cfg.norm, cfg.eps, cfg.pgd_steps, cfg.pgd_step_size,
                                self.gens["attack"], want_kappa=self.weighting.needs_kappa,
                                loss_fn=self.weighting.attack_loss if active else None)
        with self.autocast():
            return self.objective.craft(setting, x, y)

    def weights_for(self, terms, x, x_adv, y, kappa, active: bool, lr: float):
        """(loss-scale weights or None for uniform, raw weights or None)."""
        if not active:
            return None, None
        return self.weighting.batch_weights(StepInputs(x, x_adv, y, terms, self.objective.terms, kappa, self.epoch,
                                                       lr, self.step))

    def train_step(self, x: torch.Tensor, y: torch.Tensor, lr: float, sums: dict[str, torch.Tensor],
                   idx: torch.Tensor | None = None) -> None:
        """One step on batch (x, y); `idx` (the batch's training-set indices) records its weights."""
        active = self.epoch >= self.cfg.burn_in_epochs
        if self.cfg.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        x_adv, kappa = self.craft(x, y, active)
        self.model.train()
        terms = self.objective.terms(self.forward, x, x_adv, y, self.cfg.trades_beta)
        w, raw = self.weights_for(terms, x, x_adv, y, kappa, active, lr)
        loss = combine(terms, w)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        if idx is not None and w is not None:
            self.epoch_weights[idx] = as_mean_one(w)
        accumulate(sums, loss.detach() * len(y), len(y), w, raw)

    # ----- one epoch -------------------------------------------------------------------------
    def train_epoch(self, progress) -> dict[str, float]:
        cfg, data = self.cfg, self.data
        lr = lr_at(cfg, self.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        sums: dict[str, torch.Tensor] = {}
        self.epoch_weights.fill_(1.0)
        self.weighting.start_epoch()
        self._sync()
        start = time.perf_counter()
        batches = batch_indices(len(data.y_train), cfg.batch_size, generator=self.gens["data"], device=self.device)
        for idx in progress(batches):
            x, y = data.x_train[idx], data.y_train[idx]
            if data.augment:
                x = augment_crop_flip(x, self.gens["data"])
            self.train_step(x, y, lr, sums, idx)
        self._sync()
        elapsed = time.perf_counter() - start
        if self.noisy_mask is not None:
            sums.update(noise_weight_means(self.epoch_weights, self.noisy_mask))
        sums.update(self.weighting.epoch_sums())
        metrics = finish_epoch(sums)  # the epoch's one host read (with the per-sample weights' copy below)
        self.sample_weights.append(self.epoch_weights.to("cpu", copy=True))
        metrics.update(lr=lr, epoch_time_s=elapsed)
        if not math.isfinite(metrics[TRAIN_LOSS]):
            raise NonFiniteLossError(
                f"training loss became {metrics[TRAIN_LOSS]} in epoch {self.epoch} "
                f"(method {cfg.method}, lr {lr}); lower lr or check the inputs")
        return metrics

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def validate(self) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """Held-out validation: clean and PGD accuracy, the means of `holdout_correct`
        (bilaw/eval/per_point.py: the evaluation's PGD steps, step eps/4, the same random starts
        every epoch), and those per-point results."""
        points = holdout_correct(self.model, self.cfg, self.data)
        n = max(len(self.data.y_holdout), 1)  # exact count / N
        return {VAL_CLEAN_ACC: points["clean"].sum().item() / n,
                VAL_PGD_ACC: points["pgd"].sum().item() / n}, points

    def update_best(self, metrics: dict[str, Any], holdout: dict[str, torch.Tensor]) -> None:
        """Keep the state (and its per-point held-out results) of the best held-out PGD accuracy."""
        if metrics[VAL_PGD_ACC] > self.best[VAL_PGD_ACC]:
            self.best = {VAL_PGD_ACC: metrics[VAL_PGD_ACC], "epoch": metrics["epoch"],
                         "model": _cpu_state(self.model),
                         "weight_net": None if self.weight_net is None else _cpu_state(self.weight_net),
                         "holdout": holdout}
        metrics[BEST_VAL_PGD_ACC] = self.best[VAL_PGD_ACC]

    # ----- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(), "epoch": self.epoch, "step": self.step,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "weight_net": None, "meta_optimizer": None, "meta_batches": None, **self.weighting.state_dict(),
            "rng": rng_state(self.gens), "best": self.best, "history": self.history,
            "sample_weights": torch.stack(self.sample_weights) if self.sample_weights else None,
            "trace": self.trace, "weight_maps": self.weight_maps, EPOCHS_FROM: 1,  # bilaw/epochs.py
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = renumbered_checkpoint(state)  # one written before epochs were counted from 1
        _check_same_config(state["config"], self.cfg)
        self.epoch, self.step = state["epoch"], state["step"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.weighting.load_state_dict(state)
        # the meta generator is restored with the learned weighting's meta batches; the rest here
        set_rng_state(state["rng"], {k: g for k, g in self.gens.items() if k != "meta"})
        self.best, self.history = state["best"], list(state["history"])
        weights = state.get("sample_weights")
        self.sample_weights = [] if weights is None else list(weights.unbind(0))
        self.trace, self.weight_maps = list(state.get("trace") or []), list(state.get("weight_maps") or [])


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _check_same_config(saved: dict[str, Any], cfg: TrainConfig) -> None:
    diff = config_differences(saved, cfg, RESUME_FREE_KEYS)
    if diff:
        shown = ", ".join(f"{k}: checkpoint {old!r} vs now {new!r}" for k, old, new in diff)
        raise ConfigError([f"the checkpoint was written by a different config ({shown}); "
                           f"use another checkpoint folder or the same config"])


def train(
    cfg: TrainConfig,
    callback: EpochCallback | None = None,
    *,
    checkpoint_dir: str | Path | None = None,
    stop_after: int | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    data: DataBundle | None = None,
) -> TrainResult:
    """Train one config; returns the best state's model and its test metrics.

    callback(metrics, checkpoint_dir) runs after each epoch, once the epoch's checkpoint is on
    disk. With `checkpoint_dir` holding a checkpoint, training resumes from it exactly (same
    config required; a damaged one falls back to checkpoint.prev.pt, with a warning).
    `stop_after=k` stops after epoch k (for tests and time-sliced runs: the schedule still
    follows `cfg.epochs`). `progress`: a tqdm bar per epoch (default: on a terminal). `log`:
    where the per-epoch lines go (default: print when progress is shown)."""
    cfg = cfg.resolved()
    run = RunState(cfg, data)
    ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    progress = sys.stderr.isatty() if progress is None else progress
    log = log if log is not None else (print if progress else None)
    say = log or _print_stderr  # warnings about the run reach its log even without per-epoch lines
    if ckpt is not None:
        resume_checkpoint(ckpt, run.load_state_dict, run.device, say)
    wrap = batch_progress(progress, run)
    last = cfg.epochs if stop_after is None else min(stop_after, cfg.epochs)
    finish = functools.cache(lambda: _finish_run(run, say))  # the one place a run is finished
    while run.epoch < last and not _early_stopped(run):
        metrics = {"epoch": run.epoch + 1, **run.train_epoch(wrap)}  # counted from 1 (bilaw/epochs.py)
        start = time.perf_counter()
        scores, holdout = run.validate()
        metrics.update(scores)
        if cfg.analysis_samples > 0:
            trace = trace_weights(run, run.trace_idx)
            if trace is not None:
                run.trace.append(trace)
        if run.epoch in run.map_epochs:
            snapshot = map_snapshot(run)
            run.weight_maps.append(snapshot)
            metrics.update(weight_map_auroc=snapshot["auroc"], weight_map_auroc_init=snapshot["auroc_init"])
        metrics["eval_time_s"] = time.perf_counter() - start  # validation and the Fig. 5 trace
        run.update_best(metrics, holdout)
        run.history.append(metrics)
        if run.weight_net is not None and collapsed_epoch(run.history, cfg.burn_in_epochs) == metrics["epoch"]:
            say(collapse_message(metrics["epoch"], metrics["weight_std"]))
        run.epoch += 1
        if ckpt is not None:
            save_checkpoint(run.state_dict(), ckpt, keep_previous=True)
        if log:
            log(format_epoch(metrics, cfg.epochs))
        finished = run.epoch >= cfg.epochs or _early_stopped(run)
        if cfg.plot_every and cfg.plots and run.epoch % cfg.plot_every == 0 and not finished and ckpt is not None:
            _draw_interim_plots(run, ckpt.parent / "plots")
        # the last report (not its history entry) adds the test metrics and FINISHED: a scheduler may stop after it
        report = {**metrics, **(final_report(finish().final) if finished else {})}
        if callback is not None:
            callback(report, ckpt.parent if ckpt is not None else None)
    return finish()


_print_stderr = functools.partial(print, file=sys.stderr, flush=True)


def _early_stopped(run: RunState) -> bool:
    p = run.cfg.early_stop_patience
    return p > 0 and run.best["epoch"] > 0 and run.epoch - run.best["epoch"] >= p


def _finish_run(run: RunState, say: Callable[[str], None] = _print_stderr) -> TrainResult:
    """Test metrics of the last state (clean, PGD) and of the best state (clean, PGD, AA), and
    for a weight net whether its weights collapsed or faded (`bilaw/methods/weight_health.py`)."""
    cfg, d = run.cfg, run.data
    start = time.perf_counter()
    analysis = collect(run, run.sample_weights, cfg.analysis_samples) if cfg.analysis_samples > 0 else None
    last = evaluate_model(run.model, d.x_test, d.y_test, num_classes=d.num_classes, norm=cfg.norm, eps=cfg.eps,
                          pgd_steps=cfg.eval_pgd_steps, seed=cfg.seed, batch_size=cfg.eval_batch_size, per_point=True)
    if run.best["model"] is not None:
        run.model.load_state_dict(run.best["model"])
        if run.weight_net is not None:
            run.weight_net.load_state_dict(run.best["weight_net"])
    best = evaluate_model(run.model, d.x_test, d.y_test, num_classes=d.num_classes, norm=cfg.norm, eps=cfg.eps,
                          pgd_steps=cfg.eval_pgd_steps, aa_samples=min(cfg.aa_samples, len(d.y_test)),
                          aa_version="custom" if cfg.aa_attacks else cfg.aa_version, aa_attacks=cfg.aa_attacks,
                          aa_n_iter=cfg.aa_n_iter, seed=cfg.seed, batch_size=cfg.eval_batch_size, per_point=True)
    last_points = last.pop("points")
    points = {"test": {**best.pop("points"), "last_clean": last_points["clean"], "last_pgd": last_points["pgd"]},
              "holdout": holdout_points(run)}
    final = {TEST_CLEAN_ACC: best["clean_acc"], TEST_PGD_ACC: best["pgd_acc"],
             LAST_TEST_CLEAN_ACC: last["clean_acc"], LAST_TEST_PGD_ACC: last["pgd_acc"],
             "best_epoch": run.best["epoch"], "epochs_trained": run.epoch,
             "test_per_class_pgd_acc": best["per_class_pgd_acc"], "test_adv_confusion": best["adv_confusion"]}
    if run.history:  # robust overfitting: how far held-out PGD accuracy fell after its best epoch
        final[ROBUST_OVERFIT_GAP] = run.best[VAL_PGD_ACC] - run.history[-1][VAL_PGD_ACC]
    final["test_points"] = len(d.y_test)  # what the accuracies' sampling error depends on
    if "aa_acc" in best:
        final[TEST_AA_ACC] = best["aa_acc"]
        final[TEST_PGD_ACC_AA_SUBSET] = best["pgd_acc_aa_subset"]
        final["aa_points"] = min(cfg.aa_samples, len(d.y_test))
        final.update(masking_check(points["test"]["pgd"], points["test"]["aa"], cfg.masking_gap))
        if best["aa_warnings"]:  # AutoAttack's own checks doubt its number (bilaw/eval/autoattack.py)
            final["autoattack_warnings"] = best["aa_warnings"]
            for message in best["aa_warnings"]:
                say(f"AutoAttack's check: {message}")
    final.update({f"test_pgd_acc_class_{k}": v for k, v in enumerate(best["per_class_pgd_acc"]) if v == v})
    if analysis is not None and not run.weighting.uniform:
        auroc = weight_auroc(analysis["weights"], analysis["misclassified_adv"])
        if auroc == auroc:
            final["weight_pgd_auroc"] = auroc
    if run.weight_maps:  # the last snapshot's AUROCs: the current and the initial net's
        final.update({f"weight_map_{k}": run.weight_maps[-1][k] for k in ("auroc", "auroc_init")})
    if run.weight_net is not None:
        health, warning = health_warning(run.history, cfg.burn_in_epochs, is_learned(cfg.weighting))
        final.update(health)
        if warning:
            say(warning)
    final["test_eval_time_s"] = time.perf_counter() - start
    run.model.eval()
    return TrainResult(cfg, run.history, final, run.model, run.weight_net,
                       best_state={"model": run.best["model"], "weight_net": run.best["weight_net"],
                                   "epoch": run.best["epoch"], "input_shape": list(d.input_shape),
                                   "num_classes": d.num_classes},
                       analysis=analysis,
                       sample_weights=torch.stack(run.sample_weights) if run.sample_weights else None,
                       trace=list(run.trace), per_point=points, weight_maps=list(run.weight_maps),
                       data_record=dict(d.record))


def _draw_interim_plots(run: RunState, folder: Path) -> None:
    """`plot_every`: the plots at the current state, overwritten each time (the trainer's own
    RNG streams and BN statistics are untouched)."""
    from bilaw.analysis.plots import plot_curves, write_plots

    plot_curves(folder, run.history)
    analysis = collect(run, run.sample_weights, run.cfg.analysis_samples) if run.cfg.analysis_samples else None
    if analysis is not None:
        write_plots(folder, analysis=analysis, history=run.history, trace=run.trace, final=None)
