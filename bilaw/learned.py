"""The learned weightings as plug-ins: BiLAW (a weight net trained by the bilevel step) and the
non-parametric gradient-alignment weights (docs/methods.md sec. bilaw, sec. nonparam).

They answer the trainer's one question, `batch_weights(step)`, like the heuristic weightings;
what makes them learned is the state they own once `bind` gives them the run's model and data:
the meta-validation batches, the validation attack and, for BiLAW, the weight net with its
optimiser. Their checkpoint entries keep the names stored checkpoints use (`weight_net`,
`meta_optimizer`, `meta_batches`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .bilevel import (TrainBatch, ValAttack, bilaw_meta_step, bilaw_weights, build_meta_optimizer, margin_features,
                      nonparam_weights)
from .data import CyclingBatches
from .margins import MarginSources, compute_margin_input, margin_input_dim
from .weighting import WEIGHTINGS, StepInputs, Weighting, WeightNet, as_mean_one, normalize_sum_one

WEIGHT_NET_SEED_OFFSET = 7  # the weight net's init draws from its own stream, not the classifier's


@dataclass
class RunContext:
    """What a learned weighting needs from its run: the classifier, the meta-validation set, the
    device and the run's attack and meta generators."""

    model: nn.Module
    x_meta: torch.Tensor
    y_meta: torch.Tensor
    num_classes: int
    device: torch.device
    attack_generator: torch.Generator
    meta_generator: torch.Generator
    amp: bool = False


@dataclass
class _Learned(Weighting):
    """Shared by both learned weightings: the meta-validation batches and validation attack."""

    cfg: Any = None
    model: nn.Module | None = field(default=None, repr=False)
    meta_batches: CyclingBatches | None = field(default=None, repr=False)
    val_attack: ValAttack | None = field(default=None, repr=False)

    def bind(self, ctx: RunContext) -> None:
        cfg = self.cfg
        self.model = ctx.model
        self.meta_batches = CyclingBatches(ctx.x_meta, ctx.y_meta, cfg.val_batch_size, ctx.meta_generator)
        self.val_attack = ValAttack(cfg.norm, cfg.eps, cfg.val_pgd_steps, cfg.pgd_step_size, ctx.attack_generator,
                                    cfg.val_attack_at, ctx.amp)

    def _meta_step_due(self, step: StepInputs) -> bool:
        return step.step % self.cfg.meta_interval == 0

    def _train_batch(self, step: StepInputs) -> TrainBatch:
        return TrainBatch(step.terms_fn, step.x, step.x_adv, step.y, self.cfg.trades_beta)

    def state_dict(self) -> dict[str, Any]:
        return {"meta_batches": self.meta_batches.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.meta_batches.load_state_dict(state["meta_batches"])


@dataclass
class BiLAWWeighting(_Learned):
    """A weight net maps each sample's margin input to its weight; a meta step (every
    `meta_interval` steps) moves the net along the look-ahead validation loss's gradient."""

    net: WeightNet | None = field(default=None, repr=False)
    optimizer: torch.optim.Optimizer | None = field(default=None, repr=False)
    grad_norms: list[torch.Tensor] = field(default_factory=list, repr=False)

    def bind(self, ctx: RunContext) -> None:
        super().bind(ctx)
        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.seed + WEIGHT_NET_SEED_OFFSET)
        self.net = WeightNet(margin_input_dim(cfg.margin_input, ctx.num_classes), cfg.weight_net_hidden,
                             generator=gen).to(ctx.device)
        self.optimizer = build_meta_optimizer(cfg.meta_optimizer, self.net.parameters(), cfg.meta_lr,
                                              cfg.meta_weight_decay)

    def batch_weights(self, step: StepInputs) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        cfg = self.cfg
        feats = margin_features(self.model, step.x, step.y, step.terms, cfg.margin_input, cfg.margin_on)
        if self._meta_step_due(step):
            x_val, y_val = next(self.meta_batches)
            _, grad_norm = bilaw_meta_step(self.model, self.net, self.optimizer, step.terms, feats, step.lr,
                                           x_val, y_val, self.val_attack, cfg.hypergrad,
                                           self._train_batch(step), cfg.meta_grad_scale)
            self.grad_norms.append(grad_norm)
        with torch.no_grad():
            return bilaw_weights(self.net, feats)

    def start_epoch(self) -> None:
        self.grad_norms.clear()

    def epoch_sums(self) -> dict[str, torch.Tensor]:
        if not self.grad_norms:  # no meta step this epoch (burn-in)
            return {}
        return {"meta_grad_norm": torch.stack(self.grad_norms).mean()}

    def on_subset(self, y, logits, logits_clean, logits_adv, kappa, epoch) -> torch.Tensor | None:
        with torch.no_grad():
            sources = MarginSources(
                probs=F.softmax(logits, 1), y=y,
                robust_loss=F.cross_entropy(logits_adv, y, reduction="none"),
                clean_loss=F.cross_entropy(logits_clean, y, reduction="none"))
            raw = self.net(compute_margin_input(self.cfg.margin_input, sources))
            return as_mean_one(normalize_sum_one(raw))

    @property
    def weight_net(self) -> WeightNet | None:
        return self.net

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "weight_net": self.net.state_dict(),
                "meta_optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["weight_net"])
        self.optimizer.load_state_dict(state["meta_optimizer"])
        super().load_state_dict(state)


@dataclass
class NonParamWeighting(_Learned):
    """Per-sample weights from the alignment of each sample's gradient with the look-ahead
    validation gradient, on the steps where the meta step is due; uniform on the others."""

    per_sample_formula: bool = False  # nothing to evaluate on an arbitrary subset

    def batch_weights(self, step: StepInputs) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if not self._meta_step_due(step):
            return None, None
        x_val, y_val = next(self.meta_batches)
        return nonparam_weights(self.model, step.terms, step.lr, x_val, y_val, self.val_attack, self.cfg.hypergrad,
                                self._train_batch(step))


# Config keys the weight net's meta-optimiser reads and nothing else does: a run of another
# weighting is the same run whatever they hold.
META_OPTIMIZER_KEYS = ("meta_optimizer", "meta_lr", "meta_weight_decay", "meta_grad_scale")


@WEIGHTINGS.register("bilaw", learned=True, own_keys=META_OPTIMIZER_KEYS)
def _bilaw(cfg) -> Weighting:
    return BiLAWWeighting("bilaw", cfg=cfg)


@WEIGHTINGS.register("nonparam", learned=True)
def _nonparam(cfg) -> Weighting:
    return NonParamWeighting("nonparam", cfg=cfg)
