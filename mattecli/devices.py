"""`--device` for every command: auto, cpu, cuda or cuda:N, checked in one place.

Kept light (torch is imported only when a GPU is asked about), so the CLI modules can use it
while `matte --help` stays instant.
"""

from __future__ import annotations

import re

from mattecli.errors import UsageError


def resolve_device(text: str | None, option: str = "--device", backend: str | None = None) -> str:
    """`auto` (or None) -> "cuda" when a GPU is available, else "cpu"; cpu / cuda / cuda:N checked.
    With `backend="onnx"`, auto is "cuda" only where ONNX Runtime can run on it too (onnxruntime-gpu:
    the plain onnxruntime package, which matte installs, runs on the CPU alone).

    Raises:
        UsageError: naming `option` (the Python API's `device=`), for anything else (e.g. `gpu`),
            or a CUDA device this machine does not have.
    """
    name = (text or "auto").strip().lower()
    if name == "cpu":
        return "cpu"
    if name != "auto" and not re.fullmatch(r"cuda(:\d+)?", name):
        # a Mac user tries mps: say it is not there rather than leave them to guess why
        apple = " (Apple GPUs, mps, are not supported: use cpu)" if re.fullmatch(r"mps(:\d+)?", name) else ""
        raise UsageError(f"{option} {text}: expected auto, cpu, cuda or cuda:N{apple}")
    import torch

    available = torch.cuda.is_available()
    if name == "auto":
        if available and backend == "onnx":  # a GPU, but an .onnx model failed by default without onnxruntime-gpu
            import onnxruntime

            available = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        return "cuda" if available else "cpu"
    if not available:
        raise UsageError(f"{option} {text}: CUDA is not available on this machine")
    index = int(name.split(":")[1]) if ":" in name else 0
    if index >= torch.cuda.device_count():
        raise UsageError(f"{option} {text}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"numbered from 0")
    return name
