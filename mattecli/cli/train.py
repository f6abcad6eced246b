"""`matte train`: train a recipe on a prepared dataset."""

from __future__ import annotations

from pathlib import Path

import typer

from mattecli.cli.parsing import SEED_MAX, SEED_MIN
from mattecli.errors import UsageError


def main(
    recipe: str = typer.Option(..., "--recipe", help="Recipe name (recipes/NAME.yaml) or path: a .yaml, or a run "
                                                     "folder's recipe.json."),
    data: Path = typer.Option(..., "--data", help="Prepared dataset root (train/ and test/ with manifest.csv), or one "
                                                 "split: its folder or manifest file (no validation)."),
    out: Path = typer.Option(None, "--out", help="Run folder (default: runs/RECIPE)."),
    iters: int = typer.Option(None, "--iters", help="Total length of the run (default: the recipe's; on --resume, "
                                                    "the run's: a larger N extends it, a smaller one ends it sooner)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Global batch size, split across torchrun's processes "
                                                              "(default: the recipe's)."),
    device: str = typer.Option("auto", "--device", help="auto (cuda when available, else cpu), cpu or cuda[:N] "
                               "(under torchrun: each process its LOCAL_RANK's GPU)."),
    workers: int = typer.Option(0, "--workers", min=0, help="Data-loading worker processes."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its newest checkpoint, "
                                                        "with the length and seed it was started with."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Remove the run in --out and start again."),
    seed: int = typer.Option(None, "--seed", min=SEED_MIN, max=SEED_MAX, help="Seed of initialisation, data order and augmentation "
                                                  "(default 0; on --resume, the run's)."),
    pretrained: str = typer.Option(None, "--pretrained", help="ImageNet encoder checkpoint (torchvision's or the "
                                                              "authors' layout), or `none` to train from scratch."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also write TensorBoard event files to "
                                                                  "RUN/tensorboard (needs the tensorboard package)."),
    overrides: list[str] = typer.Option([], "--set", help="Recipe override KEY=VALUE, e.g. train.lr=1e-3 (repeatable)."),
) -> None:
    """Train with the recipe's schedule. Writes RUN/recipe.json and RUN/run.json (what the run was
    asked for), RUN/checkpoints/*.pt, RUN/last.safetensors, RUN/best.safetensors (by the recipe's
    validation metric), RUN/log.jsonl and RUN/curves.png. Kill it at any moment: --resume continues
    exactly where the last checkpoint left off. A folder that holds a run is refused without
    --resume or --overwrite."""
    from mattecli.imageio import check_out_dir
    from mattecli.recipes import load_recipe, parse_override
    from mattecli.train.loop import TrainOptions, train

    extra = list(overrides)
    if batch_size is not None:
        extra.append(f"train.batch_size={batch_size}")
    rec = load_recipe(recipe, extra)
    if out is None and (rec.name in ("", ".", "..") or any(c in rec.name for c in "/\\")):
        # runs/NAME is the default run folder: `name: ../x` put the run outside runs/, `name: ""` in runs/ itself
        raise UsageError(f"recipe name {rec.name!r} does not name a folder under runs/: give --out")
    run_dir = out or Path("runs") / rec.name
    check_out_dir(run_dir)  # before the data and the model are loaded
    result = train(TrainOptions(rec, data, run_dir, device=device, workers=workers, resume=resume,
                                seed=seed, pretrained=pretrained, iters=iters, overwrite=overwrite,
                                tensorboard=tensorboard,
                                iters_set=any(parse_override(o)[0] == ["train", "iters"] for o in overrides)))
    if result.finished_before or not result.writer:
        # train() said the run is finished; under torchrun rank 0 alone reports (every rank printed a
        # line, the others' saying no validation ran: only rank 0 validates)
        return
    best = result.best
    if best:
        chosen = (f", best (val {best['metric'].upper()} {best['value']:.3f} at iteration {best['iter']}): "
                  f"{run_dir / 'best.safetensors'}")
    elif rec.data.val_every and not result.validates:
        chosen = "; --data has no test split to validate on, so there is no best.safetensors"
    elif rec.data.val_every:
        chosen = (f"; no validation ran (the recipe validates every {rec.data.val_every} {rec.data.val_unit} on "
                  "the data's test/ split), so there is no best.safetensors yet")
    else:
        chosen = "; the recipe never validates (data.val_every 0), so there is no best.safetensors"
    typer.echo(f"trained {rec.name} for {result.iterations} iteration{'s' * (result.iterations != 1)} (last loss {result.last_loss:.4f}); "
               f"weights: {run_dir / 'last.safetensors'}{chosen}")
