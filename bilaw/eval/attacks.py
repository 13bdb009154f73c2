"""White-box attacks: PGD (l-inf and l2, with GAIRAT's kappa) and the TRADES inner maximisation.

Both attacks run one ascent loop (`_ascend`) over a norm plug-in from `NORMS`; a norm supplies
the random start, the ascent step and the projection onto its eps-ball, so PGD and PGD-L2 are
not two copied loops. Images live in [0, 1]; every iterate is clamped to [0, 1].

Model mode: every attack crafts with the model in eval mode, for every method and both at
training and at evaluation time, as the GAIRAT, MAIL and TRADES codes do (`model.eval()` before
the attack). BatchNorm therefore uses (and never updates) its running statistics while crafting.
Each module's previous train/eval flag is restored afterwards, also when the attack raises.

Gradients are taken with `torch.autograd.grad(loss, x_adv)`, i.e. with respect to the input
only: nothing is accumulated into the parameters' `.grad`, and the backward skips weight
gradients. This loop is ~83% of BiLAW's step time, so it does no host syncs (`.item()`,
`.cpu()`) and updates the iterate in place.

Usage::

    x_adv = pgd(model, x, y, norm="linf", eps=0.031, steps=10)
    x_adv, kappa = pgd(model, x, y, norm="linf", eps=0.031, steps=10, return_kappa=True)
    x_adv = trades_attack(model, x, norm="linf", eps=0.031, steps=10)
"""
from __future__ import annotations

import itertools
import numbers
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bilaw.registry import Registry

__all__ = ["NORMS", "Norm", "eval_mode", "model_device", "pgd", "trades_attack"]

LossFn = Callable[[Tensor, Tensor], Tensor]
_TINY = 1e-12  # guards divisions by a zero gradient / zero perturbation norm


# ---------------------------------------------------------------------------------------------
# Norm plug-ins
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Norm:
    """One threat model: how to start, step and project. All tensors are (B, ...) batches.

    Attributes:
        name: registry name ("linf", "l2").
        random_start: `(x, eps, generator) -> delta`, a random perturbation inside the eps-ball
            (before the [0, 1] clamp).
        step_: `(grad, step_size) -> step`, the ascent direction scaled by `step_size`.
            Works IN PLACE on `grad` (the attack owns it) and returns it.
        project_: `(delta, eps) -> delta` projected onto the eps-ball, IN PLACE.
    """

    name: str
    random_start: Callable[[Tensor, float, Optional[torch.Generator]], Tensor]
    step_: Callable[[Tensor, float], Tensor]
    project_: Callable[[Tensor, float], Tensor]


NORMS: Registry[Norm] = Registry("norm")


def _per_sample_norm(t: Tensor) -> Tensor:
    """l2 norm of each sample, shaped (B, 1, ..., 1) to broadcast against t."""
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.dim() - 1)))


def _rand(x: Tensor, generator: Optional[torch.Generator], normal: bool = False) -> Tensor:
    """U[0,1) (or N(0,1) if `normal`) noise shaped like x, on x's device and dtype.

    With a generator, the noise is drawn on the generator's device (CPU or x's device) and then
    moved, so a CPU generator gives the same perturbation whatever device x is on.
    """
    device = generator.device if generator is not None else x.device
    draw = torch.randn if normal else torch.rand
    return draw(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def _linf_start(x: Tensor, eps: float, generator: Optional[torch.Generator]) -> Tensor:
    """Uniform in the l-inf ball: delta ~ U(-eps, eps) per coordinate (Madry et al.)."""
    return _rand(x, generator).mul_(2 * eps).sub_(eps)


def _l2_start(x: Tensor, eps: float, generator: Optional[torch.Generator]) -> Tensor:
    """Uniform in the l2 ball (by volume): Gaussian direction, radius eps * U^(1/d).

    d = number of input dimensions per sample, so for images the radius is close to eps
    (volume concentrates near the sphere), the l2 counterpart of the l-inf uniform box start.
    """
    direction = _rand(x, generator, normal=True)
    direction.div_(_per_sample_norm(direction).clamp_min_(_TINY))
    d = x[0].numel()
    u = _rand(x.new_empty(x.shape[0]), generator)  # (B,)
    radius = u.pow_(1.0 / d).mul_(eps).view(-1, *([1] * (x.dim() - 1)))
    return direction.mul_(radius)


def _linf_step_(grad: Tensor, step_size: float) -> Tensor:
    """step_size * sign(grad), in place."""
    return grad.sign_().mul_(step_size)


def _l2_step_(grad: Tensor, step_size: float) -> Tensor:
    """step_size * grad / ||grad||_2 per sample, in place (a zero gradient gives a zero step)."""
    return grad.mul_(step_size / _per_sample_norm(grad).clamp_min_(_TINY))


def _linf_project_(delta: Tensor, eps: float) -> Tensor:
    """Clamp every coordinate to [-eps, eps], in place."""
    return delta.clamp_(-eps, eps)


def _l2_project_(delta: Tensor, eps: float) -> Tensor:
    """Rescale samples with ||delta||_2 > eps onto the sphere of radius eps, in place."""
    return delta.mul_((eps / _per_sample_norm(delta).clamp_min_(_TINY)).clamp_(max=1.0))


# `autoattack`: the norm's name in AutoAttack.
NORMS.register("linf", autoattack="Linf")(Norm("linf", _linf_start, _linf_step_, _linf_project_))
NORMS.register("l2", autoattack="L2")(Norm("l2", _l2_start, _l2_step_, _l2_project_))


# ---------------------------------------------------------------------------------------------
# Shared machinery
# ---------------------------------------------------------------------------------------------
@contextmanager
def eval_mode(model: Callable[..., Tensor]) -> Iterator[None]:
    """Put `model` in eval mode for the block and restore every submodule's own flag after.

    Restoring per submodule (not `model.train(previous)`) keeps a deliberately mixed state,
    e.g. a frozen BatchNorm inside a training model. Plain callables (not `nn.Module`, e.g. a
    `functional_call` wrapper) pass through unchanged.
    """
    if not isinstance(model, nn.Module):
        yield
        return
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


def model_device(model: Callable[..., Tensor], default: torch.device) -> torch.device:
    """The device of the model's first parameter or buffer; `default` if it has none."""
    if isinstance(model, nn.Module):
        first = next(itertools.chain(model.parameters(), model.buffers()), None)
        if first is not None:
            return first.device
    return default


def default_step_size(eps: float) -> float:
    """The PGD step every attack here takes unless told otherwise: eps / 4 (the paper's, for
    training, validation and evaluation alike)."""
    return eps / 4


def _check_budget(eps: float, steps: int, step_size: Optional[float]) -> float:
    """Validate the attack budget and return the resolved step size (default eps/4)."""
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if step_size is None:
        return default_step_size(eps)
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0 (or None for eps/4), got {step_size!r}")
    return float(step_size)


def _take_step_(x: Tensor, x_adv: Tensor, grad: Tensor, norm: Norm, eps: float,
                step_size: float) -> Tensor:
    """One projected ascent step, in place on the (detached) iterate x_adv and on grad.

    x_adv <- clamp(x + project(x_adv + step(grad) - x), 0, 1). Clamping to [0, 1] after the
    projection keeps the ball constraint: x is in [0, 1], so the clamp only moves coordinates
    towards x and never lengthens delta (exact projection onto box ∩ ball for l-inf).
    """
    delta = x_adv.add_(norm.step_(grad, step_size)).sub_(x)
    return norm.project_(delta, eps).add_(x).clamp_(0.0, 1.0)


def _ascend(model: Callable[[Tensor], Tensor], x: Tensor, x_adv: Tensor,
            objective: Callable[[Tensor], Tensor], norm: Norm, eps: float, steps: int,
            step_size: float, y_kappa: Optional[Tensor] = None
            ) -> tuple[Tensor, Optional[Tensor]]:
    """The one PGD loop: `steps` projected ascent steps on `objective(model(x_adv))`.

    Args:
        x: clean batch (B, ...) in [0, 1]; the ball is centred on it.
        x_adv: start iterate x^0 (B, ...), a fresh tensor the loop may overwrite.
        objective: logits (B, k) -> scalar loss to maximise.
        y_kappa: labels (B,); when given, also count kappa (GAIRAT): for t = 0..K-1 the number
            of iterates x^t whose prediction equals y, read off the forward that gives the
            gradient. The final iterate x^K is never checked; no early stop.

    Returns:
        (x^K detached (B, ...), kappa int64 (B,) or None).
    """
    kappa = None if y_kappa is None else torch.zeros_like(y_kappa, dtype=torch.int64)
    with torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            logits = model(x_adv)
            (grad,) = torch.autograd.grad(objective(logits), x_adv)
            if kappa is not None:
                kappa += logits.detach().argmax(dim=1).eq(y_kappa)
            x_adv = _take_step_(x, x_adv.detach(), grad, norm, eps, step_size)
    return x_adv.detach(), kappa


def _summed_ce(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy summed over the batch, so each sample's input gradient is its own."""
    return F.cross_entropy(logits, y, reduction="sum")


# ---------------------------------------------------------------------------------------------
# Public attacks
# ---------------------------------------------------------------------------------------------
def pgd(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, *, norm: str, eps: float,
        steps: int, step_size: Optional[float] = None, random_start: bool = True,
        generator: Optional[torch.Generator] = None, return_kappa: bool = False,
        loss_fn: Optional[LossFn] = None) -> Tensor | tuple[Tensor, Tensor]:
    """Projected gradient descent (Madry et al., 2018), l-inf or l2, with GAIRAT's kappa.

    Distance measure: `norm` in NORMS ("linf": sign-gradient steps, box projection; "l2":
    per-sample normalised gradient steps, ball projection). Every iterate is clamped to [0, 1].

    Args:
        model: maps (B, C, H, W) images in [0, 1] to logits (B, k). Crafted in eval mode; the
            previous mode of every submodule is restored afterwards (also on error).
        x: clean images (B, ...) in [0, 1].
        y: labels (B,) int64.
        norm: "linf" or "l2" (unknown names raise `UnknownNameError`).
        eps: radius of the ball, > 0.
        steps: number of ascent steps K >= 0 (0 returns the start point).
        step_size: ascent step; default eps / 4.
        random_start: start uniformly inside the ball (l-inf: U(-eps, eps) per coordinate;
            l2: uniform by volume, see `_l2_start`), then clamp to [0, 1]; else start at x.
        generator: torch.Generator for the random start (on x's device or on the CPU; a CPU
            generator gives identical starts on any device). None uses the global RNG.
        return_kappa: also return GAIRAT's kappa (see below).
        loss_fn: `(logits (B, k), y (B,)) -> loss` to maximise, per-sample (B,) (summed here)
            or a scalar; default cross-entropy summed over the batch. WMMR passes its
            exp-weighted CE here.

    Returns:
        x_adv (B, ...) detached, same device/dtype as x; with return_kappa, `(x_adv, kappa)`
        where kappa (B,) int64 counts the iterates x^0..x^{K-1} (x^0 = the start) that the
        model classifies correctly, exactly as GAIRAT's GA-PGD: no early stop, an iterate that
        flips back to correct counts again, x^K is never checked. kappa is in {0..K}.
    """
    spec = NORMS.get(norm)
    step_size = _check_budget(eps, steps, step_size)
    loss_fn = _summed_ce if loss_fn is None else loss_fn

    def objective(logits: Tensor) -> Tensor:
        loss = loss_fn(logits, y)
        return loss.sum() if loss.dim() > 0 else loss

    x = x.detach()
    start = spec.random_start(x, eps, generator).add_(x).clamp_(0.0, 1.0) if random_start \
        else x.clone()
    with eval_mode(model):
        x_adv, kappa = _ascend(model, x, start, objective, spec, eps, steps, step_size,
                               y_kappa=y if return_kappa else None)
    return (x_adv, kappa) if return_kappa else x_adv


def trades_attack(model: Callable[[Tensor], Tensor], x: Tensor, *, norm: str, eps: float,
                  steps: int, step_size: Optional[float] = None,
                  generator: Optional[torch.Generator] = None) -> Tensor:
    """TRADES inner maximisation (Zhang et al., 2019, Eq. 5): argmax_x' sum_i KL(p(x_i) || p(x'_i)).

    Distance measure: `norm` in NORMS; same step and projection as `pgd`, every iterate in
    [0, 1]. Start x' = x + 0.001 * N(0, I), projected onto the ball and clamped to [0, 1]
    (the projection only matters for eps below ~0.005 or steps = 0). p(x) is computed once,
    under no_grad. The model runs in eval mode; each submodule's mode is restored afterwards.

    Args:
        model: maps images (B, ...) in [0, 1] to logits (B, k).
        x: clean images (B, ...) in [0, 1].
        norm: "linf" or "l2".
        eps: ball radius, > 0.
        steps: number of ascent steps K >= 0.
        step_size: ascent step; default eps / 4 (TRADES uses 0.007 ~ 0.031 / 4).
        generator: torch.Generator for the Gaussian start (x's device or CPU).

    Returns:
        x_adv (B, ...) detached.
    """
    spec = NORMS.get(norm)
    step_size = _check_budget(eps, steps, step_size)
    x = x.detach()
    start = spec.project_(_rand(x, generator, normal=True).mul_(0.001), eps)
    start = start.add_(x).clamp_(0.0, 1.0)
    with eval_mode(model):
        with torch.no_grad():
            p_clean = F.softmax(model(x), dim=1)

        def objective(logits: Tensor) -> Tensor:  # sum_i KL(p_clean,i || p_adv,i)
            return F.kl_div(F.log_softmax(logits, dim=1), p_clean, reduction="sum")

        x_adv, _ = _ascend(model, x, start, objective, spec, eps, steps, step_size)
    return x_adv
