"""Matting losses over the unknown region, normalised per sample.

Every loss takes the raw prediction and the batch (dict of tensors from the training pipelines:
`image`, `fg`, `bg` in [0, 1], `alpha` in [0, 1], `trimap` uint8 0/128/255) and returns a scalar:
the mean over the batch of per-sample losses, each summed over its region and divided by the
region's size (a sample with a tiny unknown band weighs as much as one with a large band).
"""

from __future__ import annotations

import torch

EPS = 1e-6  # Charbonnier epsilon: sqrt(d^2 + eps^2), eps^2 = 1e-12


def charbonnier(d: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(d * d + EPS * EPS)


def _per_sample_mean(values: torch.Tensor, region: torch.Tensor, skip_empty: bool = False) -> torch.Tensor:
    """Sum of `values` over `region` / size of the region, per sample; then the batch mean.

    A sample with an empty region contributes 0 to the batch mean, or, with `skip_empty`, is left
    out of it (the mean is over the samples that have the region; 0 if none has).
    """
    region = region.expand_as(values).to(values.dtype)
    dims = tuple(range(1, values.dim()))
    size = region.sum(dims)
    per_sample = (values * region).sum(dims) / size.clamp_min(1)
    if not skip_empty:
        return per_sample.mean()
    return per_sample.sum() / (size > 0).sum().clamp_min(1)


def unknown_region(batch: dict) -> torch.Tensor:
    return batch["trimap"] == 128


def alpha_loss(pred: torch.Tensor, batch: dict, region: torch.Tensor | None = None) -> torch.Tensor:
    """Charbonnier alpha loss over `region` (default: the unknown region of `trimap`)."""
    region = unknown_region(batch) if region is None else region
    return _per_sample_mean(charbonnier(pred - batch["alpha"]), region)


def composition_loss(pred: torch.Tensor, batch: dict) -> torch.Tensor:
    """Charbonnier between the image and fg/bg composited with the predicted alpha (3 channels)."""
    comp = pred * batch["fg"] + (1 - pred) * batch["bg"]
    return _per_sample_mean(charbonnier(comp - batch["image"]), unknown_region(batch))


def _weighted_mean(diff: torch.Tensor, region: torch.Tensor, plus_one: bool) -> torch.Tensor:
    """The authors' `weighted_loss` term (hltrainval.py:164-182, A2U trainval.py:434-452).

    Charbonnier of the masked difference at every pixel (so pixels outside the region add eps, as
    theirs do), summed over pixels and channels per sample, divided by the number of region pixels
    (counted once, not per channel; + 1 in A2U's version), then averaged over the batch.
    """
    region = region.to(diff.dtype)
    per_pixel = charbonnier(diff * region)
    count = region.sum(dim=(1, 2, 3))
    denominator = count + 1 if plus_one else count.clamp_min(1)  # IndexNet's crops always hold unknown pixels
    return (per_pixel.sum(dim=(1, 2, 3)) / denominator).mean()


def dim_loss(pred: torch.Tensor, batch: dict, plus_one: bool = False) -> torch.Tensor:
    """Deep Image Matting's loss as IndexNet trains with it: 0.5 alpha + 0.5 composition, the
    composition error summed over the 3 colour channels (hltrainval.py:164-182)."""
    region = unknown_region(batch)
    comp = pred * batch["fg"] + (1 - pred) * batch["bg"]
    return 0.5 * _weighted_mean(pred - batch["alpha"], region, plus_one) \
        + 0.5 * _weighted_mean(comp - batch["image"], region, plus_one)


def dim_a2u_loss(pred: torch.Tensor, batch: dict) -> torch.Tensor:
    """A2U's variant of `dim_loss`: 1 added to each denominator (trainval.py:440, 449)."""
    return dim_loss(pred, batch, plus_one=True)


def l1_loss(pred: torch.Tensor, batch: dict) -> torch.Tensor:
    return _per_sample_mean((pred - batch["alpha"]).abs(), unknown_region(batch))


def tcp_loss(pred: torch.Tensor, batch: dict, theta: float = 0.1) -> torch.Tensor:
    """TCP (specs/tcp.md): 0.9 alpha loss over the unknown region + 0.1 background-enhancement loss
    over the unknown pixels whose ground-truth alpha is below theta.

    A crop whose unknown band has no such pixel (inside a large semi-transparent region) has no
    background term: it is left out of that term's batch mean rather than counted as 0, which
    would weaken the term by the share of such crops.
    """
    background = unknown_region(batch) & (batch["alpha"] < theta)
    bg = _per_sample_mean(charbonnier(pred - batch["alpha"]), background, skip_empty=True)
    return 0.9 * alpha_loss(pred, batch) + 0.1 * bg


def mmagic_loss(pred: torch.Tensor, batch: dict) -> torch.Tensor:
    """mmagic's IndexNet configs: CharbonnierLoss 0.5 + CharbonnierCompLoss 1.5, both sample-wise
    over the unknown region (sqrt(d^2 + 1e-12), the composition over its 3 channels)."""
    return 0.5 * alpha_loss(pred, batch) + 1.5 * composition_loss(pred, batch)


LOSSES = {"dim": dim_loss, "dim-a2u": dim_a2u_loss, "l1": l1_loss, "alpha": alpha_loss, "tcp": tcp_loss,
          "mmagic": mmagic_loss}
COMPOSING = ("dim", "dim-a2u", "mmagic")  # losses with a composition term: they read the batch's fg and bg
