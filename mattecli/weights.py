"""Weights files (`.safetensors` with the recipe in the metadata) and importers of the authors'
released checkpoints, with explicit key maps.

A weights file is self-describing: `load_model(path)` rebuilds the network from the recipe stored
in it. Foreign checkpoints are read with `torch.load(weights_only=True)` only (no pickle code runs).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mattecli.errors import UsageError
from mattecli.files import write_bytes

if TYPE_CHECKING:
    import torch

FORMAT = "matte-weights/1"


def save_weights(model, recipe, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write the model's state (parameters and buffers) with the resolved recipe, atomically;
    `metadata` adds string entries (e.g. `selected_by` on a run's best.safetensors)."""
    from safetensors.torch import save

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {**(metadata or {}), "format": FORMAT, "recipe": recipe.to_json()}
    return write_bytes(path, save(state, metadata=meta))  # not save_file: see write_bytes


def read_weights(path: str | Path):
    """-> (recipe, state_dict) of a weights file."""
    recipe, _, state = _read_matte_weights(path, tensors=True)
    return recipe, state


def read_weights_header(path: str | Path):
    """-> (recipe, metadata) of a weights file, its tensors left unread: a cheap check that the
    file is usable, and what else it says of itself (e.g. a best model's `selected_by`)."""
    recipe, meta, _ = _read_matte_weights(path, tensors=False)
    return recipe, meta


def check_weights(path: str | Path):
    """-> (recipe, metadata) of a weights file whose tensors fit its recipe's model, names and shapes
    read from the header alone (no tensor data): what `load_model` refuses, refused cheaply.

    Raises:
        UsageError: naming the file: unreadable, no recipe, or tensors missing, extra or misshapen.
    """
    recipe, meta, shapes = _read_matte_weights(path, tensors=False)
    _check_fits(recipe, shapes, str(path))
    return recipe, meta


def no_weights_file(path: Path) -> UsageError:
    """The error for a --weights path that is not a file: a training run's folder (a common slip
    after `matte train --out RUN`) is named as one, with the files in it to pick from."""
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.safetensors"))
        hint = f" ({', '.join(found)} in it)" if found else ""
        return UsageError(f"{path}: a folder, not a weights file; name the file{hint}")
    return UsageError(f"{path}: no such weights file")


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".tar", ".ckpt")  # torch.save files: no command runs one


def unknown_model_file(path: Path) -> UsageError:
    """The error for a --weights file of a type no backend runs. A PyTorch checkpoint (a training
    run's checkpoints/*.pt, the authors' .pth.tar) is named as one, with what to give instead: it
    was "unknown model file type" (infer, bench) or "header too large" (export)."""
    from mattecli.inference.backends import SUFFIX_TO_BACKEND

    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        return UsageError(f"{path}: unknown model file type (expected {', '.join(SUFFIX_TO_BACKEND)})")
    found = sorted(path.parent.parent.glob("*.safetensors")) if path.parent.name == "checkpoints" else []
    instead = " or ".join(map(str, found)) or "a run's last.safetensors or best.safetensors"
    return UsageError(f"{path}: a PyTorch checkpoint, not a model file: give {instead} (what `matte train` "
                      "writes), or import the authors' checkpoint with `matte convert`")


def _read_matte_weights(path: str | Path, tensors: bool):
    from mattecli.recipes import stored_recipe

    path = Path(path)
    if not path.is_file():
        raise no_weights_file(path)
    meta, state = _read_safetensors(path, tensors)
    if "recipe" not in meta:
        raise UsageError(f"{path}: no recipe in the metadata (not written by matte; use `matte convert`)")
    return stored_recipe(meta["recipe"], path, meta.get("format")), meta, state


def _read_safetensors(path: Path, tensors: bool = True) -> tuple[dict, dict]:
    """-> (metadata, tensors, or their shapes from the header when `tensors` is False) of any
    `.safetensors` file, in one read.

    Raises:
        UsageError: naming the file, when it is not a readable .safetensors file.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if tensors:
                return meta, {name: f.get_tensor(name) for name in f.keys()}
            return meta, {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise UsageError(f"{path}: not a readable .safetensors file ({err})") from None


def load_model(path: str | Path):
    """-> (model in eval mode, recipe) rebuilt from a weights file."""
    from mattecli.models import build_model

    recipe, state = read_weights(path)
    _check_fits(recipe, state, str(path))
    model = build_model(recipe)
    load_state_strict(model, state, str(path))
    return model.eval(), recipe


def _check_fits(recipe, state: dict, source: str) -> None:
    """`check_state` of tensors (or their shapes) against the recipe's model, built on a device that
    holds no memory: a recipe from someone else asking for 10^5 times the channels allocated
    terabytes (a traceback, or the out-of-memory killer) before its tensors could be found not to fit."""
    import torch

    from mattecli.models import build_model

    with torch.device("meta"):
        check_state(build_model(recipe).state_dict(), state, source)


def load_state_strict(model, state: dict, source: str, shown: Mapping[str, str] | None = None) -> None:
    """Load a state dict requiring every model tensor filled and every source tensor consumed,
    with equal shapes; otherwise fail naming the keys (`shown`: see `check_state`)."""
    own = model.state_dict()
    check_state(own, state, source, shown)
    optional = {k for k in own if k.endswith("num_batches_tracked")}
    model.load_state_dict({**{k: own[k] for k in optional}, **state}, strict=True)


def check_state(own: dict, state: dict, source: str, shown: Mapping[str, str] | None = None) -> None:
    """Raise a UsageError naming the keys unless `state` (names to tensors, or to their shapes)
    fills every tensor of the model's state dict `own` (batch-norm counters may be absent), with
    equal shapes, and has no others. `shown` maps a key of `state` to the name the source file
    gives it (an importer that renames), which errors about source tensors use."""
    shown = shown or {}
    shapes = {k: tuple(v.shape if hasattr(v, "shape") else v) for k, v in state.items()}
    optional = {k for k in own if k.endswith("num_batches_tracked")}
    missing = sorted(set(own) - set(state) - optional)
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != shapes[k])
    problems = []
    if missing:
        problems.append(f"{len(missing)} model tensor(s) not filled: {', '.join(missing[:6])}")
    if unexpected:
        problems.append(f"{len(unexpected)} source tensor(s) not consumed: "
                        f"{', '.join(shown.get(k, k) for k in unexpected[:6])}")
    if mismatched:
        problems.append("shape mismatch, the file's vs the model's: " + ", ".join(
            f"{shown.get(k, k)} {shapes[k]} vs {tuple(own[k].shape)}" for k in mismatched[:6]))
    if problems:
        raise UsageError(f"{source}: " + "; ".join(problems))


# ------------------------------------------------------------------------------------------------
# Importers of the authors' checkpoints


def load_torch_checkpoint(path: str | Path) -> dict:
    """The tensors of a torch checkpoint (`{'state_dict': ...}`, a bare state dict, or one under
    another key, `{'model': ...}`), `module.` prefixes stripped. Only `weights_only=True` loading is used (see `_load_weights_only`)."""
    import torch

    ckpt = _load_weights_only(Path(path))
    if isinstance(ckpt, dict) and {"model", "iteration", "torch_rng"} <= set(ckpt):
        raise UsageError(f"{path}: a matte training checkpoint (iteration {ckpt['iteration']}), not a released "
                         "one: its run folder already holds last.safetensors (and best.safetensors) for "
                         "--weights, and `matte train --recipe NAME --data DATA --out RUN_DIR --resume` "
                         "continues the run")
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    if isinstance(state, _Dropped):  # torch.save(model): the module pickled whole, which needs its code to load
        raise UsageError(f"{path}: a whole pickled {state.global_name} object, not a state dict: where its code "
                         "is, torch.save(model.state_dict(), FILE) and convert that")
    if isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        # a training script's own layout, {'model': state_dict, 'epoch': 3} or {'net': ...}: it said
        # "does not look like an IndexNet model" of the right tensors one level down
        nested = [k for k, v in state.items() if isinstance(v, dict) and v
                  and all(isinstance(t, torch.Tensor) for t in v.values())]
        if len(nested) > 1:
            raise UsageError(f"{path}: tensors under several keys ({', '.join(map(str, nested))}); save the one "
                             "to convert on its own")
        state = state[nested[0]] if nested else state
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise UsageError(f"{path}: no state_dict in this checkpoint")
    stubbed = sorted(k for k, v in state.items() if isinstance(v, _Dropped))
    whole = [k for k in stubbed if not state[k].global_name.startswith("numpy")]  # not an array in `meta`
    if whole and state is ckpt and not any(isinstance(v, torch.Tensor) for v in state.values()):
        # {'model': model, 'epoch': 3}: a training script's layout around a module pickled whole
        raise UsageError(f"{path}: {whole[0]} holds a whole pickled {state[whole[0]].global_name} object, not a "
                         "state dict: where its code is, torch.save(model.state_dict(), FILE) and convert that")
    if stubbed:
        raise UsageError(f"{path}: state_dict entries {', '.join(stubbed[:4])} are pickled objects, not "
                         "tensors; refused (torch.load weights_only=True runs no code from a checkpoint)")
    tensors = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        tensors[_strip_module(key)] = value
    return tensors


class _Dropped:
    """Stands in for an object pickled outside the tensors (mmengine's `message_hub` HistoryBuffers,
    numpy arrays in `meta`): it takes whatever the pickle passes and keeps none of it, so no code
    named by the file runs."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _legacy_torch_save(path: Path) -> bool:
    """Whether a pickle file is what torch.save writes without its zip archive (torch < 1.6, or
    `_use_new_zipfile_serialization=False`): a first pickle that holds torch's magic number alone.
    Read with no class allowed, so nothing in the file runs."""
    import pickle

    import torch

    class _NoClasses(pickle.Unpickler):
        def find_class(self, module, name):
            raise pickle.UnpicklingError(f"{module}.{name}")

    try:
        with open(path, "rb") as f:
            return _NoClasses(f).load() == torch.serialization.MAGIC_NUMBER
    except Exception:  # noqa: BLE001 - any pickle that does not start so is not one
        return False


_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_MAX_DROPPED = 64  # different classes a checkpoint's bookkeeping may pickle


def _load_weights_only(path: Path):
    """`torch.load(path, weights_only=True)`, every class outside torch's allow-list read as a
    `_Dropped` stand-in (its data discarded), and each failure said in one line.

    A torch checkpoint is a zip archive (torch >= 1.6) or a pickle (older); anything else (an image,
    a text file) is named as not a checkpoint before torch sees it, so torch's own advice about
    `weights_only` never reaches the user.
    """
    import zipfile

    import torch

    if path.is_dir():
        raise UsageError(f"{path}: a folder; give the checkpoint file")
    if not path.is_file():
        raise UsageError(f"{path}: no such checkpoint")
    with open(path, "rb") as f:
        head = f.read(9)
    if head[8:9] == b"{":  # safetensors: an 8-byte header length, then the JSON header
        return _read_foreign_safetensors(path)
    _refuse_archive(path, head)
    head = head[:2]
    if head == b"PK" and not zipfile.is_zipfile(path):
        raise UsageError(f"{path}: a damaged zip archive (an interrupted download?), not a readable checkpoint")
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":  # \x80: the pickle PROTO opcode
        raise UsageError(f"{path}: not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)")
    if zipfile.is_zipfile(path):
        _refuse_zip_bomb(path)
    elif not _legacy_torch_save(path):  # torch.load then said "Invalid magic number", or named its stand-ins
        raise UsageError(f"{path}: a plain pickle, not a torch.save checkpoint (save the weights with "
                         "torch.save(state_dict, FILE))")
    dropped: list[tuple[type, str]] = []
    while True:
        try:
            with torch.serialization.safe_globals(dropped), warnings.catch_warnings():
                # a legacy file pickled with protocol 4 or 5 makes torch warn, in two lines naming
                # no file, that its default is 2: the file reads all the same
                warnings.simplefilter("ignore", UserWarning)
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle errors come in many types; the message says which
            text = str(err)
            if "EOF" in text and not zipfile.is_zipfile(path):  # "unexpected EOF, expected N more bytes"
                raise UsageError(f"{path}: cut short (an interrupted download?), not a readable checkpoint "
                                 f"({_unpickler_reason(text)})") from None
            if "Unsupported operand" in text and not zipfile.is_zipfile(path):  # protocol 4's FRAME, say
                raise UsageError(f"{path}: a legacy torch.save file in pickle protocol {head[1]}, which "
                                 "torch.load(weights_only=True) cannot read; save it again with "
                                 "torch.save(state_dict, FILE) and its default protocol") from None
            found = _UNSUPPORTED_GLOBAL.search(text)
            # a builtin (eval, exec, getattr: torch 2.6 names it builtins.eval, later ones eval) is code the
            # file names, never a class's data: refused, on every torch, not stood in for
            builtin = found is not None and ("." not in found.group(1) or found.group(1).startswith("builtins."))
            if found and not builtin and len(dropped) < _MAX_DROPPED and found.group(1) not in {n for _, n in dropped}:
                dropped.append((type(f"Dropped_{len(dropped)}", (_Dropped,), {"global_name": found.group(1)}),
                                found.group(1)))
                continue
            raise UsageError(f"{path}: refused by torch.load(weights_only=True): {_unpickler_reason(text)}") from None


# torch.save stores a checkpoint's records uncompressed; deflate makes float weights smaller by a few
# percent, so a checkpoint zipped again by hand still unpacks to about its own size
ZIP_RATIO_LIMIT = 16


def _refuse_zip_bomb(path: Path) -> None:
    """torch.load unpacks each record of a zip checkpoint in memory: a 1 MB file whose record
    unpacks to 1 GiB of zeros took 1.3 GB (a zip bomb sent as a checkpoint: any size, to the
    out-of-memory killer). The sizes its entries declare are checked against the file's first."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        declared = sum(info.file_size for info in archive.infolist())
    size = path.stat().st_size
    if declared > ZIP_RATIO_LIMIT * size + 2**20:
        raise UsageError(f"{path}: a zip archive whose entries unpack to {declared / 2**20:,.0f} MiB from "
                         f"{size / 2**20:,.1f} MiB, more than {ZIP_RATIO_LIMIT} times its size (torch.save "
                         "compresses nothing); refused as a zip bomb")


def _refuse_archive(path: Path, head: bytes) -> None:
    """A checkpoint packed in a .tar or .gz (a download as it came, or `tar cf` for a transfer): it
    said torch.load found it "not readable as a checkpoint" (a tar holding a torch.save zip looks
    like a zip archive). Old PyTorch's own tar format (`storages`, `tensors`, `pickle`) is torch's."""
    import tarfile

    if head[:2] == b"\x1f\x8b":
        raise UsageError(f"{path}: a gzip-compressed file: decompress it (gunzip) and give the checkpoint")
    if tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            names = tar.getnames()
        if "pickle" not in names:
            raise UsageError(f"{path}: a tar archive holding {', '.join(names[:3]) or 'nothing'}"
                             f"{' ...' if len(names) > 3 else ''}: unpack it (tar xf) and give the checkpoint")


def _read_foreign_safetensors(path: Path) -> dict:
    """The tensors of a `.safetensors` file that matte did not write (a release republished in
    that format): `--weights` refuses it for want of a recipe, so convert reads it."""
    meta, state = _read_safetensors(path)
    if "recipe" in meta:
        raise UsageError(f"{path}: a matte weights file, which needs no conversion (infer, eval, "
                         "export and bench take it as --weights)")
    return state


def _unpickler_reason(text: str) -> str:
    """The unpickler's own reason from torch's message, without its advice to load unsafely."""
    after = text.split("WeightsUnpickler error:", 1)[-1] if "WeightsUnpickler error:" in text else text
    for line in after.splitlines():
        line = line.strip()
        if line and "weights_only" not in line:
            # "Unsupported global: GLOBAL eval was not an allowed global by default. Please use
            # `torch.serialization.add_safe_globals([eval])` ... if you trust this class/function."
            return line.split(" Please use `torch.serialization", 1)[0]
    return "not readable as a checkpoint"


def detect_indexnet_variant(state: dict) -> str:
    """The IndexNet recipe whose layout a checkpoint has (from the index blocks' tensor shapes)."""
    if "index0.indexnet.weight" in state:
        kind, w, nonlinear = "hin", state["index0.indexnet.weight"], False
    elif "index0.indexnet.0.weight" in state:
        kind, w, nonlinear = "hin", state["index0.indexnet.0.weight"], "index0.indexnet.3.weight" in state
    elif "index0.indexnet1.0.weight" in state:
        w = state["index0.indexnet1.0.weight"]
        kind = "o2o" if w.shape[1] == 1 else "m2o"
        nonlinear = "index0.indexnet1.3.weight" in state
    elif "layer0.0.weight" in state and "decoder_layer0.dconv.0.weight" in state:
        return "indexnet-unet-maxunpool"
    else:
        raise UsageError("checkpoint does not look like an IndexNet matting model (no layer0/index0 tensors)")
    context = w.shape[-1] == 4
    return f"indexnet-{kind}-{'nl' if nonlinear else 'lin'}{'-ctx' if context else ''}"


def _imported_model(state: dict, src, recipe_name: str | None, family: str, detect, given: str,
                    shown: Mapping[str, str] | None = None):
    """Build the recipe's model (named, or detected from the tensors) and fill it strictly (`given`:
    the `--from` used; `shown`: the source's names of renamed tensors, for errors)."""
    from mattecli.models import build_model
    from mattecli.recipes import load_recipe

    if recipe_name is None:
        try:
            recipe_name = detect(state)
        except UsageError as err:
            raise _not_this_source(src, state, str(err), given) from None
    recipe = load_recipe(recipe_name)
    if recipe.family != family:
        article = "an" if recipe.family[0] in "aeiou" else "a"
        raise UsageError(f"{src}: --recipe {recipe.name} is {article} {recipe.family} recipe; this file holds "
                         f"{family} tensors")
    model = build_model(recipe)
    load_state_strict(model, state, str(src), shown)
    return model, recipe


def _not_this_source(src, state: Mapping[str, object], reason: str, given: str) -> UsageError:
    """`reason` with the file named and, when the tensors are another source's than `given`, that
    source's `--from` (the usual slip: the right file, the wrong --from)."""
    keys = {_strip_module(k) for k in state}
    guess = ("mmagic" if any(k.startswith("backbone.encoder.") for k in keys)
             else "a2u-official" if "bilinear0.bconv_U.1.weight" in keys
             else "indexnet-official" if "layer0.0.weight" in keys and "decoder_layer0.dconv.0.weight" in keys
             else None)
    hint = f"; its tensors are those of --from {guess}" if guess and guess != given else ""
    return UsageError(f"{src}: {reason}{hint}")


def import_indexnet_official(src: str | Path, recipe_name: str | None = None):
    """The authors' IndexNet checkpoint -> (model, recipe). Their parameter names are ours."""
    return _imported_model(load_torch_checkpoint(src), src, recipe_name, "indexnet", detect_indexnet_variant,
                           "indexnet-official")

# OpenMMLab mmagic (formerly MMEditing) IndexNet: `backbone.encoder.*` / `backbone.decoder.*`, built
# from mmcv ConvModules (`conv` + `bn`) and DepthwiseSeparableConvModules (`depthwise_conv`,
# `pointwise_conv`). The network is the authors' one; the map is a rename, module by module.
POOLED = (0, 2, 3, 4, 6)  # encoder.index_layers.i pools after encoder.layers.POOLED[i]
_MM_CONV_BN = {"conv": "0", "bn": "1"}  # a ConvModule with a norm -> our Sequential(conv, BN, act)
# an inverted residual's `conv` (expand ratio 1: one depthwise-separable module; else 1x1 + one)
_MM_BLOCK_T1 = {"depthwise_conv.conv": "0", "depthwise_conv.bn": "1", "pointwise_conv.conv": "3",
                "pointwise_conv.bn": "4"}
_MM_BLOCK_T6 = {"0.conv": "0", "0.bn": "1", "1.depthwise_conv.conv": "3", "1.depthwise_conv.bn": "4",
                "1.pointwise_conv.conv": "6", "1.pointwise_conv.bn": "7"}
# an index block: nonlinear = (ConvModule+BN+ReLU6, 1x1 ConvModule), linear = one bare ConvModule
# (ours: a Sequential per depthwise branch; the holistic linear block is a bare conv)
_MM_INDEX = {"0.conv": "indexnet{}.0", "0.bn": "indexnet{}.1", "1.conv": "indexnet{}.3", "conv": "indexnet{}.0"}
_MM_HOLISTIC = {"0.conv": "indexnet.0", "0.bn": "indexnet.1", "1.conv": "indexnet.3", "conv": "indexnet"}
# ASPP (separable): convs.0 1x1, convs.1-3 depthwise-separable atrous, convs.4 = (pool, ConvModule)
_MM_ASPP_SEP = {"depthwise_conv.conv": "0", "depthwise_conv.bn": "1", "pointwise_conv.conv": "3",
                "pointwise_conv.bn": "4"}
_MM_RULES = [
    (r"encoder\.layers\.0\.(conv|bn)\.(\w+)", lambda m: f"layer0.{_MM_CONV_BN[m[1]]}.{m[2]}"),
    (r"encoder\.layers\.(\d)\.(\d+)\.conv\.(.+)\.(\w+)",
     lambda m: f"layer{m[1]}.{m[2]}.conv.{(_MM_BLOCK_T1 if m[1] == '1' else _MM_BLOCK_T6)[m[3]]}.{m[4]}"),
    (r"encoder\.index_layers\.(\d)\.index_blocks\.(\d)\.(.+)\.(\w+)",
     lambda m: f"index{POOLED[int(m[1])]}.{_MM_INDEX[m[3]].format(int(m[2]) + 1)}.{m[4]}"),
    (r"encoder\.index_layers\.(\d)\.index_block\.(.+)\.(\w+)",  # holistic
     lambda m: f"index{POOLED[int(m[1])]}.{_MM_HOLISTIC[m[2]]}.{m[3]}"),
    (r"encoder\.dconv\.convs\.0\.(conv|bn)\.(\w+)",
     lambda m: f"dconv_pp.aspp1.atrous_conv.{_MM_CONV_BN[m[1]]}.{m[2]}"),
    (r"encoder\.dconv\.convs\.([123])\.(.+)\.(\w+)",
     lambda m: f"dconv_pp.aspp{int(m[1]) + 1}.atrous_conv.{_MM_ASPP_SEP[m[2]]}.{m[3]}"),
    (r"encoder\.dconv\.convs\.4\.1\.(conv|bn)\.(\w+)",
     lambda m: f"dconv_pp.global_avg_pool.{int(_MM_CONV_BN[m[1]]) + 1}.{m[2]}"),
    (r"encoder\.dconv\.project\.0\.(conv|bn)\.(\w+)",
     lambda m: f"dconv_pp.bottleneck_conv.{_MM_CONV_BN[m[1]]}.{m[2]}"),
    (r"encoder\.dconv\.(conv|bn)\.(\w+)", lambda m: f"dconv_pp.{_MM_CONV_BN[m[1]]}.{m[2]}"),  # aspp=False
    # the decoder runs its layers deepest first: decoder_layers.k is our decoder_layer{6-k}
    (r"decoder\.decoder_layers\.(\d)\.conv\.(conv|bn)\.(\w+)",
     lambda m: f"decoder_layer{6 - int(m[1])}.dconv.{_MM_CONV_BN[m[2]]}.{m[3]}"),
    (r"decoder\.pred\.0\.(conv|bn)\.(\w+)", lambda m: f"pred.0.{_MM_CONV_BN[m[1]]}.{m[2]}"),
    (r"decoder\.pred\.1\.weight", lambda m: "pred.1.weight"),
]
_MM_COMPILED = [(re.compile(pattern), rename) for pattern, rename in _MM_RULES]


def mmagic_indexnet_key(name: str) -> str | None:
    """An mmagic IndexNet key (`backbone.` and `module.` prefixes optional) -> ours; None if the
    name is not one of mmagic's IndexNet tensors."""
    name = _strip_module(name)
    name = name[len("backbone."):] if name.startswith("backbone.") else name
    for pattern, rename in _MM_COMPILED:
        m = pattern.fullmatch(name)
        if m:
            try:
                return rename(m)
            except KeyError:
                return None
    return None


# mmagic's MattorPreprocessor normalises 0-255 pixels by these; older checkpoints may carry them
# as buffers. They are the recipe's mean/std x 255, so they are checked, not loaded.
_MM_PREPROCESSOR = ("data_preprocessor.mean", "data_preprocessor.std")


def import_mmagic(src: str | Path, recipe_name: str | None = None):
    """An mmagic/MMEditing IndexNet checkpoint (mmengine's `{'meta', 'state_dict', ['optimizer']}`)
    -> (model, recipe). Default recipe: `indexnet-mmagic`; the DIM-augmentation release needs
    `indexnet-mmagic-dimaug` named (the two differ only in how they train and pad, not in tensors).

    Raises:
        UsageError: a tensor with no counterpart, a model tensor not filled, a shape mismatch, or
            preprocessor constants other than the recipe's.
    """
    import torch

    source = load_torch_checkpoint(src)
    recipe_name = recipe_name or "indexnet-mmagic"
    state, unknown, names = {}, [], {}
    for name, tensor in source.items():
        if name in _MM_PREPROCESSOR:
            continue
        key = mmagic_indexnet_key(name)
        if key is None:
            unknown.append(name)
        else:
            state[key], names[key] = tensor, name
    if unknown:
        raise _not_this_source(src, source, f"{len(unknown)} tensor(s) that are not mmagic IndexNet's: "
                                            f"{', '.join(unknown[:6])}", "mmagic")
    if not state:
        raise UsageError(f"{src}: no mmagic IndexNet tensors (keys backbone.encoder.* / backbone.decoder.*)")
    model, recipe = _imported_model(state, src, recipe_name, "indexnet", detect_indexnet_variant, "mmagic", names)
    for name, expected in zip(_MM_PREPROCESSOR, (recipe.infer.mean, recipe.infer.std)):
        if name in source and not torch.allclose(source[name].flatten().double(),
                                                 torch.tensor(expected, dtype=torch.float64) * 255, atol=1e-3):
            raise UsageError(f"{src}: {name} is {source[name].flatten().tolist()}, the recipe "
                             f"{recipe.name} normalises by {[round(v * 255, 3) for v in expected]}")
    return model, recipe


def _strip_module(name: str) -> str:
    return name[len("module."):] if name.startswith("module.") else name


# in-place ABN scales by |weight| + eps (specs/a2u.md, "The authors' released network", item 1)
IABN_EPS = 1e-5
RELEASED = {"cs": "a2u-dynamic-cs-d-gn", "cw": "a2u-dynamic-cw-d-gn"}


def a2u_state_from_official(checkpoint: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Converts an A2U authors' state dict to one `A2UMatting` loads strictly.

    Args:
        checkpoint: the loaded `state_dict` mapping (or the whole checkpoint holding it under
            `state_dict`); keys may carry DataParallel's `module.` prefix.

    Returns:
        A new state dict: in-place-ABN weights replaced by |w| + 1e-5, `num_batches_tracked`
        set to 0 for every BN (the released values, where present, are ignored).

    Raises:
        UsageError: if the mapping holds no batch-norm statistics (not an A2U checkpoint).
    """
    import torch

    if "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], Mapping):
        checkpoint = checkpoint["state_dict"]
    tensors = {_strip_module(k): v for k, v in checkpoint.items() if not k.endswith("num_batches_tracked")}
    bn_prefixes = [k[: -len(".running_mean")] for k in tensors if k.endswith(".running_mean")]
    if not bn_prefixes:
        raise UsageError("not an A2U checkpoint: no batch-norm running statistics found")
    out = {}
    bn_set = set(bn_prefixes)
    for name, tensor in tensors.items():
        prefix, _, leaf = name.rpartition(".")
        if prefix in bn_set and leaf == "weight":
            tensor = tensor.abs() + IABN_EPS
        out[name] = tensor.clone()
        if prefix in bn_set and leaf == "running_var":  # keep the layer's keys together, in order
            out[f"{prefix}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return out


def detect_a2u_variant(state_dict: Mapping[str, object]) -> str:
    """The recipe of a released A2U checkpoint: channel-shared or channel-wise U/V generators.

    Args:
        state_dict: names (with or without `module.`) to tensors, or to their shapes.

    Returns:
        `a2u-dynamic-cs-d-gn` when `bilinear0.bconv_U.1.weight` has one output channel (one
        filter for all channels), `a2u-dynamic-cw-d-gn` when it has one per input channel.
    """
    for name, value in state_dict.items():
        if _strip_module(name) == "bilinear0.bconv_U.1.weight":
            shape = tuple(value.shape if hasattr(value, "shape") else value)
            if shape[0] == 1:
                return RELEASED["cs"]
            if shape[0] == shape[1]:
                return RELEASED["cw"]
            raise UsageError(f"unexpected A2U U-generator shape {list(shape)} (want [1, C, 1, 1] or [C, C, 1, 1])")
    raise UsageError("not an A2U released checkpoint: no bilinear0.bconv_U.1.weight")


def import_a2u_official(src: str | Path, recipe_name: str | None = None):
    """The A2U authors' released checkpoint (cs or cw) -> (model, recipe)."""
    source = load_torch_checkpoint(src)
    try:
        state = a2u_state_from_official(source)
    except UsageError as err:
        raise _not_this_source(src, source, str(err), "a2u-official") from None
    return _imported_model(state, src, recipe_name, "a2u", detect_a2u_variant, "a2u-official")

# name -> (function(src, recipe_name) -> (model, recipe)); `matte convert --from NAME`
IMPORTERS = {
    "indexnet-official": import_indexnet_official,
    "a2u-official": import_a2u_official,
    "mmagic": import_mmagic,
}
