"""What a device check measured, as Markdown: the GPU targets met or not, and the tables of
docs/benchmarks.md ("GPU figures"), from the JSON that `benchmarks/device_check.sh` writes.

    python benchmarks/device_report.py OUT/device_check.json [--out OUT/device_report.md]

`device_check.sh` runs it last, so that a session with a GPU gets its figures ready to paste. Every
ratio it prints compares rows of the same run. Reads the JSON only: no torch, no GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

INDEXNET = "indexnet-m2o-nl-ctx"
HD, UHD = "1920x1080", "3840x2160"
# the GPU targets (docs/benchmarks.md), stated for an H100
MODEL_GOALS = {HD: 300, UHD: 75}  # IndexNet float16 model-only, images/s
E2E_GOAL = 30  # images/s at 3840x2160, --save alpha
FOREGROUND_GOAL_MS = 50  # at 3840x2160
MEMORY_GOAL_BYTES = 8e9  # IndexNet float16 at 3840x2160, one whole-image pass
HEADROOM = 1.15  # the recipes' cuda_*bytes_per_pixel: the steady-state figure plus about 15%,
ROUND = 50  # rounded up to this (docs/benchmarks.md, "Peak memory")
# (row precision, the same run's precision it is compared with, what the ratio says)
RATIOS = (("fp16", "fp16-unfolded", "BatchNorm folding"), ("fp16", "fp32", "float16"),
          ("fp16-channels-last", "fp16", "channels_last"), ("fp16-graphs", "fp16", "a CUDA graph"),
          ("fp16-compiled", "fp16", "torch.compile"), ("fp16-a2u-unfold", "fp16", "A2U's kernels by unfolding"))


def report(result: dict) -> str:
    rows = [r for r in result.get("model", []) if "median_ms" in r]
    model = {(r["recipe"], r["size"], r["precision"]): r for r in rows}
    precisions = list(dict.fromkeys(r["precision"] for r in result.get("model", [])))
    steady = any("first_call_peak_mib" in r for r in rows)  # older checks counted the first call in the peak
    lines = [f"# Device check: {result.get('device', '?')}",
             "", f"torch {result.get('torch')}, CUDA {result.get('cuda')}, cuDNN {result.get('cudnn')}; "
                 f"{result.get('seconds', '?')} s."]
    lines += ["", "## Targets (stated for an H100)", "",
              "| target | goal | measured | met |", "| --- | --- | --- | --- |"]
    for size, goal in MODEL_GOALS.items():
        row = model.get((INDEXNET, size, "fp16"))
        best = max((r for (n, s, p), r in model.items() if n == INDEXNET and s == size and p.startswith("fp16")),
                   key=lambda r: r["images_per_s"], default=None)
        measured = f"{row['images_per_s']:g} images/s" if row else "not measured"
        if best is not None and best is not row:
            measured += f"; fastest float16 row: {best['precision']}, {best['images_per_s']:g}"
        lines.append(f"| IndexNet float16 model-only, {size} | >= {goal} images/s | {measured} | "
                     f"{_met(best, lambda r: r['images_per_s'] >= goal)} |")
    alpha_rows = [r for r in result.get("e2e", []) if r.get("save") == "alpha" and r.get("size") == UHD
                  and r.get("photos", "png") == "png"]
    e2e = next((r for r in alpha_rows if not r.get("compile")), None)
    best = max(alpha_rows, key=lambda r: r["images_per_s"], default=None)
    shown = e2e and f"{e2e['images_per_s']:.2f} images/s ({e2e['workers']} workers)"
    if best is not None and best.get("compile"):
        shown = f"{shown or 'eager not measured'}; --compile: {best['images_per_s']:.2f}"
    lines.append(f"| end to end, {UHD}, --save alpha | >= {E2E_GOAL} images/s | {shown or 'not measured'} | "
                 f"{_met(best, lambda r: r['images_per_s'] >= E2E_GOAL)} |")
    fg = next((r for r in result.get("foreground", []) if r.get("size") == UHD), None)
    shown = fg and f"{fg['median_ms']:g} ms"
    lines.append(f"| foreground, {UHD} | <= {FOREGROUND_GOAL_MS} ms | {shown or 'not measured'} | "
                 f"{_met(fg, lambda r: r['median_ms'] <= FOREGROUND_GOAL_MS)} |")
    mem = model.get((INDEXNET, UHD, "fp16"))
    mem = mem if mem and "peak_mib" in mem else None
    shown = mem and f"{mem['peak_mib']:,.0f} MiB ({'steady state' if steady else 'first call included'})"
    lines.append(f"| IndexNet float16 {UHD}, one pass | < 8 GB (7,629 MiB) | {shown or 'not measured'} | "
                 f"{_met(mem, lambda r: r['peak_mib'] * 2**20 < MEMORY_GOAL_BYTES)} |")

    sizes = list(dict.fromkeys(r["size"] for r in rows))
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    lines += ["", "## Model passes (ms per pass; images/s in brackets)", "",
              "| recipe | size | " + " | ".join(precisions) + " |", "| --- | --- |" + " ---: |" * len(precisions)]
    for name in recipes:
        for size in sizes:
            cells = [_cell(result, model, name, size, p, lambda r: f"{r['median_ms']:.1f} ({r['images_per_s']:.3g})")
                     for p in precisions]
            lines.append(f"| {name} | {size} | " + " | ".join(cells) + " |")
    lines += ["", "## Ratios within this run (time of the second over the first: above 1, the first is faster)", "",
              "| recipe | size | what | ratio |", "| --- | --- | --- | ---: |"]
    for first, second, what in RATIOS:
        for name in recipes:
            for size in sizes:
                a, b = model.get((name, size, first)), model.get((name, size, second))
                if a and b:
                    lines.append(f"| {name} | {size} | {what} ({first} against {second}) | "
                                 f"{b['median_ms'] / a['median_ms']:.2f}x |")

    big = sizes[-1] if sizes else UHD
    memory = {key: r for key, r in model.items() if "bytes_per_pixel" in r}  # measured on CUDA only
    if memory:
        lines += ["", f"## Peak memory at {big} (bytes per aligned input pixel; MiB)", "",
                  "Steady state: the passes after the first." if steady else
                  "These rows count the first call (cuDNN's search) in the peak: not what a pass needs.", "",
                  "| recipe | " + " | ".join(precisions) + " | first call, float32 |",
                  "| --- |" + " ---: |" * (len(precisions) + 1)]
        for name in recipes:
            cells = [_cell(result, memory, name, big, p, lambda r: f"{r['bytes_per_pixel']:,} B ({r['peak_mib']:,.0f})")
                     for p in precisions]
            first = memory.get((name, big, "fp32"), {}).get("first_call_peak_mib")
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {f'{first:,.0f} MiB' if first else '-'} |")
    if memory and steady:
        lines += ["", "Recipe values these suggest (steady state plus about 15%, rounded up to 50):", "",
                  "| recipe | cuda_bytes_per_pixel: now -> suggested | cuda_half_bytes_per_pixel: now -> suggested |",
                  "| --- | --- | --- |"]
        for name in recipes:
            now = _recipe_figures(name)
            cells = []
            for precision, key in (("fp32", "cuda_bytes_per_pixel"), ("fp16", "cuda_half_bytes_per_pixel")):
                row = memory.get((name, big, precision))
                cells.append(f"{now.get(key, '?')} -> {suggested(row['bytes_per_pixel'])}" if row else "not measured")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")

    if result.get("parity"):
        lines += ["", "## Half precision against float32 (alpha levels over the unknown band)", "",
                  "| recipe | precision | how | largest | mean | within 1 level |", "| --- | --- | --- | ---: | ---: | ---: |"]
        lines += [f"| {r['recipe']} | {r['precision']} | {r['how']} | {r['max_levels']} | {r['mean_levels']:g} | "
                  f"{100 * r['share_within_1']:.4g}% |" for r in result["parity"]]
    if result.get("e2e"):
        stages = list(dict.fromkeys(s for r in result["e2e"] for s in r.get("stages", {})))
        lines += ["", "## End to end (`bench --e2e`, stages in ms per image)", "",
                  "| size | photos | --save | workers | images/s | wall / decode | " + " | ".join(stages) + " |",
                  "| --- | --- | --- | ---: | ---: | ---: |" + " ---: |" * len(stages)]
        for r in result["e2e"]:
            cells = [f"{r['stages'][s]['ms_per_image']:.1f}" if s in r.get("stages", {}) else "-" for s in stages]
            save = f"{r.get('save')} (--compile)" if r.get("compile") else r.get("save")
            lines.append(f"| {r['size']} | {r.get('photos', 'png')} | {save} | {r.get('workers')} | "
                         f"{r['images_per_s']:.2f} | "
                         f"{r['wall_over_decode']:.2f} | " + " | ".join(cells) + " |")
    for r in result.get("foreground", []):
        parity = (f"; against PyMatting ({r['pymatting_cpu_s']} s on the CPU): largest {r['max_levels']} levels, "
                  f"mean {r['mean_levels']:g}, {100 * r['share_within_4']:.3g}% within 4"
                  if "max_levels" in r else (f"; {r['parity']}" if r.get("parity") else ""))
        graphed = next((g for g in result.get("foreground graphed", []) if g.get("size") == r["size"]), None)
        if graphed:
            parity += (f"; replayed as one CUDA graph: {graphed['median_ms']:g} ms (largest difference from the "
                       f"eager estimate: {graphed['max_levels_from_eager']} levels)")
        lines += ["", "## Foreground", "", f"{r['size']} on {r['device']}: {r['median_ms']:g} ms{parity}."]
    for r in result.get("pool", []):
        lines += ["", f"## Host work in a pool: threads or processes ({r['size']}, {r['count']} images, "
                  f"{r['workers']} workers, median of {r['rounds']}; images/s)", "",
                  "| stage | threads | processes | threads / processes |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {stage} | {m['threads']:g} | {m['processes']:g} | {m['ratio']:g}x |"
                  for stage, m in r["median"].items()]
    if result.get("profile"):
        lines += ["", "## Profile (IndexNet, kernels' own device time)", "",
                  "| precision | ms per pass | launches | shares |", "| --- | ---: | ---: | --- |"]
        lines += [f"| {r['precision']} | {r['device_ms_per_pass']:g} | {r['kernel_launches_per_pass']} | "
                  + ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["share"].items()) + " |" for r in result["profile"]]
    failed = [f"{r['recipe']} {r['precision']} {r.get('size', '')}: {r.get('error') or r.get('skipped')}"
              for r in result.get("model", []) if "median_ms" not in r]
    failed += [f"section {name}: {why}" for name, why in result.get("errors", {}).items()]
    if failed:
        lines += ["", "## Not measured", ""] + [f"- {line.strip()}" for line in failed]
    return "\n".join(lines) + "\n"


def suggested(bytes_per_pixel: float) -> int:
    """A recipe's `cuda_*bytes_per_pixel` from a steady-state peak: about 15% above, rounded up to 50."""
    return int(math.ceil(bytes_per_pixel * HEADROOM / ROUND) * ROUND)


def _recipe_figures(name: str) -> dict:
    try:
        from mattecli.recipes import load_recipe

        infer = load_recipe(name).infer
        return {"cuda_bytes_per_pixel": infer.cuda_bytes_per_pixel, "cuda_half_bytes_per_pixel": infer.cuda_half_bytes_per_pixel}
    except Exception:  # noqa: BLE001 - a recipe this checkout lacks: its current values are shown as "?"
        return {}


def _cell(result: dict, model: dict, name: str, size: str, precision: str, show) -> str:
    row = model.get((name, size, precision))
    if row is not None:
        return show(row)
    other = next((r for r in result.get("model", []) if r["recipe"] == name and r["precision"] == precision
                  and r.get("size", size) == size), None)
    return "error" if other and "error" in other else "not run"


def _met(row, test) -> str:
    return "not measured" if row is None else ("yes" if test(row) else "no")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="a device_check.json")
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    args = parser.parse_args(argv)
    try:
        result = json.loads(args.json.read_text())
    except (OSError, ValueError) as err:
        print(f"device_report: {args.json}: {err}", file=sys.stderr)
        return 2
    text = report(result)
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
