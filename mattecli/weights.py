"""Weights files (`.safetensors` with the recipe in the metadata) and importers of the authors'
released checkpoints, with explicit key maps.

A weights file is self-describing: `load_model(path)` rebuilds the network from the recipe stored
in it. Foreign checkpoints are read with `torch.load(weights_only=True)` only (no pickle code runs).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mattecli.errors import UsageError
from mattecli.imageio import atomic_write

if TYPE_CHECKING:
    import torch

FORMAT = "matte-weights/1"


def save_weights(model, recipe, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write the model's state (parameters and buffers) with the resolved recipe, atomically;
    `metadata` adds string entries (e.g. `selected_by` on a run's best.safetensors)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {**(metadata or {}), "format": FORMAT, "recipe": recipe.to_json()}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def read_weights(path: str | Path):
    """-> (recipe, state_dict) of a weights file."""
    from safetensors import SafetensorError, safe_open

    from mattecli.recipes import recipe_from_dict

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt") as f:  # one read for metadata and tensors
            meta = f.metadata() or {}
            state = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise UsageError(f"{path}: not a readable .safetensors file ({err})") from None
    if "recipe" not in meta:
        raise UsageError(f"{path}: no recipe in the metadata (not written by matte; use `matte convert`)")
    raw = json.loads(meta["recipe"])
    return recipe_from_dict(raw, raw.get("name", path.stem)), state


def load_model(path: str | Path):
    """-> (model in eval mode, recipe) rebuilt from a weights file."""
    from mattecli.models import build_model

    recipe, state = read_weights(path)
    model = build_model(recipe)
    load_state_strict(model, state, str(path))
    return model.eval(), recipe


def load_state_strict(model, state: dict, source: str) -> None:
    """Load a state dict requiring every model tensor filled and every source tensor consumed,
    with equal shapes; otherwise fail naming the keys."""
    own = model.state_dict()
    optional = {k for k in own if k.endswith("num_batches_tracked")}
    missing = sorted(set(own) - set(state) - optional)
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    problems = []
    if missing:
        problems.append(f"{len(missing)} model tensor(s) not filled: {', '.join(missing[:6])}")
    if unexpected:
        problems.append(f"{len(unexpected)} source tensor(s) not consumed: {', '.join(unexpected[:6])}")
    if mismatched:
        problems.append("shape mismatch: " + ", ".join(
            f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched[:6]))
    if problems:
        raise UsageError(f"{source}: " + "; ".join(problems))
    model.load_state_dict({**{k: own[k] for k in optional}, **state}, strict=True)


# ------------------------------------------------------------------------------------------------
# Importers of the authors' checkpoints


def load_torch_checkpoint(path: str | Path) -> dict:
    """The tensors of a torch checkpoint (`{'state_dict': ...}` or a bare state dict), `module.`
    prefixes stripped. Only `weights_only=True` loading is used."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in many types; the message says which
        raise UsageError(f"{path}: cannot be read with torch.load(weights_only=True): {err}") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise UsageError(f"{path}: no state_dict in this checkpoint")
    tensors = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        tensors[_strip_module(key)] = value
    return tensors


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


def _imported_model(state: dict, src, recipe_name: str | None, family: str, detect):
    """Build the recipe's model (named, or detected from the tensors) and fill it strictly."""
    from mattecli.models import build_model
    from mattecli.recipes import load_recipe

    recipe = load_recipe(recipe_name or detect(state))
    if recipe.family != family:
        raise UsageError(f"--recipe {recipe.name} is a {recipe.family} recipe, not a {family} one")
    model = build_model(recipe)
    load_state_strict(model, state, str(src))
    return model, recipe


def import_indexnet_official(src: str | Path, recipe_name: str | None = None):
    """The authors' IndexNet checkpoint -> (model, recipe). Their parameter names are ours."""
    return _imported_model(load_torch_checkpoint(src), src, recipe_name, "indexnet", detect_indexnet_variant)

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
    state = a2u_state_from_official(load_torch_checkpoint(src))
    return _imported_model(state, src, recipe_name, "a2u", detect_a2u_variant)

# name -> (function(src, recipe_name) -> (model, recipe)); `matte convert --from NAME`
IMPORTERS = {
    "indexnet-official": import_indexnet_official,
    "a2u-official": import_a2u_official,
}
