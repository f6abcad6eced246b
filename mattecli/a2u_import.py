"""Import of the A2U authors' released checkpoints (dongdong93/a2u_matting) into `A2UMatting`.

Their checkpoint is `{'state_dict': {'module.' + name: tensor}}` with our names (the network keeps
the authors' module names), so the import is: drop `module.`, turn every in-place-ABN weight into
the plain BatchNorm weight that computes the same thing, and accept `num_batches_tracked` present
(inplace_abn >= 1.1) or absent (older releases). Kept apart from `weights.py` so that module's
IMPORTERS table only has to name these two functions.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mattecli.errors import UsageError

# in-place ABN scales by |weight| + eps (specs/a2u.md, "The authors' released network", item 1)
IABN_EPS = 1e-5
RELEASED = {"cs": "a2u-dynamic-cs-d-gn", "cw": "a2u-dynamic-cw-d-gn"}


def _strip(name: str) -> str:
    return name[len("module."):] if name.startswith("module.") else name


def import_a2u_official(checkpoint: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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
    if "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], Mapping):
        checkpoint = checkpoint["state_dict"]
    tensors = {_strip(k): v for k, v in checkpoint.items() if not k.endswith("num_batches_tracked")}
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
        if _strip(name) == "bilinear0.bconv_U.1.weight":
            shape = tuple(value.shape if hasattr(value, "shape") else value)
            if shape[0] == 1:
                return RELEASED["cs"]
            if shape[0] == shape[1]:
                return RELEASED["cw"]
            raise UsageError(f"unexpected A2U U-generator shape {list(shape)} (want [1, C, 1, 1] or [C, C, 1, 1])")
    raise UsageError("not an A2U released checkpoint: no bilinear0.bconv_U.1.weight")
