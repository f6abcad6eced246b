"""A seeded random input through the one preprocessing path, for timing (`bench`) and parity
checks (`export --verify`): both must see what `matte infer` would feed the model."""

from __future__ import annotations

import numpy as np

from mattecli.recipes import InferConfig
from mattecli.sizes import Size


def fresh_input(size: Size, cfg: InferConfig, rng: np.random.Generator) -> np.ndarray:
    """A random image (smooth colour fields plus noise) and a blocky 0/128/255 trimap of `size`,
    prepared by `pipeline.prepare` (normalised, encoded, aligned to the stride)."""
    import cv2

    from mattecli.inference.pipeline import prepare

    width, height = size.width, size.height
    coarse = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3)).astype(np.float32)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
    image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
    blocks = rng.choice(np.array([0, 128, 255], np.uint8), (max(2, height // 24), max(2, width // 24)))
    trimap = cv2.resize(blocks, (width, height), interpolation=cv2.INTER_NEAREST)
    return prepare(image, trimap, cfg)
