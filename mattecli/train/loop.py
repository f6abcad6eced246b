"""The training loop: plain PyTorch, one process per GPU under torchrun (DDP), CPU for tiny recipes.

Reproducibility: every random draw of the data pipeline is seeded by (seed, epoch, sample); the
order of samples by (seed, epoch); dropout by the global torch generator, saved in checkpoints;
learning rates are a function of the iteration. A run killed at any point and resumed with
`--resume` therefore continues exactly as the uninterrupted run would have (bit for bit on a CPU).
"""

from __future__ import annotations

import datetime
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from mattecli.errors import UsageError
from mattecli.inference.pipeline import encode_batch
from mattecli.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from mattecli.train.losses import LOSSES
from mattecli.train.schedules import lr_factor


@dataclass
class TrainOptions:
    recipe: object
    data: Path  # a prepared dataset root (with train/ and optionally test/) or a train split folder
    out: Path
    device: str = "cpu"
    workers: int = 0
    resume: bool = False
    seed: int = 0
    pretrained: Path | None = None
    progress: bool = True
    val_limit: int = 0  # validate on at most this many samples (0 = all)


@dataclass
class TrainResult:
    iterations: int
    last_loss: float
    history: list = field(default_factory=list)
    best_sad: float | None = None
    run_dir: Path | None = None
    model: nn.Module | None = None  # the trained network (not wrapped in DDP or compiled)


class EpochSampler(torch.utils.data.Sampler):
    """This rank's share of a seeded permutation of an epoch, from a position on (for resuming).

    Every rank gets exactly n // world samples (the last n % world of the permutation are left out
    this epoch), so all ranks run the same number of batches per epoch and stay in step.
    """

    def __init__(self, n: int, seed: int, epoch: int, start: int = 0, rank: int = 0, world: int = 1):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
        self.indices = perm[: n - n % world][rank::world][start:]

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def _split_dirs(data: Path) -> tuple[Path, Path | None]:
    data = Path(data)
    if (data / "train" / "manifest.csv").is_file():
        test = data / "test"
        return data / "train", (test if (test / "manifest.csv").is_file() else None)
    if (data / "manifest.csv").is_file():
        return data, None
    raise UsageError(f"--data {data}: no train/manifest.csv (prepare it with `matte prepare-data`)")


def _param_groups(model: nn.Module, cfg) -> list[dict]:
    encoder = {id(p) for m in model.encoder_modules() for p in m.parameters()}
    enc = [p for p in model.parameters() if id(p) in encoder and p.requires_grad]
    new = [p for p in model.parameters() if id(p) not in encoder and p.requires_grad]
    return [{"params": enc, "base_lr": cfg.encoder_lr, "lr": cfg.encoder_lr, "name": "encoder"},
            {"params": new, "base_lr": cfg.lr, "lr": cfg.lr, "name": "new"}]


def _freeze_encoder_bn(model: nn.Module, scope: str = "backbone") -> None:
    if scope not in ("backbone", "index-encoder") or (scope == "index-encoder"
                                                      and not hasattr(model, "index_encoder_modules")):
        raise UsageError(f"train.freeze_bn_scope {scope!r}: backbone, or index-encoder for IndexNet recipes")
    modules = model.index_encoder_modules() if scope == "index-encoder" else model.encoder_modules()
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _dist() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def train(opts: TrainOptions) -> TrainResult:
    """Train `opts.recipe` on `opts.data`, writing checkpoints, weights, log.jsonl and curves.png."""
    from mattecli.data.pipelines import build_dataset
    from mattecli.models import build_model
    from mattecli.weights import save_weights

    recipe, cfg = opts.recipe, opts.recipe.train
    rank, local_rank, world = _dist()
    device = torch.device(opts.device)
    if world > 1:
        import torch.distributed as dist

        backend = "nccl" if device.type == "cuda" else "gloo"
        # rank 0 validates and writes while the others wait in their next all-reduce: NCCL's
        # default 10-minute timeout would kill a run validating on Composition-1k
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=2))
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {opts.device}: CUDA is not available on this machine")
    writer = rank == 0
    run_dir = Path(opts.out)
    train_dir, test_dir = _split_dirs(opts.data)

    torch.manual_seed(opts.seed)
    model = build_model(recipe)
    if opts.pretrained:
        from mattecli.train.pretrained import load_pretrained_encoder

        info = load_pretrained_encoder(model, recipe, opts.pretrained)
        if writer:
            print(f"matte train: --pretrained {opts.pretrained}: {info['loaded']} encoder tensors loaded, "
                  f"{len(info['ignored'])} unused")
    model.to(device)
    optimizer = torch.optim.Adam(_param_groups(model, cfg), betas=cfg.betas, weight_decay=cfg.weight_decay)
    dataset = build_dataset(recipe.data, train_dir, seed=opts.seed)
    per_rank = len(dataset) // world
    batches_per_epoch = per_rank // cfg.batch_size
    if batches_per_epoch == 0:
        raise UsageError(f"{train_dir}: {len(dataset)} samples are fewer than one batch of {cfg.batch_size} per process")

    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    iteration, best_sad, history = 0, None, []
    checkpoint = latest_checkpoint(run_dir) if opts.resume else None
    if opts.resume and checkpoint is None and writer:
        print(f"matte train: --resume: no checkpoint in {run_dir / 'checkpoints'}; starting from scratch")
    if checkpoint is not None:
        state = load_checkpoint(checkpoint)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        if use_amp and "scaler" in state:  # the loss scale it had grown or shrunk to
            scaler.load_state_dict(state["scaler"])
        iteration, best_sad = int(state["iteration"]), state.get("best_sad")
        history = _read_log(run_dir / "log.jsonl", upto=iteration)
        if writer:
            print(f"matte train: resumed from {checkpoint} at iteration {iteration}")

    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    loss_fn = LOSSES[cfg.loss]
    val_samples = _validation_samples(test_dir, opts.val_limit) if (test_dir and recipe.data.val_every) else []

    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=1))
    progress = _Progress(opts.progress and writer, cfg.iters, iteration)
    last_loss, t0, seen = float("nan"), time.perf_counter(), 0
    try:
        while iteration < cfg.iters:
            epoch, position = divmod(iteration, batches_per_epoch)
            dataset.set_epoch(epoch)
            sampler = EpochSampler(len(dataset), opts.seed, epoch, position * cfg.batch_size, rank, world)
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=opts.workers, drop_last=True,
                generator=torch.Generator(),  # keeps the loader from drawing on the global generator
                pin_memory=device.type == "cuda")
            for batch in loader:
                factor = lr_factor(cfg, iteration)
                for group in optimizer.param_groups:
                    group["lr"] = group["base_lr"] * factor
                net.train()
                if cfg.freeze_encoder_bn:
                    _freeze_encoder_bn(model, cfg.freeze_bn_scope)
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
                inputs = [encode_batch(batch["image"], batch["trimap"], recipe.infer)]
                if "trimap2" in batch:  # a second trimap (tcp pipeline) is the model's second input
                    inputs.append(encode_batch(batch["image"], batch["trimap2"], recipe.infer))
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    pred = net(*inputs)
                loss = loss_fn(pred.float(), batch)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                iteration += 1
                seen += cfg.batch_size * world
                last_loss = loss.item()
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                progress.update(iteration, last_loss, optimizer.param_groups[-1]["lr"], rate)
                if writer and (iteration % cfg.log_every == 0 or iteration == cfg.iters):
                    entry = {"iter": iteration, "loss": last_loss, "lr": optimizer.param_groups[-1]["lr"],
                             "samples_per_s": round(rate, 2)}
                    if val_samples and iteration % recipe.data.val_every == 0:
                        entry["val"] = validate(model, recipe, val_samples, device)
                        if best_sad is None or entry["val"]["sad"] < best_sad:
                            best_sad = entry["val"]["sad"]
                            save_weights(model, recipe, run_dir / "best.safetensors")
                    history.append(entry)
                    _append_log(run_dir / "log.jsonl", entry)
                    _plot_curves(history, run_dir / "curves.png")
                if writer and (iteration % cfg.checkpoint_every == 0 or iteration == cfg.iters):
                    save_checkpoint(run_dir, _state(model, optimizer, scaler, iteration, best_sad, device), iteration)
                    save_weights(model, recipe, run_dir / "last.safetensors")
                if iteration >= cfg.iters:
                    break
    finally:
        progress.close()
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    return TrainResult(iteration, last_loss, history, best_sad, run_dir, model)


def _state(model, optimizer, scaler, iteration, best_sad, device) -> dict:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": iteration,
             "torch_rng": torch.get_rng_state(), "best_sad": best_sad}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    if scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    return state


def _validation_samples(test_dir: Path, limit: int):
    from mattecli.data.manifest import read_manifest

    samples = [s for s in read_manifest(test_dir) if s.image and s.trimap and s.alpha]
    return samples[:limit] if limit else samples


def validate(model, recipe, samples, device) -> dict:
    """Mean official metrics of the model (through the inference pipeline) on manifest samples:
    `matte eval --weights`'s evaluation, run quietly in this process."""
    from mattecli.evaluation import Item, evaluate
    from mattecli.inference.backends import TorchBackend
    from mattecli.inference.pipeline import Pipeline
    from mattecli.metrics import METRICS

    was_training = model.training
    pipeline = Pipeline(TorchBackend(model, recipe, str(device)), recipe.infer, recipe)
    items = [Item(s.name, gt=s.alpha, trimap=s.trimap, image=s.image) for s in samples]
    try:
        results, _ = evaluate(items, pipeline=pipeline, quiet=True)
    finally:
        model.train(was_training)
    failed = [r for r in results if r.error]
    if failed:
        raise UsageError(f"validation sample {failed[0].name}: {failed[0].error}")
    by_name = {r.name: r.metrics for r in results}
    ordered = [by_name[s.name] for s in samples]  # the samples' order: means equal to the last bit
    return {k: float(np.mean([m[k] for m in ordered])) for k in METRICS}


def _append_log(path: Path, entry: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(entry) + "\n")


def _read_log(path: Path, upto: int) -> list[dict]:
    """Entries up to an iteration; later ones (written after the checkpoint we resume from) are
    dropped from the file too, so the log of a resumed run equals an uninterrupted one."""
    if not path.is_file():
        return []
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept = [e for e in entries if e["iter"] <= upto]
    if len(kept) != len(entries):
        path.write_text("".join(json.dumps(e) + "\n" for e in kept))
    return kept


def _plot_curves(history: list[dict], path: Path, size=(640, 360)) -> None:
    """Loss (and validation SAD) against iterations, drawn with Pillow (no plotting dependency)."""
    from PIL import Image, ImageDraw

    from mattecli.imageio import atomic_write

    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    w, h, m = size[0], size[1], 40
    draw.rectangle([m, 10, w - 10, h - m], outline="black")
    series = [("loss", [(e["iter"], e["loss"]) for e in history], (31, 119, 180)),
              ("val SAD", [(e["iter"], e["val"]["sad"]) for e in history if "val" in e], (214, 39, 40))]
    last_iter = max([e["iter"] for e in history] + [1])
    for k, (label, points, colour) in enumerate(series):
        if not points:
            continue
        top = max(p[1] for p in points) or 1.0
        xy = [(m + (w - 10 - m) * it / last_iter, (h - m) - (h - m - 10) * v / top) for it, v in points]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        draw.text((m + 5, 14 + 14 * k), f"{label} (max {top:.4g}, last {points[-1][1]:.4g})", fill=colour)
    draw.text((m, h - m + 8), f"iteration 0 .. {last_iter}", fill="black")
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


class _Progress:
    """Progress bar with loss, learning rate, samples/s and ETA."""

    def __init__(self, enabled: bool, total: int, start: int):
        self.bar = None
        if enabled:
            from rich.progress import TextColumn

            from mattecli.progress import progress_bar

            self.bar = progress_bar(TextColumn("{task.fields[info]}"))
            self.bar.start()
            self.task = self.bar.add_task("train", total=total, completed=start, info="")

    def update(self, iteration, loss, lr, rate):
        if self.bar is not None:
            self.bar.update(self.task, completed=iteration, info=f"loss {loss:.4f} lr {lr:.2e} {rate:.1f} samples/s")

    def close(self):
        if self.bar is not None:
            self.bar.stop()
