"""Parity of any backend (ONNX Runtime, TensorRT, ...) against the PyTorch model, on fresh inputs
at several sizes.

Inputs go through the one preprocessing path (`inference.pipeline.prepare`): a random photo-like
image and a random trimap of the requested size, normalised, trimap-encoded and aligned to the
stride as the recipe says. Both backends see the same array; their raw outputs are compared.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from mattecli.inference.random_input import fresh_input
from mattecli.sizes import Size

# max-abs on the raw alpha, float32, per unit of the output's scale (max |PyTorch's output|, 1 at
# least): float32 rounding grows with the values summed, and untrained or freshly seeded weights
# give raw outputs of 8 and more (seeded demo-a2u at 1920x1088: 2.5e-4 max-abs at a scale of 7.9,
# 3e-5 of it, which an absolute 1e-4 failed). A trained model's output lies in about [0, 1], where
# this is 1e-4 absolute: a fortieth of an 8-bit level.
TOLERANCE = 1e-4
# FP16 graphs and engines: half precision carries ~3 significant digits through dozens of layers;
# 1e-2 is 2.5 levels of an 8-bit matte (measured: 1.6e-3 .. 2.2e-3 on the demo models at 96x160).
HALF_TOLERANCE = 1e-2


@dataclass(frozen=True)
class Parity:
    """One size's comparison: the aligned input size and the error of the backend's raw output."""

    height: int
    width: int
    max_abs: float
    mean_abs: float
    scale: float  # max |output| of the reference, to read the error against
    tolerance: float = TOLERANCE

    @property
    def allowed(self) -> float:
        """The max-abs error allowed at this output's scale."""
        return self.tolerance * max(1.0, self.scale)

    @property
    def ok(self) -> bool:
        return self.max_abs <= self.allowed


def default_sizes(stride: int) -> list[Size]:
    """Small non-square odd multiples of the stride both ways round (3s wide by 5s high, 11s by
    7s), and 1920x1088 (1080p aligned to 32, itself an odd multiple of 32 and of 16 in height)."""
    return [Size(3 * stride, 5 * stride), Size(11 * stride, 7 * stride), Size(1920, 1088)]


@contextmanager
def strict_fp32():
    """TF32 off in torch's CUDA convolutions and matmuls for the block (cuDNN allows it by default):
    the reference of a parity check must be full FP32, or an exact FP32 engine would look wrong."""
    import torch

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def verify(backend, reference, sizes=None, *, seed: int = 0, tolerance: float = TOLERANCE,
           on_size=None) -> list[Parity]:
    """Run `backend` and `reference` on the same fresh input at each size and measure the error.

    Args:
        backend: the backend under test (`recipe` attribute, `__call__(x) -> raw alpha`).
        reference: the PyTorch model's backend (`TorchBackend`), run with TF32 off.
        sizes: image sizes (`Size`), aligned to the stride by the pipeline; default
            `default_sizes(stride)`.
        seed: seeds the inputs.
        tolerance: the max-abs error each `Parity.ok` allows per unit of the output's scale.
        on_size: called with each `Parity` as it is measured (progress display).

    Returns:
        one `Parity` per size, in order.
    """
    cfg = reference.recipe.infer
    rng = np.random.default_rng(seed)
    results = []
    for size in sizes or default_sizes(cfg.stride):
        x = fresh_input(size, cfg, rng)
        with strict_fp32():
            want = np.asarray(reference(x), dtype=np.float64)
        got = np.asarray(backend(x), dtype=np.float64)
        if got.shape != want.shape:
            raise ValueError(f"output shape {got.shape} differs from PyTorch's {want.shape} at {size}")
        diff = np.abs(got - want)
        result = Parity(x.shape[2], x.shape[3], float(diff.max()), float(diff.mean()), float(np.abs(want).max()),
                        tolerance)
        results.append(result)
        if on_size is not None:
            on_size(result)
    return results
