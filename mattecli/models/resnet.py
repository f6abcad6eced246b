"""ResNet basic blocks and stages, shared by the families built on ResNet-34 (A2U, TCP).

The blocks use one `BNAct` module per BN + activation (layers.py), so parameter names are those of
in-place-ABN checkpoints (`convs.conv1`, `convs.bn1`, ..., `proj_conv`, `proj_bn`). A torchvision
ResNet maps onto them by renaming alone (see `TORCHVISION_BLOCK_RENAMES`): its `bnN` is our
`convs.bnN`, its `downsample.0/1` our `proj_conv`/`proj_bn` (`TORCHVISION_SPLIT_BLOCK_RENAMES`
for a SplitBlock); only the activation may differ (A2U's leaky ReLU), which weights do not see.
"""

from __future__ import annotations

from collections import OrderedDict
import torch
import torch.nn as nn

from mattecli.models.layers import BNAct, activate_

RESNET34_BLOCKS = (3, 4, 6, 3)
RESNET34_CHANNELS = (64, 128, 256, 512)

# torchvision block-level names -> ours (prefixes like `layer1.0.` are the caller's to map)
TORCHVISION_BLOCK_RENAMES = {
    "conv1.": "convs.conv1.", "bn1.": "convs.bn1.", "conv2.": "convs.conv2.", "bn2.": "convs.bn2.",
    "downsample.0.": "proj_conv.", "downsample.1.": "proj_bn.",
}
# the same for a torchvision stride-2 block (`layerS.0`) onto a SplitBlock: conv1/bn1 live in its
# `layer1`, conv2/bn2 in its `layer2` (the A2U checkpoints' names)
TORCHVISION_SPLIT_BLOCK_RENAMES = {
    "conv1.": "layer1.conv1.", "bn1.": "layer1.bn1.", "conv2.": "layer2.conv2.", "bn2.": "layer2.bn2.",
    "downsample.0.": "proj_conv.", "downsample.1.": "proj_bn.",
}


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN, an identity or 1x1-projection shortcut, the activation after the sum.

    Args:
        cin: input channels.
        cout: output channels.
        stride: stride of the first 3x3 conv and of the projection.
        activation: `leaky_relu` (A2U, slope 0.01) or `relu` (torchvision).
        body: the name of the conv-BN sequence; the A2U checkpoints call it `convs` in the encoder
            and `dep_sep_conv` in the decoder (a misnomer there: the convs are full 3x3 convs).
    """

    CONV_BN_PAIRS = (("proj_conv", "proj_bn"),)  # layers.fold_batchnorm

    def __init__(self, cin: int, cout: int, stride: int = 1, activation: str = "leaky_relu",
                 body: str = "convs"):
        super().__init__()
        self.activation, self.body = activation, body
        setattr(self, body, nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(cin, cout, 3, stride, 1, bias=False)),
            ("bn1", BNAct(cout, activation)),
            ("conv2", nn.Conv2d(cout, cout, 3, 1, 1, bias=False)),
            ("bn2", BNAct(cout, "identity")),
        ])))
        if stride != 1 or cin != cout:
            self.proj_conv = nn.Conv2d(cin, cout, 1, stride, bias=False)
            self.proj_bn = BNAct(cout, "identity")
        else:
            self.proj_conv = self.proj_bn = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.proj_conv is None else self.proj_bn(self.proj_conv(x))
        return activate_(getattr(self, self.body)(x) + shortcut, self.activation, 0.01)


class SplitBlock(nn.Module):
    """A stride-2 basic block whose spatial reduction is a separate step between conv1 and conv2.

    `conv1 (stride 1) -> BN-act -> reduce -> conv2 -> BN`, plus a 1x1 stride-2 projection shortcut.
    With `reduce = x[..., ::2, ::2]` this is numerically an ordinary stride-2 basic block (a stride-2
    conv is a stride-1 conv sampled at even positions, and BN-act is pointwise), while conv1's
    full-resolution output stays available to guide learned down/upsampling (A2U). Callers run
    `head`, reduce as they like, then `tail`; `forward` is the ordinary block.

    Names follow the A2U checkpoints: `layer1` (conv1, bn1), `layer2` (conv2, bn2), the `extras`
    (e.g. A2U's kernel generator `bilinear`), then `proj_conv`, `proj_bn`.

    Args:
        cin: input channels.
        cout: output channels.
        activation: `leaky_relu` or `relu`.
        strided_conv1: fold the reduction into conv1 (cheaper) when nobody needs its full-res output.
        extras: modules registered between `layer2` and the projection.
    """

    CONV_BN_PAIRS = (("proj_conv", "proj_bn"),)  # layers.fold_batchnorm

    def __init__(self, cin: int, cout: int, activation: str = "leaky_relu", strided_conv1: bool = False,
                 extras: dict[str, nn.Module] | None = None):
        super().__init__()
        self.activation = activation
        self.strided_conv1 = strided_conv1
        self.layer1 = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(cin, cout, 3, 2 if strided_conv1 else 1, 1, bias=False)),
            ("bn1", BNAct(cout, activation))]))
        self.layer2 = nn.Sequential(OrderedDict([
            ("conv2", nn.Conv2d(cout, cout, 3, 1, 1, bias=False)),
            ("bn2", BNAct(cout, "identity"))]))
        for name, module in (extras or {}).items():
            self.add_module(name, module)
        self.proj_conv = nn.Conv2d(cin, cout, 1, 2, bias=False)
        self.proj_bn = BNAct(cout, "identity")

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """conv1 -> BN-act: at full resolution, or already reduced if `strided_conv1`."""
        return self.layer1(x)

    def tail(self, x: torch.Tensor, reduced: torch.Tensor) -> torch.Tensor:
        """conv2 -> BN on the reduced map, plus the projection of the block input, activated."""
        y = self.layer2(reduced) + self.proj_bn(self.proj_conv(x))
        return activate_(y, self.activation, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.head(x)
        return self.tail(x, pre if self.strided_conv1 else pre[..., ::2, ::2])


def make_stage(cin: int, cout: int, blocks: int, stride: int = 1, activation: str = "leaky_relu",
               first: int = 1) -> nn.Sequential:
    """Basic blocks named `block{first}`, `block{first+1}`, ...; the first one carries the stride."""
    layers = OrderedDict()
    for i in range(blocks):
        layers[f"block{first + i}"] = BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, activation)
    return nn.Sequential(layers)
