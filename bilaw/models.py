"""Model registry: fc1, tiny_cnn, small_cnn, wrn (+ presets wrn32_10, wrn34_10).

Every model takes images in [0, 1] of shape (B, C, H, W). Normalisation, when asked for, is the
model's first layer, so attacks and AutoAttack always work in [0, 1] pixel space. The paper (and
GAIRAT/TRADES' code) trains without normalisation, which is the default here.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from bilaw.registry import Registry


def model_kwargs(cfg) -> dict[str, int]:
    """The keyword arguments `build_model` takes for a run config's model (a TrainConfig): the
    generic WideResNet's depth and width; the named models take none."""
    return {"depth": cfg.wrn_depth, "widen_factor": cfg.wrn_width} if cfg.model == "wrn" else {}

ModelFactory = Callable[..., nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")
Shape = Sequence[int]


class Normalize(nn.Module):
    """(x - mean) / std per channel, as a fixed first layer (buffers move with the model)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _flat_size(features: nn.Module, input_shape: Shape) -> int:
    """Feature count after `features` for one input of `input_shape` (shape inference on CPU)."""
    with torch.no_grad():
        return int(features(torch.zeros(1, *input_shape)).numel())


# `gpu_share`: the default GPU fraction of one search trial. Small models are host-bound, so
# several of their trials share one GPU.
@MODELS.register("fc1", gpu_share=0.25)
def fc1(input_shape: Shape, num_classes: int) -> nn.Module:
    """FC1 (the paper's Table 4): flatten -> FC 1024 -> ReLU -> FC k."""
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 1024), nn.ReLU(), nn.Linear(1024, num_classes))


@MODELS.register("tiny_cnn", gpu_share=0.25)
def tiny_cnn(input_shape: Shape, num_classes: int) -> nn.Module:
    """Wong & Kolter's MNIST net (the paper's Table 4): Conv16 4x4/2 -> Conv32 4x4/2 -> FC100 -> FC k.

    Padding 1 as in Wong & Kolter's code (docs/methods.md A13): 28x28 -> 14 -> 7, flatten 32*7*7.
    """
    features = nn.Sequential(
        nn.Conv2d(input_shape[0], 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
    )
    n = _flat_size(features, input_shape)
    return nn.Sequential(features, nn.Linear(n, 100), nn.ReLU(), nn.Linear(100, num_classes))


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]


@MODELS.register("small_cnn", gpu_share=0.5)
def small_cnn(input_shape: Shape, num_classes: int) -> nn.Module:
    """GAIRAT's SmallCNN (the paper's Table 5): 3 x [conv-BN-ReLU x2, maxpool 2] with 64/128/196 channels,
    then FC 256 -> FC k. The flatten size follows the input (196*4*4 on 32x32 CIFAR)."""
    layers: list[nn.Module] = []
    c = input_shape[0]
    for width in (64, 128, 196):
        layers += _conv_bn_relu(c, width) + _conv_bn_relu(width, width) + [nn.MaxPool2d(2)]
        c = width
    features = nn.Sequential(*layers, nn.Flatten())
    n = _flat_size(features.eval(), input_shape)
    return nn.Sequential(features.train(), nn.Linear(n, 256), nn.ReLU(), nn.Linear(256, num_classes))


class _WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3, 1x1 conv shortcut on shape change."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(c_in), nn.BatchNorm2d(c_out)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        # The shortcut branches off the pre-activated input when the shape changes (Madry's WRN).
        residual = x if self.shortcut is None else self.shortcut(o)
        o = self.conv2(F.relu(self.bn2(self.conv1(o))))
        return o + residual


class WideResNet(nn.Module):
    """Madry/GAIRAT WideResNet: (depth-2)/6 blocks per stage, widths 16, 16w, 32w, 64w.

    WRN-32-10 (the BiLAW paper's, docs/methods.md A4) and TRADES' "WRN-34-10" have the same forward: 5 blocks per stage.
    Global average pooling is adaptive so small inputs (digits, MNIST) also work.
    """

    def __init__(self, input_shape: Shape, num_classes: int, depth: int = 32, widen_factor: int = 10) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 not in (0, 2):
            raise ValueError(f"wrn depth {depth} is not allowed; use 6n+2 or 6n+4 (e.g. 28, 32, 34)")
        n = (depth - 2) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv = nn.Conv2d(input_shape[0], widths[0], 3, padding=1, bias=False)
        stages, c = [], widths[0]
        for width, stride in zip(widths[1:], (1, 2, 2)):
            blocks = [_WideBasicBlock(c if i == 0 else width, width, stride if i == 0 else 1) for i in range(n)]
            stages.append(nn.Sequential(*blocks))
            c = width
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn(self.stages(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(o, 1), 1))


@MODELS.register("wrn", gpu_share=1.0)
def wrn(input_shape: Shape, num_classes: int, depth: int = 32, widen_factor: int = 10) -> nn.Module:
    """WideResNet with a chosen depth and widen factor (config keys `wrn_depth`, `wrn_width`)."""
    return WideResNet(input_shape, num_classes, depth, widen_factor)


@MODELS.register("wrn32_10", gpu_share=1.0)
def wrn32_10(input_shape: Shape, num_classes: int) -> nn.Module:
    """WRN-32-10, the BiLAW paper's CIFAR model (GAIRAT's Wide_ResNet_Madry)."""
    return WideResNet(input_shape, num_classes, 32, 10)


@MODELS.register("wrn34_10", gpu_share=1.0)
def wrn34_10(input_shape: Shape, num_classes: int) -> nn.Module:
    """TRADES' "WRN-34-10": the same network as WRN-32-10 under TRADES' depth convention."""
    return WideResNet(input_shape, num_classes, 32, 10)


def build_model(
    name: str,
    input_shape: Shape,
    num_classes: int,
    *,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    **kwargs,
) -> nn.Module:
    """Build a registered model for inputs of `input_shape` (C, H, W) and `num_classes` classes.

    `normalize=(mean, std)` prepends a `Normalize` layer; inputs stay in [0, 1] either way.
    """
    model = MODELS.get(name)(tuple(input_shape), num_classes, **kwargs)
    if normalize is not None:
        model = nn.Sequential(Normalize(*normalize), model)
    return model
