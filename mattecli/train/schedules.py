"""Learning-rate schedules as multipliers of the base rates, functions of the iteration only
(so a resumed run recomputes exactly the same rates)."""

from __future__ import annotations

import math


def lr_factor(train_cfg, iteration: int) -> float:
    """Multiplier at `iteration` (0-based): optional linear warm-up, then multi-step or cosine."""
    warmup = train_cfg.warmup_iters
    if warmup and iteration < warmup:
        return (iteration + 1) / warmup
    if train_cfg.schedule == "multistep":
        passed = sum(iteration >= m for m in train_cfg.milestones)
        return train_cfg.gamma ** passed
    if train_cfg.schedule == "cosine":
        span = max(1, train_cfg.iters - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (iteration - warmup) / span)))
    raise ValueError(f"unknown schedule {train_cfg.schedule!r} (multistep | cosine)")
