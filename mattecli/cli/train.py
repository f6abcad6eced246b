"""`matte train`: train a recipe on a prepared dataset."""

from __future__ import annotations

from pathlib import Path

import typer


def main(
    recipe: str = typer.Option(..., "--recipe", help="Recipe name (recipes/NAME.yaml) or path."),
    data: Path = typer.Option(..., "--data", help="Prepared dataset root (train/ and test/ with manifest.csv)."),
    out: Path = typer.Option(None, "--out", help="Run folder (default: runs/RECIPE)."),
    iters: int = typer.Option(None, "--iters", help="Total length of the run (default: the recipe's)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Batch size per process (default: the recipe's)."),
    device: str = typer.Option("auto", "--device", help="auto (cuda when available, else cpu), cpu or cuda "
                               "(under torchrun: one GPU per process)."),
    workers: int = typer.Option(0, "--workers", help="Data-loading worker processes."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in the run folder."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation, data order and augmentation."),
    pretrained: Path = typer.Option(None, "--pretrained", help="torchvision-format ImageNet encoder state dict."),
    overrides: list[str] = typer.Option([], "--set", help="Recipe override KEY=VALUE, e.g. train.lr=1e-3 (repeatable)."),
) -> None:
    """Train with the recipe's schedule. Writes RUN/checkpoints/*.pt, RUN/last.safetensors,
    RUN/best.safetensors (by validation SAD), RUN/log.jsonl and RUN/curves.png. Kill it at any
    moment: --resume continues exactly where the last checkpoint left off."""
    from mattecli.devices import resolve_device
    from mattecli.recipes import load_recipe
    from mattecli.train.loop import TrainOptions, train

    extra = list(overrides)
    if iters is not None:
        extra.append(f"train.iters={iters}")
    if batch_size is not None:
        extra.append(f"train.batch_size={batch_size}")
    rec = load_recipe(recipe, extra)
    run_dir = out or Path("runs") / rec.name
    result = train(TrainOptions(rec, data, run_dir, device=resolve_device(device), workers=workers, resume=resume,
                                seed=seed, pretrained=pretrained))
    typer.echo(f"trained {rec.name} for {result.iterations} iterations (last loss {result.last_loss:.4f}); "
               f"weights: {run_dir / 'last.safetensors'}"
               + (f", best (val SAD {result.best_sad:.3f}): {run_dir / 'best.safetensors'}" if result.best_sad else ""))
