"""IndexNet matting (Lu et al., ICCV 2019): index-guided pooling and upsampling on MobileNetV2.

The network follows the authors' released code layer by layer (specs/indexnet_official.md), with
parameter names equal to their checkpoint's, so importing it is a rename of nothing but `module.`.

Every variant of the paper's comparison is one network with a different index function:

- learned index blocks: holistic (HIN, one map for all channels) or depthwise (one map per
  channel; one-to-one `o2o` with grouped convs, many-to-one `m2o` with full convs), each linear or
  nonlinear, with or without context (4x4 instead of 2x2 kernels);
- parameter-free baselines: `max` (max-pooling indices, i.e. SegNet-style max unpooling — the
  paper's B11 U-Net), `holistic-max` (the argmax of the channel-wise maximum, shared by all
  channels) and `none` (max pooling, bilinear upsampling, no indices).

With a one-hot index map, indexed pooling *is* max pooling and indexed upsampling *is* max
unpooling (ties go to the first position in raster order, as in PyTorch's max pooling), so the
baselines need no MaxUnpool operator.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mattecli.configs import LEARNED, IndexNetConfig
from mattecli.models.layers import ASPP, conv_norm_act
from mattecli.models.mobilenetv2 import build_stages, stage_channels

POOLED_STAGES = (0, 2, 3, 4, 6)  # index pooling follows layer0, layer2, layer3, layer4 and layer6


# ----------------------------------------------------------------------------------------------
# The operators


def indexed_pool(x: torch.Tensor, idx_en: torch.Tensor, return_weighted: bool = False):
    """IP: the index-weighted sum over each 2x2 cell (idx_en broadcasts over channels if holistic);
    with `return_weighted`, (pooled, idx_en * x), the weighted map a learned index's skip carries.

    The index is taken in the features' precision (a no-op unless they differ): a float32 index on
    float16 features would make the pooling and the full-resolution skip float32."""
    weighted = idx_en.to(x.dtype) * x
    pooled = 4 * F.avg_pool2d(weighted, 2, 2)
    return (pooled, weighted) if return_weighted else pooled


def indexed_upsample(y: torch.Tensor, idx_de: torch.Tensor) -> torch.Tensor:
    """IU: nearest upsampling to the index map's size, weighted by the index map."""
    return idx_de * F.interpolate(y, size=idx_de.shape[2:], mode="nearest")


def _cells(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, 4, H/2, W/2): the four raster-order positions of each 2x2 cell."""
    n, c, h, w = x.shape
    return F.pixel_unshuffle(x, 2).view(n, c, 4, h // 2, w // 2)


def _uncells(z: torch.Tensor) -> torch.Tensor:
    """Inverse of `_cells`: (N, C, 4, h, w) -> (N, C, 2h, 2w)."""
    n, c, _, h, w = z.shape
    return F.pixel_shuffle(z.reshape(n, 4 * c, h, w), 2)


def max_index(x: torch.Tensor) -> torch.Tensor:
    """One-hot index map of the maximum of each 2x2 cell (first in raster order on ties)."""
    cells = _cells(x)
    onehot = F.one_hot(cells.argmax(dim=2), 4).permute(0, 1, 4, 2, 3).to(x.dtype)
    return _uncells(onehot)


# ----------------------------------------------------------------------------------------------
# Index blocks


class HolisticIndexBlock(nn.Module):
    """One index map shared by all channels: conv C -> 4 (linear) or C -> 2C -> 4 (nonlinear)."""

    def __init__(self, channels: int, nonlinear: bool, context: bool):
        super().__init__()
        k, p = (4, 1) if context else (2, 0)
        if nonlinear:
            self.indexnet = nn.Sequential(
                nn.Conv2d(channels, 2 * channels, k, 2, p, bias=False), nn.BatchNorm2d(2 * channels),
                nn.ReLU6(inplace=True), nn.Conv2d(2 * channels, 4, 1, bias=False))
        else:
            self.indexnet = nn.Conv2d(channels, 4, k, 2, p, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.indexnet(x).unsqueeze(1)  # (N, 1, 4, h, w)
        return _normalise(logits)


class DepthwiseIndexBlock(nn.Module):
    """Four branches, one per 2x2 position, each C -> C: grouped (o2o) or full (m2o) convs."""

    def __init__(self, channels: int, nonlinear: bool, context: bool, one_to_one: bool):
        super().__init__()
        k, p = (4, 1) if context else (2, 0)
        groups = channels if one_to_one else 1
        for branch in range(1, 5):
            layers: list[nn.Module] = [nn.Conv2d(channels, channels, k, 2, p, groups=groups, bias=False)]
            if nonlinear:
                layers += [nn.BatchNorm2d(channels), nn.ReLU6(inplace=True),
                           nn.Conv2d(channels, channels, 1, groups=groups, bias=False)]
            setattr(self, f"indexnet{branch}", nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        branches = (self.indexnet1, self.indexnet2, self.indexnet3, self.indexnet4)
        logits = torch.stack([b(x) for b in branches], dim=2)  # (N, C, 4, h, w)
        return _normalise(logits)


def _normalise(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder index = sigmoid; encoder index = softmax over the 4 positions *of the sigmoid*."""
    sig = torch.sigmoid(logits)
    # CUDA's autocast runs a softmax given no dtype in float32, which made the full-resolution index
    # map and everything it weights float32; over four values in (0, 1) the half precision result
    # (accumulated in float32 by the kernel) is as good. Without autocast no dtype is given.
    dtype = sig.dtype if torch.is_autocast_enabled(sig.device.type) else None
    return _uncells(torch.softmax(sig, dim=2, dtype=dtype)), _uncells(sig)


class MaxIndex(nn.Module):
    """Parameter-free one-hot index of each cell's maximum; `holistic` uses the channel-wise max."""

    def __init__(self, holistic: bool):
        super().__init__()
        self.holistic = holistic

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        source = x.amax(dim=1, keepdim=True) if self.holistic else x
        idx = max_index(source)
        return idx, idx


def make_index_block(cfg: IndexNetConfig, channels: int) -> nn.Module:
    if cfg.index == "holistic":
        return HolisticIndexBlock(channels, cfg.nonlinear, cfg.context)
    if cfg.index in ("o2o", "m2o"):
        return DepthwiseIndexBlock(channels, cfg.nonlinear, cfg.context, one_to_one=cfg.index == "o2o")
    return MaxIndex(holistic=cfg.index == "holistic-max")


# ----------------------------------------------------------------------------------------------
# The network


class DecoderStage(nn.Module):
    """Upsample (indexed, or bilinear for the no-index baseline), concatenate the skip, 5x5 conv."""

    def __init__(self, cin: int, cout: int, kernel: int):
        super().__init__()
        self.dconv = conv_norm_act(cin, cout, kernel)

    def forward(self, y: torch.Tensor, skip: torch.Tensor, idx_de: torch.Tensor | None = None,
                bilinear: bool = False) -> torch.Tensor:
        if idx_de is not None:
            y = indexed_upsample(y, idx_de)
        elif bilinear and y.shape[2:] != skip.shape[2:]:
            y = F.interpolate(y, size=skip.shape[2:], mode="bilinear", align_corners=False)
        return self.dconv(torch.cat([y, skip], dim=1))


class IndexNetMatting(nn.Module):
    """4-channel input (normalised RGB, trimap/255) of side a multiple of 32 -> raw alpha (no sigmoid)."""

    stride = 32
    input_channels = 4

    def __init__(self, cfg: IndexNetConfig = IndexNetConfig()):
        super().__init__()
        self.cfg = cfg
        wm = cfg.width_mult
        for name, module in build_stages(wm, in_channels=4).items():
            setattr(self, name, module)
        ch = stage_channels(wm)
        for s in POOLED_STAGES:
            setattr(self, f"index{s}", make_index_block(cfg, ch[s]))
        c160, c320 = int(160 * wm), int(320 * wm)
        if cfg.aspp:
            self.dconv_pp = ASPP(c320, int(256 * wm), c160, dilations=(2, 4, 8))
        else:
            self.dconv_pp = conv_norm_act(c320, c160, 1)
        k = cfg.decoder_kernel_size
        # (stage, input channels, output channels); each concatenates a skip of as many channels
        plan = ((6, c160, ch[5]), (5, ch[5], ch[4]), (4, ch[4], ch[3]), (3, ch[3], ch[2]),
                (2, ch[2], ch[1]), (1, ch[1], ch[0]), (0, ch[0], ch[0]))
        for stage, cin, cout in plan:
            setattr(self, f"decoder_layer{stage}", DecoderStage(2 * cin, cout, k))
        self.pred = nn.Sequential(conv_norm_act(ch[0], 1, k), nn.Conv2d(1, 1, k, 1, k // 2, bias=False))
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def encoder_modules(self) -> list[nn.Module]:
        """The MobileNetV2 part (the pretrained, low-learning-rate parameter group)."""
        return [getattr(self, f"layer{i}") for i in range(8)]

    def index_encoder_modules(self) -> list[nn.Module]:
        """mmagic's `IndexNetEncoder`: the MobileNetV2 stages, the index blocks and the ASPP (its
        `train()` holds every BatchNorm of these in eval mode when `freeze_bn=True`)."""
        return self.encoder_modules() + [getattr(self, f"index{s}") for s in POOLED_STAGES] + [self.dconv_pp]

    def _pool(self, stage: int, x: torch.Tensor):
        """Returns (pooled, skip feature, decoder index or None)."""
        idx_en, idx_de = getattr(self, f"index{stage}")(x)
        pooled, weighted = indexed_pool(x, idx_en, return_weighted=True)
        if self.cfg.index in LEARNED:
            return pooled, weighted, idx_de  # the authors' decoder sees the index-weighted features
        return pooled, x, (idx_de if self.cfg.index != "none" else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        if h % self.stride or w % self.stride:
            raise ValueError(f"IndexNet input must be a multiple of {self.stride} on each side, got {w}x{h} "
                             "(WIDTHxHEIGHT)")
        skips, indices = {}, {}
        feat = self.layer0(x)
        for i in range(1, 8):
            if i - 1 in POOLED_STAGES:
                feat, skips[i - 1], indices[i - 1] = self._pool(i - 1, feat)
            elif i - 1 in (1, 5):
                skips[i - 1] = feat
            feat = getattr(self, f"layer{i}")(feat)
        y = self.dconv_pp(feat)
        bilinear = self.cfg.index == "none"
        for stage in (6, 5, 4, 3, 2, 1, 0):
            y = getattr(self, f"decoder_layer{stage}")(y, skips[stage], indices.get(stage), bilinear)
        return self.pred(y)
