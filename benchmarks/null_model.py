"""An ONNX model that costs nothing: it returns the trimap channel of its input as the alpha.

`matte infer` and `matte bench --e2e` around it measure the host work alone (decoding, preparing,
restoring, encoding and writing), which is what the CPU target of docs/benchmarks.md is about:

    python benchmarks/null_model.py --out null.onnx
    matte bench --weights null.onnx --e2e --sizes 3840x2160 --count 8 --workers 2 --device cpu

The graph carries the metadata of --recipe (default IndexNet's, whose alignment resizes), so the
pipeline prepares and restores exactly as for that model.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    import torch.nn as nn

    from exporters.onnx import to_onnx
    from mattecli.recipes import load_recipe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("null.onnx"))
    parser.add_argument("--recipe", default="indexnet-m2o-nl-ctx", help="whose inference options the graph carries")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    if recipe.infer.trimap != "scalar":
        parser.error(f"--recipe {args.recipe}: its trimap is one-hot; the null model needs a scalar trimap channel")

    class Null(nn.Module):
        stride = recipe.infer.stride

        def forward(self, x):
            return x[:, 3:4] * 1.0  # the trimap channel, in [0, 1]

    print(to_onnx(Null(), args.out, recipe=recipe))


if __name__ == "__main__":
    main()
