"""The training loop: plain PyTorch, one process per GPU under torchrun (DDP), CPU for tiny recipes.

`train` is four parts that can be tested on their own: `setup_distributed` (ranks, device, process
group), the run folder and resume state (`checkpoint.py`; `_resolve_run`), one optimiser
step (`train_step`) and what follows it (`after_step`: log, validate, checkpoint).

The recipe's batch is the global batch: under torchrun each of W processes takes batch / W samples
per step (as the A2U code does), so a run's iterations, learning rates and results do not depend on
how many GPUs it runs on.

Reproducibility: every random draw of the data pipeline is seeded by (seed, epoch, sample); the
order of samples by (seed, epoch); dropout by the global torch generator, saved in checkpoints;
learning rates are a function of the iteration. A run killed at any point and resumed with
`--resume` therefore continues exactly as the uninterrupted run would have (bit for bit on a CPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from mattecli.errors import InputError, UsageError
from mattecli.files import remove_stale_temps, write_text
from mattecli.inference.pipeline import encode_batch
from mattecli.models.layers import BNAct
from mattecli.train import checkpoint as ckpt
from mattecli.train.losses import COMPOSING, LOSSES
from mattecli.train.schedules import lr_factor


@dataclass
class TrainOptions:
    recipe: object
    data: Path  # a prepared dataset root (with train/ and optionally test/), a split folder or its manifest.csv
    out: Path
    device: str = "cpu"
    workers: int = 0
    resume: bool = False
    seed: int | None = None  # None: the run's seed on --resume, else 0
    pretrained: Path | str | None = None  # a checkpoint file, "none" (from scratch on purpose) or None
    progress: bool = True
    val_limit: int = 0  # validate on at most this many samples (0 = all)
    iters: int | None = None  # the run's length; None: the run's on --resume, else the recipe's
    overwrite: bool = False  # start again in a folder that holds a run
    tensorboard: bool = False  # also write TensorBoard event files to RUN/tensorboard
    iters_set: bool = False  # the recipe's train.iters came from --set: a resumed run does not read it, and says so


@dataclass
class TrainResult:
    iterations: int
    last_loss: float
    history: list = field(default_factory=list)
    best: dict | None = None  # {"metric", "value", "iter"} of best.safetensors
    run_dir: Path | None = None
    model: nn.Module | None = None  # the trained network (not wrapped in DDP or compiled)
    finished_before: bool = False  # --resume found the run already at its length: nothing was trained
    validates: bool = True  # whether the data had a test split to validate on (so a best model can exist)
    writer: bool = True  # rank 0, which writes and reports; another rank of a torchrun run says nothing


class EpochSampler(torch.utils.data.Sampler):
    """This rank's share of a seeded permutation of an epoch, from a position on (for resuming).

    Every rank gets exactly n // world samples (the last n % world of the permutation are left out
    this epoch), so all ranks run the same number of batches per epoch and stay in step.
    """

    def __init__(self, n: int, seed: int, epoch: int, start: int = 0, rank: int = 0, world: int = 1):
        # modulo 2**63: torch takes a signed 64-bit seed (--seed up to 2**64 - 1 overflowed); smaller seeds unchanged
        perm = torch.randperm(n, generator=torch.Generator().manual_seed((seed * 100_003 + epoch) % 2**63)).tolist()
        self.indices = perm[: n - n % world][rank::world][start:]

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


# --- distributed set-up ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    rank: int
    local_rank: int
    world: int
    device: torch.device

    @property
    def writer(self) -> bool:
        return self.rank == 0  # only rank 0 writes logs, checkpoints and weights


def setup_distributed(device_name: str) -> Dist:
    """Ranks from torchrun's environment; the process group and this rank's GPU when W > 1."""
    from mattecli.devices import resolve_device

    device = torch.device(resolve_device(device_name))  # the one --device rule of every command
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1:
        import torch.distributed as dist

        _announce_group(world, rank)
        # PyTorch for Windows (and macOS) has no NCCL: gloo, slower, also all-reduces CUDA tensors
        backend = "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"
        # rank 0 validates and writes while the others wait in their next all-reduce: NCCL's
        # default 10-minute timeout would kill a run validating on Composition-1k
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=2))
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
    return Dist(rank, local_rank, world, device)


def _announce_group(world: int, rank: int) -> None:
    """One line before joining the process group, whose rendezvous waits (up to its timeout) for
    every process: by rank 0 under torchrun, and by any process that WORLD_SIZE in its environment
    asks to join one without torchrun having started it (a stray variable, or a launcher of its
    own), so that a wait for processes that will never come is not a silent hang."""
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise UsageError(f"WORLD_SIZE={world} in the environment asks for {world} processes, but "
                         f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: start "
                         "`matte train` with torchrun, or unset WORLD_SIZE to train in one process")
    by_torchrun = "TORCHELASTIC_RUN_ID" in os.environ
    if rank == 0 or not by_torchrun:
        where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        note = "" if by_torchrun else (" (WORLD_SIZE is set, but torchrun did not start this process: unset "
                                       "WORLD_SIZE to train in one process)")
        print(f"matte train: rank {rank} of {world} joining the process group at {where}{note}",
              file=sys.stderr, flush=True)


def _teardown(dist_info: Dist) -> None:
    if dist_info.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class SyncBNAct(BNAct, nn.SyncBatchNorm):
    """`BNAct` with synchronised statistics: BNAct's forward calls super().forward, which in this
    class's order is SyncBatchNorm's, then applies BNAct's activation."""


def convert_sync_bn(module: nn.Module) -> nn.Module:
    """Every BatchNorm (including BNAct, keeping its activation) as SyncBatchNorm, parameters and
    statistics kept: the BN of the A2U (InPlaceABNSync) and TCP multi-GPU runs."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, nn.SyncBatchNorm):
        if isinstance(module, BNAct):
            new = SyncBNAct(module.num_features, module.activation, module.slope)
        else:
            new = nn.SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                   module.track_running_stats)
        new.eps, new.momentum = module.eps, module.momentum
        new.load_state_dict(module.state_dict())
        return new.to(module.running_mean.device).train(module.training)
    for name, child in module.named_children():
        module.add_module(name, convert_sync_bn(child))
    return module


# --- the run: what it was asked for, and where it stands -------------------------------------------


def _split_dirs(data: Path) -> tuple[Path, Path | None]:
    data = Path(data)
    if (data / "train" / "manifest.csv").is_file():
        test = data / "test"
        return data / "train", (test if (test / "manifest.csv").is_file() else None)
    if (data / "manifest.csv").is_file():
        return data, None
    if data.suffix.lower() == ".csv" and data.is_file():  # a split's manifest itself (a hand-made one, say)
        return data, None
    raise UsageError(f"--data {data}: no train/manifest.csv (prepare it with `matte prepare-data`)")


def _comparable(recipe_dict: dict) -> dict:
    """The parts of a resolved recipe a resumed run must share with its record (its length may grow)."""
    from mattecli.recipes import recipe_from_dict

    resolved = recipe_from_dict(recipe_dict, recipe_dict.get("name", "run")).to_dict()  # today's defaults filled in
    resolved["train"] = {k: v for k, v in resolved["train"].items() if k != "iters"}
    # infer too: every step encodes its input by it (mean, std, trimap), validation aligns and rounds
    # by it; only its memory figures, measurements for tiling, may differ
    resolved["infer"] = {k: v for k, v in resolved["infer"].items() if not k.endswith("bytes_per_pixel")}
    return {k: resolved[k] for k in ("name", "model", "data", "train", "infer")}


def _resolve_run(opts: TrainOptions, run_dir: Path):
    """-> (recipe with train.iters = the run's length, seed, checkpoint to resume from or None, the
    run's record as --resume found it or None)."""
    recipe = opts.recipe
    record = ckpt.read_record(run_dir) if opts.resume else None
    checkpoint = ckpt.latest_checkpoint(run_dir) if opts.resume else None
    if record is None:
        # `is None`, not `or`: --iters 0 trained the recipe's whole length instead of being refused
        iters, seed = recipe.train.iters if opts.iters is None else opts.iters, opts.seed or 0
    else:
        given, recorded = _comparable(recipe.to_dict()), _comparable(record.recipe)
        if given["name"] != recorded["name"]:
            raise UsageError(f"--resume: {run_dir} is a run of recipe {recorded['name']}, not {given['name']} "
                             f"(--recipe {recorded['name']} continues it; another --out starts a new run)")
        key = ckpt.first_difference(recorded, given)
        if key is not None:
            ran, now = (json.dumps(_dotted(d, key)) for d in (recorded, given))  # what --set would need
            # --batch-size is applied after every --set: `--set train.batch_size=2` beside it changed nothing
            fix = f"--batch-size {ran}" if key == "train.batch_size" else f"--set {key}={ran}"
            raise UsageError(f"--resume: {run_dir} was started with another {key} than this recipe gives "
                             f"(the run's {ran}, now {now}: resume with the run's settings, e.g. "
                             f"{fix}; another --out starts a new run)")
        if opts.seed is not None and opts.seed != record.seed:
            raise UsageError(f"--resume: {run_dir} was started with --seed {record.seed}, not {opts.seed}")
        iters, seed = record.recipe["train"]["iters"] if opts.iters is None else opts.iters, record.seed
    if iters < 1:
        raise UsageError(f"--iters {iters}: a run needs at least one iteration")
    recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, iters=iters))
    return recipe, seed, checkpoint, record


def _resume_notes(run_dir: Path, opts: TrainOptions, recipe, iteration: int, record) -> None:
    """What --resume takes but changes or does not read, said before training goes on (each was taken
    without a word). Another --data (a dataset moved to another disk is the same data): the data
    order is no longer the run's, and best.safetensors compares validations on two test splits.
    Another --iters with a cosine schedule: the cosine spans the new length, so the learning rate
    jumps where it resumes. --pretrained FILE: not read, as the checkpoint holds the whole model.
    --set train.iters=N: not read, as the run's length is its own (--iters sets it)."""
    data, pretrained = opts.data, opts.pretrained
    if iteration and pretrained is not None and str(pretrained) != "none":
        print(f"matte train: note: --pretrained {pretrained} is not read: the run goes on from its checkpoint's "
              "weights (it fills the encoder of a run that starts)")
    given = opts.recipe.train.iters
    if opts.iters_set and opts.iters is None and given != recipe.train.iters:
        print(f"matte train: note: --set train.iters={given} is not read on --resume: the run goes on to its "
              f"length, {recipe.train.iters} iterations (--iters {given} sets it)")
    if record is None:  # the run's record as --resume found it
        return
    if record.data and Path(record.data).resolve() != Path(data).resolve():
        print(f"matte train: note: --resume: {run_dir} was started on --data {record.data}, now {data}: training "
              "goes on with it, in another data order, and best.safetensors compares validations on both")
    cfg, ran = recipe.train, record.recipe["train"]["iters"]
    if cfg.schedule == "cosine" and cfg.iters != ran and iteration < cfg.iters:
        before = lr_factor(dataclasses.replace(cfg, iters=ran), iteration)
        if iteration < cfg.warmup_iters:  # the warm-up does not move: it said the rate is 0.3 x, not 0.3 x
            change = (f"the warm-up (to iteration {cfg.warmup_iters}) is the run's, the rates after it follow "
                      "the new length")
        else:
            change = (f"so the learning rate at iteration {iteration} is {lr_factor(cfg, iteration):.3g} x "
                      f"train.lr, not {before:.3g} x")
        print(f"matte train: note: --iters {cfg.iters}: the cosine schedule now spans {cfg.iters} iterations, not "
              f"the run's {ran}, {change}")


def _best_after(run_dir: Path, iteration: int, best: dict | None, iters: int) -> dict | None:
    """The best so far of a resumed run: its checkpoint's, or best.safetensors' where a validation
    after that checkpoint wrote it (a run stopped before its next checkpoint). The file no longer
    holds the model the checkpoint names, so the resumed run compares with the one it holds: it
    compared with the checkpoint's, and where its own validation came out worse (another GPU's
    arithmetic, another --data) it ended naming a best model other than the file's.

    A file from beyond the run's length (`iters`: a resume from an older checkpoint with a smaller
    --iters) holds a model of a part of the run that is discarded: it is removed, and the run's
    best starts again from its next validation (the checkpoint's best has no weights file left)."""
    from mattecli.weights import read_weights_header

    path = run_dir / "best.safetensors"
    if not path.is_file():
        return best
    try:
        found = json.loads(read_weights_header(path)[1]["selected_by"])
        if found["iter"] > iters:
            path.unlink()
            print(f"matte train: note: {path} was selected at iteration {found['iter']}, beyond this run's "
                  f"{iters}: removed; the next validation writes it again")
            return None
        after = found["iter"] > iteration and (best is None or (found["metric"] == best["metric"]
                                                                and found["value"] <= best["value"]))
    except (UsageError, KeyError, TypeError, ValueError):  # not one a run wrote: the next validation replaces it
        return best
    return {k: found[k] for k in ("metric", "value", "iter")} if after else best


def _dotted(tree: dict, key: str):
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


# --- the model and its optimiser -------------------------------------------------------------------


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


def _initialise_encoder(model, recipe, pretrained, writer: bool) -> None:
    """`--pretrained FILE` fills the encoder; `none` keeps the random one on purpose. A recipe whose
    `train.pretrained` is `imagenet` (every published one) refuses to start without either."""
    if pretrained is None and recipe.train.pretrained == "imagenet":
        from mattecli.train.pretrained import ENCODER_MAPS, TORCHVISION_WEIGHTS

        source = ENCODER_MAPS[recipe.family].source  # named with its address: a pip user has no docs folder
        raise UsageError(f"recipe {recipe.name} starts from an ImageNet encoder: pass --pretrained FILE (torchvision's "
                         f"{source}, {TORCHVISION_WEIGHTS[source]}, or the authors' checkpoint), or --pretrained "
                         "none to train from scratch on purpose")
    if pretrained is None or str(pretrained) == "none":
        return
    from mattecli.train.pretrained import load_pretrained_encoder

    info = load_pretrained_encoder(model, recipe, pretrained)
    if writer:
        print(f"matte train: --pretrained {pretrained}: {info['loaded']} encoder tensors loaded "
              f"({info['layout']} layout), {len(info['ignored'])} unused")


# --- one step, and what follows it -----------------------------------------------------------------


@dataclass
class Session:
    """Everything a step and its aftermath read or change."""

    recipe: object
    model: nn.Module
    net: nn.Module  # the model as stepped: wrapped in DDP and/or compiled
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    dist: Dist
    run_dir: Path
    batches_per_epoch: int
    iteration: int = 0
    best: dict | None = None
    history: list = field(default_factory=list)
    val_samples: list = field(default_factory=list)
    tensorboard: object = None

    @property
    def use_amp(self) -> bool:
        return self.scaler.is_enabled()

    @property
    def val_iters(self) -> int:
        """Iterations between validations (0: never); `data.val_unit: epochs` counts this run's epochs."""
        data = self.recipe.data
        if not (self.val_samples and data.val_every):
            return 0
        return data.val_every * (self.batches_per_epoch if data.val_unit == "epochs" else 1)


def train_step(session: Session, batch: dict) -> float:
    """One optimiser step on one batch at `session.iteration`'s learning rate; -> the loss (the global
    batch's: the mean over the ranks)."""
    recipe, cfg, model, optimizer, scaler = session.recipe, session.recipe.train, session.model, \
        session.optimizer, session.scaler
    factor = lr_factor(cfg, session.iteration, session.batches_per_epoch)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    session.net.train()
    if cfg.freeze_encoder_bn:
        _freeze_encoder_bn(model, cfg.freeze_bn_scope)
    batch = {k: v.to(session.device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
    inputs = [encode_batch(batch["image"], batch["trimap"], recipe.infer)]
    if "trimap2" in batch:  # a second trimap (tcp pipeline) is the model's second input
        inputs.append(encode_batch(batch["image"], batch["trimap2"], recipe.infer))
    with torch.autocast(session.device.type, dtype=torch.float16, enabled=session.use_amp):
        pred = session.net(*inputs)
    loss = LOSSES[cfg.loss](pred.float(), batch)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    session.iteration += 1
    loss = loss.detach().clone()
    if session.dist.world > 1:
        # the mean over the ranks, the loss whose gradient DDP's averaged step follows: rank 0's share
        # alone was logged, so a run's loss curve changed with its number of processes
        torch.distributed.all_reduce(loss)
        loss /= session.dist.world
    return loss.item()


def after_step(session: Session, loss: float, rate: float) -> None:
    """Rank 0's work after a step: the log entry (every `log_every` iterations and at validations),
    validation (every `val_every`), best/last weights and the checkpoint (every `checkpoint_every`)."""
    from mattecli.train.curves import plot_curves
    from mattecli.weights import save_weights

    if not session.dist.writer:
        return
    s, cfg = session, session.recipe.train
    last = s.iteration == cfg.iters
    validate_now = s.val_iters and s.iteration % s.val_iters == 0
    if s.iteration % cfg.log_every == 0 or last or validate_now:
        entry = {"iter": s.iteration, "loss": loss, "lr": s.optimizer.param_groups[-1]["lr"],
                 "samples_per_s": round(rate, 2)}
        if validate_now:
            entry["val"] = validate(s.model, s.recipe, s.val_samples, s.device)
            metric = s.recipe.data.val_metric
            # ties go to the later model, as the authors' `<=` does (hltrainval.py:476, trainval.py:234)
            if s.best is None or entry["val"][metric] <= s.best["value"]:
                s.best = {"metric": metric, "value": entry["val"][metric], "iter": s.iteration}
                save_weights(s.model, s.recipe, s.run_dir / "best.safetensors",
                             metadata={"selected_by": json.dumps(s.best)})
        s.history.append(entry)
        _append_log(s.run_dir / "log.jsonl", entry)
        if s.tensorboard is not None:
            s.tensorboard.add(entry)
        if validate_now or last or s.iteration % cfg.checkpoint_every == 0:
            plot_curves(s.history, s.run_dir / "curves.png")  # drawn when something new is worth a look
    if s.iteration % cfg.checkpoint_every == 0 or last:
        # the weights before the checkpoint, which marks the iteration done: a run stopped between
        # the two at its last iteration was "finished" on --resume, with no last.safetensors of it
        save_weights(s.model, s.recipe, s.run_dir / "last.safetensors")
        state = ckpt.training_state(s.model, s.optimizer, s.scaler, s.iteration, s.best, s.device)
        ckpt.save_checkpoint(s.run_dir, state, s.iteration)


# --- the loop --------------------------------------------------------------------------------------


def train(opts: TrainOptions) -> TrainResult:
    """Train `opts.recipe` on `opts.data` into the run folder `opts.out`.

    Writes RUN/recipe.json and run.json (what the run was asked for), checkpoints/iter_N.pt,
    last.safetensors, best.safetensors (by the recipe's `data.val_metric`), log.jsonl and curves.png.

    Raises:
        UsageError: a folder that holds a run without resume/overwrite, a resume with other
            settings, a published recipe without `--pretrained`, a batch that does not split across
            processes, and the other one-line refusals named in their messages.
    """
    from mattecli.data.pipelines import build_dataset
    from mattecli.models import build_model

    run_dir = Path(opts.out)
    dist_info = setup_distributed(opts.device)
    try:
        with contextlib.ExitStack() as held:  # the run folder's lock, released however the run ends
            return _train(opts, run_dir, dist_info, build_dataset, build_model, held)
    finally:
        _teardown(dist_info)


def _check_recipe(recipe) -> None:
    """What only training reads of a recipe, checked before any work (a crop the model cannot take
    was a ValueError from its forward). The recipe checks its own values (an unknown loss, say)."""
    if recipe.data.crop_size % recipe.infer.stride:
        raise UsageError(f"recipe {recipe.name}: data.crop_size {recipe.data.crop_size} is not a multiple of "
                         f"the model's stride {recipe.infer.stride}")
    from mattecli.data.pipelines import PIPELINES
    from mattecli.models import FAMILIES

    model_cls = FAMILIES[recipe.family][1]
    if recipe.train.freeze_encoder_bn and recipe.train.freeze_bn_scope == "index-encoder" \
            and not hasattr(model_cls, "index_encoder_modules"):  # else refused at the first step
        raise UsageError(f"recipe {recipe.name}: train.freeze_bn_scope index-encoder is for IndexNet recipes "
                         f"(the {recipe.family} model has no index encoder; backbone freezes its encoder's)")
    pipeline = PIPELINES.get(recipe.data.pipeline)  # an unknown one is named where the data is read
    if pipeline and pipeline.second_trimap and not getattr(model_cls, "takes_second_trimap", False):
        # else the model's forward() TypeError at the first step
        raise UsageError(f"recipe {recipe.name}: data.pipeline {recipe.data.pipeline} makes a second trimap for "
                         f"TCP's textural path, which the {recipe.family} model has not "
                         f"({recipe.data.pipeline}-clean makes none)")
    if pipeline and recipe.train.loss in COMPOSING and not {"fg", "bg"} <= set(pipeline.reads):
        # else a KeyError: 'fg' traceback at the first step
        raise UsageError(f"recipe {recipe.name}: train.loss {recipe.train.loss} composes fg and bg, which "
                         f"data.pipeline {recipe.data.pipeline} does not give (it reads the composite; train.loss "
                         "alpha, l1 or tcp needs neither)")


def _check_batch_norm(recipe, build_model, world: int) -> None:
    """A BatchNorm in training needs more than one value per channel (batch x height x width): with one
    sample per process it cannot train over a 1x1 map, such as ASPP's image pooling or the deepest map of
    a crop the size of the model's stride. One forward pass of a crop through a throwaway model finds
    such a BatchNorm before any work (it was the first step's ValueError, after the run folder was written)."""
    from mattecli.data.pipelines import PIPELINES

    if recipe.train.batch_size // world > 1:
        return
    model = build_model(recipe).train()
    if recipe.train.freeze_encoder_bn:  # as each step holds them: in eval mode a BatchNorm takes any map
        _freeze_encoder_bn(model, recipe.train.freeze_bn_scope)
    names = {module: name for name, module in model.named_modules()}

    def refuse(module, args):
        if module.training and args[0].numel() == args[0].shape[1]:
            raise UsageError(f"batch of 1 per process: recipe {recipe.name}'s BatchNorm {names[module]} normalises "
                             f"a 1x1 map of a {recipe.data.crop_size} px crop, which needs at least 2 samples per "
                             f"process in training; use --batch-size {2 * world} or more")

    for module in names:
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.register_forward_pre_hook(refuse)
    pipeline = PIPELINES.get(recipe.data.pipeline)  # a second trimap is the model's second input
    side = recipe.data.crop_size
    x = torch.zeros(1, recipe.infer.input_channels, side, side)
    with torch.no_grad():
        model(*[x] * (2 if pipeline and pipeline.second_trimap else 1))


def _train(opts, run_dir, dist_info, build_dataset, build_model, held) -> TrainResult:
    writer, device, world = dist_info.writer, dist_info.device, dist_info.world
    _check_recipe(opts.recipe)
    if opts.recipe.train.batch_size % world:
        raise UsageError(f"batch size {opts.recipe.train.batch_size} does not split across {world} processes "
                         "(the recipe's batch is the global batch)")
    sync_bn = world > 1 and opts.recipe.train.sync_bn and device.type == "cuda"  # SyncBatchNorm runs on GPUs only
    if not sync_bn:  # SyncBatchNorm normalises over every process's samples: one each is enough
        _check_batch_norm(opts.recipe, build_model, world)
    # the refusals only: --overwrite removes the old run once this one can start (a typo in --data
    # or --pretrained removed it, then refused to train)
    ckpt.check_run_dir(run_dir, opts.resume, opts.overwrite)
    recipe, seed, checkpoint, found = _resolve_run(opts, run_dir)
    cfg = recipe.train
    if opts.resume and checkpoint is None and writer:
        print(f"matte train: --resume: no checkpoint in {run_dir / 'checkpoints'}; starting from scratch")
    per_rank_batch = cfg.batch_size // world
    if opts.tensorboard:
        from mattecli.train.curves import check_tensorboard

        check_tensorboard()
    train_dir, test_dir = _split_dirs(opts.data)

    from mattecli.inference.backends import to_device

    torch.manual_seed(seed)
    model = build_model(recipe)
    if checkpoint is None:
        _initialise_encoder(model, recipe, opts.pretrained, writer)
    to_device(model, device)  # one line, not a traceback, when the GPU cannot take it
    if sync_bn:
        model = convert_sync_bn(model)
    optimizer = torch.optim.Adam(_param_groups(model, cfg), betas=cfg.betas, weight_decay=cfg.weight_decay)
    dataset = build_dataset(recipe.data, train_dir, seed=seed)
    batches_per_epoch = (len(dataset) // world) // per_rank_batch
    if batches_per_epoch == 0:
        few = "1 sample is" if len(dataset) == 1 else f"{len(dataset)} samples are"
        raise UsageError(f"{train_dir}: {few} fewer than one batch of {cfg.batch_size} (add samples, or give a "
                         "smaller --batch-size)")
    val_samples = _validation_samples(test_dir, opts.val_limit) if test_dir and recipe.data.val_every else []
    if recipe.data.val_every and not val_samples and writer:  # else only the last line, hours later, says so
        if test_dir is not None:
            why = f"{test_dir} lists no sample with an image, a trimap and an alpha"
        elif train_dir == Path(opts.data):
            why = f"--data {opts.data} is one split (give the folder holding train/ and test/ to validate)"
        else:
            why = f"--data {opts.data} has no test/ split"
        print(f"matte train: note: {why}, so this run does not validate and writes no best.safetensors")
    if writer:  # every check has passed: the run starts writing its folder
        held.enter_context(ckpt.run_lock(run_dir))
    if opts.resume and writer:
        # what a run killed mid-save left (a checkpoint's temp file is three times the model: Adam's
        # state), one more per kill; the lock keeps a live run out, so every one is stale
        for folder in (run_dir, run_dir / "checkpoints"):
            remove_stale_temps(folder)
    if opts.overwrite and writer:
        ckpt.clear_run(run_dir)
    if world > 1:
        torch.distributed.barrier()  # every rank has read what it needs before rank 0 writes or clears
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda")

    session = Session(recipe, model, model, optimizer, scaler, device, dist_info, run_dir, batches_per_epoch,
                      val_samples=val_samples)
    if checkpoint is not None:
        session.iteration, session.best = ckpt.restore_training_state(ckpt.load_checkpoint(checkpoint), model,
                                                                      optimizer, scaler, device)
    if opts.resume and writer:
        session.best = _best_after(run_dir, session.iteration, session.best, cfg.iters)
        # a run killed before its first checkpoint starts again: its log lines go too (rank 0's alone:
        # another rank rewrote the file too, and from a half-written copy it left lines out)
        session.history = _read_log(run_dir / "log.jsonl", upto=session.iteration)
    # absolute, so that a resume from another folder compares the same data as the same
    record = ckpt.RunRecord(recipe.to_dict(), seed, str(Path(opts.data).resolve()))
    if session.iteration >= cfg.iters:
        recorded = None if found is None else found.recipe["train"]["iters"]
        if writer and checkpoint is not None and session.iteration == cfg.iters != recorded:
            # --iters N ends the run at its checkpoint N: N becomes its recorded length, and
            # last.safetensors its model (it held the model of the discarded iterations after N)
            from mattecli.weights import save_weights

            save_weights(model, recipe, run_dir / "last.safetensors")
            ckpt.write_record(run_dir, record)
        if writer:
            done = (f"{session.iteration} of {cfg.iters} iterations" if session.iteration == cfg.iters else
                    f"{session.iteration} iterations, more than --iters {cfg.iters}")  # not "200 of 30"
            unread = (f" (--set train.iters={opts.recipe.train.iters} is not read on --resume)"
                      if opts.resume and opts.iters_set and opts.iters is None else "")
            print(f"matte train: {run_dir} is finished ({done}); --iters N with a larger N extends it{unread}")
        last = session.history[-1]["loss"] if session.history else float("nan")
        return TrainResult(session.iteration, last, session.history, session.best, run_dir, model, True,
                           writer=writer)
    if opts.resume and writer:  # before the record is written anew
        _resume_notes(run_dir, opts, recipe, session.iteration, found)
    if writer:
        ckpt.write_record(run_dir, record)
        if checkpoint is not None:
            print(f"matte train: resumed from {checkpoint} at iteration {session.iteration} of {cfg.iters}")
    if world > 1:
        session.net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        session.net = torch.compile(session.net)
    if opts.tensorboard and writer:
        from mattecli.train.curves import TensorBoardLog

        session.tensorboard = TensorBoardLog(run_dir / "tensorboard", session.iteration)

    progress = _Progress(opts.progress and writer, cfg.iters, session.iteration)
    last_loss, t0, seen = float("nan"), time.perf_counter(), 0
    try:
        while session.iteration < cfg.iters:
            epoch, position = divmod(session.iteration, batches_per_epoch)
            dataset.set_epoch(epoch)
            sampler = EpochSampler(len(dataset), seed, epoch, position * per_rank_batch, dist_info.rank, world)
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=per_rank_batch, sampler=sampler, num_workers=opts.workers, drop_last=True,
                generator=torch.Generator(),  # keeps the loader from drawing on the global generator
                pin_memory=device.type == "cuda")
            for batch in _batches(loader):
                last_loss = train_step(session, batch)
                seen += cfg.batch_size
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                progress.update(session.iteration, last_loss, optimizer.param_groups[-1]["lr"], rate)
                after_step(session, last_loss, rate)
                if session.iteration >= cfg.iters:
                    break
    except RuntimeError as err:
        if world > 1 and _peer_lost(err):  # was the collective's 40-line traceback, on every rank left
            raise InputError(run_dir, "another process of this torchrun run ended (killed, or out of memory) "
                                      f"during iteration {session.iteration + 1}; --resume continues from the "
                                      "last checkpoint") from None
        raise
    finally:
        progress.close()
        if session.tensorboard is not None:
            session.tensorboard.close()
    return TrainResult(session.iteration, last_loss, session.history, session.best, run_dir, model,
                       validates=bool(val_samples), writer=writer)


def _peer_lost(err: RuntimeError) -> bool:
    """Whether a collective failed because another rank's process went away (gloo: "Connection
    closed by peer"; NCCL: a DistBackendError)."""
    dist_error = getattr(torch.distributed, "DistError", ())
    text = str(err)
    return isinstance(err, dist_error) or any(s in text for s in ("closed by peer", "reset by peer", "Broken pipe"))


# how a worker's traceback ends when an InputError stopped it: `mattecli.errors.InputError: PATH: REASON`
_WORKER_INPUT_ERROR = f"\n{InputError.__module__}.{InputError.__qualname__}: "


def _batches(loader):
    """The loader's batches. A bad file read in a worker process (`--workers N`) is the one line
    it is without workers: DataLoader re-raises a worker's exception as a RuntimeError holding the
    worker's traceback (it cannot rebuild an InputError, which takes a path and a reason), and the
    traceback's last line is the error's own."""
    try:
        yield from loader
    except RuntimeError as err:
        text = str(err)
        if not text.startswith(f"Caught {InputError.__name__} ") or _WORKER_INPUT_ERROR not in text:
            raise
        path, _, reason = text.rsplit(_WORKER_INPUT_ERROR, 1)[1].strip().partition(": ")
        raise InputError(path, reason) from None


def _validation_samples(test_dir: Path, limit: int):
    from collections import Counter

    from mattecli.data.manifest import manifest_file, missing_files, read_manifest

    samples = [s for s in read_manifest(test_dir) if s.image and s.trimap and s.alpha]
    samples = samples[:limit] if limit else samples
    repeated = [name for name, rows in Counter(s.name for s in samples).items() if rows > 1]
    if repeated:  # `validate` keys results by name: one sample's metrics stood for both in the mean
        raise UsageError(f"{manifest_file(test_dir)}: the name {repeated[0]!r} is on two rows; validation keys its "
                         "results by name, so names must be unique in the test split")
    missing = missing_files(samples, ("image", "trimap", "alpha"))
    if missing:  # else the first validation, perhaps hours in, stops the run
        raise UsageError(f"{manifest_file(test_dir)}: {len(missing)} of the validation files it lists "
                         f"{'is' if len(missing) == 1 else 'are'} missing, e.g. {missing[0]}")
    for s in samples:  # from the headers: a file Pillow cannot open, or sizes that differ, stopped the first validation
        sizes = {c: _header_size(getattr(s, c)) for c in ("image", "trimap", "alpha")}
        if len(set(sizes.values())) > 1:
            raise UsageError(f"validation sample {s.name}: sizes differ: "
                             + ", ".join(f"{c} {w}x{h}" for c, (w, h) in sizes.items()))
    return samples


def _header_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except Exception as err:  # noqa: BLE001 - Pillow's errors come in many types; the reason is what counts
        raise UsageError(f"{path}: cannot open this validation image ({err})") from None


def validate(model, recipe, samples, device) -> dict:
    """Mean official metrics of the model (through the inference pipeline) on manifest samples:
    `matte eval --weights`'s evaluation, run quietly in this process."""
    from mattecli.evaluation import Item, evaluate_model
    from mattecli.inference.backends import TorchBackend
    from mattecli.inference.pipeline import Pipeline
    from mattecli.metrics import METRICS

    was_training, benchmark = model.training, torch.backends.cudnn.benchmark
    pipeline = Pipeline(TorchBackend(model, recipe, str(device)), recipe.infer, recipe)  # on CUDA: benchmark on
    items = [Item(s.name, gt=s.alpha, trimap=s.trimap, image=s.image) for s in samples]
    try:
        results, _ = evaluate_model(items, pipeline)  # in this process, nothing shown
    finally:  # training's steps after a validation run as those before it (not on autotuned algorithms)
        model.train(was_training)
        torch.backends.cudnn.benchmark = benchmark
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
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [e for e in map(_log_entry, lines) if e is not None and e["iter"] <= upto]
    if len(kept) != len(lines):  # atomically: a kill (or a full disk) mid-rewrite must not lose the log
        write_text(path, "".join(json.dumps(e) + "\n" for e in kept))
    return kept


def _log_entry(line: str) -> dict | None:
    """A log line, or None for the line a run killed mid-append cut short (it was a JSONDecodeError
    on --resume)."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) and isinstance(entry.get("iter"), int) else None


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
