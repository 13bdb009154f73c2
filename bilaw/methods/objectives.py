"""Per-sample training objectives: plain, at, trades.

An objective returns its per-sample terms split into the part sample weights scale and the part
they leave alone; the trainer combines them in one place:
    loss = mean_i(w_i * weighted_i) + mean_i(unweighted_i)
with w on the mean-1 scale (uniform weights give the unweighted method exactly).
No reduction happens here, and the same code serves the real step and the bilevel look-ahead
(the model is passed as a callable, possibly a `functional_call` at pseudo parameters).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn import functional as F

from bilaw.eval.attacks import pgd, trades_attack
from bilaw.registry import Registry

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AttackSetting:
    """What a training attack needs besides the batch: the forward it attacks, the budget, its
    RNG, and what the weighting asks of it (GAIRAT's kappa; a loss of its own to ascend)."""

    forward: Forward
    norm: str
    eps: float
    steps: int
    step_size: float
    generator: torch.Generator | None = None
    want_kappa: bool = False
    loss_fn: Callable[..., torch.Tensor] | None = None


def _no_attack(a: AttackSetting, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, None]:
    return x, None


def _pgd_attack(a: AttackSetting, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    out = pgd(a.forward, x, y, norm=a.norm, eps=a.eps, steps=a.steps, step_size=a.step_size,
              generator=a.generator, return_kappa=a.want_kappa, loss_fn=a.loss_fn)
    return out if a.want_kappa else (out, None)


def _trades_attack(a: AttackSetting, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, None]:
    return trades_attack(a.forward, x, norm=a.norm, eps=a.eps, steps=a.steps, step_size=a.step_size,
                         generator=a.generator), None


# The attacks an objective's training inputs are crafted with, by name: each returns
# (x_adv, kappa or None). TRADES' KL attack ignores the weighting's kappa and loss.
TRAINING_ATTACKS: dict[str, Callable[[AttackSetting, torch.Tensor, torch.Tensor],
                                     tuple[torch.Tensor, torch.Tensor | None]]] = {
    "none": _no_attack, "pgd": _pgd_attack, "trades": _trades_attack,
}


@dataclass
class Terms:
    """weighted, unweighted: (B,) per-sample terms; logits_adv: the forward the weights may read
    (the adversarial logits for at/trades, the clean ones for plain); logits_clean when computed."""

    weighted: torch.Tensor
    unweighted: torch.Tensor | None
    logits_adv: torch.Tensor
    logits_clean: torch.Tensor | None = None


@dataclass
class Objective:
    """attack: the name in `TRAINING_ATTACKS` that crafts the inputs;
    terms(f, x, x_adv, y, trades_beta) -> Terms."""

    name: str
    attack: str
    terms: Callable[..., Terms]

    def __post_init__(self) -> None:
        if self.attack not in TRAINING_ATTACKS:
            raise ValueError(f"objective {self.name!r}: unknown training attack {self.attack!r}; "
                             f"known: {', '.join(TRAINING_ATTACKS)}")

    def craft(self, setting: AttackSetting, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The training inputs of batch (x, y) and, where the setting asks for it, kappa."""
        return TRAINING_ATTACKS[self.attack](setting, x, y)


OBJECTIVES: Registry[Objective] = Registry("objective")


def trades_kl(logits_clean: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(p(x) || p(x')), (B,); gradient flows through both sides, as in TRADES."""
    log_p_clean = F.log_softmax(logits_clean, 1)
    log_p_adv = F.log_softmax(logits_adv, 1)
    return (log_p_clean.exp() * (log_p_clean - log_p_adv)).sum(1)


def _plain(f: Forward, x, x_adv, y, trades_beta: float = 0.0) -> Terms:
    logits = f(x)
    return Terms(F.cross_entropy(logits, y, reduction="none"), None, logits, logits)


def _at(f: Forward, x, x_adv, y, trades_beta: float = 0.0) -> Terms:
    logits = f(x_adv)
    return Terms(F.cross_entropy(logits, y, reduction="none"), None, logits)


def _trades(f: Forward, x, x_adv, y, trades_beta: float = 6.0) -> Terms:
    # Two forwards, as TRADES' code: BN sees the clean and the adversarial batch separately.
    logits_clean, logits_adv = f(x), f(x_adv)
    kl = trades_kl(logits_clean, logits_adv)
    return Terms(trades_beta * kl, F.cross_entropy(logits_clean, y, reduction="none"), logits_adv, logits_clean)


OBJECTIVES.register("plain")(Objective("plain", "none", _plain))
OBJECTIVES.register("at")(Objective("at", "pgd", _at))
OBJECTIVES.register("trades")(Objective("trades", "trades", _trades))


def combine(terms: Terms, weights: torch.Tensor | None) -> torch.Tensor:
    """The one place where weights meet losses: mean(w * weighted) + mean(unweighted)."""
    weighted = terms.weighted if weights is None else weights * terms.weighted
    loss = weighted.mean()
    if terms.unweighted is not None:
        loss = loss + terms.unweighted.mean()
    return loss
