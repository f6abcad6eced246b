"""`matte train --pretrained FILE`: ImageNet encoders from torchvision-format state dicts.

Nothing can be downloaded at run time, so the user brings the file (e.g. torchvision's own
`mobilenet_v2-b0353104.pth`). Explicit key maps; the extra input channels of the stem (the
trimap) are zero-initialised, so the pretrained network initially ignores them.
"""

from __future__ import annotations

import re

import torch

from mattecli.errors import UsageError

# torchvision's MobileNetV2 `features.N` -> our (stage, block) for N = 1..17
_MBV2_BLOCKS = [(1, 0)] + [(2, i) for i in range(2)] + [(3, i) for i in range(3)] + [(4, i) for i in range(4)] \
    + [(5, i) for i in range(3)] + [(6, i) for i in range(3)] + [(7, 0)]
# inside a block: torchvision (t=1: conv.0.0 dw, conv.0.1, conv.1, conv.2; t=6: conv.0.0, conv.0.1,
# conv.1.0, conv.1.1, conv.2, conv.3) -> the authors' flat Sequential indices
_TV_T1 = {"conv.0.0": "conv.0", "conv.0.1": "conv.1", "conv.1": "conv.3", "conv.2": "conv.4"}
_TV_T6 = {"conv.0.0": "conv.0", "conv.0.1": "conv.1", "conv.1.0": "conv.3", "conv.1.1": "conv.4",
          "conv.2": "conv.6", "conv.3": "conv.7"}


def mobilenetv2_key(name: str) -> str | None:
    """A torchvision (or the older flat `conv.K`) MobileNetV2 key -> ours; None for unused tensors."""
    m = re.match(r"features\.(\d+)\.(.*)", name)
    if not m:
        return None  # classifier
    index, rest = int(m.group(1)), m.group(2)
    if index == 0:
        return "layer0." + rest
    if index > 17:
        return None  # the final 1x1 conv to 1280 channels is not part of the matting encoder
    stage, block = _MBV2_BLOCKS[index - 1]
    table = _TV_T1 if index == 1 else _TV_T6
    for prefix, ours in sorted(table.items(), key=lambda kv: -len(kv[0])):
        if rest.startswith(prefix + "."):
            rest = ours + rest[len(prefix):]
            break
    return f"layer{stage}.{block}.{rest}"


def load_pretrained_encoder(model, recipe, path) -> dict:
    """Copy a pretrained encoder into `model`; returns {"loaded": n, "ignored": [...]}."""
    from mattecli.weights import load_torch_checkpoint

    if recipe.family != "indexnet":
        raise UsageError(f"--pretrained: no ImageNet encoder map for the {recipe.family} family yet")
    source = load_torch_checkpoint(path)
    own = model.state_dict()
    mapped, ignored = {}, []
    for name, tensor in source.items():
        key = mobilenetv2_key(name)
        if key is None or key not in own:
            ignored.append(name)
            continue
        if key == "layer0.0.weight" and tensor.shape[1] < own[key].shape[1]:
            padded = torch.zeros_like(own[key])
            padded[:, : tensor.shape[1]] = tensor
            tensor = padded
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise UsageError(f"{path}: {name} has shape {tuple(tensor.shape)}, the encoder's {key} {tuple(own[key].shape)}")
        mapped[key] = tensor
    encoder_keys = [k for k in own if k.startswith("layer") and not k.endswith("num_batches_tracked")]
    missing = [k for k in encoder_keys if k not in mapped]
    if missing:
        raise UsageError(f"{path}: not a MobileNetV2 state dict; encoder tensors not filled: {', '.join(missing[:5])}")
    model.load_state_dict(mapped, strict=False)
    return {"loaded": len(mapped), "ignored": ignored}
