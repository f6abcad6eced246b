"""The CUDA paths of the training loop: float16 autocast, GradScaler with gradient clipping, and the
loss scale carried through checkpoints. Run on a machine with a GPU: `pytest -m gpu`."""

import math

import pytest
import torch

from mattecli.recipes import load_recipe
from mattecli.train.loop import TrainOptions, train

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(autouse=True)
def one_process(monkeypatch):
    """These tests train in one process: a WORLD_SIZE that the machine's environment sets (the
    suspected cause of these tests never finishing on the H200, 2026-11-27) would make them wait
    for a process group."""
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from mattecli.data.synthetic import prepare_synthetic

    out = tmp_path_factory.mktemp("synth")
    prepare_synthetic(out, n_train=8, n_test=2, size=96, seed=1)
    return out


def recipe(name, iters, *extra):
    return load_recipe(name, [f"train.iters={iters}", "train.batch_size=2", "data.crop_size=64",
                              "data.val_every=0", "train.log_every=1", "train.checkpoint_every=3",
                              "train.amp=true", *extra])


@pytest.mark.parametrize("name", ["demo-indexnet", "demo-a2u"])
def test_amp_with_grad_clip_trains(synth, tmp_path, name):
    r = recipe(name, 6, "train.grad_clip=0.5")
    result = train(TrainOptions(r, synth, tmp_path / "run", device="cuda", progress=False))
    assert result.iterations == 6
    assert all(math.isfinite(e["loss"]) for e in result.history), result.history
    state = torch.load(tmp_path / "run" / "checkpoints" / "iter_00000006.pt", weights_only=True)
    assert "scaler" in state and state["scaler"]["scale"] > 0
    weights = state["model"]
    assert all(torch.isfinite(v.float()).all() for v in weights.values())
    torch.manual_seed(0)
    from mattecli.models import build_model

    start = build_model(r).state_dict()
    changed = [k for k in start if k.endswith("weight") and not torch.equal(start[k], weights[k].cpu())]
    assert len(changed) > 0.9 * sum(k.endswith("weight") for k in start)  # the optimiser stepped


def test_amp_resume_restores_the_loss_scale(synth, tmp_path):
    train(TrainOptions(recipe("demo-indexnet", 3), synth, tmp_path / "run", device="cuda", progress=False))
    path = tmp_path / "run" / "checkpoints" / "iter_00000003.pt"
    state = torch.load(path, weights_only=True)
    # GradScaler's initial 65536, not grown in 3 steps; halved by each step whose float16 gradients
    # overflowed, which the first steps of a randomly initialised network may well do
    assert 0 < state["scaler"]["scale"] <= 65536.0
    state["scaler"]["scale"] = 1024.0  # as if overflows had shrunk it
    torch.save(state, path)
    # iters=6, as `--iters 6` would: a resumed run keeps its own length (3) otherwise, and trained nothing
    train(TrainOptions(recipe("demo-indexnet", 6), synth, tmp_path / "run", device="cuda", resume=True, iters=6,
                       progress=False))
    after = torch.load(tmp_path / "run" / "checkpoints" / "iter_00000006.pt", weights_only=True)
    assert after["scaler"]["scale"] <= 1024.0  # continued from the restored scale (halved on overflow)


def test_amp_forward_runs_in_float16(synth):
    from mattecli.models import build_model

    model = build_model(recipe("demo-indexnet", 1)).cuda().train()
    x = torch.randn(2, 4, 64, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        y = model(x)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
