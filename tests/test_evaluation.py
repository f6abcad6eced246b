"""mattecli.evaluation: the two modes (files, model), the prediction reading rule, eval's report option."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mattecli import metrics
from mattecli.cli import app
from mattecli.errors import InputError
from mattecli.evaluation import Item, WorstN, evaluate_files, evaluate_model
from mattecli.imageio import read_alpha, read_gray, read_trimap, write_png


def _case(rng, shape=(20, 28)):
    gt = rng.integers(0, 256, shape).astype(np.uint8)
    trimap = rng.choice(np.array([0, 128, 255], np.uint8), size=shape)
    image = rng.integers(0, 256, (*shape, 3)).astype(np.uint8)
    return gt, trimap, image


@pytest.fixture
def split(tmp_path):
    rng = np.random.default_rng(5)
    items = []
    for name in ("a", "b", "c"):
        gt, trimap, image = _case(rng)
        items.append(Item(name, gt=write_png(tmp_path / "gt" / f"{name}.png", gt),
                          trimap=write_png(tmp_path / "trimap" / f"{name}.png", trimap),
                          image=write_png(tmp_path / "image" / f"{name}.png", image)))
    return tmp_path, items


class Shift:
    """A 'model': the image's red channel, so each item's prediction differs."""

    calls = 0

    def predict_whole(self, image, trimap):
        Shift.calls += 1
        return image[..., 0].copy()


def test_model_mode_scores_what_the_model_predicted_silently_without_a_console(split, capsys):
    root, items = split
    broken = Item("z", gt=items[0].gt, trimap=items[0].trimap, image=root / "missing.png")
    results, kept = evaluate_model(items + [broken], Shift(), save_pred=root / "pred", worst=WorstN(2))
    assert [r.name for r in results] == ["a", "b", "c", "z"] and "missing.png" in results[-1].error
    for r in results[:3]:
        pred = read_gray(root / "pred" / f"{r.name}.png")
        assert np.array_equal(pred, read_gray(root / "image" / f"{r.name}.png"))  # red channel of a grey-free image
        assert r.metrics == metrics.evaluate(pred, read_gray(root / "gt" / f"{r.name}.png"),
                                             read_gray(root / "trimap" / f"{r.name}.png"))
    worst = sorted(results[:3], key=lambda r: -r.metrics["sad"])[:2]
    assert sorted(kept) == sorted(r.name for r in worst)
    assert capsys.readouterr() == ("", "")
    # the files mode on the saved predictions gives the same numbers, inline and in 2 processes
    files = [Item(i.name, gt=i.gt, trimap=i.trimap, pred=root / "pred" / f"{i.name}.png") for i in items]
    assert [r.metrics for r in evaluate_files(files)] == [r.metrics for r in results[:3]]
    assert [r.metrics for r in evaluate_files(files, workers=2)] == [r.metrics for r in results[:3]]


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def test_read_alpha_takes_grey_and_rgba_alpha_and_refuses_colour(tmp_path):
    rng = np.random.default_rng(0)
    matte = rng.integers(0, 256, (6, 7)).astype(np.uint8)
    colour = rng.integers(0, 256, (6, 7, 3)).astype(np.uint8)
    grey3 = np.repeat(matte[..., None], 3, axis=2)
    assert np.array_equal(read_alpha(_save(tmp_path / "l.png", matte)), matte)
    assert np.array_equal(read_alpha(_save(tmp_path / "rgb.png", grey3)), matte)
    rgba = np.dstack([colour, matte])  # matte infer --save rgba: foreground colours, the matte as alpha
    assert np.array_equal(read_alpha(_save(tmp_path / "rgba.png", rgba)), matte)
    opaque_grey = np.dstack([grey3, np.full_like(matte, 255)])
    assert np.array_equal(read_alpha(_save(tmp_path / "opaque.png", opaque_grey)), matte)
    sixteen = (matte.astype(np.uint16) * 257)
    assert np.array_equal(read_alpha(_save(tmp_path / "16.png", sixteen)), matte)
    for name, array in (("composite.png", colour), ("opaque-colour.png", np.dstack([colour, np.full_like(matte, 255)]))):
        with pytest.raises(InputError, match="a colour image .* not an alpha matte"):
            read_alpha(_save(tmp_path / name, array))


@pytest.mark.filterwarnings("ignore:Palette images with Transparency")  # Pillow's, on a palette cut-out
def test_read_alpha_needs_every_colour_channel_equal_and_reads_opaque_grey_alpha_and_palette_cut_outs(tmp_path):
    """read_alpha's rule: the colour channels must all be equal (blue too, not only green); an opaque
    grey + alpha file is its grey; a palette with transparency is a cut-out whose alpha is the matte."""
    matte = np.array([[0, 40, 128], [200, 255, 77]], np.uint8)
    blue_differs = np.dstack([matte, matte, 255 - matte])
    with pytest.raises(InputError, match="a colour image .* not an alpha matte"):
        read_alpha(_save(tmp_path / "rrb.png", blue_differs))
    Image.fromarray(np.dstack([matte, np.full_like(matte, 255)]), "LA").save(tmp_path / "la.png")
    assert np.array_equal(read_alpha(tmp_path / "la.png"), matte)
    palette = Image.fromarray(np.array([[0, 1, 2]], np.uint8), "P")
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    palette.save(tmp_path / "p.png", transparency=bytes([0, 128, 200]))
    assert read_alpha(tmp_path / "p.png").tolist() == [[0, 128, 200]]


def test_wide_files_holding_8bit_values_and_cut_out_ground_truths_read_as_what_they_hold(tmp_path):
    """cv2.imwrite of uint16 arrays of an 8-bit matte, ground truth or 0/128/255 trimap: scaled as
    16-bit levels, a matte scored near 0 and a trimap became 0/0/1 (no unknown pixel, every metric 0);
    a ground truth with its matte in an alpha channel (a cut-out) was scored on its red channel."""
    import cv2

    rng = np.random.default_rng(3)
    matte = rng.integers(0, 256, (6, 7)).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "m16.png"), matte.astype(np.uint16))
    assert np.array_equal(read_alpha(tmp_path / "m16.png"), matte)
    assert np.array_equal(read_gray(tmp_path / "m16.png"), matte)
    trimap = np.array([[0, 128, 255], [255, 128, 0]], np.uint8)
    cv2.imwrite(str(tmp_path / "t16.png"), trimap.astype(np.uint16))
    assert np.array_equal(read_gray(tmp_path / "t16.png"), trimap)
    from mattecli.imageio import read_ground_truth

    colour = rng.integers(0, 256, (6, 7, 3)).astype(np.uint8)
    assert np.array_equal(read_ground_truth(_save(tmp_path / "cut.png", np.dstack([colour, matte]))), matte)
    Image.fromarray(np.dstack([np.full_like(matte, 255), matte]), "LA").save(tmp_path / "la.png")
    assert np.array_equal(read_ground_truth(tmp_path / "la.png"), matte)
    opaque = np.dstack([np.repeat(matte[..., None], 3, axis=2), np.full_like(matte, 255)])
    assert np.array_equal(read_ground_truth(_save(tmp_path / "opaque.png", opaque)), matte)  # its first channel
    three = np.dstack([matte, colour[..., 1], colour[..., 2]])  # Adobe's 3-channel alphas: the first channel
    assert np.array_equal(read_ground_truth(_save(tmp_path / "three.png", three)), matte)


@pytest.mark.parametrize("mode", ["CMYK", "YCbCr"])
def test_grey_files_in_other_colour_spaces_read_as_their_grey(tmp_path, mode):
    # a grey matte or trimap saved by a print or scanner workflow: its first channel is cyan (inverted)
    # or Y, and its channels are unequal
    matte = np.array([[0, 40, 128], [200, 255, 77]], np.uint8)
    path = tmp_path / f"grey-{mode}.tif"
    Image.fromarray(matte).convert("RGB").convert(mode).save(path)
    assert np.array_equal(read_alpha(path), matte)
    assert np.array_equal(read_gray(path), matte)
    trimap = np.array([[0, 128, 255], [255, 128, 0]], np.uint8)
    Image.fromarray(trimap).convert("RGB").convert(mode).save(tmp_path / "t.tif")
    assert np.array_equal(read_trimap(tmp_path / "t.tif")[0], trimap)


def test_eval_refuses_colour_predictions_and_names_each(tmp_path):
    rng = np.random.default_rng(2)
    for name in ("a", "b"):
        gt, trimap, image = _case(rng)
        write_png(tmp_path / "gt" / f"{name}.png", gt)
        write_png(tmp_path / "trimap" / f"{name}.png", trimap)
        write_png(tmp_path / "composite" / f"{name}.png", image)  # e.g. --pred OUT/composite
    result = CliRunner().invoke(app, ["eval", "--pred", str(tmp_path / "composite"), "--gt", str(tmp_path / "gt"),
                                      "--trimap", str(tmp_path / "trimap"), "--workers", "1"])
    assert result.exit_code == 1
    refused = [line for line in result.stderr.splitlines() if "not an alpha matte" in line]
    assert len(refused) == 2 and "a.png" in refused[0] and "b.png" in refused[1]


def test_eval_report_pointed_at_a_file_is_one_line(tmp_path):
    (tmp_path / "report.html").write_text("")
    for target in (tmp_path / "report.html", tmp_path / "report.html" / "sub"):
        result = CliRunner().invoke(app, ["eval", "--pred", str(tmp_path), "--gt", str(tmp_path), "--trimap",
                                          str(tmp_path), "--report", str(target)])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert result.stderr.strip() == (f"matte: error: --report {target}: {tmp_path / 'report.html'} is a "
                                         "file; the report is a folder (index.html and its images): name a folder")


def test_means_are_over_the_evaluated_images_only():
    """docs/commands/eval.md: the mean is over the images evaluated; one that failed is listed
    under "failed", not counted as zeros."""
    from mattecli.evaluation import Result, summary

    a = {"sad": 1.0, "mse": 0.01, "grad": 2.0, "conn": 3.0}
    b = {"sad": 3.0, "mse": 0.03, "grad": 4.0, "conn": 5.0}
    data = summary([Result("a", a), Result("b", b), Result("c", error="unreadable")])
    assert data["count"] == 2 and data["failed"] == [{"name": "c", "reason": "unreadable"}]
    assert data["mean"] == pytest.approx({"sad": 2.0, "mse": 0.02, "grad": 3.0, "conn": 4.0})
    assert summary([Result("c", error="unreadable")])["mean"] == {"sad": None, "mse": None, "grad": None,
                                                                   "conn": None}


def test_match_folders_names_each_failure_once_in_name_order(tmp_path):
    """Pairing by stem: a stem with two files in a folder, and stems missing a counterpart, are each
    one failure naming what is wrong, listed by name whatever kind of failure each is."""
    from mattecli.evaluation import match_folders

    alpha = np.zeros((4, 5), np.uint8)
    for folder, stems in (("pred", "abmz"), ("gt", "bmz"), ("trimap", "abz")):
        for stem in stems:
            write_png(tmp_path / folder / f"{stem}.png", alpha)
    Image.fromarray(alpha).save(tmp_path / "pred" / "z.jpg")  # z: two predictions
    items, failures = match_folders(tmp_path / "pred", tmp_path / "gt", tmp_path / "trimap")
    assert [i.name for i in items] == ["b"]
    assert [r.name for r in failures] == ["a", "m", "z"]
    assert failures[0].error == f"no ground truth in {tmp_path / 'gt'}"
    assert failures[1].error == f"no trimap in {tmp_path / 'trimap'}"
    assert failures[2].error == "several prediction files with this stem: z.jpg, z.png"


def _split_with_predictions(root, samples, predictions):
    """root/split: a manifest of `samples` (4x5 alphas and trimaps); root/pred: the files named."""
    from mattecli.data.manifest import Sample, write_manifest

    alpha = np.zeros((4, 5), np.uint8)
    write_manifest(root / "split", [Sample(name, alpha=write_png(root / "split" / "alpha" / f"{name}.png", alpha),
                                           trimap=write_png(root / "split" / "trimap" / f"{name}.png", alpha))
                                    for name in samples])
    (root / "pred").mkdir()
    for name in predictions:
        Image.fromarray(alpha).save(root / "pred" / name)


def test_a_sample_with_two_prediction_files_is_one_failure_not_scored(tmp_path):
    """eval --data --pred: a sample whose stem has two prediction files is ambiguous: it is named as
    a failure and not evaluated with either file."""
    from mattecli.evaluation import match_manifest

    _split_with_predictions(tmp_path, "ab", ["a.png", "b.png", "a.jpg"])
    items, failures = match_manifest(tmp_path / "split", pred=tmp_path / "pred")
    assert [i.name for i in items] == ["b"] and items[0].pred == tmp_path / "pred" / "b.png"
    # one failure: it was named a second time, "no prediction in pred", and counted as two images not evaluated
    assert [(r.name, r.error) for r in failures] == [("a", "several prediction files with this stem: a.jpg, a.png")]


def test_eval_data_pred_names_a_sample_without_prediction_and_a_prediction_without_sample(tmp_path):
    """docs/commands/eval.md: missing counterparts are named and skipped, both ways round: a sample of the
    manifest with no prediction file, and a prediction file no sample of the manifest names."""
    from mattecli.evaluation import match_manifest

    _split_with_predictions(tmp_path, "ab", ["a.png", "x.png"])
    items, failures = match_manifest(tmp_path / "split", pred=tmp_path / "pred")
    assert [(i.name, i.pred) for i in items] == [("a", tmp_path / "pred" / "a.png")]
    assert sorted((r.name, r.error) for r in failures) == [("b", f"no prediction in {tmp_path / 'pred'}"),
                                                           ("x", "prediction without a sample in the manifest")]


def test_model_mode_keeps_in_memory_only_the_predictions_worst_selects(tmp_path):
    """evaluate_model's `worst` selects which predictions are kept and returned: a prediction that was
    among the worst N and is then pushed out by a worse one is dropped, not returned too."""
    items = []
    for k, name in enumerate("abc", 1):  # SAD grows from a to c: each pushes the one before out of the worst 1
        image = np.zeros((6, 8, 3), np.uint8)
        image[..., 0] = 20 * k
        items.append(Item(name, gt=write_png(tmp_path / "gt" / f"{name}.png", np.zeros((6, 8), np.uint8)),
                          trimap=write_png(tmp_path / "trimap" / f"{name}.png", np.full((6, 8), 128, np.uint8)),
                          image=write_png(tmp_path / "image" / f"{name}.png", image)))
    results, kept = evaluate_model(items, Shift(), worst=WorstN(1))
    assert [r.metrics["sad"] for r in results] == sorted(r.metrics["sad"] for r in results)
    assert list(kept) == ["c"] and np.array_equal(kept["c"], np.full((6, 8), 60, np.uint8))
