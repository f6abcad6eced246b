"""Export-time formulations of the pieces that ONNX (and TensorRT's parser) cannot take as they are.

`decompose(model)` returns an eval-mode copy of a network in which every such piece is replaced by
a numerically equal formulation in plain operators (DESIGN invariant 3; tests/test_decompose.py
proves each swap equal to 1e-5 on random inputs of odd sizes):

- IndexNet's max index (`MaxIndex`: argmax + one_hot, i.e. ArgMax and OneHot, which the allow-list
  excludes) becomes a cascade of comparisons with the cell maximum (`ExportMaxIndex`), keeping
  torch's first-in-raster-order tie rule exactly. The indexed pooling and upsampling around it are
  already AveragePool and Resize(nearest) times the index map; the cells are SpaceToDepth /
  DepthToSpace.
- A2U's operators (`unfold` + einsum, grouped convs with per-sample filters, adaptive pooling) run
  in their `shift` form: pad + strided slices + multiply-add, DepthToSpace, bin-matrix pooling.
- Any `nn.AdaptiveAvgPool2d` with an output other than 1x1 becomes bin-matrix products: the
  tracing exporter refuses adaptive pooling when H/W are dynamic ("input size not accessible"),
  and a static export bakes the traced size into an AveragePool. (1x1 exports as
  GlobalAveragePool and is kept.)
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from mattecli.models.a2u import adaptive_avg_pool_bins, set_a2u_form
from mattecli.models.indexnet import MaxIndex


def max_index_plain(x: torch.Tensor) -> torch.Tensor:
    """`indexnet.max_index` without ArgMax/OneHot: one-hot of each 2x2 cell's maximum, the first in
    raster order on ties (as torch's argmax), from Max, comparisons and multiply-adds.

    Args:
        x: (N, C, H, W) with even H and W.

    Returns:
        (N, C, H, W) one-hot index map, 1 at the chosen position of each 2x2 cell.
    """
    n, c, h, w = x.shape
    cells = F.pixel_unshuffle(x, 2).view(n, c, 4, h // 2, w // 2)  # raster order: (0,0) (0,1) (1,0) (1,1)
    positions = cells.unbind(2)
    top = torch.maximum(torch.maximum(positions[0], positions[1]), torch.maximum(positions[2], positions[3]))
    remaining = torch.ones_like(top)  # 1 where no earlier position was the maximum
    onehot = []
    for value in positions[:3]:
        chosen = (value >= top).to(x.dtype) * remaining
        remaining = remaining - chosen
        onehot.append(chosen)
    onehot.append(remaining)  # the last position takes the cell when no earlier one did
    return F.pixel_shuffle(torch.stack(onehot, dim=2).reshape(n, 4 * c, h // 2, w // 2), 2)


class ExportMaxIndex(nn.Module):
    """`MaxIndex` with `max_index_plain`: parameter-free, so the swap needs no state."""

    def __init__(self, holistic: bool):
        super().__init__()
        self.holistic = holistic

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        source = x.amax(dim=1, keepdim=True) if self.holistic else x
        idx = max_index_plain(source)
        return idx, idx


class BinAvgPool(nn.Module):
    """`nn.AdaptiveAvgPool2d(size)` as two matrix products, correct at every input size."""

    def __init__(self, output_size):
        super().__init__()
        size = output_size if isinstance(output_size, tuple) else (output_size, output_size)
        if None in size:
            raise ValueError(f"adaptive pooling to {output_size} (a kept dimension) has no export form")
        self.output_size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adaptive_avg_pool_bins(x, self.output_size)


def _replacement(module: nn.Module) -> nn.Module | None:
    """The export form of one module, or None when it exports as it is."""
    if isinstance(module, MaxIndex):
        return ExportMaxIndex(module.holistic)
    if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size not in (1, (1, 1)):
        return BinAvgPool(module.output_size)
    return None


def decompose(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with every export-unfriendly piece in its plain-operator form.

    The caller's model is not modified. Parameters and buffers are copied, so the copy computes
    the same function (to float rounding) as `model.eval()`.
    """
    model = copy.deepcopy(model).eval()
    set_a2u_form(model, "shift")
    swaps = [(name, new) for name, module in model.named_modules()
             if name and (new := _replacement(module)) is not None]
    for name, new in swaps:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    return model
