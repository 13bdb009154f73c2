"""Margin inputs: what the BiLAW weight net sees for each training sample.

All functions take probabilities or losses already detached (the weight net's input carries no
gradient into the classifier, as MW-Net feeds `cost.data`; docs/methods.md A2) and return (B, d).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from bilaw.registry import Registry


@dataclass
class MarginSources:
    """Per-sample quantities a margin input may use (all detached).

    probs: (B, k) softmax where the margin is measured (clean or adversarial, per `margin_on`);
    y: (B,) labels; robust_loss / clean_loss: (B,) cross-entropy on the adversarial / clean input.
    """

    probs: torch.Tensor
    y: torch.Tensor
    robust_loss: torch.Tensor | None = None
    clean_loss: torch.Tensor | None = None


MarginFn = Callable[[MarginSources], torch.Tensor]
MARGIN_INPUTS: Registry[MarginFn] = Registry("margin input")


def multiclass_margin(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Seed Def. 3: Delta_j = p_y - p_j, (B, k) in [-1, 1], in class-index order (entry y is 0)."""
    return probs.gather(1, y[:, None]) - probs


def binary_margin(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Seed Def. 2: p_y - max_{j != y} p_j, (B,); negative means misclassified."""
    p_y = probs.gather(1, y[:, None]).squeeze(1)
    others = probs.scatter(1, y[:, None], float("-inf"))
    return p_y - others.amax(1)


# `dim(num_classes)`: the width of the weight net's input for this margin input.
@MARGIN_INPUTS.register("multiclass", dim=lambda num_classes: num_classes)
def _multiclass(s: MarginSources) -> torch.Tensor:
    return multiclass_margin(s.probs, s.y)


@MARGIN_INPUTS.register("margin", dim=lambda num_classes: 1)
def _margin(s: MarginSources) -> torch.Tensor:
    return binary_margin(s.probs, s.y)[:, None]


@MARGIN_INPUTS.register("robust_loss", dim=lambda num_classes: 1)
def _robust_loss(s: MarginSources) -> torch.Tensor:
    return s.robust_loss[:, None]


@MARGIN_INPUTS.register("loss_diff", dim=lambda num_classes: 1)
def _loss_diff(s: MarginSources) -> torch.Tensor:
    return (s.robust_loss - s.clean_loss)[:, None]


def margin_input_dim(name: str, num_classes: int) -> int:
    """Width of the weight net's input (k for the multi-class margin, 1 for the scalar inputs)."""
    return MARGIN_INPUTS.facts(name)["dim"](num_classes)


def compute_margin_input(name: str, sources: MarginSources) -> torch.Tensor:
    return MARGIN_INPUTS.get(name)(sources)
