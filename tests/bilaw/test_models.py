"""Contract tests over the model registry: every model builds, has the right output shape on
every dataset shape it suits, finite gradients on every parameter, and inputs stay in [0, 1]."""
from __future__ import annotations

import pytest
import torch

from bilaw.models import MODELS, build_model
from bilaw.registry import UnknownNameError

# (C, H, W), classes of each registered dataset
SHAPES = {
    "digits": ((1, 8, 8), 10),
    "mnist": ((1, 28, 28), 10),
    "fashion_mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
}
SMALL = ["fc1", "tiny_cnn", "small_cnn"]


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("dataset", list(SHAPES))
def test_small_models_output_shape_and_grads(name, dataset):
    shape, k = SHAPES[dataset]
    torch.manual_seed(0)
    model = build_model(name, shape, k)
    x = torch.rand(4, *shape)
    out = model(x)
    assert out.shape == (4, k)
    out.logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "mnist"])
def test_wrn_small_width_output_shape(dataset):
    shape, k = SHAPES[dataset]
    model = build_model("wrn", shape, k, depth=10, widen_factor=1)
    assert model(torch.rand(2, *shape)).shape == (2, k)


def test_wrn32_10_structure_matches_madry_wrn():
    model = build_model("wrn32_10", (3, 32, 32), 10)
    n_params = sum(p.numel() for p in model.parameters())
    # Madry's WRN-32-10 (GAIRAT) has about 46.2M parameters (docs/methods.md sec. architectures).
    assert 46.0e6 < n_params < 46.5e6
    assert [len(s) for s in model.stages] == [5, 5, 5]
    assert model.fc.in_features == 640


def test_documented_architecture_sizes():
    fc = build_model("fc1", (1, 28, 28), 10)
    assert [m.out_features for m in fc if isinstance(m, torch.nn.Linear)] == [1024, 10]
    tiny = build_model("tiny_cnn", (1, 28, 28), 10)
    assert tiny[1].in_features == 32 * 7 * 7
    small = build_model("small_cnn", (3, 32, 32), 10)
    assert small[1].in_features == 196 * 4 * 4


def test_normalize_layer_is_inside_the_model():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)
    torch.manual_seed(0)
    plain = build_model("fc1", (3, 4, 4), 10)
    torch.manual_seed(0)
    normed = build_model("fc1", (3, 4, 4), 10, normalize=(mean, std))
    x = torch.rand(2, 3, 4, 4)
    expected = plain((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    torch.testing.assert_close(normed(x), expected)


def test_unknown_model_suggests_closest():
    with pytest.raises(UnknownNameError, match=r"unknown model 'tinycnn'.*fc1.*small_cnn.*did you mean 'tiny_cnn'"):
        build_model("tinycnn", (1, 28, 28), 10)
    assert MODELS.names() == sorted(["fc1", "tiny_cnn", "small_cnn", "wrn", "wrn32_10", "wrn34_10"])


def test_bad_wrn_depth():
    with pytest.raises(ValueError, match="wrn depth 7"):
        build_model("wrn", (3, 32, 32), 10, depth=7)


@pytest.mark.gpu
@pytest.mark.parametrize("name", SMALL)
def test_forward_on_cuda(name):
    model = build_model(name, (3, 32, 32), 10).cuda()
    out = model(torch.rand(2, 3, 32, 32, device="cuda"))
    assert out.device.type == "cuda" and out.shape == (2, 10)
