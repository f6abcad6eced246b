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


class OnnxBackend:
    """An exported `.onnx` graph in ONNX Runtime; the recipe comes from the graph's metadata."""

    def __init__(self, session, recipe, path: str | Path = "model.onnx"):
        self.session = session
        self.recipe = recipe
        self.path = Path(path)
        shape = session.get_inputs()[0].shape  # ints where fixed, names where dynamic
        self.fixed_size = tuple(shape[2:]) if all(isinstance(d, int) for d in shape[2:]) else None

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "OnnxBackend":
        import json

        import onnxruntime as ort

        from mattecli.recipes import recipe_from_dict

        path = Path(path)
        if path.suffix.lower() == ".safetensors":
            raise UsageError(f"{path}: the onnx backend runs an exported model; make one with "
                             f"`matte export --weights {path} --format onnx --dynamic --out MODEL.onnx`")
        try:
            session = ort.InferenceSession(str(path), providers=_onnx_providers(ort, device))
        except Exception as err:  # onnxruntime raises its own exception types, one per failure kind
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UsageError(f"{path}: not a loadable ONNX model ({reason})") from None
        meta = session.get_modelmeta().custom_metadata_map
        if "recipe" not in meta:
            raise UsageError(f"{path}: no recipe in the ONNX metadata (export it with `matte export`)")
        raw = json.loads(meta["recipe"])
        return cls(session, recipe_from_dict(raw, raw.get("name", path.stem)), path)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.fixed_size is not None and tuple(x.shape[2:]) != self.fixed_size:
            h, w = self.fixed_size
            raise ValueError(f"{self.path.name} was exported for {h}x{w} input only, got "
                             f"{x.shape[2]}x{x.shape[3]} (export with --dynamic)")
        inp, out = self.session.get_inputs()[0].name, self.session.get_outputs()[0].name
        return self.session.run([out], {inp: np.ascontiguousarray(x, dtype=np.float32)})[0]


def _onnx_providers(ort, device: str) -> list:
    """CUDA (then CPU for the operators CUDA lacks) on a cuda device, else CPU."""
    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise UsageError(f"--device {device} with the onnx backend needs onnxruntime-gpu "
                         "(pip install -e '.[gpu]'); this onnxruntime has only "
                         f"{', '.join(ort.get_available_providers())}")
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


BACKENDS = {"torch": TorchBackend, "onnx": OnnxBackend}


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
