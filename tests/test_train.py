import json

import pytest
import torch

from mattecli.recipes import load_recipe
from mattecli.train.loop import TrainOptions, train
from mattecli.train.losses import alpha_loss, composition_loss, dim_loss, tcp_loss
from mattecli.train.schedules import lr_factor


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from typer.testing import CliRunner

    from mattecli.cli import app

    out = tmp_path_factory.mktemp("synth")
    res = CliRunner().invoke(app, ["prepare-data", "synthetic", "--out", str(out), "--train", "8", "--test", "2",
                                   "--size", "96", "--seed", "1"])
    assert res.exit_code == 0, res.output
    return out


def tiny(iters, **extra):
    sets = [f"train.iters={iters}", "train.batch_size=2", "data.crop_size=64", "data.val_every=0",
            "train.checkpoint_every=3", "train.log_every=1", "train.pretrained=none", "train.lr=1e-3",
            "train.encoder_lr=1e-3", "train.milestones=[4]", "train.milestone_unit=iters"]
    # the caller's settings last, so they override the defaults above
    return load_recipe("indexnet-unet-maxunpool", sets + [f"{k}={v}" for k, v in extra.items()])


def test_resume_equals_uninterrupted_bit_for_bit(synth, tmp_path, capsys):
    train(TrainOptions(tiny(6), synth, tmp_path / "full", progress=False, seed=5))
    part = train(TrainOptions(tiny(6), synth, tmp_path / "part", progress=False, seed=5, iters=3))
    assert part.iterations == 3
    # the run records its length: --resume alone finds it finished; --iters extends it
    again = train(TrainOptions(tiny(6), synth, tmp_path / "part", resume=True, progress=False))
    assert again.finished_before and again.iterations == 3
    # a shorter --iters than the run has done: it said "finished (3 of 2 iterations)"
    capsys.readouterr()
    train(TrainOptions(tiny(6), synth, tmp_path / "part", resume=True, progress=False, iters=2))
    assert "is finished (3 iterations, more than --iters 2)" in capsys.readouterr().out
    resumed = train(TrainOptions(tiny(6), synth, tmp_path / "part", resume=True, progress=False, iters=6))
    assert resumed.iterations == 6
    a = torch.load(tmp_path / "full" / "checkpoints" / "iter_00000006.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "checkpoints" / "iter_00000006.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])
    log_a = (tmp_path / "full" / "log.jsonl").read_text().splitlines()
    log_b = (tmp_path / "part" / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["loss"] for x in log_a] == [json.loads(x)["loss"] for x in log_b]
    assert [json.loads(x)["lr"] for x in log_a][-1] == pytest.approx(1e-4)  # x0.1 after the milestone
    for name in ("last.safetensors", "curves.png", "recipe.json"):
        assert (tmp_path / "full" / name).is_file()


def test_loss_goes_down(synth, tmp_path):
    result = train(TrainOptions(tiny(24, **{"train.milestones": "[]"}), synth, tmp_path / "run", progress=False))
    losses = [e["loss"] for e in result.history]
    assert sum(losses[-6:]) / 6 < 0.8 * sum(losses[:6]) / 6, losses


def batch_of(alpha, pred_shape=None, trimap=None):
    alpha = torch.tensor(alpha, dtype=torch.float32).view(1, 1, 1, -1)
    trimap = torch.full_like(alpha, 128, dtype=torch.uint8) if trimap is None else torch.tensor(trimap, dtype=torch.uint8).view(1, 1, 1, -1)
    fg, bg = torch.ones(1, 3, 1, alpha.shape[-1]), torch.zeros(1, 3, 1, alpha.shape[-1])
    return {"alpha": alpha, "trimap": trimap, "fg": fg, "bg": bg, "image": alpha.expand(1, 3, 1, -1)}


def test_losses_on_hand_made_cases():
    batch = batch_of([0.0, 0.5, 1.0, 0.05], trimap=[128, 128, 255, 128])
    pred = torch.tensor([0.5, 0.5, 0.0, 0.05]).view(1, 1, 1, 4)
    # unknown pixels: errors 0.5, 0, 0 -> mean 1/6 (the known pixel's error is ignored)
    assert alpha_loss(pred, batch).item() == pytest.approx(0.5 / 3, abs=1e-5)
    assert composition_loss(pred, batch).item() == pytest.approx(0.5 / 3, abs=1e-5)  # fg=1, bg=0: comp = alpha
    # the composition error is summed over the 3 colour channels, as the authors' loss does
    assert dim_loss(pred, batch).item() == pytest.approx(0.5 * 0.5 / 3 + 0.5 * 3 * 0.5 / 3, abs=1e-5)
    # background enhancement: only unknown pixels with alpha < 0.1 (pixels 0 and 3: errors 0.5 and 0)
    assert tcp_loss(pred, batch).item() == pytest.approx(0.9 * 0.5 / 3 + 0.1 * 0.25, abs=1e-5)


def authors_weighted_loss(pd, gt, plus_one, wl=0.5, epsilon=1e-6):
    """A line-by-line transcription of `weighted_loss` (IndexNet hltrainval.py:164-182; A2U
    trainval.py:434-452 adds 1 to both denominators). gt: alpha, mask, fg(3), bg(3), image(3)."""
    bs, _, h, w = pd.size()
    mask = gt[:, 1, :, :].view(bs, 1, h, w)
    alpha_gt = gt[:, 0, :, :].view(bs, 1, h, w)
    diff_alpha = (pd - alpha_gt) * mask
    loss_alpha = torch.sqrt(diff_alpha * diff_alpha + epsilon ** 2)
    loss_alpha = loss_alpha.sum(dim=2).sum(dim=2) / (mask.sum(dim=2).sum(dim=2) + plus_one)
    loss_alpha = loss_alpha.sum() / bs
    fg, bg, c_g = gt[:, 2:5], gt[:, 5:8], gt[:, 8:11]
    c_p = pd * fg + (1 - pd) * bg
    diff_color = (c_p - c_g) * mask
    loss_composition = torch.sqrt(diff_color * diff_color + epsilon ** 2)
    loss_composition = loss_composition.sum(dim=2).sum(dim=2) / (mask.sum(dim=2).sum(dim=2) + plus_one)
    loss_composition = loss_composition.sum() / bs
    return wl * loss_alpha + (1 - wl) * loss_composition


@pytest.mark.parametrize("name,plus_one", [("dim", 0), ("dim-a2u", 1)])
def test_dim_loss_equals_the_authors_weighted_loss(name, plus_one):
    from mattecli.train.losses import LOSSES

    g = torch.Generator().manual_seed(3)
    for trial in range(5):
        n, h, w = 4, 40, 56
        trimap = torch.randint(0, 3, (n, 1, h, w), generator=g).to(torch.uint8) * 64
        trimap[trimap == 64] = 128
        trimap[trimap == 192] = 255
        batch = {"alpha": torch.rand(n, 1, h, w, generator=g), "trimap": trimap,
                 "fg": torch.rand(n, 3, h, w, generator=g), "bg": torch.rand(n, 3, h, w, generator=g),
                 "image": torch.rand(n, 3, h, w, generator=g)}
        pred = torch.rand(n, 1, h, w, generator=g)
        gt = torch.cat([batch["alpha"], (trimap == 128).float(), batch["fg"], batch["bg"], batch["image"]], 1)
        ours, theirs = LOSSES[name](pred, batch).item(), authors_weighted_loss(pred, gt, plus_one).item()
        assert ours == pytest.approx(theirs, rel=1e-5), trial


def test_losses_are_normalised_per_sample():
    a = batch_of([0.0] * 4)
    b = batch_of([0.0] * 4, trimap=[128, 0, 0, 0])
    batch = {k: torch.cat([a[k], b[k]]) for k in a}
    pred = torch.full((2, 1, 1, 4), 0.5)
    assert alpha_loss(pred, batch).item() == pytest.approx(0.5, abs=1e-5)  # both samples weigh 0.5


def test_dim_loss_adds_eps_for_every_pixel_outside_the_unknown_region():
    """The authors' `weighted_loss` takes the Charbonnier of the *masked* difference, so each pixel
    (and channel) outside the region adds sqrt(0 + eps^2) = 1e-6 to the sum; the sum is divided by
    the region's pixel count. One unknown pixel of 100, a perfect prediction: alpha term 100e-6,
    composition term 3 * 100e-6 (3 channels); dim = 0.5 * 1e-4 + 0.5 * 3e-4, dim-a2u divides by 2."""
    from mattecli.train.losses import dim_a2u_loss

    batch = batch_of([0.3] * 100, trimap=[128] + [0] * 99)
    batch["image"] = batch["alpha"].expand(1, 3, 1, -1) * batch["fg"] + (1 - batch["alpha"]) * batch["bg"]
    pred = batch["alpha"].clone()
    assert dim_loss(pred, batch).item() == pytest.approx(0.5 * 100e-6 + 0.5 * 300e-6, rel=1e-3)
    assert dim_a2u_loss(pred, batch).item() == pytest.approx((0.5 * 100e-6 + 0.5 * 300e-6) / 2, rel=1e-3)


def test_mmagic_and_l1_losses_on_a_hand_made_case():
    """One unknown pixel, alpha 0, prediction 0.5; fg (1, 0, 0), bg 0, so the image is 0 and the
    predicted composite (0.5, 0, 0). Alpha error 0.5; composition error, averaged over the 3
    channels as mmagic's sample-wise mask reduction does: 0.5 / 3. mmagic's configs weigh them
    0.5 and 1.5; l1 is the plain absolute error."""
    from mattecli.train.losses import l1_loss, mmagic_loss

    batch = batch_of([0.0, 0.0], trimap=[128, 255])
    batch["fg"] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 1, 2).clone()
    batch["image"] = torch.zeros(1, 3, 1, 2)
    pred = torch.tensor([0.5, 0.9]).view(1, 1, 1, 2)  # the known pixel's error counts nowhere
    assert alpha_loss(pred, batch).item() == pytest.approx(0.5, abs=1e-5)
    assert composition_loss(pred, batch).item() == pytest.approx(0.5 / 3, abs=1e-5)
    assert mmagic_loss(pred, batch).item() == pytest.approx(0.5 * 0.5 + 1.5 * 0.5 / 3, abs=1e-5)
    assert l1_loss(pred, batch).item() == pytest.approx(0.5, abs=1e-6)
    pred = torch.tensor([0.2, 0.9]).view(1, 1, 1, 2)
    assert l1_loss(pred, batch).item() == pytest.approx(0.2, abs=1e-6)  # not squared (0.04)


def test_alpha_loss_takes_the_region_it_is_given():
    """alpha_loss(pred, batch, region): the Charbonnier error averaged over `region`, not the unknown band.
    Unknown pixels 0, 1 (errors 0.5); the given region is pixels 2, 3 (errors 0.2, 0) -> 0.1."""
    batch = batch_of([0.0] * 4, trimap=[128, 128, 0, 0])
    pred = torch.tensor([0.5, 0.5, 0.2, 0.0]).view(1, 1, 1, 4)
    region = torch.tensor([False, False, True, True]).view(1, 1, 1, 4)
    assert alpha_loss(pred, batch).item() == pytest.approx(0.5, abs=1e-5)
    assert alpha_loss(pred, batch, region).item() == pytest.approx(0.1, abs=1e-5)


def test_schedules():
    cfg = load_recipe("indexnet-m2o-nl-ctx").train
    # the authors step their scheduler once per epoch: x0.1 from the first iteration of epoch 20, and of 26
    per_epoch = 2693  # 43,100 Composition-1k training samples in batches of 16
    at = [0, 20 * per_epoch - 1, 20 * per_epoch, 26 * per_epoch - 1, 26 * per_epoch]
    assert [lr_factor(cfg, i, per_epoch) for i in at] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    iters = load_recipe("indexnet-m2o-nl-ctx", ["train.milestone_unit=iters", "train.milestones=[4]"]).train
    assert [lr_factor(iters, i, per_epoch) for i in (3, 4)] == pytest.approx([1, 0.1])
    from mattecli.errors import UsageError

    with pytest.raises(UsageError, match="milestone_unit must be one of iters, epochs, got .weeks."):
        load_recipe("indexnet-m2o-nl-ctx", ["train.milestone_unit=weeks"])
    cos = load_recipe("indexnet-m2o-nl-ctx", ["train.schedule=cosine", "train.warmup_iters=10", "train.iters=110"]).train
    assert lr_factor(cos, 0) == pytest.approx(0.1) and lr_factor(cos, 10) == pytest.approx(1.0)
    assert lr_factor(cos, 60) == pytest.approx(0.5) and lr_factor(cos, 110) == pytest.approx(0.0, abs=1e-9)


def test_cosine_schedule_values_and_its_floor_after_the_last_iteration():
    """Linear warm-up (i + 1) / warmup, then 0.5 (1 + cos(pi t)), t = (i - warmup) / (iters - warmup),
    held at 0 once t passes 1 (an extended run does not climb back up the cosine)."""
    import math

    cos = load_recipe("indexnet-m2o-nl-ctx", ["train.schedule=cosine", "train.warmup_iters=4", "train.iters=104"]).train
    assert lr_factor(cos, 1) == pytest.approx(2 / 4)
    assert lr_factor(cos, 29) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))  # 0.853553...
    assert lr_factor(cos, 79) == pytest.approx(0.5 * (1 - math.cos(math.pi / 4)))  # 0.146446...
    assert [lr_factor(cos, i) for i in (104, 130, 204)] == pytest.approx([0, 0, 0], abs=1e-12)
    multi = load_recipe("indexnet-m2o-nl-ctx", ["train.milestone_unit=iters", "train.milestones=[4,8,12]",
                                                 "train.gamma=0.5"]).train
    assert [lr_factor(multi, i) for i in (3, 4, 8, 12, 99)] == pytest.approx([1, 0.5, 0.25, 0.125, 0.125])


def test_an_unknown_schedule_is_refused_not_taken_for_a_constant_rate():
    """lr_factor called on a config the recipe checks did not see (a schedule of another version):
    a ValueError naming it, not a silent rate of 1 (or None) for the whole run."""
    from types import SimpleNamespace

    cfg = SimpleNamespace(schedule="poly", warmup_iters=0, iters=100, milestones=[], gamma=0.1, milestone_unit="iters")
    with pytest.raises(ValueError, match="unknown schedule 'poly'"):
        lr_factor(cfg, 5)


def test_indexnet_recipes_train_30_whole_epochs():
    """hltrainval.py:428-436 loads batches of 16 with drop_last=True: 43,100 // 16 = 2,693 steps an
    epoch, so the 30 epochs of train.sh are 80,790 iterations (80,820 ran 30 steps into a 31st)."""
    per_epoch = 43_100 // 16  # as the loop counts an epoch: len(dataset) // batch (drop_last)
    for name in ("indexnet-m2o-nl-ctx", "indexnet-hin-nl-ctx", "indexnet-unet-maxunpool"):
        train = load_recipe(name).train
        assert train.batch_size == 16 and train.iters == 30 * per_epoch == 80_790, name
        assert lr_factor(train, train.iters - 1, per_epoch) == pytest.approx(0.01)  # still epoch 30


def test_validate_equals_the_per_sample_loop_it_replaced(synth, monkeypatch, capfd):
    """validate() runs evaluation.evaluate quietly in-process; the means are those of the plain
    loop (pipeline, then metrics.evaluate, per sample) to the last bit."""
    import numpy as np

    from mattecli.data.manifest import read_manifest
    from mattecli.imageio import read_gray, read_image
    from mattecli.inference.backends import TorchBackend
    from mattecli.inference.pipeline import Pipeline
    from mattecli.metrics import evaluate
    from mattecli.models import build_model
    from mattecli.train.loop import validate

    recipe = tiny(1)
    torch.manual_seed(3)
    model = build_model(recipe).train()
    samples = read_manifest(synth / "test")
    pipeline = Pipeline(TorchBackend(model, recipe, "cpu"), recipe.infer, recipe)
    scores = [evaluate(pipeline.run(read_image(s.image), read_gray(s.trimap)).alpha, read_gray(s.alpha),
                       read_gray(s.trimap))
              for s in samples]
    expected = {k: float(np.mean([sc[k] for sc in scores])) for k in scores[0]}
    model.train()
    capfd.readouterr()
    # no worker processes. Patched where parallel.py looks it up: patching concurrent.futures made a
    # first import of mattecli.parallel here bind None for good, and later pool tests of the same
    # session failed with "'NoneType' object is not callable"
    import mattecli.parallel

    monkeypatch.setattr(mattecli.parallel, "ProcessPoolExecutor", None)
    assert validate(model, recipe, samples, torch.device("cpu")) == expected
    assert model.training  # restored
    model.eval()  # restored, not set to training: a model validated in eval mode stays in it
    assert validate(model, recipe, samples, torch.device("cpu")) == expected and not model.training
    # the mean over the samples as listed (hand computed from the per-sample scores), not their median
    three = {k: float(np.mean([scores[0][k], scores[1][k], scores[0][k]])) for k in scores[0]}
    assert validate(model, recipe, [samples[0], samples[1], samples[0]], torch.device("cpu")) == three
    model.train()
    assert capfd.readouterr() == ("", "")  # no progress bar, nothing printed
    # on CUDA the backend turns cudnn.benchmark on, process-wide: the steps after a validation ran on
    # autotuned algorithms (simulated here: the backend sets it as it does on a GPU)
    real_init = TorchBackend.__init__

    def on_a_gpu(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        torch.backends.cudnn.benchmark = True

    monkeypatch.setattr(TorchBackend, "__init__", on_a_gpu)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    validate(model, recipe, samples, torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False


def test_a_stray_world_size_is_named_not_waited_on_in_silence(monkeypatch, capsys):
    """WORLD_SIZE without torchrun: refused in one line without MASTER_ADDR, announced with it
    (the rendezvous then waits for processes that may never come)."""
    from mattecli.errors import UsageError
    from mattecli.train.loop import _announce_group

    for var in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(UsageError, match="WORLD_SIZE=4 .* MASTER_ADDR and MASTER_PORT are not set"):
        _announce_group(4, 1)
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    _announce_group(4, 1)
    err = capsys.readouterr().err
    assert "rank 1 of 4 joining the process group at 10.0.0.1:29500" in err and "unset WORLD_SIZE" in err
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # under torchrun: rank 0 alone says it
    _announce_group(4, 1)
    _announce_group(4, 0)
    err = capsys.readouterr().err
    assert err.count("joining") == 1 and "rank 0 of 4" in err and "unset" not in err
