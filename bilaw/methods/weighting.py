"""Sample weightings: none, gairat, wmmr, mail (heuristic formulas), bilaw (the learned weight
net), bilaw_frozen (its control: the same net never trained) and nonparam (gradient alignment,
computed in `bilevel.py`).

Every weighting returns weights on the *mean-1 loss scale*: the trainer's loss is
mean_i(w_i * loss_i), so uniform weights reproduce the unweighted method. Each weighting owns its
normalisation (docs/methods.md sec. gairat, wmmr, mail and A1):
- gairat: w~ / mean(w~) (GAIRAT's B * w~ / sum w~), detached;
- mail:   3 * sigmoid(-gamma (m - beta)), not batch-normalised, detached (MAIL's code);
- wmmr:   exp(-alpha m), not normalised and not detached (WMMR's code) unless
          `wmmr_normalize` / `wmmr_detach`;
- bilaw, bilaw_frozen, nonparam: sum-1 weights (the paper's Sec. 3.2) times B, i.e. B * w~ / (sum w~ + guard).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from bilaw.methods.margins import binary_margin
from bilaw.registry import Registry

SUM_EPS = 1e-12  # keeps sum-1 normalisation finite in low precision (docs/methods.md A1)


# ----- normalisation -------------------------------------------------------------------------
def normalize_sum_one(w: torch.Tensor, eps: float = SUM_EPS) -> torch.Tensor:
    """w / (sum w + eps): BiLAW's per-batch normalisation (sum 1)."""
    return w / (w.sum() + eps)


def normalize_guarded(w: torch.Tensor) -> torch.Tensor:
    """L2RW's guard: w / (sum w + [sum w == 0]); all-zero weights stay zero instead of NaN."""
    total = w.sum()
    return w / (total + (total == 0).to(w.dtype))


def normalize_mean_one(w: torch.Tensor) -> torch.Tensor:
    """w * B / sum w (GAIRAT's normalisation, mean 1)."""
    return w * (w.numel() / w.sum())


# ----- heuristic formulas ------------------------------------------------------------------------
def gairat_weights(kappa: torch.Tensor, steps: int, lam: float, fn: str = "tanh") -> torch.Tensor:
    """GAIRAT's unnormalised weight from kappa (its GAIR.py): with h = floor(K/2),
    tanh: (1 + tanh(lam + 5 (h - kappa) / h)) / 2; sigmoid: sigmoid(lam + 5 (h - kappa) / h);
    discrete: (K + 1 - kappa) / (K + 1). lam = +inf gives all ones (plain AT).
    h is taken as at least 1 so that K = 1 stays defined."""
    if fn not in ("tanh", "sigmoid", "discrete"):
        raise ValueError(f"unknown gairat_weight_fn {fn!r}; valid: discrete, sigmoid, tanh")
    kappa = kappa.float()
    if fn == "discrete":
        return (steps + 1 - kappa) / (steps + 1)
    if math.isinf(lam) and lam > 0:
        return torch.ones_like(kappa)
    h = max(steps // 2, 1)
    z = lam + 5.0 * (h - kappa) / h
    if fn == "tanh":
        return torch.sigmoid(2 * z)  # = (1 + tanh z) / 2, without cancellation to 0 for z << 0
    return torch.sigmoid(z)


def gairat_lambda(epoch: int, epochs: int, cfg) -> float:
    """GAIRAT's Lambda at 0-based `epoch` after burn-in (its adjust_Lambda, evaluated at epoch + 1).

    fixed: Lambda; linear: Lambda_max - (e/E)(Lambda_max - Lambda); piecewise: the schedule the
    repo intends for short runs (Lambda, then Lambda - 2 from 60% of training; its elif order
    makes that stage unreachable there, so the repo behaves as `fixed`).
    """
    e = epoch + 1
    if cfg.gairat_schedule == "linear":
        return cfg.gairat_lambda_max - (e / epochs) * (cfg.gairat_lambda_max - cfg.gairat_lambda)
    if cfg.gairat_schedule == "piecewise" and e >= 0.6 * epochs:
        return cfg.gairat_lambda - 2.0
    return cfg.gairat_lambda


def mail_weights(margin: torch.Tensor, gamma: float, beta: float) -> torch.Tensor:
    """MAIL: sigmoid(-gamma (m - beta)) on the adversarial margin (the paper's notation), unnormalised."""
    return torch.sigmoid(-gamma * (margin - beta))


def wmmr_weights(margin: torch.Tensor, alpha: float) -> torch.Tensor:
    """WMMR: exp(-alpha m) on the adversarial margin, in [e^-alpha, e^alpha]."""
    return torch.exp(-alpha * margin)


# ----- the weight net ------------------------------------------------------------------------------
class WeightNet(nn.Module):
    """BiLAW's omega_mu: MLP from the margin input (B, d) through `hidden` ReLU layers to one
    sigmoid output (B,). hidden=(128,) is the paper's net; the capacity ablation uses
    (64,), (64, 64), (256,).

    With `generator`, the layers' default initialisation (kaiming-uniform weights, uniform
    biases) is drawn from it instead of the global generator, which stays untouched: the values
    equal those of a net built after `torch.manual_seed(s)` when the generator is seeded with s."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...] = (128,), generator: torch.Generator | None = None) -> None:
        super().__init__()
        device = "meta" if generator is not None else None  # meta layers draw nothing at construction
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h, device=device), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1, device=device))
        self.net = nn.Sequential(*layers)
        self.in_dim, self.hidden = in_dim, tuple(hidden)
        if generator is not None:
            self.to_empty(device="cpu")
            _init_linear_layers(self, generator)

    def forward(self, margin_input: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(margin_input)).squeeze(1)


def _init_linear_layers(module: nn.Module, generator: torch.Generator) -> None:
    """nn.Linear's own default initialisation, layer by layer, drawn from `generator`."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
                if layer.bias is not None:
                    bound = 1 / math.sqrt(layer.in_features) if layer.in_features > 0 else 0.0
                    nn.init.uniform_(layer.bias, -bound, bound, generator=generator)


# ----- the heuristic weightings as plug-ins ----------------------------------------------------------
@dataclass
class WeightInputs:
    """What a heuristic weighting may read for one batch.

    y: (B,); logits_adv: (B, k) training forward on the attacked inputs (with graph: WMMR may
    differentiate through it); kappa: (B,) from the training attack (GAIRAT); epoch: 0-based."""

    y: torch.Tensor
    logits_adv: torch.Tensor
    kappa: torch.Tensor | None = None
    epoch: int = 0


@dataclass
class WeightOutput:
    """w: (B,) loss-scale weights (mean(w * loss) is the loss); raw: (B,) before normalisation."""

    w: torch.Tensor
    raw: torch.Tensor


@dataclass
class StepInputs:
    """What the trainer hands a weighting for one training step: the batch, its attacked copy,
    the objective's per-sample terms and the function that computes them, GAIRAT's kappa (when
    asked for), the epoch, the current lr and the step count."""

    x: torch.Tensor
    x_adv: torch.Tensor
    y: torch.Tensor
    terms: Any
    terms_fn: Callable[..., Any]
    kappa: torch.Tensor | None
    epoch: int
    lr: float
    step: int


@dataclass
class Weighting:
    """Gives each training batch its weights: `batch_weights(step) -> (loss-scale weights, raw
    weights)`, or (None, None) for uniform. A heuristic weighting is its `compute` formula;
    `needs_kappa` asks the training attack for GAIRAT's kappa; `attack_loss` replaces PGD's
    objective (WMMR attacks its weighted loss); `uniform` marks the unweighted baseline. Learned
    weightings (bilaw/methods/learned.py) override `bind` (take the run's model and data), the epoch hooks
    and the checkpoint state."""

    name: str
    compute: Callable[[WeightInputs], WeightOutput] | None = None
    needs_kappa: bool = False
    attack_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    uniform: bool = False
    per_sample_formula: bool = True  # its weight of any sample can be evaluated (analysis, Fig. 5)

    def bind(self, ctx: Any) -> None:
        """Take what the weighting needs from its run (nothing, for a formula)."""

    def batch_weights(self, step: StepInputs) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.uniform:
            return None, None
        out = self.compute(WeightInputs(step.y, step.terms.logits_adv, step.kappa, step.epoch))
        return out.w, out.raw

    def on_subset(self, y: torch.Tensor, logits: torch.Tensor, logits_clean: torch.Tensor,
                  logits_adv: torch.Tensor, kappa: torch.Tensor | None, epoch: int) -> torch.Tensor | None:
        """The weights (mean 1 over the subset) this weighting gives samples whose logits are
        `logits`; None where there is no per-sample formula."""
        if self.uniform or not self.per_sample_formula:
            return None
        with torch.no_grad():
            return as_mean_one(self.compute(WeightInputs(y, logits, kappa, epoch)).w)

    def start_epoch(self) -> None:
        """Called before each training epoch."""

    def epoch_sums(self) -> dict[str, torch.Tensor]:
        """Device-side values of the epoch just trained, added to its metrics."""
        return {}

    @property
    def weight_net(self) -> nn.Module | None:
        """The learned network whose state is kept with the best model, if any."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


WEIGHTINGS: Registry[Callable[..., Weighting]] = Registry("weighting")


def _uniform(inputs: WeightInputs) -> WeightOutput:
    ones = torch.ones(inputs.y.shape[0], device=inputs.y.device)
    return WeightOutput(ones, ones)


@WEIGHTINGS.register("none")
def _none(cfg) -> Weighting:
    return Weighting("none", _uniform, uniform=True)


# `burn_in(epochs)`: unweighted epochs before the weighting starts (docs/methods.md A13). GAIRAT's repo switches at
# epoch 60 for runs of >= 110 epochs, else 30 (30% of a 100-epoch run); MAIL's weights start
# after the first 60% of training (75/120 or 60/100 in its repo). The rest start at once.
@WEIGHTINGS.register("gairat", burn_in=lambda epochs: 60 if epochs >= 110 else int(round(0.3 * epochs)))
def _gairat(cfg) -> Weighting:
    def compute(inputs: WeightInputs) -> WeightOutput:
        lam = gairat_lambda(inputs.epoch, cfg.epochs, cfg)
        raw = gairat_weights(inputs.kappa, cfg.pgd_steps, lam, cfg.gairat_weight_fn)
        return WeightOutput(normalize_mean_one(raw), raw)

    return Weighting("gairat", compute, needs_kappa=True)


@WEIGHTINGS.register("mail", burn_in=lambda epochs: int(round(0.6 * epochs)))
def _mail(cfg) -> Weighting:
    def compute(inputs: WeightInputs) -> WeightOutput:
        margin = binary_margin(F.softmax(inputs.logits_adv.detach(), 1), inputs.y)
        raw = mail_weights(margin, cfg.mail_gamma, cfg.mail_beta)
        return WeightOutput(3.0 * raw, raw)  # MAIL's code scales by a constant 3

    return Weighting("mail", compute)


@WEIGHTINGS.register("wmmr")
def _wmmr(cfg) -> Weighting:
    def weights_of(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = logits.detach() if cfg.wmmr_detach else logits
        return wmmr_weights(binary_margin(F.softmax(logits, 1), y), cfg.wmmr_alpha)

    def compute(inputs: WeightInputs) -> WeightOutput:
        raw = weights_of(inputs.logits_adv, inputs.y)
        w = normalize_mean_one(raw) if cfg.wmmr_normalize else raw
        return WeightOutput(w, raw.detach())

    def attack_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # WMMR's PGD (mode='margin') ascends the same exp-weighted cross-entropy.
        return (wmmr_weights(binary_margin(F.softmax(logits, 1), y), cfg.wmmr_alpha)
                * F.cross_entropy(logits, y, reduction="none")).sum()

    return Weighting("wmmr", compute, attack_loss=attack_loss)


def is_learned(weighting: str) -> bool:
    """Whether `weighting` was registered as learned (it trains on the meta-validation set)."""
    return bool(WEIGHTINGS.facts(weighting).get("learned", False))


def holds_out_validation(weighting: str) -> bool:
    """Whether a run of `weighting` trains without the two validation sets whatever
    `baselines_full_train` says: a learned weighting learns from them, and a control registered
    with `holds_out_validation` trains on exactly what such a weighting trains on."""
    return is_learned(weighting) or bool(WEIGHTINGS.facts(weighting).get("holds_out_validation", False))


def unread_keys(weighting: str) -> frozenset[str]:
    """Config keys that another weighting registered as its own (`own_keys`): a run of
    `weighting` never reads them, so their values do not make two of its configs different runs."""
    return frozenset(k for name in WEIGHTINGS.names() if name != weighting
                     for k in WEIGHTINGS.facts(name).get("own_keys", ())) - set(
        WEIGHTINGS.facts(weighting).get("own_keys", ()))


def build_weighting(cfg) -> Weighting:
    return WEIGHTINGS.get(cfg.weighting)(cfg)


def as_mean_one(w: torch.Tensor) -> torch.Tensor:
    """The loss-scale weights rescaled to mean 1 (how every weighting's statistics are logged)."""
    w = w.detach().float()
    return w / w.mean().clamp_min(1e-12)
