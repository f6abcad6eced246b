"""PyMatting's multi-level foreground estimation (Germer et al. 2020) in PyTorch, on any device.

`pymatting.estimate_foreground_ml` solves, per pixel, a 2x2 system for the foreground F and
background B colours that explain the image under the alpha, regularised towards the 4
neighbours (weight `regularization + gradient_weight * |alpha - alpha_neighbour|`), coarse to fine:
level i of n = ceil(log2(max(H, W))) has size (round(H ** (i/n)), round(W ** (i/n))), the image,
alpha and the previous level's F, B are resized by nearest neighbour (source index
`dst * src_size // dst_size`), 10 sweeps on levels of at most 32 x 32, 2 above. All of that is
reproduced here exactly.

The one difference is the sweep order. PyMatting updates the pixels in raster order, in place
(Gauss-Seidel): each pixel already sees its new left and upper neighbours. That order is
sequential; here a sweep is red-black (the pixels with even x + y first, then the odd ones with
their neighbours already new), the parallel ordering with Gauss-Seidel's convergence. It measured
closer to PyMatting than a Jacobi sweep (every pixel from the old values, as pymatting's CuPy
variant). The difference to PyMatting is stated in docs/gpu.md "Foreground colours on the GPU" and pinned by
tests/test_foreground.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _nearest(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """PyMatting's nearest-neighbour resize of a (C, H, W) tensor to (C, h, w)."""
    src_h, src_w = x.shape[-2:]
    rows = (torch.arange(h, device=x.device) * src_h // h).clamp_(max=src_h - 1)
    cols = (torch.arange(w, device=x.device) * src_w // w).clamp_(max=src_w - 1)
    return x[:, rows][:, :, cols]


def _neighbours(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The left, right, upper and lower neighbours of every pixel of a (C, h, w) tensor, edges clamped."""
    h, w = x.shape[-2:]
    p = F.pad(x.unsqueeze(0), (1, 1, 1, 1), mode="replicate")[0]
    return p[:, 1:h + 1, 0:w], p[:, 1:h + 1, 2:w + 2], p[:, 0:h, 1:w + 1], p[:, 2:h + 2, 1:w + 1]


def estimate_fb_ml(image: torch.Tensor, alpha: torch.Tensor, regularization: float = 1e-5,
                   n_small_iterations: int = 10, n_big_iterations: int = 2, small_size: int = 32,
                   gradient_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground and background colours of `image` under `alpha`, as PyMatting's `estimate_foreground_ml`.

    Args:
        image: (3, H, W) float32 in [0, 1], on any device.
        alpha: (H, W) float32 in [0, 1], on the same device.
        regularization, n_small_iterations, n_big_iterations, small_size, gradient_weight:
            PyMatting's parameters, with its defaults.

    Returns:
        (F, B), each (3, H, W) float32 in [0, 1] on the image's device.
    """
    h0, w0 = alpha.shape
    alpha = alpha.unsqueeze(0)
    fg_mask, bg_mask = alpha > 0.9, alpha < 0.1
    f_mean = (image * fg_mask).sum((1, 2)) / (fg_mask.sum() + 1e-5)
    b_mean = (image * bg_mask).sum((1, 2)) / (bg_mask.sum() + 1e-5)
    fb = torch.cat([f_mean, b_mean]).view(6, 1, 1)  # F in channels 0-2, B in 3-5
    n_levels = math.ceil(math.log2(max(h0, w0)))
    for level in range(n_levels + 1):
        ratio = level / n_levels if n_levels else 1.0
        h, w = round(h0 ** ratio), round(w0 ** ratio)
        img, a0 = _nearest(image, h, w), _nearest(alpha, h, w)
        fb = _nearest(fb, h, w)
        sweeps = n_small_iterations if w <= small_size and h <= small_size else n_big_iterations
        if sweeps:
            fb = _solve_level(img, a0, fb, sweeps, regularization, gradient_weight)
    return fb[:3], fb[3:]


def _solve_level(img: torch.Tensor, a0: torch.Tensor, fb: torch.Tensor, sweeps: int,
                 regularization: float, gradient_weight: float) -> torch.Tensor:
    """`sweeps` red-black sweeps of the per-pixel 2x2 solves at one level (few, large kernels:
    the small levels are bound by launches, so the neighbours are stacked, not looped over)."""
    h, w = a0.shape[-2:]
    a1 = 1 - a0
    weights = torch.stack(_neighbours(a0)).sub_(a0).abs_().mul_(gradient_weight).add_(regularization)  # (4, 1, h, w)
    total = weights.sum(0)
    a00, a11, a01 = a0 * a0 + total, a1 * a1 + total, a0 * a1
    inv_det = 1 / (a00 * a11 - a01 * a01)
    # the 2x2 inverse as (2, 2, 1, h, w): [F, B] = inverse @ [b0, b1] per pixel and colour
    inverse = torch.stack([torch.stack([a11, -a01]), torch.stack([-a01, a00])]) * inv_det
    rhs = torch.stack([a0 * img, a1 * img])  # (2, 3, h, w)
    yy = torch.arange(h, device=img.device).view(h, 1)
    xx = torch.arange(w, device=img.device).view(1, w)
    red = ((yy + xx) % 2 == 0).unsqueeze(0)
    for _ in range(sweeps):
        for colour in (red, ~red):
            b = rhs + (weights * torch.stack(_neighbours(fb))).sum(0).view(2, 3, h, w)
            new = (inverse * b.unsqueeze(0)).sum(1).view(6, h, w).clamp_(0, 1)
            fb = torch.where(colour, new, fb)
    return fb


def _shared(array) -> torch.Tensor:
    """The array as a CPU tensor, without a copy unless it is read-only (np.asarray of a Pillow
    image, as a user may pass to Matter.foreground), which torch.from_numpy warns about, or a view
    with a negative stride (`alpha[::-1]`), which it refuses (PyMatting, on a CPU, takes both)."""
    if not array.flags.writeable or any(stride < 0 for stride in array.strides):
        array = array.copy()
    return torch.from_numpy(array)


class GraphedForeground:
    """`estimate_fb_ml` at one (H, W) on CUDA, captured once as a CUDA graph and replayed.

    The port makes some 4,000 ATen calls whatever the size (3,827 at 480x270 and 3,992 at 960x540,
    counted on a CPU; about 2,200 of them not views), most on the small levels: at some 10-15 µs of
    host time each, launching alone could account for the 48-74 ms the H200 measured at 3840x2160.
    A replay launches them as one. A measurement for now
    (benchmarks/device_check.py's foreground row), not `matte infer`'s path: the graph holds its
    intermediates (about 480 bytes per pixel) for as long as it is kept.
    """

    def __init__(self, height: int, width: int, device: str | torch.device = "cuda"):
        device = torch.device(device)
        if device.type != "cuda":
            raise ValueError(f"a CUDA graph needs a CUDA device, not {device}")
        self.image = torch.zeros(3, height, width, device=device)
        self.alpha = torch.zeros(height, width, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # the caching allocator's warm-up, outside the capture
            estimate_fb_ml(self.image, self.alpha)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.fg, _ = estimate_fb_ml(self.image, self.alpha)

    def __call__(self, image: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """(3, H, W) and (H, W) float32 in [0, 1] on the device -> the foreground (3, H, W), a
        tensor the next call overwrites."""
        self.image.copy_(image)
        self.alpha.copy_(alpha)
        self.graph.replay()
        return self.fg


def estimate_foreground_torch(image, alpha, device: str | torch.device = "cpu", graph: GraphedForeground | None = None):
    """`estimate_fb_ml`'s foreground of uint8 arrays, computed on `device`, back as (H, W, 3) uint8.

    Args:
        image: (H, W, 3) uint8 numpy array.
        alpha: (H, W) uint8 numpy array.
        device: where to compute (cpu, cuda, cuda:1, ...).
        graph: a `GraphedForeground` of this size on `device` to replay instead (a measurement).
    """
    device = torch.device(device)
    img = _shared(image).to(device, non_blocking=True).permute(2, 0, 1).float().div_(255)
    a = _shared(alpha).to(device, non_blocking=True).float().div_(255)
    fg = graph(img, a).clone() if graph is not None else estimate_fb_ml(img, a)[0]
    return fg.mul_(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
