"""A2U matting (Dai, Lu, Shen; CVPR 2021): affinity-aware up/downsampling on a ResNet-34 encoder.

The operator (specs/a2u.md) reassembles a feature map with one k x k kernel per output position,
CARAFE-style, where the kernels come from the *encoder* features X: a rank-1 bilinear form
`a = sum_c (U*X)_c (V*X)_c / sqrt(C)` at half resolution, turned into 4 kernels per position by P.

Each operator exists in two numerically equal forms, chosen per kernel-generator module by its
`form` attribute (`set_a2u_form` sets every one):

- `unfold`: `F.unfold` + einsum (and grouped convs, adaptive pooling) — few, large kernels;
  the training default.
- `shift`: pad + k^2 (strided) slices + multiply-add, adaptive pooling as bin-matrix products,
  pixel (un)shuffle — exports with dynamic H/W, without Im2Col or adaptive pooling. Its slice
  bounds do not depend on the input size (fixed pads, ends counted from the far edge) and, when
  traced for export, U and V share one chain of taps, so an export holds one Slice, one Mul and
  one Add per tap and no shape arithmetic for them (`exporters.onnx.compact` does the rest).
  It is also the eval default (`auto`): unfold materialises (2k)^2 = 36 shifted copies of the
  full-resolution stem map for the first downsampling (9x that map). Peak RSS of one forward of
  the released network on CPU (float32, no grad, 1x4xSxS): S=1024 shift 1.9 GiB, unfold 3.1 GiB;
  S=2048 shift 6.3 GiB, unfold 11.6 GiB (tests/test_a2u.py::test_memory_2048, marked slow).
  In training (2x4x256x256, forward + backward) the peaks are alike (2.3 vs 2.1 GiB) and unfold
  was the faster of the two on a 2-core CPU, so `auto` keeps it there.
  Run eagerly (not traced), the shift form sums its taps in place, and the U/V filters (the same
  filter at every position, a depthwise convolution) are applied by the grouped convolution in
  both forms: the taps are for export.

Variants are options of one dataclass: the baselines (nearest/bilinear upsampling, strided
downsampling), static / hybrid / dynamic kernel generation, channel-wise (cw) or channel-shared (cs)
U/V encodings, point-wise (pw) U/V sets, paired A2U downsampling (-d) and GroupNorm after U/V (†).
Parameter names of the released configurations equal the authors' checkpoints (specs/
a2u_official_keys_*.json), so importing them is a rename of `module.` plus the |w| + eps of
in-place ABN (mattecli/weights.py).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from mattecli.configs import FORMS, A2UConfig
from mattecli.models.layers import ASPP, bn_leaky, conv_norm_act
from mattecli.models.resnet import BasicBlock, SplitBlock, make_stage


# ----------------------------------------------------------------------------------------------
# The reassembly operators, in two forms each


def upsample_unfold(m: torch.Tensor, kernels: torch.Tensor, k: int) -> torch.Tensor:
    """x2 upsampling: `out[Y, X] = sum_t kernels[t, Y, X] * m[Y//2 + dy_t - k//2, X//2 + dx_t - k//2]`.

    Args:
        m: (N, C, h, w) features.
        kernels: (N, k*k, 2h, 2w), tap t = k * dy + dx (row-major).
        k: kernel side (odd).
    """
    n, c, h, w = m.shape
    cols = F.unfold(m, k, padding=k // 2).view(n, c, k * k, h, w)
    per_subpixel = F.pixel_unshuffle(kernels, 2).view(n, k * k, 4, h, w)
    out = torch.einsum("nckhw,nkshw->ncshw", cols, per_subpixel)
    return F.pixel_shuffle(out.reshape(n, c * 4, h, w), 2)


def _window(padded: torch.Tensor, dy: int, dx: int, side: int, stride: int) -> torch.Tensor:
    """Tap (dy, dx) of a side x side window sliding by `stride` over the last two axes:
    `padded[..., dy + stride * i, dx + stride * j]` for every window position (i, j).

    The slice ends are counted from the far edge (the window's remaining side - 1), so they are the
    same for every input size: an export writes them as constants, not as shape arithmetic.
    """
    def axis(d: int) -> slice:
        end = d - (side - 1)
        return slice(d, end if end < 0 else None, stride)
    return padded[..., axis(dy), axis(dx)]


def _multiply_add(windows: list[torch.Tensor], weights: list[torch.Tensor]) -> torch.Tensor:
    """`sum_t windows[t] * weights[t]` (broadcast), summed in tap order.

    Traced for export it is one Mul and one Add per tap. Run eagerly, each tap after the first is
    one in-place `addcmul_` into the sum, in the same order, without a product tensor the size of
    the output written and read back per tap (A2U's taps were most of its memory traffic:
    benchmarks/cuda_estimate.py). The two differ by float rounding only (addcmul may fuse the
    multiply and the add: 1 ulp on a CPU). Autograd allows it: neither a product's nor an
    addcmul's backward reads its output."""
    traced = torch.jit.is_tracing()
    acc = windows[0] * weights[0]
    for window, weight in zip(windows[1:], weights[1:]):
        acc = acc + window * weight if traced else acc.addcmul_(window, weight)
    return acc


def upsample_shift(m: torch.Tensor, kernels: torch.Tensor, k: int) -> torch.Tensor:
    """`upsample_unfold` as pad + k^2 slices + multiply-add at low resolution, then DepthToSpace."""
    n, c, h, w = m.shape
    padded = F.pad(m, (k // 2,) * 4).unsqueeze(2)  # (n, c, 1, h + k - 1, w + k - 1)
    # tap t's 4 sub-pixel kernels (s = 2i + j): channels 4t .. 4t + 3 of the unshuffled map
    per_tap = F.pixel_unshuffle(kernels, 2).unsqueeze(1).split(4, dim=2)
    acc = _multiply_add([_window(padded, *divmod(t, k), k, 1) for t in range(k * k)], per_tap)
    return F.pixel_shuffle(acc.reshape(n, c * 4, h, w), 2)


def _down_pad(m: torch.Tensor, k: int) -> torch.Tensor:
    """Zero padding so output p reads rows 2p-(k-1) .. 2p+k (as the authors' CUDA kernel).

    k - 1 rows before and k after, whatever the size: the last window of an odd side reads the
    k-th, that of an even side stops short of it. Fixed amounts export as constants.
    """
    return F.pad(m, (k - 1, k, k - 1, k))


def downsample_unfold(m: torch.Tensor, kernels: torch.Tensor, k: int) -> torch.Tensor:
    """x2 downsampling with 2k x 2k kernels: `out[p, q] = sum_t kernels[t, p, q] * m[2p-(k-1)+dy_t, 2q-(k-1)+dx_t]`.

    Args:
        m: (N, C, H, W) features.
        kernels: (N, 4*k*k, h, w) with h = ceil(H/2), w = ceil(W/2); tap t = 2k * dy + dx.
        k: the upsampling kernel side; the downsampling kernel side is 2k.
    """
    n, c = m.shape[:2]
    h, w = kernels.shape[2:]
    cols = F.unfold(_down_pad(m, k), 2 * k, stride=2).view(n, c, 4 * k * k, h, w)
    return torch.einsum("nckhw,nkhw->nchw", cols, kernels)


def downsample_shift(m: torch.Tensor, kernels: torch.Tensor, k: int) -> torch.Tensor:
    """`downsample_unfold` as pad + (2k)^2 stride-2 slices + multiply-add."""
    padded = _down_pad(m, k)
    taps = [_window(padded, *divmod(t, 2 * k), 2 * k, 2) for t in range(4 * k * k)]
    return _multiply_add(taps, kernels.split(1, dim=1))


def _bins(size: int, bins: int, like: torch.Tensor) -> torch.Tensor:
    """(bins, size) averaging matrix of PyTorch's adaptive pooling: bin i is [floor(i*n/b), ceil((i+1)*n/b))."""
    i = torch.arange(bins, device=like.device)
    start = (i * size) // bins
    end = ((i + 1) * size + bins - 1) // bins
    j = torch.arange(size, device=like.device)
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    return inside.to(like.dtype) / (end - start).to(like.dtype)[:, None]


def adaptive_avg_pool_bins(x: torch.Tensor, bins: int | tuple[int, int]) -> torch.Tensor:
    """`F.adaptive_avg_pool2d(x, bins)` as two matrix products, which export with dynamic H/W."""
    rows, cols = (bins, bins) if isinstance(bins, int) else bins
    return _bins(x.shape[2], rows, x) @ x @ _bins(x.shape[3], cols, x).t()


def _filter_grouped(x: torch.Tensor, weight: torch.Tensor, pad: int) -> torch.Tensor:
    """Stride-2 depthwise cross-correlation with (1 or N, 1 or C, k, k) filters, via a grouped conv."""
    n, c, h, w = x.shape
    k = weight.shape[-1]
    if weight.shape[0] == 1:
        return F.conv2d(x, weight.expand(1, c, k, k).reshape(c, 1, k, k), stride=2, padding=pad, groups=c)
    y = F.conv2d(x.reshape(1, n * c, h, w), weight.expand(n, c, k, k).reshape(n * c, 1, k, k),
                 stride=2, padding=pad, groups=n * c)
    return y.view(n, c, *y.shape[2:])


def _filter_shift(x: torch.Tensor, weights: torch.Tensor, pad: int) -> torch.Tensor:
    """`_filter_grouped` for F filters at once, as pad + k^2 stride-2 slices + multiply-add.

    Args:
        x: (N, C, H, W).
        weights: (1 or N, F, 1 or C, k, k): F filters (U and V) that read the same slices.
        pad: zero padding on each side.

    Returns:
        (N, F, C, h, w), filter f's output at [:, f].
    """
    k = int(weights.shape[-1])  # a parameter's size, fixed: one slice per tap in an export
    padded = F.pad(x, (pad,) * 4).unsqueeze(1)  # (N, 1, C, H + 2 pad, W + 2 pad)
    per_tap = weights.flatten(3).unsqueeze(-1).split(1, dim=3)  # tap k * dy + dx: (1|N, F, 1|C, 1, 1)
    return _multiply_add([_window(padded, *divmod(t, k), k, 2) for t in range(k * k)], per_tap)


# ----------------------------------------------------------------------------------------------
# Kernel generation


def _norm_act(channels: int) -> nn.Sequential:
    # 32 groups as the authors; fewer where a narrow demo model has fewer channels
    return nn.Sequential(nn.GroupNorm(math.gcd(32, channels), channels), nn.LeakyReLU(0.01))


class A2UKernels(nn.Module):
    """Makes the up (and, if paired, down) kernels of one A2U site from encoder features X.

    Registered as `bilinear*` in the network, with the authors' submodule names: `bnu`, `bnv`
    (GroupNorm + LeakyReLU), `bconv_UP`/`bconv_DP` (global pool + 1x1 conv: P for up/down),
    `bconv_U`/`bconv_V` (6x6 pool + 1x1 conv: the U/V filters). Static and hybrid variants keep
    U/V (and P) as plain parameters `weight_u`, `weight_v` (`weight_p_up`, `weight_p_down`).

    The module also applies its kernels (`upsample`, `downsample`), in the form chosen by `form`.
    """

    def __init__(self, channels: int, cfg: A2UConfig, paired_down: bool):
        super().__init__()
        self.channels, self.cfg, self.paired_down = channels, cfg, paired_down
        self.form = cfg.form
        k, ke = cfg.k_up, cfg.k_en
        self.pad = (ke - 1) // 2  # the authors' padding: output p reads rows 2p-pad .. 2p-pad+ke-1
        taps = 4 * k * k  # P outputs: 4 sub-pixel kernels of k^2 taps, or one 2k x 2k down kernel
        sets = 4 if cfg.pointwise else 1
        if cfg.group_norm:
            self.bnu, self.bnv = _norm_act(channels), _norm_act(channels)
        p_out = k * k if cfg.pointwise else taps
        if cfg.kernel == "static":
            self.weight_p_up = nn.Parameter(torch.randn(p_out))
            if paired_down:
                self.weight_p_down = nn.Parameter(torch.randn(taps))
        else:
            # Sequential(pool, conv) for the checkpoints' `bconv_*.1` names; forward pools itself (form)
            self.bconv_UP = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, p_out, 1))
            if paired_down:
                self.bconv_DP = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, taps, 1))
        uv_channels = 1 if cfg.encoding == "cs" else channels
        if cfg.kernel == "dynamic":
            self.bconv_U = nn.Sequential(nn.AdaptiveAvgPool2d(ke), nn.Conv2d(channels, uv_channels, 1))
            self.bconv_V = nn.Sequential(nn.AdaptiveAvgPool2d(ke), nn.Conv2d(channels, uv_channels, 1))
        else:
            std = 1 / ke  # unit gain for a ke x ke filter
            self.weight_u = nn.Parameter(torch.randn(sets, uv_channels, ke, ke) * std)
            self.weight_v = nn.Parameter(torch.randn(sets, uv_channels, ke, ke) * std)

    def _shift(self) -> bool:
        return self.form == "shift" or (self.form == "auto" and not self.training)

    def _filters(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The U filters, then the V filters: one (1 or N, 1 or C, ke, ke) tensor per set each."""
        if self.cfg.kernel == "dynamic":  # both from one ke x ke pooling of X
            ke = self.cfg.k_en
            pooled = adaptive_avg_pool_bins(x, ke) if self._shift() else F.adaptive_avg_pool2d(x, ke)
            return [self.bconv_U[1](pooled), self.bconv_V[1](pooled)]  # (N, 1 or C, ke, ke)
        return [*self.weight_u.unsqueeze(1), *self.weight_v.unsqueeze(1)]  # sets x (1, 1|C, ke, ke) each

    def _encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """U*X and V*X at half resolution: one (N, C, h, w) map per U/V set each."""
        filters = self._filters(x)
        if self._shift() and torch.jit.is_tracing():  # an export: U and V share one chain of taps
            maps = list(_filter_shift(x, torch.stack(filters, 1), self.pad).unbind(1))
        else:
            # run eagerly, in either form, a grouped convolution: it reads X once where the taps
            # read it k^2 times (4x faster on a CPU at 1024x1024, 64 channels; a fifth of A2U's
            # estimated float16 memory traffic on CUDA was these taps), with the same sums
            maps = [_filter_grouped(x, f, self.pad) for f in filters]
        sets = len(filters) // 2
        for which, start in (("u", 0), ("v", sets)):
            norm = getattr(self, f"bn{which}", None)
            if norm is not None:
                maps[start:start + sets] = [norm(m) for m in maps[start:start + sets]]
        return maps[:sets], maps[sets:]

    def _p(self, x: torch.Tensor, which: str) -> torch.Tensor:
        """P as (1 or N, outputs, 1, 1)."""
        if self.cfg.kernel == "static":
            return getattr(self, f"weight_p_{which}").view(1, -1, 1, 1)
        conv = getattr(self, "bconv_UP" if which == "up" else "bconv_DP")[1]
        return conv(x.mean((2, 3), keepdim=True))  # global pool: ReduceMean in either form

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (up kernels (N, k^2, H, W), down kernels (N, 4k^2, H/2, W/2) or None)."""
        k = self.cfg.k_up
        u, v = self._encode(x)
        scale = 1 / math.sqrt(self.channels)
        affinity = torch.cat([(a * b).sum(1, keepdim=True) for a, b in zip(u, v)], 1) * scale
        if self.cfg.pointwise:  # (N, 4, h, w) maps, one per sub-pixel s, times P's k^2 values
            n, _, h, w = affinity.shape
            logits = (affinity.unsqueeze(1) * self._p(x, "up").unsqueeze(2)).reshape(n, 4 * k * k, h, w)
        else:
            logits = affinity * self._p(x, "up")
        up = torch.sigmoid(F.pixel_shuffle(logits, 2))  # channel 4t + 2i + j -> tap t at sub-pixel (i, j)
        if k > 1:
            up = torch.softmax(up, dim=1)
        down = torch.softmax(affinity * self._p(x, "down"), dim=1) if self.paired_down else None
        if torch.is_autocast_enabled(x.device.type):
            # autocast runs a softmax in float32; the features the kernels weight are in its lower
            # precision, and float32 kernels would make every sum of taps, and A2U's decoder from
            # there on, float32 (its peak memory and most of its memory traffic:
            # benchmarks/cuda_estimate.py). The unfold form's einsum casts them to it anyway.
            dtype = torch.get_autocast_dtype(x.device.type)
            up, down = up.to(dtype), (down.to(dtype) if down is not None else None)
        return up, down

    def upsample(self, m: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
        """x2 A2U upsampling of decoder features `m` with this site's up kernels."""
        return (upsample_shift if self._shift() else upsample_unfold)(m, kernels, self.cfg.k_up)

    def downsample(self, m: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
        """x2 A2U downsampling of encoder features `m` with this site's down kernels."""
        return (downsample_shift if self._shift() else downsample_unfold)(m, kernels, self.cfg.k_up)


def set_a2u_form(model: nn.Module, form: str) -> nn.Module:
    """Selects the operator form of every A2U site: `unfold`, `shift` (exportable) or `auto`."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
    for module in model.modules():
        if isinstance(module, A2UKernels):
            module.form = form
    return model


# ----------------------------------------------------------------------------------------------
# The network


class DecoderStage(nn.Module):
    """Upsampled features + shortcut -> two 3x3 residual blocks (`dconv`, `dconv1`)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.dconv = BasicBlock(cin, cout, body="dep_sep_conv")
        self.dconv1 = BasicBlock(cout, cout, body="dep_sep_conv")

    def forward(self, upsampled: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        return self.dconv1(self.dconv(upsampled + shortcut))


class Encoded(NamedTuple):
    """What the encoder hands the decoder: shortcut sources, the 1/16 map, the up kernels."""

    half: torch.Tensor  # 1/2, stem channels
    quarter: torch.Tensor  # 1/4, stage-1 output
    eighth: torch.Tensor  # 1/8, stage-2 output
    deep: torch.Tensor  # 1/16, stage-3 output
    up_kernels: tuple  # for the decoder stages at 1, 1/2, 1/4, 1/8 (None entries for baselines)


class A2UMatting(nn.Module):
    """4-channel input (normalised RGB, trimap/255) of side a multiple of 16 -> raw alpha."""

    stride = 16
    input_channels = 4

    def __init__(self, cfg: A2UConfig = A2UConfig()):
        super().__init__()
        self.cfg = cfg
        a2u = cfg.upsample == "a2u"
        c32, c64, c128, c256 = (max(1, int(c * cfg.width)) for c in (32, 64, 128, 256))
        # Without A2U no full-resolution encoder map is needed: stride the convs themselves.
        self.layer0 = conv_norm_act(4, c64, 7, stride=1 if a2u else 2, norm_act=bn_leaky)
        if a2u:
            self.bilinear0 = A2UKernels(c64, cfg, cfg.paired_down)
            self.bilinear1 = A2UKernels(c64, cfg, cfg.paired_down)

        def split(cin, cout):
            extras = {"bilinear": A2UKernels(cout, cfg, cfg.paired_down)} if a2u else None
            return SplitBlock(cin, cout, strided_conv1=not a2u, extras=extras)

        self.layer1 = make_stage(c64, c64, 3)
        self.layer2_1 = split(c64, c128)
        self.layer2_2 = make_stage(c128, c128, 3)
        self.layer3_1 = split(c128, c256)
        self.layer3_2 = make_stage(c256, c256, 3)
        if cfg.aspp:
            self.dconv_pp = ASPP(c256, c256, c256, dilations=(6, 12, 18), norm_act=bn_leaky)
        else:
            self.dconv_pp = conv_norm_act(c256, c256, 1, norm_act=bn_leaky)
        self.decoder_layer4 = DecoderStage(c256, c128)
        self.decoder_layer3 = DecoderStage(c128, c64)
        self.decoder_layer2 = DecoderStage(c64, c64)
        self.decoder_layer1 = DecoderStage(c64, c32)
        self.short3 = conv_norm_act(c128, c256, 3, norm_act=bn_leaky)
        self.short2 = conv_norm_act(c64, c128, 3, norm_act=bn_leaky)
        self.short1 = conv_norm_act(c64, c64, 3, norm_act=bn_leaky)
        self.short0 = conv_norm_act(4, c64, 3, norm_act=bn_leaky)
        self.pred = nn.Sequential(conv_norm_act(c32, 1, 3, norm_act=bn_leaky), nn.Conv2d(1, 1, 3, 1, 1, bias=False))
        self._init_weights()

    def _init_weights(self):
        # the authors' (resnet.py:657-683, config/default.py:31-36): xavier_normal_ with the gain of
        # LeakyReLU(0.01) on every conv; the pretrained encoder then replaces its own
        gain = nn.init.calculate_gain("leaky_relu", 0.01)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight, gain=gain)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def a2u_sites(self) -> list[A2UKernels]:
        """The kernel generators, full resolution first (empty for the baselines)."""
        return [m for m in self.modules() if isinstance(m, A2UKernels)]

    def encoder_modules(self) -> list[nn.Module]:
        """The ResNet-34 part (pretrained, low learning rate, frozen BN) — without the A2U sites."""
        modules = [self.layer0, self.layer1, self.layer2_2, self.layer3_2]
        for block in (self.layer2_1, self.layer3_1):
            modules += [block.layer1, block.layer2, block.proj_conv, block.proj_bn]
        return modules

    def _split(self, block: SplitBlock, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A stride-2 block: (its output, the up kernels made from its conv1 output, if A2U)."""
        pre = block.head(x)
        if self.cfg.upsample != "a2u":
            return block.tail(x, pre), None  # conv1 was strided
        up, down = block.bilinear(pre)
        reduced = block.bilinear.downsample(pre, down) if down is not None else pre[..., ::2, ::2]
        return block.tail(x, reduced), up

    def encode(self, x: torch.Tensor) -> Encoded:
        """The encoder: shortcut sources, the 1/16 map and the decoder's up kernels."""
        k0 = k1 = None
        f = self.layer0(x)
        if self.cfg.upsample == "a2u":
            # the stem runs at full resolution; its reduction to 1/2 is A2U or a stride-2 sampling
            k0, down = self.bilinear0(f)
            half = self.bilinear0.downsample(f, down) if down is not None else f[..., ::2, ::2]
            k1, down = self.bilinear1(half)
            f = self.bilinear1.downsample(half, down) if down is not None else F.max_pool2d(half, 3, 2, 1)
        else:
            half = f
            f = F.max_pool2d(half, 3, 2, 1)
        quarter = self.layer1(f)
        f, k2 = self._split(self.layer2_1, quarter)
        eighth = self.layer2_2(f)
        f, k3 = self._split(self.layer3_1, eighth)
        return Encoded(half, quarter, eighth, self.layer3_2(f), (k0, k1, k2, k3))

    def _upsample(self, y: torch.Tensor, site: A2UKernels | None, kernels: torch.Tensor | None) -> torch.Tensor:
        if site is not None:
            return site.upsample(y, kernels)
        mode = self.cfg.upsample
        return F.interpolate(y, scale_factor=2, mode=mode, align_corners=False if mode == "bilinear" else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        if h % self.stride or w % self.stride:
            raise ValueError(f"A2U input must be a multiple of {self.stride} on each side, got {w}x{h} "
                             "(WIDTHxHEIGHT)")
        enc = self.encode(x)
        a2u = self.cfg.upsample == "a2u"
        sites = (self.bilinear0, self.bilinear1, self.layer2_1.bilinear, self.layer3_1.bilinear) if a2u else (None,) * 4
        y = self.dconv_pp(enc.deep)
        y = self.decoder_layer4(self._upsample(y, sites[3], enc.up_kernels[3]), self.short3(enc.eighth))
        y = self.decoder_layer3(self._upsample(y, sites[2], enc.up_kernels[2]), self.short2(enc.quarter))
        y = self.decoder_layer2(self._upsample(y, sites[1], enc.up_kernels[1]), self.short1(enc.half))
        y = self.decoder_layer1(self._upsample(y, sites[0], enc.up_kernels[0]), self.short0(x))
        return self.pred(y)
