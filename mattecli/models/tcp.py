"""TCP matting (Liu, Ding, Jiang; WACV 2021): a semantic path plus a textural compensate path.

specs/tcp.md is the reference (no public code exists). Two parallel paths read the same 6-channel
input (normalised RGB + one-hot trimap: background, unknown, foreground):

- **Semantic path (SP)**: a U-Net on a ResNet-34 encoder. Each skip passes through `skip_convs`
  3x3 conv-BN-ReLU layers ("an adaption from low-level to high-level features") and is
  concatenated with the nearest-upsampled decoder features; two 3x3 conv-BN-ReLU per decoder
  stage; a last stage at full resolution without a skip; a 3x3 conv to one channel. Alone
  (`textural: false`) it is the paper's baseline.
- **Textural compensate path (TCP)**, downsampling-free: a 3x3 conv and two residual blocks at
  full resolution; the feature fusion unit (FFU) adds (or concatenates) `w_c` times the SP's
  second-layer features, projected by a 1x1 conv-BN-ReLU to the TCP width and nearest-resized to
  full size; two 3x3 refinement convs to one channel.

`alpha = tanh(SP + TCP)`; in eval mode the model clips it to [0, 1] (an exported graph ends in
Clip, so every backend returns what torch eval returns).

Choices the paper leaves open (each a `TCPConfig` field where it is a real alternative):
- "second layer" of the SP = the encoder's second stage in the ResNet paper's counting, conv2_x
  (our `encoder.layer1`, 1/4 resolution, 64 channels); `ffu_layer` picks another stage.
- The 1x1 projection runs at the source resolution *before* the nearest resize: a pointwise
  conv + BN + ReLU commutes with nearest upsampling by an integer factor (each source pixel is
  replicated, and BN batch statistics of the replicas equal those of the source), so the result
  is the same as projecting after the resize, at 1/scale^2 of the cost. `w_c` starts at 1.
- Decoder widths 256, 128, 64, 32, 16 (x `width`); nearest x2 upsampling (a plain Resize).
- TCP width 32 (`tcp_width`) and BN + ReLU after every TCP conv but the output, as the spec says.

Memory at full resolution: the TCP's receptive field is `TEXTURAL_RADIUS` = 7 pixels (seven 3x3
convs: 1 stem + 2 x 2 residual + 2 refinement; the FFU features enter before the last two). In eval
mode, `tcp_tile > 0` runs the TCP over row/column tiles of that side, each read with a margin of the
radius, so its peak memory is that of one tile; the result equals the untiled pass (BN is pointwise
in eval). (The whole pass still peaks in the SP decoder at 1/2 resolution: docs/recipes.md, "TCP".) Tiling is skipped while tracing/exporting (a Python loop over tiles would be frozen for
one size), where the graph is the untiled one.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mattecli.configs import TEXTURAL_RADIUS, TCPConfig
from mattecli.models.layers import BNAct, bn_relu, conv_norm_act
from mattecli.models.resnet import RESNET34_BLOCKS, RESNET34_CHANNELS, BasicBlock, make_stage

IN_CHANNELS = 6  # normalised RGB + one-hot trimap
DECODER_CHANNELS = (256, 128, 64, 32, 16)  # at 1/16, 1/8, 1/4, 1/2, 1


class ResNet34Encoder(nn.Module):
    """torchvision's ResNet-34 up to layer4 (no pooling, no fc) with a 6-channel stem.

    Names (`conv1`, `bn1`, `layer1..4.blockK.convs.convN`, `proj_conv`, `proj_bn`) are what the
    torchvision `--pretrained` map targets; the blocks use `relu`, as torchvision's do.
    """

    CONV_BN_PAIRS = (("conv1", "bn1"),)  # layers.fold_batchnorm

    def __init__(self, width: float = 1.0, in_channels: int = IN_CHANNELS):
        super().__init__()
        chans = [max(1, int(c * width)) for c in RESNET34_CHANNELS]
        self.channels = (chans[0], *chans)  # stem, layer1..layer4
        self.conv1 = nn.Conv2d(in_channels, chans[0], 7, 2, 3, bias=False)
        self.bn1 = BNAct(chans[0], "relu")
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = chans[0]
        for i, (cout, blocks) in enumerate(zip(chans, RESNET34_BLOCKS), start=1):
            self.add_module(f"layer{i}", make_stage(cin, cout, blocks, 1 if i == 1 else 2, "relu", first=1))
            cin = cout

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """-> [stem (1/2), layer1 (1/4), layer2 (1/8), layer3 (1/16), layer4 (1/32)]."""
        stem = self.bn1(self.conv1(x))
        feats = [stem]
        f = self.maxpool(stem)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            f = layer(f)
            feats.append(f)
        return feats


def _convs(cin: int, cout: int, count: int) -> nn.Sequential:
    """`count` 3x3 conv-BN-ReLU layers (the first cin -> cout); count 0 is the identity."""
    return nn.Sequential(*[conv_norm_act(cin if i == 0 else cout, cout, 3, norm_act=bn_relu) for i in range(count)])


class DecoderStage(nn.Module):
    """Nearest x2 upsampling, concatenation with the (adapted) skip, two 3x3 conv-BN-ReLU."""

    def __init__(self, cin: int, skip: int, cout: int, skip_convs: int):
        super().__init__()
        self.skip = _convs(skip, skip, skip_convs) if skip else None
        self.convs = _convs(cin + skip, cout, 2)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, self.skip(skip)], 1)
        return self.convs(x)


class UNetDecoder(nn.Module):
    """The SP decoder: five stages (1/16 .. 1) over the encoder features, a 3x3 conv to one channel."""

    def __init__(self, encoder_channels: tuple[int, ...], cfg: TCPConfig):
        super().__init__()
        enc = encoder_channels  # stem, layer1..layer4
        dec = [max(1, int(c * cfg.width)) for c in DECODER_CHANNELS]
        skips = (enc[3], enc[2], enc[1], enc[0], 0)  # layer3, layer2, layer1, stem; none at full size
        cin = enc[4]
        for i, (skip, cout) in enumerate(zip(skips, dec)):
            self.add_module(f"stage{i + 1}", DecoderStage(cin, skip, cout, cfg.skip_convs))
            cin = cout
        self.head = nn.Conv2d(cin, 1, 3, 1, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Encoder features [stem, layer1..layer4] -> raw one-channel output at full size."""
        y = feats[4]
        for i, skip in enumerate((feats[3], feats[2], feats[1], feats[0], None)):
            y = getattr(self, f"stage{i + 1}")(y, skip)
        return self.head(y)


class TexturalPath(nn.Module):
    """The downsampling-free path: spatial features, the FFU, refinement to one channel."""

    def __init__(self, cfg: TCPConfig, source_channels: int, source_scale: int):
        super().__init__()
        w = cfg.tcp_width
        self.ffu, self.scale = cfg.ffu, source_scale
        self.stem = conv_norm_act(IN_CHANNELS, w, 3, norm_act=bn_relu)
        self.block1 = BasicBlock(w, w, activation="relu")
        self.block2 = BasicBlock(w, w, activation="relu")
        self.project = conv_norm_act(source_channels, w, 1, norm_act=bn_relu)
        self.w_c = nn.Parameter(torch.ones(()))
        self.refine = nn.Sequential(conv_norm_act(2 * w if cfg.ffu == "concat" else w, w, 3, norm_act=bn_relu),
                                    nn.Conv2d(w, 1, 3, 1, 1))

    def semantic(self, source: torch.Tensor) -> torch.Tensor:
        """The SP features at their own resolution, projected and scaled (not yet resized)."""
        return self.w_c * self.project(source)

    def resized(self, sem: torch.Tensor, window: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """`sem` nearest-resized to full size, or only its full-size window [a:b, c:d].

        A window resizes just the source cells that cover it, then cuts it out: equal to slicing
        the whole resized map, without making it.
        """
        s = self.scale
        if window is None:
            return F.interpolate(sem, scale_factor=float(s), mode="nearest")
        a, b, c, d = window
        cells = sem[:, :, a // s:-(-b // s), c // s:-(-d // s)]
        up = F.interpolate(cells, scale_factor=float(s), mode="nearest")
        return up[:, :, a - a // s * s:b - a // s * s, c - c // s * s:d - c // s * s]

    def forward(self, x: torch.Tensor, sem: torch.Tensor, window: tuple[int, int, int, int] | None = None
                ) -> torch.Tensor:
        """x (N, 6, H, W) and `semantic(...)` at the source resolution -> raw (N, 1, H, W).

        With `window` (a, b, c, d), `x` is the full-size window [a:b, c:d] and so is the output.
        """
        spatial = self.block2(self.block1(self.stem(x)))
        up = self.resized(sem, window)  # made only now: one full-size map fewer alive above
        fused = spatial + up if self.ffu == "add" else torch.cat([spatial, up], 1)
        del spatial, up
        return self.refine(fused)


class TCPMatting(nn.Module):
    """6-channel input of side a multiple of 32 -> alpha (tanh; clipped to [0, 1] in eval mode).

    `forward(x, x_tcp)`: in training the TCP may read its own, noisier trimap (`x_tcp`, the same
    image with the second trimap); without it (inference) both paths read `x`.
    """

    stride = 32
    input_channels = IN_CHANNELS
    takes_second_trimap = True  # forward(x, x_tcp); the other families' forward takes one input

    def __init__(self, cfg: TCPConfig = TCPConfig()):
        super().__init__()
        self.cfg = cfg
        self.tcp_tile = cfg.tcp_tile  # an attribute, so a loaded model can be re-tiled at run time
        self.encoder = ResNet34Encoder(cfg.width)
        self.decoder = UNetDecoder(self.encoder.channels, cfg)
        if cfg.textural:
            layer = cfg.ffu_layer
            self.textural = TexturalPath(cfg, self.encoder.channels[layer], 2 ** (layer + 1))
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # torchvision's `zero_init_residual`: each residual block starts as the identity. Besides
        # helping training from scratch, it keeps a fresh model's activations at unit scale in
        # eval mode (otherwise they grow ~1000x over the encoder's 16 blocks, and a random
        # model's output is all saturated tanh).
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.convs.bn2.weight)

    def encoder_modules(self) -> list[nn.Module]:
        """The ResNet-34 encoder (pretrained, encoder learning rate, frozen BN when asked)."""
        return [self.encoder]

    def forward(self, x: torch.Tensor, x_tcp: torch.Tensor | None = None) -> torch.Tensor:
        h, w = x.shape[2:]
        if h % self.stride or w % self.stride:
            raise ValueError(f"TCP input must be a multiple of {self.stride} on each side, got {w}x{h} "
                             "(WIDTHxHEIGHT)")
        feats = self.encoder(x)
        raw = self.decoder(feats)
        if self.cfg.textural:
            sem = self.textural.semantic(feats[self.cfg.ffu_layer])
            del feats  # the encoder maps are no longer needed: free them before the full-size path
            x_tcp = x if x_tcp is None else x_tcp
            raw = raw + self._textural(x_tcp, sem)
        alpha = torch.tanh(raw)
        return alpha if self.training else alpha.clamp(0, 1)

    def _textural(self, x: torch.Tensor, sem: torch.Tensor) -> torch.Tensor:
        tile = self.tcp_tile
        exporting = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()
        h, w = x.shape[2:]
        # Tiles bound the full-resolution path's CPU memory. On a GPU the path runs whole: there the
        # peak is the semantic path's (estimated float16 at 3840x2160: 198 B per pixel untiled
        # against 191 in tiles of 512, benchmarks/cuda_estimate.py), and 40 tiles would launch 5x
        # the kernels, each too small to fill the GPU. Tiled equals untiled to float rounding.
        if self.training or exporting or tile == 0 or x.is_cuda or (h <= tile and w <= tile):
            return self.textural(x, sem)
        out = x.new_empty(x.shape[0], 1, h, w)
        r = TEXTURAL_RADIUS
        for y0 in range(0, h, tile):
            for x0 in range(0, w, tile):
                y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
                # the tile with a margin of the receptive-field radius, clipped at the image border
                a, b, c, d = max(y0 - r, 0), min(y1 + r, h), max(x0 - r, 0), min(x1 + r, w)
                y = self.textural(x[:, :, a:b, c:d], sem, (a, b, c, d))
                out[:, :, y0:y1, x0:x1] = y[:, :, y0 - a:y1 - a, x0 - c:x1 - c]
        return out
