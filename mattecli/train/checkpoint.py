"""Training checkpoints: everything a resumed run needs to continue bit for bit, written atomically
and read back with `torch.load(weights_only=True)` (tensors, numbers, strings, dicts and lists only)."""

from __future__ import annotations

from pathlib import Path

from mattecli.imageio import atomic_write

KEEP = 3  # newest checkpoints kept in RUN_DIR/checkpoints


def save_checkpoint(run_dir: Path, state: dict, iteration: int) -> Path:
    import torch

    folder = Path(run_dir) / "checkpoints"
    path = folder / f"iter_{iteration:08d}.pt"
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    for old in sorted(folder.glob("iter_*.pt"))[:-KEEP]:
        old.unlink()
    return path


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((Path(run_dir) / "checkpoints").glob("iter_*.pt"))
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)
