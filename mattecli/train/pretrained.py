"""`matte train --pretrained FILE`: ImageNet encoders from torchvision-format state dicts, or from the
checkpoints the authors initialised from, in their layouts.

Nothing can be downloaded at run time, so the user brings the file: torchvision's own
`mobilenet_v2-b0353104.pth` or `resnet34-b627a593.pth`, or the authors' (IndexNet: CSAIL's
`mobilenet_v2.pth.tar`, flat `features.N.conv.K` keys, as hlmobilenetv2.py:1177-1194 loads it; A2U:
the InPlace-ABN ResNet-34 `resnet34.pth.tar`, `module.modN.blockB` keys, as resnet.py:700-718 loads
it). The layout is recognised from the keys. One explicit key map per family and layout
(`ENCODER_MAPS`): IndexNet's encoder is MobileNetV2, A2U's and TCP's are ResNet-34. The extra input
channels of the stem (the trimap) are zero-initialised, so the pretrained network initially
ignores them. Coverage is strict: every tensor of the model's encoder (`encoder_modules()`) must be
filled, or loading fails naming the first missing ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

from mattecli.errors import UsageError
from mattecli.models.resnet import TORCHVISION_BLOCK_RENAMES, TORCHVISION_SPLIT_BLOCK_RENAMES

# --- MobileNetV2 -> IndexNet -----------------------------------------------------------------------

# torchvision's MobileNetV2 `features.N` -> our (stage, block) for N = 1..17
_MBV2_BLOCKS = [(1, 0)] + [(2, i) for i in range(2)] + [(3, i) for i in range(3)] + [(4, i) for i in range(4)] \
    + [(5, i) for i in range(3)] + [(6, i) for i in range(3)] + [(7, 0)]
# inside a block: torchvision (t=1: conv.0.0 dw, conv.0.1, conv.1, conv.2; t=6: conv.0.0, conv.0.1,
# conv.1.0, conv.1.1, conv.2, conv.3) -> the authors' flat Sequential indices
_TV_T1 = {"conv.0.0": "conv.0", "conv.0.1": "conv.1", "conv.1": "conv.3", "conv.2": "conv.4"}
_TV_T6 = {"conv.0.0": "conv.0", "conv.0.1": "conv.1", "conv.1.0": "conv.3", "conv.1.1": "conv.4",
          "conv.2": "conv.6", "conv.3": "conv.7"}


def _rename(rest: str, table: dict[str, str]) -> str:
    """Replace the longest matching prefix of `rest` from `table` (keys end with '.')."""
    for prefix in sorted(table, key=len, reverse=True):
        if rest.startswith(prefix):
            return table[prefix] + rest[len(prefix):]
    return rest


def mobilenetv2_key(name: str, flat: bool = False) -> str | None:
    """A torchvision MobileNetV2 key, or mmagic's (`layers.N...` of its IndexNetEncoder,
    `backbone.encoder.` optional) -> IndexNet's; None for unused tensors. `flat`: the CSAIL
    checkpoint the IndexNet code loads, whose blocks keep the flat `conv.K` indices IndexNet has."""
    mm = re.fullmatch(r"(?:backbone\.)?(?:encoder\.)?(layers\.\d+\..*)", name)
    if mm:
        from mattecli.weights import mmagic_indexnet_key
        return mmagic_indexnet_key("encoder." + mm.group(1))
    m = re.match(r"features\.(\d+)\.(.*)", name)
    if not m:
        return None  # classifier
    index, rest = int(m.group(1)), m.group(2)
    if index == 0:
        return "layer0." + rest
    if index > 17:
        return None  # the final 1x1 conv to 1280 channels is not part of the matting encoder
    stage, block = _MBV2_BLOCKS[index - 1]
    if flat:
        return f"layer{stage}.{block}." + rest
    table = _TV_T1 if index == 1 else _TV_T6
    return f"layer{stage}.{block}." + _rename(rest, {k + ".": v + "." for k, v in table.items()})


# --- ResNet-34 -> A2U and TCP ----------------------------------------------------------------------

_RESNET_BLOCK = re.compile(r"layer(\d)\.(\d+)\.(.*)")


def a2u_resnet34_key(name: str) -> str | None:
    """A torchvision ResNet-34 key -> A2U's (GCA-Matting's encoder layout); None for unused tensors.

    A2U keeps the stem (7x7 conv, `layer0`), stage 1 (`layer1.block1..3`) and stages 2-3 as a
    stride-2 SplitBlock (`layerS_1`, torchvision's `layerS.0`) followed by plain blocks
    (`layerS_2.block1..`, torchvision's `layerS.1..`); stage 3 keeps 4 of its 6 blocks and stage 4
    is absent, so those tensors come back as keys the model does not have (and are skipped).
    """
    if name.startswith("conv1."):
        return "layer0.0." + name[len("conv1."):]
    if name.startswith("bn1."):
        return "layer0.1." + name[len("bn1."):]
    m = _RESNET_BLOCK.fullmatch(name)
    if not m or m.group(1) == "4":
        return None  # fc, stage 4
    stage, block, rest = int(m.group(1)), int(m.group(2)), m.group(3)
    if stage == 1:
        return f"layer1.block{block + 1}." + _rename(rest, TORCHVISION_BLOCK_RENAMES)
    if block == 0:
        return f"layer{stage}_1." + _rename(rest, TORCHVISION_SPLIT_BLOCK_RENAMES)
    return f"layer{stage}_2.block{block}." + _rename(rest, TORCHVISION_BLOCK_RENAMES)


def tcp_resnet34_key(name: str) -> str | None:
    """A torchvision ResNet-34 key -> TCP's semantic-path encoder (`encoder.conv1`, `encoder.bn1`,
    `encoder.layerS.block{i+1}`); None for the classifier."""
    if name.startswith(("conv1.", "bn1.")):
        return "encoder." + name
    m = _RESNET_BLOCK.fullmatch(name)
    if not m:
        return None  # fc
    stage, block, rest = m.groups()
    return f"encoder.layer{stage}.block{int(block) + 1}." + _rename(rest, TORCHVISION_BLOCK_RENAMES)


def a2u_abn_resnet34_key(name: str) -> str | None:
    """A key of the InPlace-ABN ResNet-34 the A2U code initialises from -> A2U's (resnet.py:29-210:
    `modN` is stage N-1, the first block of stages 2-3 a SplitBlock); None for unused tensors."""
    m = re.fullmatch(r"mod(\d)\.(.*)", name)
    if not m:
        return None  # classifier
    mod, rest = int(m.group(1)), m.group(2)
    if mod == 1:
        return "layer0." + _rename(rest, {"conv1.": "0.", "bn1.": "1."})
    b = re.fullmatch(r"block(\d+)\.(.*)", rest)
    if not b or mod > 4:
        return None  # stage 4 (mod5) is not part of A2U's encoder
    block, leaf = int(b.group(1)), b.group(2)
    if mod == 2:
        return f"layer1.block{block}.{leaf}"
    if block == 1:
        return f"layer{mod - 1}_1." + _rename(leaf, {"convs.conv1.": "layer1.conv1.", "convs.bn1.": "layer1.bn1.",
                                                      "convs.conv2.": "layer2.conv2.", "convs.bn2.": "layer2.bn2."})
    return f"layer{mod - 1}_2.block{block - 1}.{leaf}"


def _abn_to_bn(source: dict) -> dict:
    """InPlace-ABN scales by |weight| + eps: our BatchNorm gets that as its weight."""
    from mattecli.weights import a2u_state_from_official

    return a2u_state_from_official(source)


# --- the table and the loader ----------------------------------------------------------------------


@dataclass(frozen=True)
class AuthorsLayout:
    """The layout of the checkpoint the authors' code initialised the encoder from.

    Attributes:
        name: for messages.
        detect: whether a state dict has this layout (from its keys).
        key: their key -> ours, or None for tensors the matting encoder does not use.
        prepare: turns their tensors into ours before mapping (e.g. InPlace-ABN weights).
    """

    name: str
    detect: Callable[[dict], bool]
    key: Callable[[str], str | None]
    prepare: Callable[[dict], dict] = dict


@dataclass(frozen=True)
class EncoderMap:
    """How a torchvision-format state dict fills one family's encoder.

    Attributes:
        source: the architecture the file must hold (for messages).
        key: torchvision key -> our key, or None for tensors the matting encoder does not use.
        stem: our first conv; its input channels beyond the source's (the trimap) start at zero.
        authors: the authors' checkpoint layout, when it is not torchvision's.
    """

    source: str
    key: Callable[[str], str | None]
    stem: str
    authors: AuthorsLayout | None = None


# where torchvision itself downloads each source's ImageNet weights (IMAGENET1K_V1)
TORCHVISION_WEIGHTS = {"MobileNetV2": "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
                       "ResNet-34": "https://download.pytorch.org/models/resnet34-b627a593.pth"}

ENCODER_MAPS = {
    "indexnet": EncoderMap("MobileNetV2", mobilenetv2_key, "layer0.0.weight", AuthorsLayout(
        "CSAIL flat MobileNetV2", lambda sd: any(re.fullmatch(r"features\.\d+\.conv\.0\.weight", k) for k in sd),
        lambda name: mobilenetv2_key(name, flat=True))),
    "a2u": EncoderMap("ResNet-34", a2u_resnet34_key, "layer0.0.weight", AuthorsLayout(
        "InPlace-ABN ResNet-34", lambda sd: "mod1.conv1.weight" in sd, a2u_abn_resnet34_key, _abn_to_bn)),
    "tcp": EncoderMap("ResNet-34", tcp_resnet34_key, "encoder.conv1.weight"),
}


def encoder_map(family: str) -> EncoderMap:
    """The family's map, or a one-line UsageError naming the families that have one."""
    if family not in ENCODER_MAPS:
        raise UsageError(f"--pretrained: no ImageNet encoder map for the {family} family "
                         f"(known: {', '.join(ENCODER_MAPS)})")
    return ENCODER_MAPS[family]


def encoder_keys(model) -> list[str]:
    """State-dict keys of the model's encoder (`encoder_modules()`), BN step counters left out."""
    names = {id(module): name for name, module in model.named_modules()}
    keys = []
    for module in model.encoder_modules():
        prefix = names[id(module)]
        keys += [f"{prefix}.{k}" for k in module.state_dict() if not k.endswith("num_batches_tracked")]
    return list(dict.fromkeys(keys))


def map_encoder(model, family: str, source: dict, where: str = "--pretrained") -> dict:
    """Copy the tensors of a torchvision-format state dict into `model`'s encoder.

    Args:
        model: a matting model with `encoder_modules()`.
        family: the recipe's model family (a key of `ENCODER_MAPS`).
        source: torchvision-format tensors (`module.` prefixes already stripped).
        where: names the source in error messages (the file).

    Returns:
        {"loaded": number of tensors copied, "ignored": source keys the encoder does not use,
        "layout": "torchvision" or the authors' layout's name}.

    Raises:
        UsageError: no map for the family, a shape that differs, or encoder tensors left unfilled.
    """
    spec = encoder_map(family)
    key_of, layout = spec.key, "torchvision"
    if spec.authors is not None and spec.authors.detect(source):
        source, key_of, layout = spec.authors.prepare(source), spec.authors.key, spec.authors.name
    own = model.state_dict()
    mapped, ignored = {}, []
    for name, tensor in source.items():
        key = key_of(name)
        if key is None or key not in own:
            ignored.append(name)
            continue
        target = own[key]
        if key == spec.stem and tensor.dim() == 4 and tensor.shape[1] < target.shape[1] \
                and (tensor.shape[0], *tensor.shape[2:]) == (target.shape[0], *target.shape[2:]):
            padded = torch.zeros_like(target)
            padded[:, : tensor.shape[1]] = tensor
            tensor = padded
        if tuple(tensor.shape) != tuple(target.shape):
            raise UsageError(f"{where}: {name} has shape {tuple(tensor.shape)}, the encoder's {key} "
                             f"{tuple(target.shape)} (a {spec.source} of another width?)")
        mapped[key] = tensor
    missing = [k for k in encoder_keys(model) if k not in mapped]
    if missing:
        raise UsageError(f"{where}: not a {spec.source} state dict in the {layout} layout; {len(missing)} encoder "
                         f"tensors not filled: {', '.join(missing[:5])}")
    model.load_state_dict(mapped, strict=False)
    return {"loaded": len(mapped), "ignored": ignored, "layout": layout}


def _refuse_matte_weights(path) -> None:
    """A matte weights file (a run's best.safetensors, a converted release) is a whole matting model,
    not an encoder. It was refused in `matte convert`'s words ("needs no conversion; infer, eval,
    export and bench take it"), which told a user who meant to fine-tune nothing of --pretrained."""
    from pathlib import Path

    from mattecli.weights import read_weights_header

    if Path(path).suffix.lower() != ".safetensors" or not Path(path).is_file():
        return
    try:
        recipe, _ = read_weights_header(path)
    except UsageError:
        return  # no recipe: a release republished as safetensors, read as one below
    raise UsageError(f"{path}: a matte weights file (a whole {recipe.name} model), not an ImageNet encoder: "
                     "--pretrained takes torchvision's or the authors' encoder checkpoint, or none; training "
                     "does not start from a trained model's weights")


def load_pretrained_encoder(model, recipe, path) -> dict:
    """Read a torchvision-format checkpoint and copy it into `model`'s encoder (see `map_encoder`)."""
    from mattecli.weights import load_torch_checkpoint

    encoder_map(recipe.family)  # an unknown family fails before a large file is read
    _refuse_matte_weights(path)
    return map_encoder(model, recipe.family, load_torch_checkpoint(path), where=str(path))
