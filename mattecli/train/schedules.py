"""Learning-rate schedules as multipliers of the base rates, functions of the iteration only
(so a resumed run recomputes exactly the same rates)."""

from __future__ import annotations

import math


def lr_factor(train_cfg, iteration: int, batches_per_epoch: int = 1) -> float:
    """Multiplier at `iteration` (0-based): optional linear warm-up, then multi-step or cosine.

    Multi-step milestones count iterations, or epochs of `batches_per_epoch` iterations when
    `milestone_unit` is "epochs" (the factor then changes only where an epoch starts)."""
    warmup = train_cfg.warmup_iters
    if warmup and iteration < warmup:
        return (iteration + 1) / warmup
    if train_cfg.schedule == "multistep":
        now = iteration // batches_per_epoch if train_cfg.milestone_unit == "epochs" else iteration
        passed = sum(now >= m for m in train_cfg.milestones)
        return train_cfg.gamma ** passed
    if train_cfg.schedule == "cosine":
        span = max(1, train_cfg.iters - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (iteration - warmup) / span)))
    raise ValueError(f"unknown schedule {train_cfg.schedule!r} (multistep | cosine)")
