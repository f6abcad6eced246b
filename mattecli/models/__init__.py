"""Model families: an explicit table from family name to (config dataclass, network class)."""

from __future__ import annotations

from mattecli.models.a2u import A2UConfig, A2UMatting
from mattecli.models.indexnet import IndexNetConfig, IndexNetMatting
from mattecli.models.tcp import TCPConfig, TCPMatting

FAMILIES = {
    "indexnet": (IndexNetConfig, IndexNetMatting),
    "a2u": (A2UConfig, A2UMatting),
    "tcp": (TCPConfig, TCPMatting),
}


def build_model(recipe):
    """The only way a network is made: from a recipe's family and model options."""
    from mattecli.errors import UsageError

    _, network = FAMILIES[recipe.family]
    if recipe.infer.stride % network.stride:  # else every input not a multiple of the model's was a traceback
        raise UsageError(f"recipe {recipe.name}: infer.stride {recipe.infer.stride} is not a multiple of the "
                         f"{recipe.family} model's stride {network.stride}")
    if recipe.infer.input_channels != network.input_channels:  # else a conv's channel-mismatch traceback
        raise UsageError(f"recipe {recipe.name}: infer.trimap {recipe.infer.trimap} makes "
                         f"{recipe.infer.input_channels} input channels; the {recipe.family} model takes "
                         f"{network.input_channels}")
    return network(recipe.model)
