"""A run folder and its checkpoints: what a run was asked for, and everything a resumed run needs to
continue bit for bit.

A run folder holds `recipe.json` (the resolved recipe, `train.iters` the run's length), `run.json`
(the seed and data it was started with), `checkpoints/iter_N.pt`, `log.jsonl`, `last.safetensors`,
`best.safetensors` and `curves.png`. A new run refuses a folder that holds one; `--resume` continues
it with what it recorded; `--overwrite` removes it first. Checkpoints are written atomically, ordered
by their iteration (never by file name) and read back with `torch.load(weights_only=True)` (tensors,
numbers, strings, dicts and lists only).
"""

from __future__ import annotations

import json
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mattecli.errors import UsageError
from mattecli.files import atomic_write, write_bytes

KEEP = 3  # newest checkpoints kept in RUN_DIR/checkpoints
# every file and folder a run writes: what --overwrite removes (nothing else in the folder)
RUN_FILES = ("recipe.json", "run.json", "log.jsonl", "last.safetensors", "best.safetensors", "curves.png",
             "checkpoints", "tensorboard")
_CHECKPOINT = re.compile(r"iter_(\d+)\.pt")


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(iteration, path) of the run's checkpoints, oldest first by iteration."""
    folder = Path(run_dir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in folder.glob("iter_*.pt") if (m := _CHECKPOINT.fullmatch(p.name))]
    return sorted(found)


def save_checkpoint(run_dir: Path, state: dict, iteration: int) -> Path:
    """Write `state` as the checkpoint of `iteration`; keep the KEEP newest by iteration."""
    import io

    import torch

    path = Path(run_dir) / "checkpoints" / f"iter_{iteration:08d}.pt"
    # Serialised in memory (see write_bytes): torch.save's own writer reports a full disk as
    # "RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(path, buffer.getbuffer())
    for _, old in checkpoints(run_dir)[:-KEEP]:
        old.unlink()
    return path


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1][1] if found else None


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's state. One damaged after it was written (a full disk, a copy cut short) is
    one line naming it; it was torch.load's traceback, or click's bare "Aborted!" for an empty file."""
    from mattecli.weights import _load_weights_only  # the one-line reasons of every torch.load

    try:
        state = _load_weights_only(Path(path))
        if not (isinstance(state, dict) and {"model", "optimizer", "iteration", "torch_rng"} <= set(state)):
            raise UsageError(f"{path}: not a matte training checkpoint")
    except UsageError as err:
        raise UsageError(f"{err}; remove it to resume from the checkpoint before it") from None
    return state


def training_state(model, optimizer, scaler, iteration: int, best: dict | None, device) -> dict:
    """What a checkpoint holds: model, optimiser, iteration, RNG states, loss scale, best so far."""
    import torch

    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": iteration,
             "torch_rng": torch.get_rng_state(), "best": best}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    if scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    return state


def restore_training_state(state: dict, model, optimizer, scaler, device) -> tuple[int, dict | None]:
    """Load a checkpoint's model, optimiser, RNG and loss-scale state; -> (iteration, best)."""
    import torch

    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    if scaler.is_enabled() and "scaler" in state:  # the loss scale it had grown or shrunk to
        scaler.load_state_dict(state["scaler"])
    best = state.get("best")
    if best is None and state.get("best_sad") is not None:  # checkpoints written before `best`
        best = {"metric": "sad", "value": state["best_sad"], "iter": int(state["iteration"])}
    return int(state["iteration"]), best


def holds_run(run_dir: Path) -> bool:
    return any((Path(run_dir) / name).exists() for name in RUN_FILES)


@dataclass
class RunRecord:
    """What a run was asked for (RUN_DIR/recipe.json and run.json)."""

    recipe: dict  # the resolved recipe, train.iters = the run's length
    seed: int
    data: str


def read_record(run_dir: Path) -> RunRecord | None:
    run_dir = Path(run_dir)
    if not (run_dir / "recipe.json").is_file():
        return None
    recipe = _read_object(run_dir / "recipe.json")
    run = _read_object(run_dir / "run.json") if (run_dir / "run.json").is_file() else {}
    seed = run.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):  # a hand edit: it was int()'s ValueError traceback
        raise UsageError(f"{run_dir / 'run.json'}: unreadable run record (seed {seed!r} is not an integer)")
    return RunRecord(recipe, seed, str(run.get("data", "")))


def _read_object(path: Path) -> dict:
    """A run record's JSON object; one that cannot be read names its own file (an unreadable
    run.json was reported as recipe.json)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: unreadable run record ({err})") from None
    if not isinstance(value, dict):
        raise UsageError(f"{path}: unreadable run record (not a JSON object)")
    return value


def write_record(run_dir: Path, record: RunRecord) -> None:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "recipe.json", lambda tmp: Path(tmp).write_text(json.dumps(record.recipe, indent=2)))
    run = {"seed": record.seed, "data": record.data}
    atomic_write(run_dir / "run.json", lambda tmp: Path(tmp).write_text(json.dumps(run, indent=2)))


def first_difference(a: dict, b: dict, prefix: str = "") -> str | None:
    """The first key (dotted) whose value differs between two nested dicts, or None."""
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            found = first_difference(x, y, f"{prefix}{key}.")
            if found:
                return found
        elif x != y:
            return f"{prefix}{key}"
    return None


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a folder that holds a run unless asked to resume it or start again. Every process of a
    run checks; `clear_run` removes the old run's files later, in rank 0, once every check passed."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out {run_dir}: is a file, not a folder")
    if resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other: choose one")
    if not resume and not overwrite and holds_run(run_dir):
        done = checkpoints(run_dir)
        what = f"{done[-1][0]} iteration{'s' * (done[-1][0] != 1)} done" if done else "no checkpoint yet"
        raise UsageError(f"--out {run_dir} holds a run ({what}): use --resume to continue it, --overwrite to "
                         "start again, or another --out")


@contextmanager
def run_lock(run_dir: Path):
    """Hold RUN_DIR/.lock while a run writes its folder: a second `matte train` on it (a --resume typed
    in another terminal while the run went on) removed the first's temporary files, which stopped it,
    or both appended to log.jsonl. The operating system releases the lock when its process ends,
    however it ends. Where there is no fcntl (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"--out {run_dir}: another `matte train` is writing this run; let it finish "
                             "or stop it first (Ctrl-C; --resume then continues it)") from None
        except OSError:  # a file system without locks (ENOLCK on some network mounts): run unlocked
            pass
        yield


def clear_run(run_dir: Path) -> None:
    """Remove the run's own files (`RUN_FILES`), nothing else in the folder (`--overwrite`)."""
    for name in RUN_FILES:
        path = Path(run_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
