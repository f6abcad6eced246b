"""The options of each model family: frozen dataclasses, validated on construction.

They live here, apart from the networks, because they import nothing heavy: reading a recipe (from
YAML, or from an exported model's metadata before running it in ONNX Runtime or TensorRT) never
imports torch. `models/<family>.py` builds the network from its config; `FAMILY_CONFIGS` is the
table `recipes` reads, `models.FAMILIES` the one that pairs each config with its network.
"""

from __future__ import annotations

from dataclasses import dataclass


def _check_at_most(config, **limits: float) -> None:
    """Sizes and counts far beyond any published model (`--set model.skip_convs=1000000000` built
    layers until memory ran out, a hang): the limits are generous (several times the largest
    published value) and only keep a typo from building a network that cannot fit anywhere."""
    for name, limit in limits.items():
        if getattr(config, name) > limit:
            raise ValueError(f"{name} must be at most {limit:g}, got {getattr(config, name)!r}")


# --- IndexNet (models/indexnet.py) -------------------------------------------------------------

LEARNED = ("holistic", "o2o", "m2o")
PARAMETER_FREE = ("max", "holistic-max", "none")


@dataclass(frozen=True)
class IndexNetConfig:
    """Options of the IndexNet family (defaults: the authors' released model)."""

    index: str = "m2o"  # holistic | o2o | m2o | max | holistic-max | none
    nonlinear: bool = True
    context: bool = True
    width_mult: float = 1.0
    aspp: bool = True
    decoder_kernel_size: int = 5

    def __post_init__(self):
        if self.index not in LEARNED + PARAMETER_FREE:
            raise ValueError(f"index must be one of {', '.join(LEARNED + PARAMETER_FREE)}, got {self.index!r}")
        if self.index in LEARNED and self.width_mult != 1.0:
            # The authors' index blocks have hard-coded channel counts; so do ours.
            raise ValueError("width_mult != 1 is only available for the parameter-free index variants")
        if self.width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {self.width_mult}")
        if self.decoder_kernel_size < 1 or self.decoder_kernel_size % 2 == 0:
            # an even kernel's 'same' padding loses a pixel per decoder stage: 64x64 in, 63x63 out
            raise ValueError(f"decoder_kernel_size must be odd and positive, got {self.decoder_kernel_size}")
        _check_at_most(self, width_mult=4, decoder_kernel_size=31)  # published: 1.4 and 5


# --- A2U (models/a2u.py) -----------------------------------------------------------------------

UPSAMPLERS = ("nearest", "bilinear", "a2u")
KERNELS = ("static", "hybrid", "dynamic")
ENCODINGS = ("cs", "cw")
FORMS = ("auto", "unfold", "shift")


@dataclass(frozen=True)
class A2UConfig:
    """Options of the A2U family (defaults: the authors' released channel-shared model).

    Attributes:
        upsample: nearest | bilinear (the baselines, with strided downsampling) | a2u.
        kernel: how U, V and P are made — static (learned weights), hybrid (P from the input's
            global pool), dynamic (U, V from its 6x6 pool, P from its global pool).
        encoding: cs (one U/V filter shared by all channels) | cw (one per channel, depthwise).
        pointwise: 4 U/V sets, one per sub-pixel position, and one P (static only).
        paired_down: the encoder's stride-2 steps become A2U downsampling (the paper's -d).
        group_norm: GroupNorm(32) + LeakyReLU after the U and V encodings (the paper's †).
        k_up: upsampling kernel side (downsampling kernels have side 2 * k_up).
        k_en: U/V encoding kernel side (paper 5; the released checkpoints 6).
        width: channel multiplier for every layer (1.0 = the paper; small for CPU demos).
        aspp: ASPP at 1/16 (else a 1x1 conv-BN-act).
        form: auto (unfold while training, shift in eval) | unfold | shift.
    """

    upsample: str = "a2u"
    kernel: str = "dynamic"
    encoding: str = "cs"
    pointwise: bool = False
    paired_down: bool = True
    group_norm: bool = True
    k_up: int = 3
    k_en: int = 6
    width: float = 1.0
    aspp: bool = True
    form: str = "auto"

    def __post_init__(self):
        for name, allowed in (("upsample", UPSAMPLERS), ("kernel", KERNELS), ("encoding", ENCODINGS),
                              ("form", FORMS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.k_up < 1 or self.k_up % 2 == 0:
            raise ValueError(f"k_up must be odd and positive, got {self.k_up}")
        if self.k_en < 1:
            raise ValueError(f"k_en must be positive, got {self.k_en}")
        if self.pointwise and (self.kernel != "static" or self.paired_down):
            raise ValueError("pointwise U/V sets are defined for static kernels without paired downsampling")
        if self.paired_down and self.upsample != "a2u":
            raise ValueError("paired_down needs upsample: a2u")
        if not 0 < self.width <= 1:
            raise ValueError(f"width must be in (0, 1], got {self.width}")
        _check_at_most(self, k_up=15, k_en=31)  # published: 3 (a larger one is no better) and 5 or 6


# --- TCP (models/tcp.py) -----------------------------------------------------------------------

FUSIONS = ("add", "concat")
TEXTURAL_RADIUS = 7  # 3x3 convs in the TCP: stem 1 + residual blocks 2 x 2 + refinement 2


@dataclass(frozen=True)
class TCPConfig:
    """Options of the TCP family (defaults: the full model of specs/tcp.md).

    Attributes:
        width: channel multiplier of the semantic path (encoder and decoder); 1.0 = ResNet-34.
        tcp_width: channels of the textural compensate path.
        ffu: how the FFU fuses the SP features with the TCP's: add | concat.
        ffu_layer: which encoder output feeds the FFU: 0 stem (1/2), 1..4 layer1..layer4
            (1/4 .. 1/32). Default 1 = conv2_x, the second layer in the ResNet paper's counting.
        textural: the TCP exists (False: the SP-only baseline).
        skip_convs: 3x3 conv-BN-ReLU layers on each skip connection.
        tcp_tile: in eval mode, run the TCP in tiles of this side (pixels; 0 = whole image).
    """

    width: float = 1.0
    tcp_width: int = 32
    ffu: str = "add"
    ffu_layer: int = 1
    textural: bool = True
    skip_convs: int = 2
    tcp_tile: int = 0

    def __post_init__(self):
        if self.ffu not in FUSIONS:
            raise ValueError(f"ffu must be one of {', '.join(FUSIONS)}, got {self.ffu!r}")
        if not 0 <= self.ffu_layer <= 4:
            raise ValueError(f"ffu_layer must be 0..4 (stem, layer1..layer4), got {self.ffu_layer}")
        if self.width <= 0 or self.tcp_width < 1 or self.skip_convs < 0 or self.tcp_tile < 0:
            raise ValueError("width and tcp_width must be positive, skip_convs and tcp_tile >= 0")
        if 0 < self.tcp_tile <= 2 * TEXTURAL_RADIUS:
            raise ValueError(f"tcp_tile must be 0 or larger than {2 * TEXTURAL_RADIUS}, got {self.tcp_tile}")
        _check_at_most(self, width=4, tcp_width=1024, skip_convs=32)  # published: 1, 32 and 2


FAMILY_CONFIGS = {"indexnet": IndexNetConfig, "a2u": A2UConfig, "tcp": TCPConfig}
