"""MobileNetV2 stages as IndexNet's authors build them (all strides 1; pooling happens outside).

Their inverted-residual block declares every convolution with padding 0 and zero-pads its *input*
instead, so the 1x1 expansion (conv + BN + ReLU6) turns the zero ring into a non-zero border that
the depthwise convolution then reads. Padding inside the depthwise conv gives other numbers, and
the released weights were trained with this behaviour, so it is kept.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# (expand ratio t, output channels c, blocks n) per stage, layer1..layer7
STAGES = ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1))
STEM_CHANNELS = 32


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, expand_ratio: int):
        super().__init__()
        hidden = round(cin * expand_ratio)
        self.use_residual = cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, 1, 0, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(F.pad(x, (1, 1, 1, 1)))
        return x + out if self.use_residual else out


def build_stages(width_mult: float = 1.0, in_channels: int = 4) -> dict[str, nn.Module]:
    """`layer0` (3x3 stem, stride 1) and `layer1`..`layer7`, channel counts scaled by width_mult."""
    stem = int(STEM_CHANNELS * width_mult)
    layers: dict[str, nn.Module] = {
        "layer0": nn.Sequential(nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem),
                                nn.ReLU6(inplace=True)),
    }
    cin = stem
    for i, (t, c, n) in enumerate(STAGES, start=1):
        cout = int(c * width_mult)
        blocks = []
        for _ in range(n):
            blocks.append(InvertedResidual(cin, cout, t))
            cin = cout
        layers[f"layer{i}"] = nn.Sequential(*blocks)
    return layers


def stage_channels(width_mult: float = 1.0) -> list[int]:
    """Output channels of layer0..layer7."""
    return [int(STEM_CHANNELS * width_mult)] + [int(c * width_mult) for _, c, _ in STAGES]
