"""Blocks shared by the model families: conv-norm-act, ASPP, residual blocks.

Norm and activation come from a `norm_act(channels) -> list[nn.Module]` factory so one block serves
families whose checkpoints lay them out differently (IndexNet: BatchNorm then ReLU6 as two modules;
A2U: one in-place-activated-BN module), and parameter names stay those of the authors' checkpoints.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

NormAct = Callable[[int], list]


def bn_relu6(channels: int) -> list:
    return [nn.BatchNorm2d(channels), nn.ReLU6(inplace=True)]


def activate_(x: torch.Tensor, activation: str, slope: float = 0.01) -> torch.Tensor:
    """`leaky_relu` (negative slope `slope`), `relu` or `identity`, applied IN PLACE: the activations
    `BNAct` and the residual blocks apply, each to a tensor it has just made (a norm's output, a
    sum), as `nn.ReLU(inplace=True)` after a BatchNorm. Autograd allows it there: neither a norm's
    nor an addition's backward reads its output, and these activations' backward reads only theirs
    (leaky_relu_ with a positive slope). One full-size tensor fewer alive and written per activation
    (TCP's peak memory is at one: benchmarks/cuda_estimate.py)."""
    if activation == "leaky_relu":
        return F.leaky_relu_(x, slope)
    if activation == "relu":
        return F.relu_(x)
    return x


class BNAct(nn.BatchNorm2d):
    """BatchNorm and its activation as ONE module, with BatchNorm's parameter names.

    The A2U authors use in-place activated BN (`inplace_abn.InPlaceABN`): one module per BN+act, so
    their checkpoints have `bn1.weight`, not `bn1.0.weight`. `activation` is `leaky_relu`
    (slope `slope`), `relu` (torchvision-style ResNets) or `identity` (second BN of a residual
    block, projections). InPlaceABN scales by |weight| + eps; importers store that in `weight`.
    """

    def __init__(self, channels: int, activation: str = "leaky_relu", slope: float = 0.01):
        super().__init__(channels)
        if activation not in ("leaky_relu", "relu", "identity"):
            raise ValueError(f"activation must be leaky_relu, relu or identity, got {activation!r}")
        self.activation = activation
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return activate_(super().forward(x), self.activation, self.slope)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation}"


def bn_leaky(channels: int) -> list:
    """The A2U family's norm_act: one BNAct with LeakyReLU(0.01)."""
    return [BNAct(channels, "leaky_relu")]


def bn_relu(channels: int) -> list:
    """The TCP family's norm_act (torchvision-style ResNet): one BNAct with ReLU."""
    return [BNAct(channels, "relu")]


def conv_norm_act(cin: int, cout: int, kernel: int, stride: int = 1, padding: int | None = None,
                  dilation: int = 1, groups: int = 1, norm_act: NormAct = bn_relu6) -> nn.Sequential:
    """Conv (no bias) followed by the family's norm and activation: keys `0.weight`, `1.*`."""
    if padding is None:
        padding = dilation * (kernel - 1) // 2
    conv = nn.Conv2d(cin, cout, kernel, stride, padding, dilation=dilation, groups=groups, bias=False)
    return nn.Sequential(conv, *norm_act(cout))


class _Branch(nn.Module):
    """Holds one ASPP branch as `atrous_conv`, the name both authors' checkpoints use."""

    def __init__(self, layers: list):
        super().__init__()
        self.atrous_conv = nn.Sequential(*layers)

    def forward(self, x):
        return self.atrous_conv(x)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling with depthwise-separable atrous branches.

    Branches: 1x1; three (3x3 depthwise with dilation d, norm-act, 1x1, norm-act); global average
    pool (1x1, norm-act, nearest upsampling). Concatenated, projected by 1x1 + norm-act, dropout.
    """

    def __init__(self, cin: int, mid: int, cout: int, dilations: tuple[int, int, int],
                 norm_act: NormAct = bn_relu6, dropout: float = 0.5):
        super().__init__()
        self.aspp1 = _Branch([nn.Conv2d(cin, mid, 1, bias=False), *norm_act(mid)])
        for i, d in enumerate(dilations, start=2):
            setattr(self, f"aspp{i}", _Branch([
                nn.Conv2d(cin, cin, 3, 1, padding=d, dilation=d, groups=cin, bias=False), *norm_act(cin),
                nn.Conv2d(cin, mid, 1, bias=False), *norm_act(mid)]))
        self.global_avg_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, mid, 1, bias=False),
                                             *norm_act(mid))
        self.bottleneck_conv = nn.Sequential(nn.Conv2d(mid * 5, cout, 1, bias=False), *norm_act(cout))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.global_avg_pool(x)
        pooled = F.interpolate(pooled, size=x.shape[2:], mode="nearest")
        y = torch.cat([self.aspp1(x), self.aspp2(x), self.aspp3(x), self.aspp4(x), pooled], dim=1)
        return self.dropout(self.bottleneck_conv(y))


class _Activation(nn.Module):
    """What is left of a `BNAct` once its BatchNorm is folded into the convolution before it."""

    def __init__(self, activation: str, slope: float):
        super().__init__()
        self.activation, self.slope = activation, slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return activate_(x, self.activation, self.slope)  # x: the folded convolution's output


def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Module:
    """Scale `conv` and give it the bias that make it compute bn(conv(x)); -> what replaces `bn`."""
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
    return _Activation(bn.activation, bn.slope) if isinstance(bn, BNAct) else nn.Identity()


def _foldable(conv, bn) -> bool:
    return (type(conv) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d) and not bn.training
            and bn.running_mean is not None and bn.affine and conv.out_channels == bn.num_features)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode BatchNorm that directly follows a convolution into it, in place.

    For inference only: a folded model computes the same function (to float rounding) with one
    pass over memory less per BatchNorm, but it can no longer be trained or saved as a checkpoint.
    On a GPU the BatchNorms are most of IndexNet's time in float16 (docs/benchmarks.md#gpu-figures).
    Pairs are consecutive entries of an `nn.Sequential`, and the attribute pairs a module lists in
    `CONV_BN_PAIRS` (modules that only ever call them as `bn(conv(x))`).

    Returns:
        How many BatchNorms were folded.
    """
    folded = 0
    for module in list(model.modules()):
        pairs = [(a, b) for a, b in getattr(module, "CONV_BN_PAIRS", ()) if getattr(module, a, None) is not None]
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            pairs += list(zip(names, names[1:]))
        for conv_name, bn_name in pairs:
            conv, bn = getattr(module, conv_name), getattr(module, bn_name)
            if _foldable(conv, bn):
                setattr(module, bn_name, _fold_pair(conv, bn))
                folded += 1
    return folded


def convolutions_in(model: nn.Module, dtype: torch.dtype) -> int:
    """Store every convolution's weight and bias in `dtype`, in place; -> how many convolutions.

    For inference under autocast to `dtype`: autocast casts a convolution's float32 weight and
    bias to its lower precision at every call (a copy per convolution per pass: 204 of IndexNet's
    ~800 ATen calls, benchmarks/cuda_estimate.py); cast once, they are used as they are. The
    result is the same bit for bit (the same rounding, done once). Run without autocast, such a
    model refuses a float32 input, so keep the float32 model for that."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            module.to(dtype)
            count += 1
    return count


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, the number the specs' tables give."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
