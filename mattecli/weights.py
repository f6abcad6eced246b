"""Weights files (`.safetensors` with the recipe in the metadata) and importers of the authors'
released checkpoints, with explicit key maps.

A weights file is self-describing: `load_model(path)` rebuilds the network from the recipe stored
in it. Foreign checkpoints are read with `torch.load(weights_only=True)` only (no pickle code runs).
"""

from __future__ import annotations

import json
from pathlib import Path

from mattecli.errors import UsageError
from mattecli.imageio import atomic_write

FORMAT = "matte-weights/1"


def save_weights(model, recipe, path: str | Path) -> Path:
    """Write the model's state (parameters and buffers) with the resolved recipe, atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "recipe": recipe.to_json()}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def read_weights(path: str | Path):
    """-> (recipe, state_dict) of a weights file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from safetensors import safe_open

    from mattecli.recipes import recipe_from_dict

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
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
        tensors[key[len("module."):] if key.startswith("module.") else key] = value
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


def import_indexnet_official(src: str | Path, recipe_name: str | None = None):
    """The authors' IndexNet checkpoint -> (model, recipe). Their parameter names are ours."""
    from mattecli.models import build_model
    from mattecli.recipes import load_recipe

    state = load_torch_checkpoint(src)
    recipe = load_recipe(recipe_name or detect_indexnet_variant(state))
    if recipe.family != "indexnet":
        raise UsageError(f"--recipe {recipe.name} is a {recipe.family} recipe, not an IndexNet one")
    model = build_model(recipe)
    load_state_strict(model, state, str(src))
    return model, recipe


# name -> (function(src, recipe_name) -> (model, recipe)); `matte convert --from NAME`
IMPORTERS = {
    "indexnet-official": import_indexnet_official,
}
