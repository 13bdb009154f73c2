"""The bilevel step (the BiLAW paper's Algorithm 1) for BiLAW, and the gradient-alignment weights of the
non-parametric variant (L2RW-style, docs/methods.md A12).

Both share one look-ahead: with per-sample terms l_i(theta) from the real step's forward (train
mode; the only forward that moves BatchNorm running statistics), a pseudo-update
    theta~ = theta - lr * grad_theta mean_i(w_i l_i)        (Eq. 5, differentiable in w)
is taken with `torch.func.functional_call` (no model copy), adversarial validation examples are
crafted at theta~ (or at theta, `val_attack_at=current`), and the unweighted robust validation loss
L_val(theta~) is differentiated into the weights' parameters (Eq. 6). The look-ahead forwards use
cloned buffers that are thrown away, so BN statistics change once per real step (docs/methods.md A8).

Two exact ways to get dL_val/dw (`hypergrad`):
- `double_backward`: differentiate through the pseudo-update (create_graph=True), as MAML.
- `jvp`: Eq. 6's own form. With theta~ = theta - lr/B sum_i w_i grad l_i,
      dL_val/dw_i = -lr/B <grad_theta~ L_val, grad_theta l_i(theta)>,
  and the B alignments are one forward-mode JVP of theta -> (l_1..l_B) along the validation
  gradient. No create_graph memory: one first-order backward and one dual forward.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from bilaw.eval.attacks import pgd
from bilaw.methods.margins import MarginSources, compute_margin_input
from bilaw.methods.objectives import Terms, combine
from bilaw.methods.weighting import WeightNet, normalize_guarded, normalize_sum_one


class AtParameters(nn.Module):
    """The classifier evaluated at other parameters and buffers (for attacks at theta~).

    Train/eval mode propagates to the wrapped model, so `pgd` can switch and restore it."""

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]):
        super().__init__()
        self.model = model
        self.params, self.buffers_ = params, buffers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, (self.params, self.buffers_), (x,))


@dataclass
class ValAttack:
    """How validation examples are crafted: PGD with the training norm and budget."""

    norm: str
    eps: float
    steps: int
    step_size: float
    generator: torch.Generator | None = None
    at: str = "pseudo"                     # "pseudo" (theta~) or "current" (theta_t)
    amp: bool = False                      # bf16 autocast for the attack loop (CUDA only)

    def craft(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.steps == 0:
            return x
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.amp):
            return pgd(model, x, y, norm=self.norm, eps=self.eps, steps=self.steps,
                       step_size=self.step_size, generator=self.generator)


def lookahead_val_loss(
    model: nn.Module, terms: Terms, weights: torch.Tensor, lr: float,
    x_val: torch.Tensor, y_val: torch.Tensor, val_attack: ValAttack,
    x_val_adv: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_val(theta~(w)): the unweighted mean adversarial CE on a validation batch at the
    pseudo-parameters, differentiable in `weights` (Eq. 5-6). Real parameters, their .grad and
    the real BN buffers are left untouched."""
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    grads = torch.autograd.grad(combine(terms, weights), params, create_graph=True)
    pseudo = {n: p - lr * g for n, p, g in zip(names, params, grads)}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    if x_val_adv is None:  # attack theta~ (docs/methods.md A7): parameters detached, the attack needs no graph to mu
        detached = AtParameters(model, {n: p.detach() for n, p in pseudo.items()}, buffers)
        x_val_adv = val_attack.craft(detached, x_val, y_val)
    was_training = model.training
    model.train()  # look-ahead forwards use batch statistics on the cloned buffers (docs/methods.md A8)
    try:
        logits = functional_call(model, (pseudo, buffers), (x_val_adv,))
    finally:
        model.train(was_training)
    return F.cross_entropy(logits, y_val)


@dataclass
class TrainBatch:
    """What the JVP form recomputes the per-sample weighted terms from: the objective's `terms`
    function and the real step's inputs."""

    terms_fn: Callable[..., Terms]
    x: torch.Tensor
    x_adv: torch.Tensor
    y: torch.Tensor
    trades_beta: float


def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def weight_gradient_jvp(
    model: nn.Module, batch: TrainBatch, terms: Terms, weights: torch.Tensor, lr: float,
    x_val: torch.Tensor, y_val: torch.Tensor, val_attack: ValAttack,
    x_val_adv: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL_val(theta~)/dw, L_val) by Eq. 6: a first-order pseudo-update, the validation gradient
    at theta~, and one JVP for the alignments. Equals the double-backward gradient exactly (up to
    float rounding); real parameters, .grad and BN buffers are left untouched."""
    params = _trainable(model)
    names = list(params)
    grads = torch.autograd.grad(combine(terms, weights.detach()), list(params.values()), retain_graph=True)
    pseudo = {n: (params[n] - lr * g).detach().requires_grad_(True) for n, g in zip(names, grads)}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    if x_val_adv is None:
        x_val_adv = val_attack.craft(AtParameters(model, {n: p.detach() for n, p in pseudo.items()}, buffers),
                                     x_val, y_val)
    was_training = model.training
    model.train()
    try:
        with torch.enable_grad():
            val_loss = F.cross_entropy(functional_call(model, (pseudo, buffers), (x_val_adv,)), y_val)
            v = torch.autograd.grad(val_loss, [pseudo[n] for n in names])
        direction = dict(zip(names, v))
        # Forward-mode AD through the real step's forward (train mode, cloned buffers); the dual
        # API rather than torch.func.jvp, which refuses BN's in-place buffer updates.
        train_buffers = {n: b.clone() for n, b in model.named_buffers()}
        with fwAD.dual_level():
            duals = {n: fwAD.make_dual(params[n].detach(), direction[n]) for n in names}
            f = lambda inp: functional_call(model, (duals, train_buffers), (inp,))  # noqa: E731
            out = batch.terms_fn(f, batch.x, batch.x_adv, batch.y, batch.trades_beta).weighted
            align = fwAD.unpack_dual(out).tangent
    finally:
        model.train(was_training)
    return -lr / weights.numel() * align.detach(), val_loss.detach()


def margin_features(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, terms: Terms, margin_input: str, margin_on: str,
) -> torch.Tensor:
    """The weight net's input for a training batch, detached, at theta_t (docs/methods.md A2, A3).

    margin_on=clean: probabilities of the clean inputs in eval mode under no_grad (no BN side
    effects); margin_on=adv: of the training forward on the attacked inputs. robust_loss is the
    cross-entropy of that training forward; clean_loss that of the clean eval-mode forward."""
    need_clean = margin_on == "clean" or margin_input == "loss_diff"
    logits_clean = None
    if need_clean:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            logits_clean = model(x)
        model.train(was_training)
    logits_adv = terms.logits_adv.detach()
    sources = MarginSources(
        probs=F.softmax(logits_clean if margin_on == "clean" else logits_adv, 1).float(),
        y=y,
        robust_loss=F.cross_entropy(logits_adv, y, reduction="none").float(),
        clean_loss=None if logits_clean is None else F.cross_entropy(logits_clean, y, reduction="none").float(),
    )
    return compute_margin_input(margin_input, sources)


def bilaw_weights(weight_net: WeightNet, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss-scale weights B * w~/sum w~, raw w~): sum-1 normalisation (docs/methods.md A1) on the mean-1 scale."""
    raw = weight_net(features)
    return raw.numel() * normalize_sum_one(raw), raw


def bilaw_meta_step(
    model: nn.Module, weight_net: WeightNet, meta_optimizer: torch.optim.Optimizer,
    terms: Terms, features: torch.Tensor, lr: float,
    x_val: torch.Tensor, y_val: torch.Tensor, val_attack: ValAttack,
    hypergrad: str = "double_backward", batch: TrainBatch | None = None, grad_scale: str = "raw",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 lines 5-6: update the weight net with the meta-gradient.

    The meta-gradient carries the classifier's lr as a factor (Eq. 6); `grad_scale="per_lr"`
    divides it by `lr` before the optimiser, so its size does not fall with the lr schedule.
    Returns (L_val, the L2 norm of the meta-gradient before that scaling), both on the device.
    `batch` is needed for hypergrad="jvp"."""
    x_val_adv = val_attack.craft(model, x_val, y_val) if val_attack.at == "current" else None
    weights, _ = bilaw_weights(weight_net, features)
    meta_params = [p for p in weight_net.parameters() if p.requires_grad]
    if hypergrad == "jvp":
        g_w, val_loss = weight_gradient_jvp(model, _need(batch), terms, weights, lr, x_val, y_val,
                                            val_attack, x_val_adv)
        grads = torch.autograd.grad(weights, meta_params, grad_outputs=g_w)
    else:
        val_loss = lookahead_val_loss(model, terms, weights, lr, x_val, y_val, val_attack, x_val_adv)
        grads = torch.autograd.grad(val_loss, meta_params)
    grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    for p, g in zip(meta_params, grads):
        p.grad = g / lr if grad_scale == "per_lr" else g
    meta_optimizer.step()
    meta_optimizer.zero_grad(set_to_none=True)
    return val_loss.detach(), grad_norm.detach()


def build_meta_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The weight net's optimiser by name (`META_OPTIMIZERS`)."""
    return META_OPTIMIZERS[name](params, lr=lr, weight_decay=weight_decay)


# adam: L2 decay added to the gradient (what Adam normalises); adamw: decay applied to the
# parameters directly, whatever the gradient's size; sgd: plain SGD with L2 decay.
META_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
}


def nonparam_weights(
    model: nn.Module, terms: Terms, lr: float, x_val: torch.Tensor, y_val: torch.Tensor, val_attack: ValAttack,
    hypergrad: str = "double_backward", batch: TrainBatch | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient-alignment weights (L2RW, seed Sec. 4 variant 1): eps = 0 per sample,
    w~ = max(-dL_val(theta~(eps))/d eps, 0), normalised with the zero-sum guard.
    Returns (loss-scale weights B * w~/sum, raw w~)."""
    eps = torch.zeros_like(terms.weighted.detach(), requires_grad=True)
    x_val_adv = val_attack.craft(model, x_val, y_val) if val_attack.at == "current" else None
    if hypergrad == "jvp":
        g_eps, _ = weight_gradient_jvp(model, _need(batch), terms, eps, lr, x_val, y_val, val_attack, x_val_adv)
    else:
        val_loss = lookahead_val_loss(model, terms, eps, lr, x_val, y_val, val_attack, x_val_adv)
        (g_eps,) = torch.autograd.grad(val_loss, eps)
    raw = torch.clamp(-g_eps, min=0)
    return raw.numel() * normalize_guarded(raw), raw


def _need(batch: TrainBatch | None) -> TrainBatch:
    if batch is None:
        raise ValueError("hypergrad='jvp' needs the training batch (batch=TrainBatch(...))")
    return batch
