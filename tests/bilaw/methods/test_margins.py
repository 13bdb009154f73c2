"""Margin inputs of the weight net (seed Def. 2 / Def. 3, docs/methods.md A2)."""
from __future__ import annotations

import pytest
import torch

from bilaw.methods.margins import (
    MARGIN_INPUTS, MarginSources, binary_margin, compute_margin_input, margin_input_dim,
    multiclass_margin,
)
from bilaw.registry import UnknownNameError

# hand-written probabilities (rows sum to 1); labels: correct-confident, misclassified, tie, k=4
PROBS = [[0.7, 0.2, 0.05, 0.05], [0.1, 0.6, 0.25, 0.05], [0.4, 0.1, 0.4, 0.1], [0.25, 0.25, 0.25, 0.25]]
Y = [0, 2, 0, 3]


def _probs():
    return torch.tensor(PROBS, dtype=torch.float64), torch.tensor(Y)


def test_multiclass_margin_values():
    p, y = _probs()
    d = multiclass_margin(p, y)
    expected = [[row[t] - pj for pj in row] for row, t in zip(PROBS, Y)]
    assert d.shape == (4, 4)
    for row, exp in zip(d.tolist(), expected):
        assert row == pytest.approx(exp, abs=1e-12)
    for i, t in enumerate(Y):
        assert d[i, t].item() == 0.0  # the true class's entry is exactly zero
    # row 1 (y=2): p_y - p_1 = 0.25 - 0.6 < 0 marks the misclassification
    assert d[1].tolist() == pytest.approx([0.15, -0.35, 0.0, 0.2], abs=1e-12)


def test_binary_margin_values():
    p, y = _probs()
    m = binary_margin(p, y)
    assert m.shape == (4,)
    assert m.tolist() == pytest.approx([0.7 - 0.2, 0.25 - 0.6, 0.0, 0.0], abs=1e-12)


def test_binary_margin_does_not_modify_probs():
    p, y = _probs()
    before = p.clone()
    binary_margin(p, y)
    multiclass_margin(p, y)
    assert torch.equal(p, before)


def test_registered_inputs_shapes_and_values():
    p, y = _probs()
    robust = torch.tensor([2.0, 0.5, 1.25, 3.0], dtype=torch.float64)
    clean = torch.tensor([0.5, 0.5, 0.25, 1.0], dtype=torch.float64)
    s = MarginSources(p, y, robust_loss=robust, clean_loss=clean)
    multi = compute_margin_input("multiclass", s)
    assert multi.shape == (4, 4) and multi[1].tolist() == pytest.approx([0.15, -0.35, 0.0, 0.2], abs=1e-12)
    margin = compute_margin_input("margin", s)
    assert margin.shape == (4, 1)
    assert margin[:, 0].tolist() == pytest.approx([0.5, -0.35, 0.0, 0.0], abs=1e-12)
    rl = compute_margin_input("robust_loss", s)
    assert rl.shape == (4, 1) and rl[:, 0].tolist() == [2.0, 0.5, 1.25, 3.0]
    ld = compute_margin_input("loss_diff", s)
    assert ld.shape == (4, 1) and ld[:, 0].tolist() == [1.5, 0.0, 1.0, 2.0]
    assert MARGIN_INPUTS.names() == ["loss_diff", "margin", "multiclass", "robust_loss"]


@pytest.mark.parametrize("name,k,dim", [("multiclass", 10, 10), ("multiclass", 100, 100), ("margin", 10, 1),
                                        ("robust_loss", 10, 1), ("loss_diff", 100, 1)])
def test_margin_input_dim(name, k, dim):
    assert margin_input_dim(name, k) == dim


def test_unknown_margin_input():
    with pytest.raises(UnknownNameError, match=r"unknown margin input 'multclass'.*did you mean 'multiclass'"):
        margin_input_dim("multclass", 10)
    with pytest.raises(UnknownNameError, match="valid margin inputs: loss_diff, margin, multiclass, robust_loss"):
        compute_margin_input("nope", MarginSources(*_probs()))
