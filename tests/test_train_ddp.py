"""DDP on the CPU with gloo: `torchrun --nproc_per_node 2` over a demo recipe for a few iterations."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def test_epoch_sampler_shards_evenly():
    from mattecli.train.loop import EpochSampler

    for n, world in ((7, 2), (9, 4), (8, 2), (5, 1)):
        shards = [EpochSampler(n, seed=1, epoch=3, rank=r, world=world).indices for r in range(world)]
        assert all(len(s) == n // world for s in shards), shards  # every rank runs as many batches
        flat = [i for s in shards for i in s]
        assert len(set(flat)) == len(flat) and set(flat) <= set(range(n))  # disjoint, valid
    assert EpochSampler(7, 1, 3, start=2, rank=1, world=2).indices == EpochSampler(7, 1, 3, rank=1, world=2).indices[2:]


def test_every_seed_the_option_takes_orders_an_epoch():
    """--seed takes up to 2**64 - 1; from about 9.2e13 the sampler's seed overflowed torch's signed
    64 bits: a traceback after the run folder was written. Smaller seeds keep their order."""
    from mattecli.cli.parsing import SEED_MAX
    from mattecli.train.loop import EpochSampler

    for seed in (200_000_000_000_000, SEED_MAX):
        assert sorted(EpochSampler(9, seed, 4).indices) == list(range(9))
    expected = torch.randperm(9, generator=torch.Generator().manual_seed(5 * 100_003 + 2)).tolist()
    assert EpochSampler(9, 5, 2).indices == expected


@pytest.mark.parametrize("n,batch,world", [(8, 4, 2), (9, 4, 2), (13, 4, 4), (17, 8, 2), (11, 6, 3)])
def test_every_step_takes_the_same_samples_on_any_number_of_processes(n, batch, world):
    """What lets a run resume on another number of processes (docs/commands/train.md): step k's global
    batch is the same samples on 1 or W processes, also from a resumed position."""
    from mattecli.train.loop import EpochSampler

    share = batch // world
    for start in range(n // batch):  # the step a run resumes at in this epoch
        one = EpochSampler(n, 5, 2, start=start * batch).indices[:batch]
        ranks = [EpochSampler(n, 5, 2, start=start * share, rank=r, world=world).indices[:share] for r in range(world)]
        assert sorted(i for r in ranks for i in r) == sorted(one), (start, one, ranks)


@pytest.mark.slow  # two processes importing torch and training: ~30 s on a 2-core CPU
def test_torchrun_two_ranks_gloo(tmp_path):
    from mattecli.data.synthetic import prepare_synthetic

    # 7 samples over 2 ranks: 3 each (one left out per epoch); the global batch 4 is 2 per rank ->
    # one iteration per epoch (an uneven split once gave rank 0 two batches per epoch and rank 1 one)
    prepare_synthetic(tmp_path / "data", n_train=7, n_test=0, size=64, seed=0)
    iters, batch = 3, 4
    sets = [f"train.iters={iters}", f"train.batch_size={batch}", "data.crop_size=64", "data.val_every=0",
            "train.log_every=1", "train.checkpoint_every=2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(ROOT / "tests" / "ddp_train_worker.py"),
                           str(tmp_path / "data"), str(tmp_path / "run"), str(tmp_path / "record")] + sets,
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads((tmp_path / "record" / f"rank{r}.json").read_text()) for r in range(2)]
    weights = [torch.load(tmp_path / "record" / f"rank{r}.pt", weights_only=True) for r in range(2)]

    # both ranks end with identical parameters (gradients all-reduced every step)
    assert all(r["iterations"] == iters for r in records)
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name
    # the sampler shards the data: per epoch, disjoint samples, as many on each rank
    for epoch in range(iters):
        shards = [[i for e, i in r["fetched"] if e == epoch] for r in records]
        assert [len(s) for s in shards] == [batch // 2, batch // 2], (epoch, shards)
        assert not set(shards[0]) & set(shards[1]), (epoch, shards)
    assert {e for r in records for e, _ in r["fetched"]} == set(range(iters))
    # only rank 0 writes: one log line per iteration (two writers would append twice), and its
    # weights are the ones every rank holds
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [e["iter"] for e in log] == list(range(1, iters + 1))
    # the loss logged and returned is the mean of the ranks' (their shares of the global batch): rank 0's
    # alone was logged, so the curve of a run changed with its number of processes
    means = [(a + b) / 2 for a, b in zip(records[0]["losses"], records[1]["losses"])]
    assert [e["loss"] for e in log] == pytest.approx(means, rel=1e-6)
    assert records[0]["last_loss"] == records[1]["last_loss"] == log[-1]["loss"]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == \
        ["iter_00000002.pt", "iter_00000003.pt"]
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "run" / "last.safetensors")
    for name, value in weights[0].items():
        assert torch.equal(saved[name], value), name


def test_a_cuda_run_without_nccl_joins_with_gloo(monkeypatch):
    """torchrun on Windows with GPUs: PyTorch there has no NCCL, and the run ended in
    'Distributed package doesn't have NCCL built in'. Simulated: no NCCL, a CUDA device, and the
    process group's backend recorded instead of joined."""
    import torch.distributed as dist

    import mattecli.devices
    from mattecli.train.loop import setup_distributed

    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", "29500"), ("TORCHELASTIC_RUN_ID", "x")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(mattecli.devices, "resolve_device", lambda name, option="--device": "cuda")
    monkeypatch.setattr(dist, "is_nccl_available", lambda: False)
    joined = []

    def init_process_group(backend, **kwargs):
        joined.append(backend)
        raise KeyboardInterrupt  # stop before the GPU is asked for

    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    with pytest.raises(KeyboardInterrupt):
        setup_distributed("cuda")
    assert joined == ["gloo"]
