"""Nodes of each recipe's ONNX graph, as `matte export` writes it (dynamic H/W, compacted).

The counts in docs/benchmarks.md and docs/deployment.md come from this script; it builds each model
with seeded random weights (the graph does not depend on the values) and exports no file it keeps:

    python benchmarks/onnx_nodes.py --recipes indexnet-m2o-nl-ctx,a2u-dynamic-cs-d-gn,tcp
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="indexnet-m2o-nl-ctx,a2u-dynamic-cs-d-gn,tcp",
                        help="comma-separated recipe names")
    args = parser.parse_args()

    import onnx
    import torch

    from exporters.onnx import to_onnx
    from mattecli.models import build_model
    from mattecli.recipes import load_recipe

    with tempfile.TemporaryDirectory(prefix="onnx-nodes-") as tmp:
        for name in args.recipes.split(","):
            torch.manual_seed(0)
            recipe = load_recipe(name)
            path = to_onnx(build_model(recipe).eval(), Path(tmp) / f"{name}.onnx", recipe=recipe)
            print(f"{name}: {len(onnx.load(str(path)).graph.node):,} nodes", flush=True)


if __name__ == "__main__":
    main()
