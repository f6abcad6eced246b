"""inference.pipeline.encode_batch: training's input encoding is the inference pipeline's `prepare`."""

import numpy as np
import pytest
import torch

from mattecli.inference.pipeline import encode_batch, prepare
from mattecli.recipes import InferConfig


def _batch(rng, n=2, h=32, w=64):
    images = rng.integers(0, 256, (n, h, w, 3)).astype(np.uint8)
    trimaps = rng.choice(np.array([0, 128, 255], np.uint8), (n, h, w))
    return images, trimaps


@pytest.mark.parametrize("encoding, channels", [("scalar", 4), ("onehot", 6)])
def test_training_input_equals_the_inference_input(encoding, channels):
    """What a network is trained on must be what `matte infer` feeds it (same normalisation, same
    trimap encoding, same channel order) on a crop already aligned to the stride."""
    cfg = InferConfig(trimap=encoding, stride=32)
    images, trimaps = _batch(np.random.default_rng(0))
    image = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    trimap = torch.from_numpy(trimaps)[:, None]
    got = encode_batch(image, trimap, cfg)
    want = np.concatenate([prepare(i, t, cfg) for i, t in zip(images, trimaps)])
    assert got.shape == want.shape == (2, channels, 32, 64) and got.dtype == torch.float32
    # prepare reproduces the authors' float64 subtract/divide; training stays in float32
    assert np.abs(got.numpy() - want).max() < 1e-5
    tri = got[:, 3:].numpy()
    if encoding == "onehot":
        assert set(np.unique(tri)) == {0.0, 1.0} and (tri.sum(1) == 1).all()
        assert np.array_equal(tri[:, 1].astype(bool), trimaps == 128)
    else:
        assert np.array_equal(np.unique(tri), np.float32([0, 128, 255]) / 255)


def test_dtype_and_device_follow_the_image():
    images, trimaps = _batch(np.random.default_rng(1), n=1, h=8, w=8)
    image = torch.from_numpy(images).permute(0, 3, 1, 2).double() / 255
    out = encode_batch(image, torch.from_numpy(trimaps)[:, None], InferConfig(trimap="onehot"))
    assert out.dtype == torch.float64 and out.device == image.device
    mean = torch.tensor(InferConfig().mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(InferConfig().std, dtype=torch.float64).view(1, 3, 1, 1)
    assert torch.equal(out[:, :3], (image - mean) / std)
