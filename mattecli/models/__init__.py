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
    _, network = FAMILIES[recipe.family]
    return network(recipe.model)
