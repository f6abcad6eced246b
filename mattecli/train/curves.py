"""What a run shows of itself: `curves.png` (matplotlib, Agg) and, with `--tensorboard`, TensorBoard
event files in RUN_DIR/tensorboard. `log.jsonl` (loop.py) stays the record; both are drawn from it."""

from __future__ import annotations

from pathlib import Path

from mattecli.errors import UsageError

METRIC_LABELS = {"sad": "SAD", "mse": "MSE", "grad": "Grad", "conn": "Conn"}  # in the papers' units


def plot_curves(history: list[dict], path: Path) -> None:
    """Draw the loss (log axis), the learning rate and each validation metric against iterations.

    Args:
        history: log.jsonl entries: `iter`, `loss`, `lr`, and `val` ({metric: value}) where validated.
        path: the PNG to write (atomically).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display; also keeps a GUI backend from being picked on a desktop
    from matplotlib.figure import Figure

    from mattecli.files import atomic_write

    validated = [e for e in history if "val" in e]
    metrics = list(validated[0]["val"]) if validated else []
    panels = 2 + len(metrics)
    cols = min(panels, 3)
    rows = -(-panels // cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    iters = [e["iter"] for e in history]

    ax = axes[0]
    ax.plot(iters, [e["loss"] for e in history], color="tab:blue", label="training loss")
    if all(e["loss"] > 0 for e in history):
        ax.set_yscale("log")
    ax.set(title="loss", xlabel="iteration", ylabel="loss (log scale)")
    ax.legend()
    ax = axes[1]
    ax.plot(iters, [e.get("lr", float("nan")) for e in history], color="tab:green", label="learning rate (new layers)")
    ax.set(title="learning rate", xlabel="iteration", ylabel="learning rate")
    ax.legend()
    for ax, metric in zip(axes[2:], metrics):
        ax.plot([e["iter"] for e in validated], [e["val"][metric] for e in validated], "o-", color="tab:red",
                label=f"validation {metric.upper()}")
        ax.set(title=f"validation {metric.upper()}", xlabel="iteration", ylabel=f"{METRIC_LABELS.get(metric, metric)} (papers' units)")
        ax.legend()
    for ax in axes[panels:]:
        ax.set_visible(False)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))


class TensorBoardLog:
    """TensorBoard scalars (loss, lr, samples/s, validation metrics) mirroring log.jsonl entries."""

    def __init__(self, folder: Path, start: int):
        check_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events after the checkpoint a resumed run restarts from, as log.jsonl does; also
        # from 0, a run resumed before its first checkpoint (it starts again: its steps were there twice)
        self.writer = SummaryWriter(str(folder), purge_step=start + 1)

    def add(self, entry: dict) -> None:
        step = entry["iter"]
        for key in ("loss", "lr", "samples_per_s"):
            if key in entry:
                self.writer.add_scalar(f"train/{key}", entry[key], step)
        for metric, value in entry.get("val", {}).items():
            self.writer.add_scalar(f"val/{metric}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def check_tensorboard() -> None:
    """Fail before training when `--tensorboard` cannot be honoured."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise UsageError("--tensorboard: the tensorboard package is not installed "
                         "(pip install tensorboard, or the project's [tensorboard] extra)") from None
