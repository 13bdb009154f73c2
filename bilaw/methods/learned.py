"""The learned weightings as plug-ins: BiLAW (a weight net trained by the bilevel step) and the
non-parametric gradient-alignment weights (docs/methods.md sec. bilaw, sec. nonparam).

They answer the trainer's one question, `batch_weights(step)`, like the heuristic weightings;
what makes them learned is the state they own once `bind` gives them the run's model and data:
the meta-validation batches, the validation attack and, for BiLAW, the weight net with its
optimiser. Their checkpoint entries keep the names stored checkpoints use (`weight_net`,
`meta_optimizer`, `meta_batches`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bilaw.data.datasets import CyclingBatches
from bilaw.methods.bilevel import (TrainBatch, ValAttack, bilaw_meta_step, bilaw_weights, build_meta_optimizer,
                                   margin_features, nonparam_weights)
from bilaw.methods.margins import MarginSources, compute_margin_input, margin_input_dim
from bilaw.methods.weight_learning import MapStatistics
from bilaw.methods.weighting import WEIGHTINGS, StepInputs, Weighting, WeightNet, as_mean_one, normalize_sum_one

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


def seeded_weight_net(cfg: Any, ctx: RunContext) -> WeightNet:
    """BiLAW's weight net at its seeded initialisation (its own stream, not the classifier's)."""
    gen = torch.Generator().manual_seed(cfg.seed + WEIGHT_NET_SEED_OFFSET)
    return WeightNet(margin_input_dim(cfg.margin_input, ctx.num_classes), cfg.weight_net_hidden,
                     generator=gen).to(ctx.device)


class _WeightNetMap:
    """What every weighting by a weight net shares: the net, a frozen copy of its initial state,
    the map from logits to the net's input, and the per-epoch learning statistics
    (bilaw/methods/weight_learning.py) on the batches it weighted."""

    net: WeightNet | None
    init_net: WeightNet | None
    map_stats: MapStatistics
    cfg: Any

    def _bind_net(self, ctx: RunContext) -> None:
        self.net = seeded_weight_net(self.cfg, ctx)
        self.init_net = copy.deepcopy(self.net).requires_grad_(False)
        self.map_stats = MapStatistics()

    def _weigh(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's weights from the current net, recorded beside the initial net's."""
        with torch.no_grad():
            w, raw = bilaw_weights(self.net, feats)
            self.map_stats.add(w, bilaw_weights(self.init_net, feats)[0])
        return w, raw

    def map_inputs(self, y: torch.Tensor, logits_clean: torch.Tensor, logits_adv: torch.Tensor,
                   logits: torch.Tensor | None = None) -> torch.Tensor:
        """The net's input for samples with these logits; the margin is read from `logits`
        (default: the clean or the adversarial logits, as `margin_on` says)."""
        if logits is None:
            logits = logits_clean if self.cfg.margin_on == "clean" else logits_adv
        sources = MarginSources(
            probs=F.softmax(logits, 1), y=y,
            robust_loss=F.cross_entropy(logits_adv, y, reduction="none"),
            clean_loss=F.cross_entropy(logits_clean, y, reduction="none"))
        return compute_margin_input(self.cfg.margin_input, sources)

    def map_weights(self, feats: torch.Tensor, initial: bool = False) -> torch.Tensor:
        """Mean-1 weights of the current (or the initial) net over the samples of `feats`."""
        return as_mean_one(normalize_sum_one((self.init_net if initial else self.net)(feats)))

    def on_subset(self, y, logits, logits_clean, logits_adv, kappa, epoch) -> torch.Tensor | None:
        with torch.no_grad():
            return self.map_weights(self.map_inputs(y, logits_clean, logits_adv, logits))

    def _map_epoch_sums(self) -> dict[str, torch.Tensor]:
        return self.map_stats.epoch_sums(self.net, self.init_net)

    @property
    def weight_net(self) -> WeightNet | None:
        return self.net


@dataclass
class BiLAWWeighting(_WeightNetMap, _Learned):
    """A weight net maps each sample's margin input to its weight; a meta step (every
    `meta_interval` steps) moves the net along the look-ahead validation loss's gradient."""

    net: WeightNet | None = field(default=None, repr=False)
    init_net: WeightNet | None = field(default=None, repr=False)
    optimizer: torch.optim.Optimizer | None = field(default=None, repr=False)
    grad_norms: list[torch.Tensor] = field(default_factory=list, repr=False)
    map_stats: MapStatistics = field(default_factory=MapStatistics, repr=False)

    def bind(self, ctx: RunContext) -> None:
        super().bind(ctx)
        self._bind_net(ctx)
        cfg = self.cfg
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
        return self._weigh(feats)

    def start_epoch(self) -> None:
        self.grad_norms.clear()
        self.map_stats.clear()

    def epoch_sums(self) -> dict[str, torch.Tensor]:
        sums = self._map_epoch_sums()
        if self.grad_norms:  # none in a burn-in epoch
            sums["meta_grad_norm"] = torch.stack(self.grad_norms).mean()
        return sums

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "weight_net": self.net.state_dict(),
                "meta_optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["weight_net"])
        self.optimizer.load_state_dict(state["meta_optimizer"])
        super().load_state_dict(state)


@dataclass
class FrozenBiLAWWeighting(_WeightNetMap, Weighting):
    """The control for BiLAW: its weight net at the same seeded initialisation, never
    meta-trained. It weights by margin exactly as an untrained BiLAW would, with no meta step
    (no validation batches, no look-ahead), so it costs what AT costs plus the clean forward the
    margins need. It answers: is it the learning, or any smooth reweighting by margin?"""

    cfg: Any = None
    model: nn.Module | None = field(default=None, repr=False)
    net: WeightNet | None = field(default=None, repr=False)
    init_net: WeightNet | None = field(default=None, repr=False)
    map_stats: MapStatistics = field(default_factory=MapStatistics, repr=False)

    def bind(self, ctx: RunContext) -> None:
        self.model = ctx.model
        self._bind_net(ctx)
        self.net.requires_grad_(False)

    def batch_weights(self, step: StepInputs) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        cfg = self.cfg
        return self._weigh(margin_features(self.model, step.x, step.y, step.terms, cfg.margin_input, cfg.margin_on))

    def start_epoch(self) -> None:
        self.map_stats.clear()

    def epoch_sums(self) -> dict[str, torch.Tensor]:
        return self._map_epoch_sums()

    def state_dict(self) -> dict[str, Any]:
        return {"weight_net": self.net.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["weight_net"])


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


# The frozen control trains on what BiLAW trains on (the validation sets held out), so the two
# differ only in the learning.
@WEIGHTINGS.register("bilaw_frozen", holds_out_validation=True)
def _bilaw_frozen(cfg) -> Weighting:
    return FrozenBiLAWWeighting("bilaw_frozen", cfg=cfg)


@WEIGHTINGS.register("nonparam", learned=True)
def _nonparam(cfg) -> Weighting:
    return NonParamWeighting("nonparam", cfg=cfg)
