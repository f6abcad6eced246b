"""SAD, MSE, Grad and Conn exactly as the Deep Image Matting MATLAB evaluation computes them.

The MATLAB code (compute_sad_loss.m, compute_mse_loss.m, compute_gradient_loss.m,
compute_connectivity_error.m, gaussgradient.m) is the specification; `specs/metrics.md` lists the
details every port we know of gets wrong. All four metrics are taken over the unknown region
`trimap == 128` (exactly 128: a 127 is not unknown) and returned in the units papers print:
SAD / 1000, MSE as is, Grad / 1000, Conn / 1000.

Inputs are 8-bit mattes (H, W) (a ground truth with three channels uses its first). Everything is
vectorised; the connectivity metric runs one OpenCV labelling per threshold.
"""

from __future__ import annotations

import math

import numpy as np

SIGMA = 1.4
CONN_STEP = 0.1
CONN_CLOSE = 0.15  # d >= 0.15 counts as disconnected in phi = 1 - d * (d >= 0.15)
METRICS = ("sad", "mse", "grad", "conn")


def as_matte(x: np.ndarray, what: str = "matte") -> np.ndarray:
    """A (H, W) matte: the first channel of an (H, W, C) array, as the benchmark's scripts index it."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., 0]
    if x.ndim != 2:
        raise ValueError(f"{what} must be (H, W) or (H, W, C), got shape {x.shape}")
    return x


def _inputs(pred, gt, trimap):
    pred, gt, trimap = as_matte(pred, "prediction"), as_matte(gt, "ground truth"), as_matte(trimap, "trimap")
    if not pred.shape == gt.shape == trimap.shape:
        raise ValueError(f"sizes differ: prediction {pred.shape}, ground truth {gt.shape}, trimap {trimap.shape}")
    return pred, gt, trimap == 128


def sad(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> float:
    """Sum of absolute differences over the unknown region, / 255, in thousands."""
    pred, gt, unknown = _inputs(pred, gt, trimap)
    # cast before subtracting: uint8 - uint8 wraps (0 - 255 = 1)
    diff = np.abs(pred.astype(np.float64) - gt.astype(np.float64))
    return float(diff[unknown].sum() / 255 / 1000)


def mse(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> float:
    """Mean squared error of alpha in [0, 1] over the unknown region (not rescaled).

    MATLAB divides by the number of unknown pixels, giving NaN for a trimap without any; we return
    0.0 there (the sum is 0 too) so that means and JSON stay finite.
    """
    pred, gt, unknown = _inputs(pred, gt, trimap)
    count = int(unknown.sum())
    if count == 0:
        return 0.0
    diff = (pred.astype(np.float64) - gt.astype(np.float64)) / 255
    return float(np.square(diff[unknown]).sum() / count)


# --- Grad -------------------------------------------------------------------------------------


def mat2gray(x: np.ndarray) -> np.ndarray:
    """MATLAB's `mat2gray(x)`: per-image min-max to [0, 1] in float64 (not / 255).

    A constant image is returned in its own scale, clipped to [0, 1] (so all-0 -> 0, all-255 -> 1),
    not NaN. The arithmetic follows MATLAB's `imlincomb(delta, x, -lo * delta)`.
    """
    x = np.asarray(x, dtype=np.float64)
    lo, hi = float(x.min()), float(x.max())
    if hi == lo:
        out = x.copy()
    else:
        delta = 1.0 / (hi - lo)
        out = x * delta + (-lo * delta)
    return np.clip(out, 0.0, 1.0)


def gaussian_derivative_kernel(sigma: float = SIGMA) -> np.ndarray:
    """gaussgradient.m's hx: hx[i, j] = gauss(i) * dgauss(j) on a (2h+1)^2 grid, unit L2 norm.

    h = ceil(sigma * sqrt(-2 ln(sqrt(2 pi) sigma 0.01))) (4 for sigma 1.4). Rows index the Gaussian,
    columns its derivative, so hx differentiates along x (columns); hy = hx.T.
    """
    half = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * 1e-2)))
    u = np.arange(-half, half + 1, dtype=np.float64)
    gauss = np.exp(-u**2 / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
    dgauss = -u * gauss / sigma**2
    hx = np.outer(gauss, dgauss)
    return hx / math.sqrt(float(np.sum(hx * hx)))


def _separable_factors(sigma: float):
    """hx = outer(col, row) (unit norm), so that filtering runs as two 1-D passes."""
    hx = gaussian_derivative_kernel(sigma)
    half = hx.shape[0] // 2
    u = np.arange(-half, half + 1, dtype=np.float64)
    gauss = np.exp(-u**2 / (2 * sigma**2))
    dgauss = -u * gauss
    norm = math.sqrt(float(np.sum(gauss**2) * np.sum(dgauss**2)))
    return gauss, dgauss / norm


def gauss_gradient(image: np.ndarray, sigma: float = SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """gaussgradient.m: `imfilter(image, hx, 'replicate', 'conv')` and the same with hy = hx'.

    `imfilter(..., 'conv')` is a true convolution: the kernel is flipped before the sliding sum
    (OpenCV filters by correlation, so the flip is explicit here). With dgauss(u) = -u g(u) this
    makes gx positive where the image grows to the right. Borders are replicated.
    """
    import cv2

    image = np.asarray(image, dtype=np.float64)
    gauss, dgauss = _separable_factors(sigma)
    # flip for convolution (gauss is symmetric, dgauss antisymmetric)
    g, dg = gauss[::-1].copy(), dgauss[::-1].copy()
    border = cv2.BORDER_REPLICATE
    gx = cv2.sepFilter2D(image, cv2.CV_64F, dg, g, borderType=border)  # kernelX along columns
    gy = cv2.sepFilter2D(image, cv2.CV_64F, g, dg, borderType=border)
    return gx, gy


def gradient_magnitude(matte: np.ndarray, sigma: float = SIGMA) -> np.ndarray:
    """|grad mat2gray(matte)| with gaussgradient.m's filter, as float64."""
    gx, gy = gauss_gradient(mat2gray(matte), sigma)
    return np.sqrt(gx * gx + gy * gy)


def grad(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> float:
    """Gradient error: sum over the unknown region of (|grad p~| - |grad g~|)^2, in thousands,
    where x~ = mat2gray(x)."""
    pred, gt, unknown = _inputs(pred, gt, trimap)
    # MATLAB: (single(pred_amp) - single(target_amp)).^2 in single precision
    diff = gradient_magnitude(pred).astype(np.float32) - gradient_magnitude(gt).astype(np.float32)
    return float(np.square(diff)[unknown].sum(dtype=np.float64) / 1000)


# --- Conn -------------------------------------------------------------------------------------


def conn_thresholds(step: float = CONN_STEP) -> np.ndarray:
    """`0:step:1` as single precision, the precision MATLAB compares the single images in.

    (MATLAB's colon builds its second half from the right end, so its double 0.6 is 0.6, while
    `6 * 0.1` is 0.6000000000000001; both round to the same float32, so the difference never
    reaches the comparison.)
    """
    n = int(round(1 / step))
    return np.array([k * step for k in range(n + 1)], dtype=np.float64).astype(np.float32)


def largest_component(mask: np.ndarray) -> np.ndarray | None:
    """The largest 4-connected component of `mask` as a boolean image, or None if `mask` is empty.

    On a tie, the component MATLAB's `bwconncomp` numbers first, i.e. the one whose first pixel in
    column-major order (down the columns, left to right) comes first; `max` keeps the first maximum.
    """
    import cv2

    # connectedComponents is ~10x faster than connectedComponentsWithStats; areas come from bincount
    mask = np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
    count, labels = cv2.connectedComponents(mask, connectivity=4, ltype=cv2.CV_32S)
    if count <= 1:
        return None
    areas = np.bincount(labels.ravel(), minlength=count)
    areas[0] = 0  # the background is not a component
    tied = areas == areas.max()
    if np.count_nonzero(tied) == 1:
        best = int(np.argmax(areas))
    else:
        # the tied component met first scanning down the columns, left to right
        in_tied = tied[labels]
        col = int(np.argmax(in_tied.any(axis=0)))
        row = int(np.argmax(in_tied[:, col]))
        best = int(labels[row, col])
    return labels == best


def connectivity_levels(pred: np.ndarray, gt: np.ndarray, step: float = CONN_STEP) -> np.ndarray:
    """compute_connectivity_error.m's l_map (float32): for each pixel, the last threshold at which
    it was still in the largest common component; 1 where it always was."""
    thresholds = conn_thresholds(step)
    p = pred.astype(np.float32) / np.float32(255)
    g = gt.astype(np.float32) / np.float32(255)
    both = np.minimum(p, g)  # (p >= t) & (g >= t)  <=>  min(p, g) >= t
    first = both >= thresholds[1]
    rows, cols = np.flatnonzero(first.any(axis=1)), np.flatnonzero(first.any(axis=0))
    if len(rows) == 0:  # empty at every threshold: nothing is assigned, l = 1 everywhere
        return np.ones(pred.shape, np.float32)
    # every component lies in the bounding box of the first mask; outside it l = thresholds[0].
    # Cropping is a translation, so column-major order (the tie-break) is unchanged.
    level = np.zeros(pred.shape, dtype=np.int8)  # index of the assigned threshold, -1: none
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    both, inner = both[box], level[box]
    inner[:] = -1
    unassigned = np.ones(both.shape, dtype=bool)
    for i in range(1, len(thresholds)):
        omega = largest_component(first[box] if i == 1 else both >= thresholds[i])
        if omega is None:  # empty intersection: MATLAB skips; higher thresholds are empty too
            break
        inner[unassigned & ~omega] = i - 1
        unassigned &= omega
    levels = np.append(thresholds, np.float32(1))  # index -1 -> 1 (never left the component)
    return levels[level]


def conn(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray, step: float = CONN_STEP) -> float:
    """Connectivity error: sum over the unknown region of |phi(p) - phi(g)|, in thousands."""
    pred, gt, unknown = _inputs(pred, gt, trimap)
    l_map = connectivity_levels(pred, gt, step)
    close = np.float32(CONN_CLOSE)

    def phi(x: np.ndarray) -> np.ndarray:
        d = x.astype(np.float32) / np.float32(255) - l_map
        return np.float32(1) - d * (d >= close)

    return float(np.abs(phi(pred) - phi(gt))[unknown].sum(dtype=np.float64) / 1000)


def evaluate(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> dict[str, float]:
    """All four metrics for one image, in the papers' units: {"sad", "mse", "grad", "conn"}."""
    pred, gt, trimap = as_matte(pred, "prediction"), as_matte(gt, "ground truth"), as_matte(trimap, "trimap")
    return {"sad": sad(pred, gt, trimap), "mse": mse(pred, gt, trimap),
            "grad": grad(pred, gt, trimap), "conn": conn(pred, gt, trimap)}
