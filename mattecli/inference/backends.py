"""Backends behind one small protocol: `recipe` attribute, and `__call__(x) -> raw alpha`.

`x` is the aligned, normalised float32 (N, C, H, W) array the pipeline prepared; the result is the
network's raw (N, 1, H, W) float32 output. The backend follows from the file's suffix unless named.
Each backend imports its runtime inside `load`, so a missing runtime fails only when asked for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mattecli.errors import UsageError

SUFFIX_TO_BACKEND = {".safetensors": "torch", ".onnx": "onnx", ".engine": "trt", ".plan": "trt"}


class TorchBackend:
    """A PyTorch model in eval mode on a device."""

    def __init__(self, model, recipe, device: str = "cpu"):
        import torch

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.recipe = recipe

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "TorchBackend":
        from mattecli.weights import load_model

        model, recipe = load_model(path)
        return cls(model, recipe, device)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(torch.from_numpy(x).to(self.device))
        return out.float().cpu().numpy()


BACKENDS = {"torch": TorchBackend}


def load_backend(path: str | Path, name: str | None = None, device: str = "cpu"):
    """Open a model file with the named backend, or the one its suffix implies."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such weights file")
    name = name or SUFFIX_TO_BACKEND.get(path.suffix.lower())
    if name is None:
        raise UsageError(f"{path}: unknown model file type (expected {', '.join(SUFFIX_TO_BACKEND)})")
    if name not in BACKENDS:
        raise UsageError(f"backend '{name}' is not built yet (issue [Export]); available: {', '.join(BACKENDS)}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available on this machine")
    return BACKENDS[name].load(path, device=device)
