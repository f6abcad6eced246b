"""The parts of `train` on their own: the run folder (refusal, overwrite, record, resume checks),
checkpoint order, the one-line refusals before any work, the after-step cadence, SyncBatchNorm, the curves
and TensorBoard. None of these trains for more than one step."""

import dataclasses
import json

import pytest
import torch
import torch.nn as nn

from mattecli.errors import UsageError
from mattecli.recipes import load_recipe
from mattecli.train import checkpoint as ckpt
from mattecli.train import loop
from mattecli.train.loop import Dist, Session, TrainOptions, after_step, train


def run_cli(*args):
    """-> (exit code, what the user reads): a UsageError is exit 2 and its one line (cli.main)."""
    from typer.testing import CliRunner

    from mattecli.cli import app

    res = CliRunner().invoke(app, list(args))
    if isinstance(res.exception, UsageError):
        return 2, str(res.exception)
    return res.exit_code, res.output


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from mattecli.data.synthetic import prepare_synthetic

    out = tmp_path_factory.mktemp("synth")
    prepare_synthetic(out, n_train=4, n_test=0, size=64, seed=1)
    return out


def test_a_folder_holding_a_run_is_refused_and_overwrite_clears_only_the_run(tmp_path):
    run = tmp_path / "run"
    ckpt.write_record(run, ckpt.RunRecord(load_recipe("demo-indexnet").to_dict(), 0, "data"))
    ckpt.save_checkpoint(run, {"iteration": 7}, 7)
    (run / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match=r"holds a run \(7 iterations done\): use --resume to continue it, "
                                         r"--overwrite to start again, or another --out"):
        ckpt.check_run_dir(run, resume=False, overwrite=False)
    ckpt.check_run_dir(run, resume=True, overwrite=False)  # resuming is what the folder is for
    with pytest.raises(UsageError, match="--resume and --overwrite"):
        ckpt.check_run_dir(run, resume=True, overwrite=True)
    ckpt.check_run_dir(run, resume=False, overwrite=True)
    ckpt.clear_run(run)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    ckpt.check_run_dir(run, resume=False, overwrite=False)  # nothing of a run is left
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        ckpt.check_run_dir(tmp_path / "file", resume=False, overwrite=False)


def test_a_folder_holding_only_tensorboard_events_holds_a_run_and_overwrite_removes_them(tmp_path):
    """--tensorboard writes RUN/tensorboard: a folder holding only that (a run stopped before its record was
    read back) is a run's, and --overwrite removes the old event files (else TensorBoard drew both runs)."""
    run = tmp_path / "run"
    (run / "tensorboard").mkdir(parents=True)
    (run / "tensorboard" / "events.out.tfevents.1").write_bytes(b"x")
    with pytest.raises(UsageError, match=r"holds a run \(no checkpoint yet\)"):
        ckpt.check_run_dir(run, resume=False, overwrite=False)
    ckpt.clear_run(run)
    assert list(run.iterdir()) == []


def test_overwrite_keeps_the_old_run_when_the_new_one_cannot_start(tmp_path, synth):
    """A typo in --data (or a bad --pretrained, a missing --tensorboard) with --overwrite removed the
    old run, then refused to train."""
    run = tmp_path / "run"
    ckpt.write_record(run, ckpt.RunRecord(load_recipe("demo-indexnet").to_dict(), 0, str(synth)))
    ckpt.save_checkpoint(run, {"iteration": 7}, 7)
    code, text = run_cli("train", "--recipe", "demo-indexnet", "--data", str(tmp_path / "typo"), "--out", str(run),
                         "--overwrite", "--device", "cpu")
    assert code == 2 and "no train/manifest.csv" in text
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "recipe.json", "run.json"]
    assert [i for i, _ in ckpt.checkpoints(run)] == [7]


def test_checkpoints_are_ordered_by_iteration_not_by_name(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name in ("iter_100000000.pt", "iter_99999999.pt", "iter_5.pt"):  # wider than the zero padding
        torch.save({}, folder / name)
    assert [i for i, _ in ckpt.checkpoints(tmp_path)] == [5, 99999999, 100000000]
    assert ckpt.latest_checkpoint(tmp_path).name == "iter_100000000.pt"
    ckpt.save_checkpoint(tmp_path, {"iteration": 100000001}, 100000001)
    assert [i for i, _ in ckpt.checkpoints(tmp_path)] == [99999999, 100000000, 100000001]  # the oldest pruned


def test_only_files_named_iter_n_pt_are_checkpoints(tmp_path):
    """A checkpoint is checkpoints/iter_N.pt; a copy kept beside it under a longer name is not one."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name in ("iter_00000005.pt", "iter_00000009.pt.bak.pt", "iter_last.pt"):
        torch.save({}, folder / name)
    assert [p.name for _, p in ckpt.checkpoints(tmp_path)] == ["iter_00000005.pt"]
    assert ckpt.latest_checkpoint(tmp_path).name == "iter_00000005.pt"


def _stepped(lr=0.1):
    """A Tiny model and an Adam optimiser that has taken one step (so it holds state)."""
    model = Tiny()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.conv(torch.ones(1, 1, 2, 2)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_restore_training_state_gives_back_model_optimizer_rng_iteration_and_best(tmp_path):
    """docs/commands/train.md: --resume restores model, optimizer, iteration and the torch RNG (and
    the best so far, which best.safetensors is compared with)."""
    cpu, scaler = torch.device("cpu"), torch.amp.GradScaler("cuda", enabled=False)
    model, optimizer = _stepped()
    best = {"metric": "sad", "value": 2.5, "iter": 4}
    torch.manual_seed(3)
    path = ckpt.save_checkpoint(tmp_path, ckpt.training_state(model, optimizer, scaler, 7, best, cpu), 7)
    drawn = torch.rand(4)  # what the run draws next, after its checkpoint
    other = Tiny()
    other_optimizer = torch.optim.Adam(other.parameters(), lr=0.1)
    torch.manual_seed(0)
    assert ckpt.restore_training_state(ckpt.load_checkpoint(path), other, other_optimizer, scaler, cpu) == (7, best)
    assert torch.equal(torch.rand(4), drawn)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    saved, restored = optimizer.state_dict()["state"], other_optimizer.state_dict()["state"]
    assert sorted(restored) == sorted(saved) and all(torch.equal(restored[k]["exp_avg"], saved[k]["exp_avg"])
                                                     for k in saved)


def test_a_checkpoint_holds_the_loss_scale_of_an_amp_run_and_resume_restores_it():
    """train.amp: the GradScaler's scale (grown or shrunk during the run) is part of the state a resume
    restores; a run without amp (scaler disabled) has none to save. A CPU scaler stands in for CUDA's."""
    cpu = torch.device("cpu")
    model, optimizer = _stepped()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, enabled=True)
    scaler.scale(torch.ones(()))
    scaler.update(2.0 ** 7)  # the scale a run had shrunk to
    state = ckpt.training_state(model, optimizer, scaler, 5, None, cpu)
    assert state["scaler"]["scale"] == 2.0 ** 7
    other = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, enabled=True)
    assert ckpt.restore_training_state(state, Tiny(), torch.optim.Adam(Tiny().parameters()), other, cpu) == (5, None)
    assert other.get_scale() == 2.0 ** 7
    off = torch.amp.GradScaler("cpu", enabled=False)
    assert "scaler" not in ckpt.training_state(model, optimizer, off, 5, None, cpu)


def test_a_checkpoint_from_before_the_best_field_resumes_with_its_best_sad():
    """Checkpoints written before `best` recorded the best SAD alone (`best_sad`): a resume from one
    goes on comparing with that SAD, not as if nothing had been validated."""
    cpu, scaler = torch.device("cpu"), torch.amp.GradScaler("cuda", enabled=False)
    model, optimizer = _stepped()
    state = ckpt.training_state(model, optimizer, scaler, 6, None, cpu)
    del state["best"]
    state["best_sad"] = 1.5
    iteration, best = ckpt.restore_training_state(state, Tiny(), torch.optim.Adam(Tiny().parameters()), scaler, cpu)
    assert iteration == 6 and (best["metric"], best["value"]) == ("sad", 1.5) and best["iter"] <= 6
    state["best_sad"] = None  # nothing validated yet
    assert ckpt.restore_training_state(state, Tiny(), torch.optim.Adam(Tiny().parameters()), scaler, cpu) == (6, None)


@pytest.mark.parametrize("damage", [lambda b: b[:1000], lambda b: b"", lambda b: b"not a checkpoint"])
def test_a_damaged_checkpoint_is_one_line_naming_it(tmp_path, damage):
    """A truncated checkpoint was torch.load's RuntimeError on --resume, an empty one click's bare
    "Aborted!"."""
    good = ckpt.save_checkpoint(tmp_path, {"model": {}, "optimizer": {}, "iteration": 2,
                                           "torch_rng": torch.get_rng_state()}, 2)
    assert ckpt.load_checkpoint(good)["iteration"] == 2
    bad = tmp_path / "checkpoints" / "iter_00000004.pt"
    bad.write_bytes(damage(good.read_bytes()))
    with pytest.raises(UsageError, match=r"iter_00000004.pt: .*; remove it to resume from the checkpoint before it$"):
        ckpt.load_checkpoint(bad)
    ckpt.save_checkpoint(tmp_path, {"iteration": 6}, 6)
    with pytest.raises(UsageError, match="iter_00000006.pt: not a matte training checkpoint"):
        ckpt.load_checkpoint(tmp_path / "checkpoints" / "iter_00000006.pt")


@pytest.mark.parametrize("missing", ["model", "optimizer", "iteration", "torch_rng"])
def test_a_checkpoint_without_what_resume_restores_is_refused_in_one_line(tmp_path, missing):
    """A resume restores the model, the optimiser, the iteration and the torch RNG: a file lacking one
    is not a training checkpoint (it was a KeyError traceback in restore_training_state)."""
    state = {"model": {}, "optimizer": {}, "iteration": 2, "torch_rng": torch.get_rng_state()}
    del state[missing]
    path = ckpt.save_checkpoint(tmp_path, state, 2)
    with pytest.raises(UsageError, match="iter_00000002.pt: not a matte training checkpoint; remove it"):
        ckpt.load_checkpoint(path)


def test_a_training_checkpoint_given_as_pretrained_says_how_to_resume(tmp_path):
    """It said `matte train --resume RUN_DIR`, which is no command line (--resume takes no value)."""
    from mattecli.weights import load_torch_checkpoint

    path = ckpt.save_checkpoint(tmp_path, {"model": {}, "optimizer": {}, "iteration": 2,
                                           "torch_rng": torch.get_rng_state()}, 2)
    with pytest.raises(UsageError, match=r"`matte train --recipe NAME --data DATA --out RUN_DIR --resume` continues"):
        load_torch_checkpoint(path)


def test_resume_drops_a_log_line_a_killed_run_cut_short(tmp_path):
    """A run killed mid-append left half a line in log.jsonl: --resume was a JSONDecodeError."""
    log = tmp_path / "log.jsonl"
    log.write_text('{"iter": 1, "loss": 0.5}\n{"iter": 2, "loss": 0.4}\n{"iter": 3, "lo')
    assert loop._read_log(log, upto=2) == [{"iter": 1, "loss": 0.5}, {"iter": 2, "loss": 0.4}]
    assert log.read_text() == '{"iter": 1, "loss": 0.5}\n{"iter": 2, "loss": 0.4}\n'


def test_a_failed_rewrite_of_the_log_on_resume_keeps_the_log(tmp_path, monkeypatch):
    """--resume rewrote log.jsonl in place: a full disk (or a kill) part way through left it cut
    short, the history of the run before the checkpoint lost."""
    import errno
    from pathlib import Path

    log = tmp_path / "log.jsonl"
    before = "".join(f'{{"iter": {i}, "loss": 0.5}}\n' for i in range(1, 5))
    log.write_text(before)
    real = Path.write_text

    def half_then_full(self, text, *args, **kwargs):
        real(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full)
    with pytest.raises(OSError):
        loop._read_log(log, upto=2)
    monkeypatch.undo()
    assert log.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["log.jsonl"]


def test_resume_before_the_first_checkpoint_starts_the_log_again(tmp_path, synth):
    """A run killed before its first checkpoint, resumed: it trained from scratch and appended its
    log lines after the killed run's, so log.jsonl held iterations 1, 2, 1, 2, ..."""
    recipe = load_recipe("demo-indexnet")
    run = tmp_path / "run"
    ckpt.write_record(run, ckpt.RunRecord(recipe.to_dict(), 0, str(synth)))
    (run / "log.jsonl").write_text('{"iter": 1, "loss": 0.5}\n{"iter": 2, "loss": 0.4}\n')
    train(TrainOptions(recipe, synth, run, resume=True, iters=1, progress=False))
    assert [json.loads(line)["iter"] for line in (run / "log.jsonl").read_text().splitlines()] == [1]


def test_a_run_stopped_while_saving_its_last_weights_writes_them_on_resume(tmp_path, synth, monkeypatch):
    """Stopped (SIGTERM, Ctrl-C) between the final checkpoint and last.safetensors: --resume said
    the run was finished and trained nothing, and last.safetensors was never written."""
    import mattecli.weights

    recipe, run = load_recipe("demo-indexnet"), tmp_path / "run"
    save_weights = mattecli.weights.save_weights

    def stopped(model, recipe, path, metadata=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(mattecli.weights, "save_weights", stopped)
    with pytest.raises(KeyboardInterrupt):
        train(TrainOptions(recipe, synth, run, iters=1, progress=False))
    monkeypatch.setattr(mattecli.weights, "save_weights", save_weights)
    train(TrainOptions(recipe, synth, run, resume=True, progress=False))
    assert (run / "last.safetensors").is_file()


@pytest.mark.parametrize("name,text,says", [
    ("run.json", '{"seed": "x"}', "seed 'x' is not an integer"),  # was int()'s ValueError traceback
    ("run.json", "{bad", "Expecting property name"),  # was reported as recipe.json
    ("recipe.json", "[]", "not a JSON object"),
])
def test_a_run_record_edited_by_hand_is_one_line_naming_its_file(tmp_path, name, text, says):
    ckpt.write_record(tmp_path, ckpt.RunRecord(load_recipe("demo-indexnet").to_dict(), 0, "data"))
    (tmp_path / name).write_text(text)
    with pytest.raises(UsageError, match=rf"^{tmp_path / name}: unreadable run record \(.*{says}"):
        ckpt.read_record(tmp_path)


def test_a_run_record_round_trips_and_one_without_run_json_has_seed_0(tmp_path):
    """write_record/read_record give back the recipe, seed and data; a folder holding recipe.json alone
    (no run.json) was started with the default seed 0 on unnamed data; one without recipe.json holds none."""
    assert ckpt.read_record(tmp_path) is None
    recipe = {"name": "demo-indexnet", "train": {"iters": 3, "lr": 0.01}}
    ckpt.write_record(tmp_path, ckpt.RunRecord(recipe, 7, "/data/x"))
    assert ckpt.read_record(tmp_path) == ckpt.RunRecord(recipe, 7, "/data/x")
    (tmp_path / "run.json").unlink()
    assert ckpt.read_record(tmp_path) == ckpt.RunRecord(recipe, 0, "")


def test_first_difference_names_a_key_only_one_side_has():
    """The resume check's first differing dotted key: a setting present on one side only differs too."""
    a = {"train": {"lr": 0.01, "iters": 5}, "data": {"crop_size": 64}}
    assert ckpt.first_difference(a, a) is None
    assert ckpt.first_difference(a, {**a, "train": {"lr": 0.01, "iters": 5, "amp": True}}) == "train.amp"
    assert ckpt.first_difference({**a, "train": {"lr": 0.01, "iters": 5, "amp": True}}, a) == "train.amp"
    assert ckpt.first_difference(a, {**a, "data": {"crop_size": 32}}) == "data.crop_size"


def test_resume_removes_what_a_run_killed_mid_save_left(tmp_path, synth):
    """A run killed (SIGKILL, power loss) while saving left its checkpoint's temporary file, three
    times the model's size, in checkpoints/ for good: one more per kill."""
    recipe, run = load_recipe("demo-indexnet"), tmp_path / "run"
    train(TrainOptions(recipe, synth, run, iters=1, progress=False))
    stale = [run / "checkpoints" / ".iter_00000002.k3j2.pt.tmp", run / ".last.x9.safetensors.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    (run / "notes.tmp").write_text("mine")  # not a temp file of matte's
    train(TrainOptions(recipe, synth, run, iters=2, resume=True, progress=False))
    assert not any(p.exists() for p in stale) and (run / "notes.tmp").exists()


def test_a_run_that_is_writing_its_folder_is_neither_resumed_nor_overwritten(tmp_path, synth):
    """A --resume typed while the run went on removed its temporary files as stale (the run then
    stopped on the checkpoint it was writing), or both runs appended to log.jsonl."""
    recipe, run = load_recipe("demo-indexnet", ["data.crop_size=32", "train.batch_size=2"]), tmp_path / "run"
    train(TrainOptions(recipe, synth, run, iters=1, progress=False))
    temp = run / "checkpoints" / ".iter_00000002.x.pt.tmp"  # the live run's checkpoint, being written
    temp.write_bytes(b"half")
    with ckpt.run_lock(run):  # the run, still training
        for again in ({"resume": True}, {"overwrite": True}):
            with pytest.raises(UsageError, match=f"--out {run}: another `matte train` is writing this run"):
                train(TrainOptions(recipe, synth, run, iters=2, progress=False, **again))
    assert temp.exists() and (run / "last.safetensors").is_file()
    # once it has ended, however it ended, --resume continues and removes what it left
    assert train(TrainOptions(recipe, synth, run, iters=2, resume=True, progress=False)).iterations == 2
    assert not temp.exists()


def test_a_file_system_without_locks_still_trains(tmp_path, synth, monkeypatch):
    """flock fails with ENOLCK on some network mounts: that is not another run writing the folder."""
    import errno
    import fcntl

    def no_locks(handle, how):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    recipe = load_recipe("demo-indexnet", ["data.crop_size=32", "train.batch_size=2"])
    assert train(TrainOptions(recipe, synth, tmp_path / "run", iters=1, progress=False)).iterations == 1


def test_resume_checks_the_recipe_and_seed_in_one_line(tmp_path, synth):
    run = tmp_path / "run"
    recorded = load_recipe("demo-indexnet", ["train.iters=10"])
    ckpt.write_record(run, ckpt.RunRecord(recorded.to_dict(), 3, str(synth)))
    code, text = run_cli("train", "--recipe", "demo-a2u", "--data", str(synth), "--out", str(run), "--resume")
    assert code == 2 and "is a run of recipe demo-indexnet, not demo-a2u (--recipe demo-indexnet continues it" in text
    assert len(text.splitlines()) == 1, text
    code, text = run_cli("train", "--recipe", "demo-indexnet", "--data", str(synth), "--out", str(run), "--resume",
                         "--set", "train.lr=0.5")
    assert code == 2 and "was started with another train.lr than this recipe gives" in text
    # the values, so that the --set to resume with needs no look into recipe.json
    assert "(the run's 0.01, now 0.5: resume with the run's settings, e.g. --set train.lr=0.01;" in text
    # the advice is --batch-size, which sets it after every --set (the --set it gave changed nothing)
    code, text = run_cli("train", "--recipe", "demo-indexnet", "--data", str(synth), "--out", str(run), "--resume",
                         "--set", "train.batch_size=4", "--batch-size", "3")
    assert code == 2 and "(the run's 4, now 3: resume with the run's settings, e.g. --batch-size 4;" in text
    code, text = run_cli("train", "--recipe", "demo-indexnet", "--data", str(synth), "--out", str(run), "--resume",
                         "--seed", "4")
    assert code == 2 and "was started with --seed 3, not 4" in text
    # infer: every step encodes its input by it; a changed mean was taken without a word (not bit-exact)
    code, text = run_cli("train", "--recipe", "demo-indexnet", "--data", str(synth), "--out", str(run), "--resume",
                         "--set", "infer.mean=[0,0,0]")
    assert code == 2 and "was started with another infer.mean than this recipe gives" in text, text
    # its memory figures are measurements for tiling, not the run's
    assert loop._comparable(recorded.to_dict()) == loop._comparable(
        load_recipe("demo-indexnet", ["train.iters=10", "infer.bytes_per_pixel=999"]).to_dict())
    # the record's length and seed are the run's; an explicit --iters extends it
    options = TrainOptions(load_recipe("demo-indexnet"), synth, run, resume=True)
    recipe, seed, checkpoint, _ = loop._resolve_run(options, run)
    assert (recipe.train.iters, seed, checkpoint) == (10, 3, None)
    options.iters = 25
    assert loop._resolve_run(options, run)[0].train.iters == 25
    options.iters = 0  # was read as "not given": the recipe's whole length was trained
    with pytest.raises(UsageError, match="--iters 0: a run needs at least one iteration"):
        loop._resolve_run(options, run)
    with pytest.raises(UsageError, match="--iters 0: a run needs at least one iteration"):
        loop._resolve_run(TrainOptions(load_recipe("demo-indexnet"), synth, tmp_path / "new", iters=0), run)


def test_data_may_be_a_manifest_file(tmp_path, synth):
    """`--data SPLIT/manifest.csv` (or a hand-made train.csv), as eval --data takes it, said
    "no train/manifest.csv"."""
    import shutil

    shutil.copytree(synth / "train", tmp_path / "train")
    (tmp_path / "train" / "manifest.csv").rename(tmp_path / "train" / "mine.csv")
    result = train(TrainOptions(load_recipe("demo-indexnet"), tmp_path / "train" / "mine.csv", tmp_path / "run",
                                iters=1, progress=False))
    assert result.iterations == 1 and not result.validates


def test_negative_workers_is_a_usage_error(tmp_path, synth):
    """--workers -1 was DataLoader's ValueError traceback, after the run folder was written."""
    code, text = run_cli("train", "--recipe", "demo-indexnet", "--data", str(synth), "--out", str(tmp_path / "r"),
                         "--workers", "-1")
    assert code == 2 and "--workers" in text
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("workers", [0, 1])
def test_an_undecodable_training_file_is_one_line_with_or_without_workers(tmp_path, synth, workers):
    """With --workers N a corrupt training image was DataLoader's RuntimeError, the worker's whole
    traceback; in this process it was already the one line naming the file."""
    import shutil

    from mattecli.data.manifest import read_manifest
    from mattecli.errors import InputError

    data = tmp_path / "data"
    shutil.copytree(synth, data)
    bad = read_manifest(data / "train")[2].bg
    bad.write_bytes(b"not a png")
    with pytest.raises(InputError) as caught:
        train(TrainOptions(load_recipe("demo-indexnet"), data, tmp_path / "run", workers=workers, iters=1,
                           progress=False))
    assert str(caught.value).startswith(f"{bad}: cannot decode image (") and "\n" not in str(caught.value)


def test_a_data_loader_worker_that_dies_is_one_line(tmp_path, synth, monkeypatch, capsys):
    """A DataLoader worker killed (the out-of-memory killer) or dying as it starts (under spawn,
    macOS's and Windows' way): 'RuntimeError: DataLoader worker (pid(s) ...) exited unexpectedly'
    and its traceback."""
    import sys

    from mattecli.cli import main

    def dead(loader):
        raise RuntimeError("DataLoader worker (pid(s) 3440, 3441) exited unexpectedly")
        yield

    monkeypatch.setattr(loop, "_batches", dead)
    monkeypatch.setattr(sys, "argv", ["matte", "train", "--recipe", "demo-indexnet", "--data", str(synth), "--out",
                                      str(tmp_path / "r"), "--workers", "2", "--iters", "1", "--device", "cpu"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 1
    assert capsys.readouterr().err.splitlines()[-1] == ("matte: error: a worker process ended abruptly (out of "
                                                        "memory, or killed); run again with fewer --workers")


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu"])
def test_an_unknown_device_is_one_line(tmp_path, synth, device):
    code, text = run_cli("train", "--recipe", "demo-indexnet", "--data", str(synth), "--out", str(tmp_path / "r"),
                         "--device", device)
    assert (code, text) == (2, f"--device {device}: expected auto, cpu, cuda or cuda:N")
    assert not (tmp_path / "r").exists()


def test_a_published_recipe_needs_pretrained(tmp_path, synth):
    code, text = run_cli("train", "--recipe", "indexnet-m2o-nl-ctx", "--data", str(synth), "--out", str(tmp_path / "r"))
    assert code == 2, text
    assert "pass --pretrained FILE" in text and "--pretrained none to train from scratch" in text
    assert "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth" in text  # a pip user has no docs folder
    assert len(text.splitlines()) == 1
    with pytest.raises(UsageError, match="ResNet-34, https://download.pytorch.org/models/resnet34-b627a593.pth"):
        loop._initialise_encoder(nn.Linear(1, 1), load_recipe("tcp"), None, writer=False)
    model = nn.Linear(1, 1)
    loop._initialise_encoder(model, load_recipe("indexnet-m2o-nl-ctx"), "none", writer=False)  # on purpose: fine
    loop._initialise_encoder(model, load_recipe("demo-indexnet"), None, writer=False)  # the demo says none


def test_batch_that_does_not_split_across_ranks_is_one_line(tmp_path, synth, monkeypatch):
    monkeypatch.setattr(loop, "setup_distributed", lambda name: Dist(0, 0, 3, torch.device("cpu")))
    with pytest.raises(UsageError, match="batch size 4 does not split across 3 processes"):
        train(TrainOptions(load_recipe("demo-indexnet"), synth, tmp_path / "r", progress=False))


@pytest.mark.parametrize("batch,says", [(5, "4 samples are"), (2, None)])
def test_fewer_samples_than_one_batch_says_what_to_change(tmp_path, synth, batch, says):
    code, text = run_cli("train", "--recipe", "demo-indexnet", "--data", str(synth), "--out", str(tmp_path / "r"),
                         "--device", "cpu", "--batch-size", str(batch), "--iters", "1")
    if says is None:
        assert code == 0, text
    else:
        assert (code, text) == (2, f"{synth / 'train'}: {says} fewer than one batch of {batch} (add samples, or "
                                   "give a smaller --batch-size)")


@pytest.mark.parametrize("n,says", [(1, "1 sample is"), (2, "2 samples are")])
def test_fewer_samples_than_one_batch_counts_them_in_words(tmp_path, n, says):
    from mattecli.data.synthetic import prepare_synthetic

    prepare_synthetic(tmp_path / "d", n_train=n, n_test=0, size=32, seed=1)
    with pytest.raises(UsageError, match=rf"^{tmp_path / 'd' / 'train'}: {says} fewer than one batch of 4 "):
        train(TrainOptions(load_recipe("demo-indexnet", ["data.crop_size=32"]), tmp_path / "d", tmp_path / "r",
                           progress=False))


@pytest.mark.parametrize("override,says", [
    ("train.loss=l2", "recipe demo-a2u: train: loss must be one of dim, dim-a2u, l1, alpha, tcp, mmagic, got 'l2'"),
    ("data.crop_size=40", "recipe demo-a2u: data.crop_size 40 is not a multiple of the model's stride 16"),
    # was IndexNet's and A2U's forward() TypeError ("takes 2 positional arguments but 3 were given")
    ("data.pipeline=tcp-composited", "recipe demo-a2u: data.pipeline tcp-composited makes a second trimap for "
                                     "TCP's textural path, which the a2u model has not (tcp-composited-clean makes none)"),
    ("data.pipeline=tcp-composited-clean", "recipe demo-a2u: train.loss dim-a2u composes fg and bg, which "
                                           "data.pipeline tcp-composited-clean does not give (it reads the "
                                           "composite; train.loss alpha, l1 or tcp needs neither)"),  # was KeyError: 'fg'
])
def test_what_only_training_reads_of_a_recipe_is_checked_before_any_work(tmp_path, synth, override, says):
    """Were a KeyError after the first batch and a ValueError from the model's forward (the loss is
    the recipe's own check)."""
    code, text = run_cli("train", "--recipe", "demo-a2u", "--data", str(synth), "--out", str(tmp_path / "r"),
                         "--device", "cpu", "--set", override)
    assert (code, text) == (2, says)
    assert not (tmp_path / "r").exists()


def test_a_freeze_scope_the_model_has_not_is_refused_before_any_work(tmp_path, synth):
    """It was refused at the first step, after the run folder was written."""
    code, text = run_cli("train", "--recipe", "demo-a2u", "--data", str(synth), "--out", str(tmp_path / "r"),
                         "--device", "cpu", "--iters", "1", "--set", "train.freeze_encoder_bn=true",
                         "--set", "train.freeze_bn_scope=index-encoder")
    assert (code, text) == (2, "recipe demo-a2u: train.freeze_bn_scope index-encoder is for IndexNet recipes (the "
                               "a2u model has no index encoder; backbone freezes its encoder's)")
    assert not (tmp_path / "r").exists()


def test_a_missing_validation_file_is_refused_before_training(tmp_path):
    """It stopped the run at its first validation (a published recipe's: hours in)."""
    from mattecli.data.synthetic import prepare_synthetic

    prepare_synthetic(tmp_path / "data", n_train=2, n_test=2, size=64, seed=1)
    (tmp_path / "data" / "test" / "trimap" / "syn0001.png").unlink()
    code, text = run_cli("train", "--recipe", "demo-tcp", "--data", str(tmp_path / "data"), "--out",
                         str(tmp_path / "r"), "--device", "cpu", "--batch-size", "2", "--set", "data.crop_size=32")
    assert code == 2 and text.endswith("manifest.csv: 1 of the validation files it lists is missing, e.g. "
                                       f"{tmp_path / 'data' / 'test' / 'trimap' / 'syn0001.png'}")
    assert not (tmp_path / "r").exists()


def test_a_test_split_naming_two_rows_alike_is_refused_before_training(tmp_path):
    """A hand-made test manifest naming rows by file stem (a/001.png, b/001.png): validation keys
    its results by name, so one sample's metrics stood for both in the validation mean."""
    from mattecli.data.manifest import read_manifest, write_manifest
    from mattecli.data.synthetic import prepare_synthetic

    prepare_synthetic(tmp_path / "data", n_train=2, n_test=2, size=64, seed=1)
    test = tmp_path / "data" / "test"
    write_manifest(test, [dataclasses.replace(s, name="001") for s in read_manifest(test)])
    code, text = run_cli("train", "--recipe", "demo-tcp", "--data", str(tmp_path / "data"), "--out",
                         str(tmp_path / "r"), "--device", "cpu", "--batch-size", "2", "--set", "data.crop_size=32")
    assert (code, text) == (2, f"{test / 'manifest.csv'}: the name '001' is on two rows; validation keys its "
                               "results by name, so names must be unique in the test split")
    assert not (tmp_path / "r").exists()


def test_validation_files_of_other_sizes_or_unreadable_are_refused_before_training(tmp_path):
    """A test sample whose trimap has another size, or a file that is not an image, stopped the
    run at its first validation (a published recipe's: hours in)."""
    from PIL import Image

    from mattecli.data.synthetic import prepare_synthetic

    prepare_synthetic(tmp_path / "data", n_train=2, n_test=2, size=64, seed=1)
    trimap = tmp_path / "data" / "test" / "trimap" / "syn0001.png"
    Image.new("L", (60, 64)).save(trimap)
    args = ("train", "--recipe", "demo-tcp", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "r"),
            "--device", "cpu", "--batch-size", "2", "--set", "data.crop_size=32", "--iters", "1")
    assert run_cli(*args) == (2, "validation sample syn0001: sizes differ: image 64x64, trimap 60x64, alpha 64x64")
    trimap.write_text("not an image")
    code, text = run_cli(*args)
    assert code == 2 and text.startswith(f"{trimap}: cannot open this validation image (")
    assert not (tmp_path / "r").exists()


def session_for(recipe, model, tmp_path, batches_per_epoch=4):
    optimizer = torch.optim.Adam(loop._param_groups(model, recipe.train))
    return Session(recipe, model, model, optimizer, torch.amp.GradScaler("cuda", enabled=False),
                   torch.device("cpu"), Dist(0, 0, 1, torch.device("cpu")), tmp_path, batches_per_epoch)


@pytest.mark.parametrize("recipe,crop,layer", [
    ("demo-indexnet", 96, "dconv_pp.global_avg_pool.2"),  # ASPP's image pooling: 1x1 whatever the crop
    ("demo-tcp", 32, "encoder.layer4.block1.proj_bn"),  # the deepest map of a crop the size of the stride
])
def test_a_batch_of_one_that_batchnorm_cannot_train_is_refused_before_the_run_folder(tmp_path, synth, recipe, crop,
                                                                                     layer):
    """It was the first step's ValueError, after the run folder was written: the corrected command was
    then refused as a folder holding a run, and --resume asked for --batch-size 1 again."""
    run = tmp_path / "r"
    args = ("train", "--recipe", recipe, "--data", str(synth), "--out", str(run), "--device", "cpu", "--iters", "1",
            "--set", f"data.crop_size={crop}")
    assert run_cli(*args, "--batch-size", "1") == (
        2, f"batch of 1 per process: recipe {recipe}'s BatchNorm {layer} normalises a 1x1 map of a {crop} px crop, "
           "which needs at least 2 samples per process in training; use --batch-size 2 or more")
    assert not run.exists()
    assert run_cli(*args, "--batch-size", "2")[0] == 0


def test_a_batch_of_one_trains_where_no_batchnorm_sees_a_1x1_map(tmp_path, synth):
    code, text = run_cli("train", "--recipe", "demo-tcp", "--data", str(synth), "--out", str(tmp_path / "r"),
                         "--device", "cpu", "--iters", "1", "--batch-size", "1", "--set", "data.crop_size=64")
    assert code == 0 and "trained demo-tcp for 1 iteration" in text, text


def test_a_batch_of_one_per_process_is_refused_with_the_global_batch_that_trains(tmp_path, synth, monkeypatch):
    monkeypatch.setattr(loop, "setup_distributed", lambda name: Dist(0, 0, 2, torch.device("cpu")))
    recipe = load_recipe("demo-a2u", ["train.batch_size=2"])  # sync_bn: true, but SyncBatchNorm runs on GPUs only
    with pytest.raises(UsageError, match=r"^batch of 1 per process: .* use --batch-size 4 or more$"):
        train(TrainOptions(recipe, synth, tmp_path / "r", progress=False))
    assert not (tmp_path / "r").exists()


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)

    def encoder_modules(self):
        return [self.conv]


@pytest.mark.parametrize("unit,every,expected", [("iters", 3, [3, 6, 9, 12]), ("epochs", 1, [4, 8, 12])])
def test_validation_runs_every_val_every_whatever_log_every(tmp_path, monkeypatch, unit, every, expected):
    from safetensors import safe_open

    sads = iter([5.0, 3.0, 3.0, 4.0])  # the tie at the 3rd validation goes to the later model
    monkeypatch.setattr(loop, "validate", lambda *a: {"sad": next(sads), "mse": 0.1, "grad": 2.0, "conn": 1.0})
    recipe = load_recipe("demo-indexnet", ["train.log_every=5", "train.checkpoint_every=100", "train.iters=12",
                                           f"data.val_every={every}", f"data.val_unit={unit}", "data.val_metric=sad"])
    session = session_for(recipe, Tiny(), tmp_path)
    session.val_samples = ["sample"]
    for i in range(1, 13):
        session.iteration = i
        after_step(session, loss=1.0 / i, rate=1.0)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [e["iter"] for e in log if "val" in e] == expected
    assert [e["iter"] for e in log if "val" not in e] == sorted({5, 10} - set(expected))
    best_iter = expected[2] if len(expected) > 2 else expected[1]
    assert session.best == {"metric": "sad", "value": 3.0, "iter": best_iter}
    with safe_open(str(tmp_path / "best.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["selected_by"]) == session.best
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert ckpt.latest_checkpoint(tmp_path).name == "iter_00000012.pt"  # the last iteration checkpoints


def test_a_best_model_validated_after_the_checkpoint_stays_the_best_on_resume(tmp_path, monkeypatch):
    """Stopped after a validation wrote best.safetensors, before the next checkpoint: the resumed run
    compared with the checkpoint's older best, so where its own validation came out worse (another
    GPU's arithmetic, other --data, another number of processes) it ended naming that older best
    while best.safetensors held the newer, better one."""
    from safetensors import safe_open

    from mattecli.data.synthetic import prepare_synthetic

    prepare_synthetic(tmp_path / "data", n_train=2, n_test=1, size=64, seed=1)
    sads = iter([3.0, 2.0, 1.0, 5.0])  # the 4th: iteration 3 validated again, worse
    monkeypatch.setattr(loop, "validate", lambda *a: {"sad": next(sads), "mse": 0.1, "grad": 2.0, "conn": 1.0})
    recipe = load_recipe("demo-indexnet", ["data.crop_size=32", "train.batch_size=2", "data.val_every=1",
                                           "train.checkpoint_every=2"])
    run = tmp_path / "run"
    train(TrainOptions(recipe, tmp_path / "data", run, iters=3, progress=False))
    (run / "checkpoints" / "iter_00000003.pt").unlink()  # stopped before iteration 3's checkpoint
    result = train(TrainOptions(recipe, tmp_path / "data", run, resume=True, progress=False))
    with safe_open(str(run / "best.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["selected_by"]) == result.best == {"metric": "sad", "value": 1.0, "iter": 3}
    assert torch.load(run / "checkpoints" / "iter_00000003.pt", weights_only=True)["best"] == result.best


def test_a_best_model_from_beyond_a_shortened_run_is_removed_on_resume(tmp_path, monkeypatch, capsys):
    """Resumed from an older checkpoint with a smaller --iters: best.safetensors still held the model
    validated at a later, discarded iteration, and the run ended naming it ("best ... at iteration 8"
    of a 5-iteration run)."""
    from safetensors import safe_open

    from mattecli.data.synthetic import prepare_synthetic

    prepare_synthetic(tmp_path / "data", n_train=2, n_test=1, size=64, seed=1)
    sads = iter([3.0, 2.0, 1.0, 0.5, 4.0, 5.0])
    monkeypatch.setattr(loop, "validate", lambda *a: {"sad": next(sads), "mse": 0.1, "grad": 2.0, "conn": 1.0})
    recipe = load_recipe("demo-indexnet", ["data.crop_size=32", "train.batch_size=2", "data.val_every=1",
                                           "train.checkpoint_every=2"])
    run = tmp_path / "run"
    train(TrainOptions(recipe, tmp_path / "data", run, iters=4, progress=False))  # best: 0.5 at iteration 4
    for name in ("iter_00000003.pt", "iter_00000004.pt"):
        (run / "checkpoints" / name).unlink(missing_ok=True)
    capsys.readouterr()
    result = train(TrainOptions(recipe, tmp_path / "data", run, resume=True, iters=3, progress=False))
    said = capsys.readouterr().out
    assert f"{run / 'best.safetensors'} was selected at iteration 4, beyond this run's 3: removed" in said
    assert result.best == {"metric": "sad", "value": 4.0, "iter": 3}  # iteration 3's validation, the only one after
    with safe_open(str(run / "best.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["selected_by"]) == result.best


def _best_file(run_dir, selected_by):
    from mattecli.weights import save_weights

    save_weights(Tiny(), load_recipe("demo-indexnet"), run_dir / "best.safetensors",
                 metadata={"selected_by": json.dumps(selected_by)})


def test_best_after_a_checkpoint_is_the_model_best_safetensors_holds(tmp_path):
    """docs/commands/train.md: a run stopped after a validation wrote best.safetensors and before the next
    checkpoint goes on, on --resume, comparing with the model the file holds; one selected beyond the
    run's length is removed, one selected at its last iteration is the run's."""
    at_2 = {"metric": "sad", "value": 2.0, "iter": 2}  # the checkpoint's (iteration 2) best
    assert loop._best_after(tmp_path, 2, at_2, iters=3) == at_2  # no best.safetensors
    _best_file(tmp_path, {"metric": "sad", "value": 1.0, "iter": 3})  # validated at 3, a better model
    assert loop._best_after(tmp_path, 2, at_2, iters=3) == {"metric": "sad", "value": 1.0, "iter": 3}
    assert loop._best_after(tmp_path, 2, None, iters=3) == {"metric": "sad", "value": 1.0, "iter": 3}
    assert (tmp_path / "best.safetensors").is_file()
    assert loop._best_after(tmp_path, 2, at_2, iters=2) is None  # beyond a run shortened to 2
    assert not (tmp_path / "best.safetensors").exists()


def test_resume_with_iters_at_an_older_checkpoint_ends_the_run_there(tmp_path, synth):
    """--resume --iters 2 where checkpoint 2 is the newest left (of a 3-iteration run): "finished (2 of 2
    iterations)", but recipe.json kept 3 (a later --resume trained on to 3) and last.safetensors the
    model of iteration 3."""
    from safetensors.torch import load_file

    recipe = load_recipe("demo-indexnet", ["data.crop_size=32", "train.batch_size=2", "train.checkpoint_every=1"])
    run = tmp_path / "run"
    train(TrainOptions(recipe, synth, run, iters=3, progress=False))
    (run / "checkpoints" / "iter_00000003.pt").unlink()
    result = train(TrainOptions(recipe, synth, run, resume=True, iters=2, progress=False))
    assert result.finished_before and result.iterations == 2
    assert ckpt.read_record(run).recipe["train"]["iters"] == 2
    at_2 = torch.load(run / "checkpoints" / "iter_00000002.pt", weights_only=True)["model"]
    last = load_file(str(run / "last.safetensors"))
    assert all(torch.equal(last[k], at_2[k].float() if last[k].is_floating_point() else at_2[k]) for k in last)
    assert train(TrainOptions(recipe, synth, run, resume=True, progress=False)).finished_before


def test_sync_batchnorm_keeps_parameters_statistics_and_activations():
    from mattecli.models import build_model

    torch.manual_seed(0)
    model = build_model(load_recipe("demo-a2u"))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.weight.data.uniform_(0.5, 1.5)
    model.eval()
    x = torch.randn(1, 4, 64, 64)
    before = model(x)
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    synced = loop.convert_sync_bn(model)
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) == bns
    assert isinstance(synced.layer0[1], loop.SyncBNAct) and synced.layer0[1].activation == "leaky_relu"
    assert torch.equal(synced(x), before)  # eval mode: the same function, activation included


def test_curves_and_tensorboard(tmp_path, monkeypatch):
    from PIL import Image

    from mattecli.train.curves import TensorBoardLog, plot_curves

    history = [{"iter": i, "loss": 1.0 / i, "lr": 0.01 if i < 50 else 0.001, "samples_per_s": 3.0} for i in range(1, 101)]
    for e in history[9::10]:
        e["val"] = {"sad": 100.0 / e["iter"], "mse": 0.01, "grad": 5.0, "conn": 4.0}
    plot_curves(history, tmp_path / "curves.png")
    assert Image.open(tmp_path / "curves.png").size[0] > 800  # loss, lr and four metrics: 3 panels wide
    pytest.importorskip("tensorboard")
    log = TensorBoardLog(tmp_path / "tb", start=0)
    for e in history:
        log.add(e)
    log.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [s.value for s in events.Scalars("val/sad")][:2] == pytest.approx([10.0, 5.0])
    assert len(events.Scalars("train/loss")) == 100
    # resumed from the checkpoint of iteration 40, then from none (a run killed before its first checkpoint
    # starts again): the events after it are dropped, as log.jsonl's lines are (from none they were kept twice)
    for start in (40, 0):
        log = TensorBoardLog(tmp_path / "tb", start=start)
        for e in history[start:start + 3]:
            log.add({**e, "loss": 7.0})
        log.close()
        events = EventAccumulator(str(tmp_path / "tb"))
        events.Reload()
        kept = [(i, pytest.approx(1.0 / i)) for i in range(1, 41)] if start else []
        assert [(s.step, s.value) for s in events.Scalars("train/loss")] == kept + [(start + i, 7.0) for i in (1, 2, 3)]


def test_tensorboard_scalars_are_each_log_entrys_values_at_its_iteration(tmp_path):
    """Each log.jsonl entry becomes train/loss, train/lr, train/samples_per_s and val/METRIC scalars at the
    entry's own iteration (validation at 2 and 4 here)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mattecli.train.curves import TensorBoardLog

    log = TensorBoardLog(tmp_path / "tb", start=0)
    for i in range(1, 5):
        log.add({"iter": i, "loss": 1.0 / i, "lr": 0.01 * i, "samples_per_s": 2.5 * i,
                 **({"val": {"sad": 10.0 * i}} if i % 2 == 0 else {})})
    log.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    scalars = {tag: [(s.step, s.value) for s in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert scalars == {"train/loss": [(i, pytest.approx(1.0 / i)) for i in range(1, 5)],
                       "train/lr": [(i, pytest.approx(0.01 * i)) for i in range(1, 5)],
                       "train/samples_per_s": [(i, pytest.approx(2.5 * i)) for i in range(1, 5)],
                       "val/sad": [(2, pytest.approx(20.0)), (4, pytest.approx(40.0))]}


@pytest.mark.parametrize("losses,log_axis", [([0.5, 0.25, 0.125], True), ([0.5, 0.0, 0.125], False)])
def test_the_loss_panel_is_on_a_log_axis_only_where_every_loss_is_positive(tmp_path, monkeypatch, losses, log_axis):
    """A loss of 0 (l1 on a perfect batch) has no place on a log axis: the panel stays linear then."""
    import matplotlib.axes

    from mattecli.train.curves import plot_curves

    scales = []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_yscale", lambda self, value, **kw: scales.append(value))
    plot_curves([{"iter": i + 1, "loss": v, "lr": 0.01} for i, v in enumerate(losses)], tmp_path / "curves.png")
    assert scales == (["log"] if log_axis else [])
    assert (tmp_path / "curves.png").is_file()


def test_tensorboard_missing_is_one_line(monkeypatch):
    import builtins

    from mattecli.train.curves import check_tensorboard

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(UsageError, match="--tensorboard: the tensorboard package is not installed"):
        check_tensorboard()


@pytest.mark.parametrize("recipe, split, says", [
    ("demo-a2u", "", "the recipe never validates (data.val_every 0), so there is no best.safetensors"),
    ("demo-indexnet", "", "no validation ran (the recipe validates every 100 iters on the data's test/ split), "
                          "so there is no best.safetensors yet"),
    # one split given as --data (or a test split with no sample) was also "no validation ran ... yet"
    ("demo-indexnet", "train", "--data has no test split to validate on, so there is no best.safetensors"),
])
def test_a_run_without_validation_says_why_there_is_no_best(tmp_path, recipe, split, says):
    from mattecli.data.synthetic import prepare_synthetic

    prepare_synthetic(tmp_path / "data", n_train=2, n_test=1, size=64, seed=1)
    code, text = run_cli("train", "--recipe", recipe, "--data", str(tmp_path / "data" / split), "--out",
                         str(tmp_path / "r"), "--iters", "1", "--device", "cpu", "--set", "train.batch_size=2")
    assert code == 0, text
    assert f"weights: {tmp_path / 'r' / 'last.safetensors'}; {says}" in text
    note = (f"matte train: note: --data {tmp_path / 'data' / 'train'} is one split (give the folder holding train/ "
            "and test/ to validate), so this run does not validate and writes no best.safetensors")
    assert (note in text) == (split == "train")
    assert not (tmp_path / "r" / "best.safetensors").exists()


def test_resume_on_other_data_says_so(tmp_path, synth, capsys):
    """--resume with another --data trained on it without a word, and best.safetensors went on to
    compare validations on two test splits."""
    import shutil

    run, other = tmp_path / "run", tmp_path / "other"
    shutil.copytree(synth, other)
    train(TrainOptions(load_recipe("demo-indexnet"), synth, run, iters=1, progress=False))
    train(TrainOptions(load_recipe("demo-indexnet"), synth, run, iters=2, resume=True, progress=False))
    assert "was started on --data" not in capsys.readouterr().out
    train(TrainOptions(load_recipe("demo-indexnet"), other, run, iters=3, resume=True, progress=False))
    assert f"was started on --data {synth}, now {other}: training goes on with it" in capsys.readouterr().out
    assert json.loads((run / "run.json").read_text())["data"] == str(other.resolve())


def test_resume_with_other_iters_on_a_cosine_schedule_says_the_rate_jumps(tmp_path, synth, capsys):
    """--resume --iters N stretches a cosine schedule over N: the learning rate jumped back up where
    the run resumed (a finished TCP run extended went from 0 to most of train.lr) without a word."""
    recipe, run = load_recipe("demo-indexnet", ["train.schedule=cosine"]), tmp_path / "run"
    train(TrainOptions(recipe, synth, run, iters=1, progress=False))
    capsys.readouterr()
    train(TrainOptions(recipe, synth, run, iters=4, resume=True, progress=False))
    assert ("note: --iters 4: the cosine schedule now spans 4 iterations, not the run's 1, so the learning rate at "
            "iteration 1 is 0.854 x train.lr, not 0 x") in capsys.readouterr().out
    # resumed in the warm-up, which does not move: it said "the learning rate ... is 0.4 x train.lr, not 0.4 x"
    warm, other = load_recipe("demo-indexnet", ["train.schedule=cosine", "train.warmup_iters=5"]), tmp_path / "warm"
    train(TrainOptions(warm, synth, other, iters=1, progress=False))
    capsys.readouterr()
    train(TrainOptions(warm, synth, other, iters=2, resume=True, progress=False))
    assert ("note: --iters 2: the cosine schedule now spans 2 iterations, not the run's 1, the warm-up (to iteration "
            "5) is the run's, the rates after it follow the new length") in capsys.readouterr().out
    plain, other = load_recipe("demo-indexnet"), tmp_path / "plain"
    train(TrainOptions(plain, synth, other, iters=1, progress=False))
    train(TrainOptions(plain, synth, other, iters=2, resume=True, progress=False))
    assert "schedule" not in capsys.readouterr().out  # multi-step milestones do not move with --iters


def test_resume_says_pretrained_is_not_read(tmp_path, synth, capsys):
    """--pretrained FILE on --resume (a newer encoder file, say) was ignored without a word: the
    checkpoint holds the model."""
    recipe, run = load_recipe("demo-indexnet"), tmp_path / "run"
    train(TrainOptions(recipe, synth, run, iters=1, progress=False))
    capsys.readouterr()
    train(TrainOptions(recipe, synth, run, iters=2, resume=True, pretrained="none", progress=False))
    assert "--pretrained" not in capsys.readouterr().out  # from scratch on purpose: nothing to say
    train(TrainOptions(recipe, synth, run, iters=3, resume=True, pretrained=tmp_path / "mbv2.pth", progress=False))
    assert f"note: --pretrained {tmp_path / 'mbv2.pth'} is not read: the run goes on from its checkpoint's" \
        in capsys.readouterr().out


def test_resume_says_set_train_iters_is_not_read(tmp_path, synth):
    """`--set train.iters=N` on --resume of an unfinished run trained to the run's length without a
    word (a finished run's line names --iters); --iters N is what sets it."""
    run = tmp_path / "run"
    first = ("train", "--recipe", "demo-indexnet", "--data", str(synth), "--out", str(run), "--device", "cpu",
             "--batch-size", "2", "--set", "data.crop_size=32", "--set", "train.checkpoint_every=1")
    assert run_cli(*first, "--iters", "2")[0] == 0
    (run / "checkpoints" / "iter_00000002.pt").unlink()  # as if stopped after iteration 1 of 2
    code, text = run_cli(*first, "--resume", "--set", "train.iters=5")
    assert code == 0, text
    assert ("matte train: note: --set train.iters=5 is not read on --resume: the run goes on to its length, "
            "2 iterations (--iters 5 sets it)") in text
    assert "trained demo-indexnet for 2 iterations" in text
    # said only when the --set is what would have been ignored
    (run / "checkpoints" / "iter_00000002.pt").unlink()
    code, text = run_cli(*first, "--resume", "--set", "train.iters=5", "--iters", "3")
    assert code == 0 and "is not read" not in text and "for 3 iterations" in text, text


def test_other_ranks_of_a_torchrun_run_neither_report_nor_rewrite_the_log(tmp_path, synth, monkeypatch):
    """Under torchrun every rank printed the last line: the others named their own share's loss and
    said that no validation ran (rank 0 alone validates). Rank 1 here, in one process."""
    monkeypatch.setattr(loop, "setup_distributed", lambda device: Dist(1, 1, 1, torch.device("cpu")))
    code, text = run_cli("train", "--recipe", "demo-indexnet", "--data", str(synth), "--out", str(tmp_path / "r"),
                         "--iters", "1", "--batch-size", "2", "--set", "data.crop_size=32", "--device", "cpu")
    assert (code, text) == (0, "")
    assert not (tmp_path / "r" / "last.safetensors").exists()  # rank 0 writes
    # nor does it rewrite the log on --resume (it read it while rank 0 rewrote it, and wrote back what it read)
    log = '{"iter": 1, "loss": 0.5}\n{"iter": 2, "lo'
    recipe = load_recipe("demo-indexnet", ["data.crop_size=32", "train.batch_size=2"])
    ckpt.write_record(tmp_path / "r", ckpt.RunRecord(recipe.to_dict(), 0, str(synth)))
    (tmp_path / "r" / "log.jsonl").write_text(log)
    train(TrainOptions(recipe, synth, tmp_path / "r", resume=True, iters=1, progress=False))
    assert (tmp_path / "r" / "log.jsonl").read_text() == log


def test_a_lost_torchrun_peer_ends_the_run_in_one_line(tmp_path, synth, monkeypatch):
    """A rank killed (out of memory, say) under torchrun: the others' collectives failed with gloo's
    "Connection closed by peer" and printed a 40-line traceback. Rank 0 of two here, in one process."""
    from mattecli.errors import InputError

    def step(session, batch):
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                           "[127.0.0.1]:29500")

    monkeypatch.setattr(loop, "setup_distributed", lambda device: Dist(0, 0, 2, torch.device("cpu")))
    monkeypatch.setattr(torch.distributed, "barrier", lambda *a, **k: None)
    monkeypatch.setattr(nn.parallel, "DistributedDataParallel", lambda model, **kwargs: model)
    monkeypatch.setattr(loop, "train_step", step)
    recipe = load_recipe("demo-indexnet", ["data.crop_size=32", "train.batch_size=4"])
    with pytest.raises(InputError) as err:
        train(TrainOptions(recipe, synth, tmp_path / "r", iters=2, progress=False))
    assert str(err.value) == (f"{tmp_path / 'r'}: another process of this torchrun run ended (killed, or out of "
                              "memory) during iteration 1; --resume continues from the last checkpoint")
    monkeypatch.setattr(loop, "train_step", lambda s, b: (_ for _ in ()).throw(RuntimeError("a bug of matte's")))
    with pytest.raises(RuntimeError, match="a bug of matte's"):  # other errors are not taken for a lost peer
        train(TrainOptions(recipe, synth, tmp_path / "r2", iters=2, progress=False))


def test_a_torchrun_rank_counts_its_epoch_in_its_own_share_of_the_samples(tmp_path, synth, monkeypatch):
    """4 samples over 2 ranks are 2 per rank; a global batch of 4 is 2 per rank: one step an epoch (counted
    over the whole data, 2 steps, the second found no samples left in the rank's share of the epoch).
    Rank 0 of two here, in one process; the step records what it is given."""
    seen = []

    def step(session, batch):
        seen.append((session.batches_per_epoch, len(batch["alpha"])))
        session.iteration += 1
        return 0.5

    monkeypatch.setattr(loop, "setup_distributed", lambda device: Dist(0, 0, 2, torch.device("cpu")))
    monkeypatch.setattr(torch.distributed, "barrier", lambda *a, **k: seen.append("barrier"))
    monkeypatch.setattr(nn.parallel, "DistributedDataParallel", lambda model, **kwargs: model)
    monkeypatch.setattr(loop, "train_step", step)
    recipe = load_recipe("demo-indexnet", ["data.crop_size=32", "train.batch_size=4", "data.val_every=0"])
    train(TrainOptions(recipe, synth, tmp_path / "r", iters=1, progress=False))
    # the ranks meet once before the first step: every rank has read the old run before rank 0 clears it
    assert seen == ["barrier", (1, 2)]


def test_a_torchrun_rank_resumes_mid_epoch_at_its_own_share_of_the_position(tmp_path, synth, monkeypatch):
    """Resumed at iteration 1 of an epoch of 2 steps (4 samples, 2 ranks, a global batch of 2: 1 per rank),
    rank 0 skips the 1 sample of its share it took before, not the global batch's 2 (which left it none).
    Rank 0 of two in one process; the step is a stand-in."""
    starts = []

    class Sampler(loop.EpochSampler):
        def __init__(self, n, seed, epoch, start=0, rank=0, world=1):
            starts.append((epoch, start, rank, world))
            assert len(starts) < 5, starts  # an empty share repeats for ever
            super().__init__(n, seed, epoch, start, rank, world)

    def step(session, batch):
        session.iteration += 1
        return 0.5

    monkeypatch.setattr(loop, "setup_distributed", lambda device: Dist(0, 0, 2, torch.device("cpu")))
    monkeypatch.setattr(torch.distributed, "barrier", lambda *a, **k: None)
    monkeypatch.setattr(nn.parallel, "DistributedDataParallel", lambda model, **kwargs: model)
    monkeypatch.setattr(loop, "train_step", step)
    monkeypatch.setattr(loop, "EpochSampler", Sampler)
    recipe = load_recipe("demo-tcp", ["data.crop_size=64", "train.batch_size=2", "data.val_every=0",
                                      "train.checkpoint_every=1"])
    train(TrainOptions(recipe, synth, tmp_path / "r", iters=1, progress=False, pretrained="none"))
    train(TrainOptions(recipe, synth, tmp_path / "r", iters=2, progress=False, resume=True))
    assert starts == [(0, 0, 0, 2), (0, 1, 0, 2)]


def test_a_single_process_run_never_blames_a_lost_torchrun_peer(tmp_path, synth, monkeypatch):
    """Without torchrun there is no peer to lose: an error whose text merely looks like a lost connection
    (a data source over the network, say) is raised as it is."""
    def step(session, batch):
        raise RuntimeError("Connection reset by peer")

    monkeypatch.setattr(loop, "train_step", step)
    recipe = load_recipe("demo-indexnet", ["data.crop_size=32", "train.batch_size=2"])
    with pytest.raises(RuntimeError, match="^Connection reset by peer$"):
        train(TrainOptions(recipe, synth, tmp_path / "r", iters=1, progress=False, pretrained="none"))


def test_each_epoch_draws_its_own_augmentations_and_order(tmp_path, synth, monkeypatch):
    """4 samples in batches of 2: 2 steps an epoch, so 5 steps run epochs 0, 0, 1, 1, 2. Each epoch tells the
    dataset its number (the seed of its random crops and flips) and orders its samples by (seed, epoch)."""
    from mattecli.data.pipelines import TrainingDataset

    epochs, orders = [], []
    set_epoch = TrainingDataset.set_epoch
    monkeypatch.setattr(TrainingDataset, "set_epoch", lambda self, e: epochs.append(e) or set_epoch(self, e))

    class Sampler(loop.EpochSampler):
        def __init__(self, n, seed, epoch, start=0, rank=0, world=1):
            orders.append((epoch, start))
            assert len(orders) < 9, orders
            super().__init__(n, seed, epoch, start, rank, world)

    def step(session, batch):
        session.iteration += 1
        return 0.5

    monkeypatch.setattr(loop, "train_step", step)
    monkeypatch.setattr(loop, "EpochSampler", Sampler)
    recipe = load_recipe("demo-indexnet", ["data.crop_size=32", "train.batch_size=2", "data.val_every=0"])
    train(TrainOptions(recipe, synth, tmp_path / "r", iters=5, progress=False, pretrained="none"))
    assert epochs == [0, 1, 2] and orders == [(0, 0), (1, 0), (2, 0)]


def test_a_run_resumes_from_its_own_recipe_json(tmp_path, synth):
    """With the run's .yaml edited or gone, `--recipe RUN/recipe.json` (the recipe resolved, as the run
    folder keeps it) was refused: recipes had to end in .yaml. It loads as the recipe the run recorded
    (read as JSON: YAML would read 1e-05 as a string) and the run resumes from it."""
    recipe, run = load_recipe("demo-indexnet", ["train.lr=1e-05"]), tmp_path / "run"
    train(TrainOptions(recipe, synth, run, iters=1, progress=False))
    again = load_recipe(run / "recipe.json")
    assert again.train.lr == 1e-05
    assert json.loads(json.dumps(again.to_dict())) == json.loads((run / "recipe.json").read_text())
    assert train(TrainOptions(again, synth, run, iters=2, resume=True, progress=False)).iterations == 2
    (tmp_path / "bad.json").write_text("{'train': 1}")
    with pytest.raises(UsageError, match=r"bad.json: not valid JSON \(Expecting property name"):
        load_recipe(tmp_path / "bad.json")


def test_a_recipe_name_that_is_no_folder_name_asks_for_out(tmp_path, synth, monkeypatch):
    """runs/NAME is the default run folder: a recipe named '../escaped' trained outside runs/, and one
    named '' into runs/ itself."""
    monkeypatch.chdir(tmp_path)
    code, printed = run_cli("recipes", "demo-indexnet")
    (tmp_path / "base.yaml").write_text(printed)
    for name in ("../escaped", "", "a/b"):
        (tmp_path / "r.yaml").write_text(f"base: base.yaml\nname: {json.dumps(name)}\n")
        code, said = run_cli("train", "--recipe", "r.yaml", "--data", str(synth), "--iters", "1")
        assert (code, said) == (2, f"recipe name {name!r} does not name a folder under runs/: give --out")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "runs").exists()


def test_a_checkpoint_cut_short_by_a_crash_is_never_taken_for_the_newest(tmp_path, monkeypatch):
    """Checkpoints are written atomically: a write that dies half way leaves the older checkpoints,
    and --resume continues from the newest whole one."""
    from pathlib import Path

    ckpt.save_checkpoint(tmp_path, {"iteration": 2}, 2)
    real = Path.write_bytes

    def dying(self, data):
        real(self, bytes(data)[:10])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", dying)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(tmp_path, {"iteration": 4}, 4)
    monkeypatch.undo()
    assert [i for i, _ in ckpt.checkpoints(tmp_path)] == [2]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["iter_00000002.pt"]


class TwoPart(nn.Module):
    """An encoder (the low-lr group) and a head, each a 1x1 convolution and a BatchNorm."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(4, 3, 1), nn.BatchNorm2d(3))
        self.head = nn.Sequential(nn.Conv2d(3, 1, 1), nn.BatchNorm2d(1))

    def encoder_modules(self):
        return [self.enc]

    def forward(self, x):
        return torch.sigmoid(self.head(self.enc(x)))


def step_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    trimap = torch.tensor([0, 128, 255], dtype=torch.uint8)[torch.randint(0, 3, (2, 1, 8, 8), generator=g)]
    trimap[:, :, :2] = 128  # every sample has unknown pixels
    image, alpha = torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 1, 8, 8, generator=g)
    return {"image": image, "trimap": trimap, "alpha": alpha}


def step_session(tmp_path, *sets, seed=0, model=None):
    torch.manual_seed(seed)
    recipe = load_recipe("demo-indexnet", ["train.loss=alpha", "train.lr=0.01", "train.encoder_lr=0.001", *sets])
    return session_for(recipe, model or TwoPart(), tmp_path)


@pytest.mark.parametrize("unit,milestone,at,factors", [("iters", 2, (1, 2), (1.0, 0.1)),
                                                       ("epochs", 1, (3, 4), (1.0, 0.1))])
def test_a_step_runs_adam_at_each_groups_rate_of_its_iteration(tmp_path, unit, milestone, at, factors):
    """train_step: the rate of step i (0-based) is base_lr x lr_factor(i), the encoder's train.encoder_lr and the
    new layers' train.lr (indexnet.md: 1e-2 new layers, 1e-4 the encoder); Adam's first step moves each
    parameter by lr x g / (|g| + eps), eps 1e-8 (Kingma & Ba, Algorithm 1)."""
    for iteration, factor in zip(at, factors):
        s = step_session(tmp_path, f"train.milestones=[{milestone}]", f"train.milestone_unit={unit}",
                         "train.gamma=0.1")  # session_for: 4 batches per epoch
        s.iteration = iteration
        before = {n: p.detach().clone() for n, p in s.model.named_parameters()}
        loop.train_step(s, step_batch())
        assert s.iteration == iteration + 1
        assert [(g["name"], g["lr"]) for g in s.optimizer.param_groups] == [
            ("encoder", pytest.approx(0.001 * factor)), ("new", pytest.approx(0.01 * factor))]
        for name, p in s.model.named_parameters():
            lr = (0.001 if name.startswith("enc.") else 0.01) * factor
            moved = p.detach() - before[name]
            assert torch.allclose(moved, -lr * p.grad / (p.grad.abs() + 1e-8), rtol=1e-3, atol=1e-8), name


def test_a_step_of_a_torchrun_run_returns_the_mean_of_the_ranks_losses(tmp_path, monkeypatch):
    """Under torchrun each rank's loss is its share of the global batch; a step returns (and rank 0 logs)
    their mean: all_reduce sums the W losses, then / W. Rank 0 of 2 here, in one process, the other
    rank's loss 0.75 added by a stand-in all_reduce."""
    own = loop.train_step(step_session(tmp_path), step_batch())
    calls = []

    def all_reduce(tensor, *args, **kwargs):
        calls.append(tensor.item())
        tensor.add_(0.75)

    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    s = step_session(tmp_path)
    s.dist = Dist(0, 0, 2, torch.device("cpu"))
    assert loop.train_step(s, step_batch()) == pytest.approx((own + 0.75) / 2, rel=1e-6)
    assert calls == [pytest.approx(own, rel=1e-6)]


def test_a_step_clips_the_gradient_norm_and_starts_from_zero_gradients(tmp_path):
    """train.grad_clip: the gradients Adam steps on have a total norm of at most grad_clip
    (torch.nn.utils.clip_grad_norm_); 0 leaves them as they are. Each step's gradients are its own
    batch's: a second step on the same batch at learning rate 0 has the same gradients (zero_grad)."""
    norms = {}
    for clip in (0.0, 0.005):
        s = step_session(tmp_path, "train.lr=0", "train.encoder_lr=0", f"train.grad_clip={clip}")
        grads = []
        for _ in range(2):
            loop.train_step(s, step_batch())
            grads.append([p.grad.clone() for p in s.model.parameters()])
        assert all(torch.allclose(a, b, atol=1e-9) for a, b in zip(*grads))
        norms[clip] = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads[1]])))
    assert norms[0.0] > 0.02 and norms[0.005] == pytest.approx(0.005, rel=1e-3)


@pytest.mark.parametrize("freeze", [True, False])
def test_a_step_trains_the_model_with_the_encoders_batchnorm_frozen_if_asked(tmp_path, freeze):
    """train.freeze_encoder_bn (indexnet.md: the encoder's BN frozen): a step puts the model in training mode
    (a validation left it in eval) with the encoder's BatchNorms in eval mode, their statistics unchanged;
    without it every BatchNorm trains."""
    s = step_session(tmp_path, f"train.freeze_encoder_bn={str(freeze).lower()}")
    s.model.eval()
    enc_bn, head_bn = s.model.enc[1], s.model.head[1]
    loop.train_step(s, step_batch())
    assert (enc_bn.training, head_bn.training) == (not freeze, True)
    assert torch.equal(enc_bn.running_mean, torch.zeros(3)) == freeze
    assert not torch.equal(head_bn.running_mean, torch.zeros(1))


def test_the_log_holds_each_steps_loss_the_new_layers_rate_and_its_samples_per_second(tmp_path, monkeypatch):
    """after_step: a log line every train.log_every iterations and at the run's last (docs/commands/train.md:
    `iter`, `loss`, `lr`, `samples_per_s`), `lr` the new layers' rate (train.lr); last.safetensors and a
    checkpoint every train.checkpoint_every iterations and at the last; curves.png with a log line there."""
    from mattecli.train import curves

    drawn = []
    monkeypatch.setattr(curves, "plot_curves", lambda history, path: drawn.append(history[-1]["iter"]))
    s = step_session(tmp_path, "train.log_every=2", "train.checkpoint_every=3", "train.iters=5")
    s.optimizer.param_groups[0]["lr"], s.optimizer.param_groups[1]["lr"] = 0.0003, 0.003  # as a step sets them
    checkpoints = []
    for i in range(1, 6):
        s.iteration = i
        after_step(s, loss=1.0 / i, rate=12.345678)
        checkpoints.append(ckpt.latest_checkpoint(tmp_path))
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log == [{"iter": i, "loss": 1.0 / i, "lr": 0.003, "samples_per_s": 12.35} for i in (2, 4, 5)]
    assert [c and c.name for c in checkpoints] == [None, None, "iter_00000003.pt", "iter_00000003.pt",
                                                   "iter_00000005.pt"]
    assert (tmp_path / "last.safetensors").is_file() and drawn == [5]  # drawn with a log line: at 3 there is none


def test_a_run_builds_its_seeded_model_and_adam_with_the_recipes_betas_and_weight_decay(tmp_path, synth, monkeypatch):
    """The model is built after torch.manual_seed(--seed) (a run is reproducible from its seed); the optimiser
    is Adam with train.betas and train.weight_decay (a2u.md, tcp.md: Adam, weight decay as given)."""
    from mattecli.models import build_model

    seen = {}

    def step(session, batch):
        seen["adam"] = {k: session.optimizer.defaults[k] for k in ("betas", "weight_decay")}
        seen["state"] = {k: v.clone() for k, v in session.model.state_dict().items()}
        session.iteration += 1
        return 1.0

    monkeypatch.setattr(loop, "train_step", step)
    recipe = load_recipe("demo-tcp", ["data.crop_size=64", "train.batch_size=2", "train.betas=[0.5, 0.9]",
                                      "train.weight_decay=0.01"])
    train(TrainOptions(recipe, synth, tmp_path / "r", iters=1, seed=7, pretrained="none", progress=False))
    assert seen["adam"] == {"betas": (0.5, 0.9), "weight_decay": 0.01}
    torch.manual_seed(7)
    want = build_model(recipe).state_dict()
    assert want.keys() == seen["state"].keys() and all(torch.equal(seen["state"][k], v) for k, v in want.items())


class TwoTrimaps(TwoPart):
    """TwoPart taking TCP's second input (the image with the noisier trimap), recording both."""

    takes_second_trimap = True

    def forward(self, x, x2):
        self.seen = (x, x2)
        return super().forward(x) + 0 * x2[:, :1]


def test_a_step_gives_the_second_trimap_as_the_models_second_input(tmp_path):
    """The tcp pipelines' `trimap2` (the noisier trimap of TCP's textural path, data/pipelines.py) is the
    model's second input, encoded as the first: the same normalised image beside trimap2 / 255."""
    s = step_session(tmp_path, model=TwoTrimaps())
    batch = step_batch()
    batch["trimap2"] = torch.where(batch["trimap"] == 128, torch.tensor(255, dtype=torch.uint8), batch["trimap"])
    loop.train_step(s, batch)
    x, x2 = s.model.seen
    assert torch.equal(x[:, :3], x2[:, :3])
    assert torch.allclose(x[:, 3:] * 255, batch["trimap"].float())
    assert torch.allclose(x2[:, 3:] * 255, batch["trimap2"].float())


def test_a_run_with_no_validation_samples_never_validates(tmp_path, monkeypatch):
    """data.val_every with no test samples (no test split): no validation and no best.safetensors, only the
    log's lines (docs/commands/train.md: a run whose --data has no test/ split has no best.safetensors)."""
    monkeypatch.setattr(loop, "validate", lambda *a: pytest.fail("validated on no samples"))
    s = step_session(tmp_path, "data.val_every=1", "train.log_every=1", "train.iters=2")
    assert s.val_samples == [] and s.val_iters == 0
    for i in (1, 2):
        s.iteration = i
        after_step(s, loss=0.5, rate=1.0)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [sorted(e) for e in log] == [["iter", "loss", "lr", "samples_per_s"]] * 2
    assert s.best is None and not (tmp_path / "best.safetensors").exists()


def test_a_run_that_starts_fills_its_encoder_from_pretrained_and_a_resumed_one_does_not(tmp_path, synth,
                                                                                        monkeypatch, capsys):
    """--pretrained FILE fills the encoder of a run that starts (docs/commands/train.md); a resumed run goes on
    from its checkpoint's weights and does not read it."""
    from mattecli.train import pretrained

    loaded = []

    def load(model, recipe, path):
        loaded.append(path)
        return {"loaded": 3, "layout": "test", "ignored": []}

    def step(session, batch):
        session.iteration += 1
        return 1.0

    monkeypatch.setattr(pretrained, "load_pretrained_encoder", load)
    monkeypatch.setattr(loop, "train_step", step)
    recipe = load_recipe("demo-tcp", ["data.crop_size=64", "train.batch_size=2"])
    run = tmp_path / "r"
    train(TrainOptions(recipe, synth, run, iters=1, pretrained=tmp_path / "enc.pth", progress=False))
    assert loaded == [tmp_path / "enc.pth"]
    assert "3 encoder tensors loaded (test layout), 0 unused" in capsys.readouterr().out
    train(TrainOptions(recipe, synth, run, iters=2, resume=True, pretrained=tmp_path / "enc.pth", progress=False))
    assert len(loaded) == 1


def test_a_run_that_starts_takes_seed_0_and_the_recipes_length_unless_given(tmp_path, synth):
    """TrainOptions: --seed defaults to 0 for a run that starts (the run's own on --resume); --iters to the
    recipe's train.iters."""
    recipe = load_recipe("demo-indexnet")
    for seed, iters, want in ((None, None, (0, recipe.train.iters)), (5, 7, (5, 7))):
        got, got_seed, checkpoint, record = loop._resolve_run(
            TrainOptions(recipe, synth, tmp_path / "r", seed=seed, iters=iters), tmp_path / "r")
        assert (got_seed, got.train.iters, checkpoint, record) == (*want, None, None)


def test_a_best_file_validated_after_the_checkpoint_with_an_equal_value_is_the_best_on_resume(tmp_path):
    """Ties go to the later model, as the authors' `<=` does (hltrainval.py:476, trainval.py:234): a file
    validated after the checkpoint at the checkpoint's best value is the run's best; one of another metric
    is not (it compares nothing)."""
    at_2 = {"metric": "sad", "value": 2.0, "iter": 2}
    _best_file(tmp_path, {"metric": "sad", "value": 2.0, "iter": 3})
    assert loop._best_after(tmp_path, 2, at_2, iters=5) == {"metric": "sad", "value": 2.0, "iter": 3}
    _best_file(tmp_path, {"metric": "grad", "value": 1.0, "iter": 3})
    assert loop._best_after(tmp_path, 2, at_2, iters=5) == at_2


class PooledEncoder(nn.Module):
    """An encoder whose BatchNorm sees a 1x1 map (global pooling), and a head."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(4))
        self.head = nn.Conv2d(4, 1, 1)

    def encoder_modules(self):
        return [self.enc]

    def forward(self, x):
        return self.head(self.enc(x))


@pytest.mark.parametrize("freeze", [True, False])
def test_a_batch_of_one_is_refused_only_where_a_training_batchnorm_sees_a_1x1_map(freeze):
    """A BatchNorm in eval mode (the encoder's, train.freeze_encoder_bn) normalises a 1x1 map of one sample
    with its running statistics: only one that trains needs 2 values per channel."""
    recipe = load_recipe("demo-indexnet", ["train.batch_size=1", f"train.freeze_encoder_bn={str(freeze).lower()}"])
    if freeze:
        loop._check_batch_norm(recipe, lambda r: PooledEncoder(), 1)
    else:
        with pytest.raises(UsageError, match=r"BatchNorm enc\.1 normalises a 1x1 map"):
            loop._check_batch_norm(recipe, lambda r: PooledEncoder(), 1)


def test_val_limit_validates_on_at_most_that_many_samples(tmp_path):
    """TrainOptions.val_limit: validate on at most this many samples of the test split, in its order; 0: all."""
    from mattecli.data.synthetic import prepare_synthetic

    prepare_synthetic(tmp_path, n_train=1, n_test=3, size=32, seed=1)
    every = [s.name for s in loop._validation_samples(tmp_path / "test", 0)]
    assert len(every) == 3
    assert [[s.name for s in loop._validation_samples(tmp_path / "test", n)] for n in (1, 2, 5)] == \
        [every[:1], every[:2], every]


def test_a_run_validates_on_its_val_limit_samples(tmp_path, monkeypatch):
    """--val-limit N reaches the run's validations: each one evaluates the first N samples of test/."""
    from mattecli.data.synthetic import prepare_synthetic

    prepare_synthetic(tmp_path / "d", n_train=2, n_test=3, size=32, seed=1)
    validated = []
    monkeypatch.setattr(loop, "validate", lambda model, recipe, samples, device: validated.append(len(samples))
                        or {"sad": 1.0, "mse": 0.1, "grad": 1.0, "conn": 1.0})
    recipe = load_recipe("demo-indexnet", ["data.crop_size=32", "train.batch_size=2", "data.val_every=1"])
    train(TrainOptions(recipe, tmp_path / "d", tmp_path / "r", iters=1, progress=False, val_limit=2,
                       pretrained="none"))
    assert validated == [2]


def test_a_run_that_never_validates_neither_reads_nor_checks_the_test_split(tmp_path):
    """data.val_every 0: the test split is not validated on, so a validation file missing from it stops
    nothing, and the run has no best model to name."""
    from mattecli.data.synthetic import prepare_synthetic

    prepare_synthetic(tmp_path / "d", n_train=2, n_test=1, size=32, seed=1)
    (tmp_path / "d" / "test" / "alpha" / "syn0000.png").unlink()
    recipe = load_recipe("demo-indexnet", ["data.crop_size=32", "train.batch_size=2", "data.val_every=0"])
    result = train(TrainOptions(recipe, tmp_path / "d", tmp_path / "r", iters=1, progress=False, pretrained="none"))
    assert result.iterations == 1 and not result.validates


def test_sync_batchnorm_keeps_each_batchnorms_eps_momentum_and_mode():
    """convert_sync_bn: every BatchNorm as SyncBatchNorm with its own eps and momentum (A2U's InPlaceABNSync
    and TCP's BN are not torch's defaults) and its training or eval mode."""
    from mattecli.models.layers import BNAct

    model = nn.Sequential(nn.BatchNorm2d(2, eps=1e-3, momentum=0.3), BNAct(2, "leaky_relu", 0.01))
    model[1].eps, model[1].momentum = 2e-5, 0.05
    model[1].eval()
    synced = loop.convert_sync_bn(model)
    assert [(type(m).__name__, m.eps, m.momentum, m.training) for m in synced] == [
        ("SyncBatchNorm", 1e-3, 0.3, True), ("SyncBNAct", 2e-5, 0.05, False)]


def _notes(tmp_path, capsys, iteration, ran=None, opts_kw=None, sets=(), length=None):
    """What _resume_notes says on resuming at `iteration` a run recorded with train.iters `ran`
    (the resolved run's length `length`, else the given recipe's)."""
    given = load_recipe("demo-indexnet", list(sets))
    recipe = given if length is None else dataclasses.replace(
        given, train=dataclasses.replace(given.train, iters=length))
    opts = TrainOptions(given, tmp_path, tmp_path / "run", **(opts_kw or {}))
    record = None if ran is None else ckpt.RunRecord(
        dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, iters=ran)).to_dict(), 0, str(tmp_path))
    capsys.readouterr()
    loop._resume_notes(tmp_path / "run", opts, recipe, iteration, record)
    return capsys.readouterr().out


def test_resume_notes_on_pretrained_only_where_a_checkpoint_holds_the_weights(tmp_path, capsys):
    """docs/commands/train.md: --pretrained FILE is not read on --resume from a checkpoint; a resume
    that found none (iteration 0) starts the run, which reads it; `none` is never a note."""
    said = "is not read: the run goes on from its checkpoint's weights"
    assert said in _notes(tmp_path, capsys, 3, opts_kw={"pretrained": tmp_path / "mbv2.pth"})
    assert _notes(tmp_path, capsys, 0, opts_kw={"pretrained": tmp_path / "mbv2.pth"}) == ""
    assert _notes(tmp_path, capsys, 3, opts_kw={"pretrained": "none"}) == ""
    assert _notes(tmp_path, capsys, 3) == ""


def test_resume_notes_on_set_train_iters_only_where_it_differs_from_the_runs_length(tmp_path, capsys):
    """--set train.iters=N is not read on --resume: said where N is not the run's length, not where
    it is the same number (nothing is lost), nor where --iters was given."""
    kw, sets = {"iters_set": True}, ["train.iters=7"]
    assert ("note: --set train.iters=7 is not read on --resume: the run goes on to its length, 2 iterations "
            "(--iters 7 sets it)") in _notes(tmp_path, capsys, 1, opts_kw=kw, sets=sets, length=2)
    assert _notes(tmp_path, capsys, 1, opts_kw=kw, sets=sets, length=7) == ""
    assert _notes(tmp_path, capsys, 1, opts_kw={"iters_set": True, "iters": 2}, sets=sets, length=2) == ""


def test_resume_notes_on_a_cosine_schedule_stretched_by_iters(tmp_path, capsys):
    """docs/commands/train.md: --resume --iters N with a cosine schedule spans N: the rate at the
    resumed iteration is said (hand computed: iters 4, iteration 1 -> 0.5 (1 + cos(pi/4)) = 0.854;
    the run's 1 -> 0); in the warm-up (iteration < warmup_iters) the warm-up is the run's; the
    same length or a multi-step schedule is no note."""
    cos = ["train.schedule=cosine", "train.iters=4"]
    assert ("the cosine schedule now spans 4 iterations, not the run's 1, so the learning rate at iteration 1 is "
            "0.854 x train.lr, not 0 x") in _notes(tmp_path, capsys, 1, ran=1, sets=cos)
    assert "schedule" not in _notes(tmp_path, capsys, 1, ran=4, sets=cos)
    assert "schedule" not in _notes(tmp_path, capsys, 1, ran=1, sets=["train.schedule=multistep", "train.iters=4"])
    warm = cos + ["train.warmup_iters=2"]
    assert "the warm-up (to iteration 2) is the run's" in _notes(tmp_path, capsys, 1, ran=3, sets=warm)
    # iteration 3 of 4 after a warm-up of 2: (3 - 2) / (4 - 2) -> 0.5 (1 + cos(pi/2)) = 0.5; of 3: 1 / 1 -> 0
    assert "at iteration 3 is 0.5 x train.lr, not 0 x" in _notes(tmp_path, capsys, 3, ran=3, sets=warm)
