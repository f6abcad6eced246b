"""`make demo`: the whole toolkit end to end on a CPU in minutes, saying what each step did.

synthetic data -> train `demo-indexnet` -> evaluate against the trivial baseline (alpha = 0.5 in
the unknown region) -> export to ONNX (checked against PyTorch) -> infer on a folder holding the
lemur photo with the PyTorch model and the ONNX model. Everything lands in `demo/` (removed by `make clean`).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

OUT = Path("demo")  # in the folder it runs in: the repository root under `make demo`


def step(title: str):
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def done(t0: float, what: str) -> None:
    print(f"   {what} ({time.perf_counter() - t0:.1f} s)", flush=True)


def trivial_predictions(samples, folder: Path) -> None:
    """The baseline every model must beat: the trimap with 0.5 in the unknown region."""
    import numpy as np

    from mattecli.imageio import read_gray, write_png

    for s in samples:
        trimap = read_gray(s.trimap)
        write_png(folder / f"{s.name}.png", np.where(trimap == 128, np.uint8(127), trimap).astype(np.uint8))


def main(out: Path = OUT) -> int:
    """Run the demo into `out` (replaced); 0 when the model beats the baseline and inference worked."""
    import numpy as np

    from mattecli.data.manifest import read_manifest
    from mattecli.data.synthetic import prepare_synthetic
    from rich.console import Console

    from mattecli.evaluation import evaluate_files, evaluate_model, match_manifest, summary
    from mattecli.inference.pipeline import load_pipeline
    from mattecli.recipes import load_recipe
    from mattecli.train.loop import TrainOptions, train

    start = time.perf_counter()
    if out.exists():
        shutil.rmtree(out)
    data, run = out / "data", out / "run"

    t0 = step("1/5 prepare-data synthetic: procedural foregrounds (soft edges, strands, holes) on textured backgrounds")
    prepare_synthetic(data, n_train=32, n_test=8, size=160, seed=0)
    done(t0, f"{data}/train (32 samples, composed on the fly) and {data}/test (8 composites + trimaps), with manifest.csv")

    recipe = load_recipe("demo-indexnet")
    cfg = recipe.train
    t0 = step(f"2/5 train demo-indexnet (IndexNet M2O nonlinear+context, from scratch) on the CPU: "
              f"{cfg.iters} iterations of {cfg.batch_size} crops of {recipe.data.crop_size} px")
    result = train(TrainOptions(recipe, data, run, val_limit=4))
    first, last = result.history[0]["loss"], np.mean([e["loss"] for e in result.history[-5:]])
    rate = result.history[-1]["samples_per_s"]
    done(t0, f"loss {first:.4f} -> {last:.4f} ({rate:.1f} samples/s); "
             f"{run}/last.safetensors, best.safetensors, log.jsonl, curves.png")

    t0 = step("3/5 eval on the synthetic test split: the trained model against the trivial baseline")
    weights = run / "last.safetensors"
    preds, baseline = out / "eval" / "model", out / "eval" / "baseline"
    items, _ = match_manifest(data / "test")
    results, _ = evaluate_model(items, load_pipeline(weights), save_pred=preds, console=Console(stderr=True))
    trivial_predictions(read_manifest(data / "test"), baseline)
    baseline_results = evaluate_files(match_manifest(data / "test", pred=baseline)[0], console=Console(stderr=True))
    scores = {"demo-indexnet": summary(results)["mean"], "trivial (0.5)": summary(baseline_results)["mean"]}
    print(f"   {'':16} {'SAD':>8} {'MSE':>8} {'Grad':>8} {'Conn':>8}")
    for label, m in scores.items():
        print(f"   {label:16} {m['sad']:8.3f} {m['mse']:8.4f} {m['grad']:8.3f} {m['conn']:8.3f}")
    ours, trivial = scores["demo-indexnet"], scores["trivial (0.5)"]
    beats = ours["sad"] < trivial["sad"] and ours["mse"] < trivial["mse"]
    done(t0, f"the model {'beats' if beats else 'does NOT beat'} the trivial baseline on SAD and MSE "
             f"(SAD {ours['sad']:.3f} vs {trivial['sad']:.3f}, MSE {ours['mse']:.4f} vs {trivial['mse']:.4f}); "
             f"predictions in {preds}, baseline's in {baseline}")

    onnx_path, exported_ok = export_onnx(weights, recipe, out)
    failed = infer_with_both(weights, onnx_path, out)

    print(f"\nDemo finished in {time.perf_counter() - start:.0f} s: everything is in {out.resolve()}. The model "
          f"{'beats' if beats else 'does NOT beat'} the trivial baseline (SAD {ours['sad']:.3f} vs "
          f"{trivial['sad']:.3f}, MSE {ours['mse']:.4f} vs {trivial['mse']:.4f}).")
    return 0 if beats and exported_ok and not failed else 1


def export_onnx(weights: Path, recipe, out: Path) -> tuple[Path, bool]:
    """Step 4: the trained model to ONNX, checked against PyTorch. Returns (path, within tolerance)."""
    from exporters.onnx import to_onnx
    from exporters.verify import TOLERANCE, verify
    from mattecli.inference.backends import OnnxBackend, TorchBackend
    from mattecli.sizes import Size
    from mattecli.weights import load_model

    t0 = step("4/5 export to ONNX (dynamic size, TensorRT-ready operators) and check it against PyTorch")
    model, _ = load_model(weights)
    onnx_path = to_onnx(model, out / "demo-indexnet.onnx", opset=17, dynamic=True, recipe=recipe)
    parity = verify(OnnxBackend.load(onnx_path), TorchBackend(model, recipe), [Size(96, 160), Size(352, 224)])
    errors = ", ".join(f"{r.width}x{r.height} {r.max_abs:.1e}" for r in parity)
    ok = all(r.ok for r in parity)
    done(t0, f"{onnx_path}; max-abs error vs PyTorch: {errors} "
             f"({'within' if ok else 'ABOVE'} {TOLERANCE:g} x max(1, output scale))")
    return onnx_path, ok


def infer_with_both(weights: Path, onnx_path: Path, out: Path) -> list:
    """Step 5: the lemur folder with the PyTorch model and with the ONNX model; returns the failures."""
    import numpy as np

    from mattecli.imageio import read_gray
    from mattecli.inference.batch import infer_folder, print_report
    from mattecli.inference.pipeline import load_pipeline
    from mattecli.recipes import shipped

    t0 = step("5/5 infer on a folder: the lemur photo (a real photograph, hand-drawn trimap), with PyTorch and ONNX")
    folder = out / "photos"
    folder.mkdir(parents=True)
    for name in ("lemur.png", "lemur_trimap.png"):
        shutil.copy(shipped("examples") / name, folder / name)
    failed = []
    for model_file, mattes in ((weights, out / "mattes"), (onnx_path, out / "mattes-onnx")):
        report = infer_folder(load_pipeline(model_file), folder, mattes, progress=False)
        print_report(report, mattes)
        failed += report.failed
    diff = np.abs(read_gray(out / "mattes" / "lemur.png").astype(int)
                  - read_gray(out / "mattes-onnx" / "lemur.png").astype(int))
    done(t0, f"alpha matte: {out / 'mattes' / 'lemur.png'} (a demo model trained for minutes on synthetic "
             "shapes: expect a rough matte; `matte convert` the authors' weights for real use); "
             f"the ONNX model's ({out / 'mattes-onnx'}) differs by at most {diff.max()} of 255 "
             f"({_pixels_differ(np.count_nonzero(diff))})")
    return failed


def _pixels_differ(count: int) -> str:
    return "1 pixel differs" if count == 1 else f"{count} pixels differ"


if __name__ == "__main__":
    sys.exit(main())
