"""`matte export` as a library: check the request before any work, write the ONNX graph or the
TensorRT engine, and verify it against PyTorch. `mattecli/cli/export.py` only parses and prints."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from pathlib import Path

from exporters.onnx import MIN_OPSET
from mattecli.errors import UsageError
from mattecli.files import special_file
from mattecli.inference.backends import SUFFIX_TO_BACKEND
from mattecli.progress import track as progress_track
from mattecli.sizes import Size

FORMATS = ("onnx", "trt")  # backend names: the suffixes each writes are those SUFFIX_TO_BACKEND gives them
MAX_OPSET = 20  # torch's TorchScript exporter stops at 20
DEFAULT_SHAPES = (Size(320, 320), Size(1920, 1088), Size(3840, 2176))  # min, opt, max


@dataclass
class ExportOptions:
    """What `matte export` was asked for; shapes and sizes are `Size`s (WIDTHxHEIGHT)."""

    weights: Path
    out: Path
    format: str = "onnx"
    half: bool = False
    tf32: bool = False
    dynamic: bool = True  # False: a static graph of batch 1 at the opt shape (`--static`)
    shapes: tuple = DEFAULT_SHAPES
    shapes_given: tuple = ()  # the shape options the user gave ("--min-shape", ...): refused where unused
    opset: int = MIN_OPSET
    verify: bool = False
    verify_sizes: list | None = None
    device: str = "cpu"

    @property
    def tolerance(self) -> float:
        """The max-abs error `--verify` allows per unit of the reference output's scale (max |output|,
        at least 1): 1e-4, or 1e-2 for FP16."""
        from exporters.verify import HALF_TOLERANCE, TOLERANCE

        return HALF_TOLERANCE if self.half else TOLERANCE


@dataclass
class Exported:
    """A written model file, with the PyTorch model it came from (the reference of `verify_export`)."""

    path: Path
    model: object
    recipe: object
    dynamic: bool  # the graph's H/W
    shapes: tuple  # the stride-aligned (min, opt, max)
    summary: str = field(default="")


def check_options(opts: ExportOptions) -> None:
    """Refuse, in one line and before any work, what cannot be exported as asked."""
    if opts.format not in FORMATS:
        raise UsageError(f"--format {opts.format}: unknown format (choose {' or '.join(FORMATS)})")
    if not MIN_OPSET <= opts.opset <= MAX_OPSET:
        raise UsageError(f"--opset {opts.opset}: choose {MIN_OPSET} to {MAX_OPSET} (TensorRT-ready graphs need "
                         f"{MIN_OPSET} or later; torch's exporter writes up to {MAX_OPSET})")
    given = Path(opts.weights).suffix.lower()
    if SUFFIX_TO_BACKEND.get(given, "torch") != "torch":  # else read_weights says "not a readable .safetensors"
        raise UsageError(f"--weights {opts.weights}: an exported {given} model; export from the .safetensors "
                         "weights file it came from")
    from mattecli.weights import CHECKPOINT_SUFFIXES, unknown_model_file

    if given in CHECKPOINT_SUFFIXES:  # read_weights said "not a readable .safetensors file (header too large)"
        raise unknown_model_file(Path(opts.weights))
    suffix = Path(opts.out).suffix.lower()
    own = " or ".join(s for s, b in SUFFIX_TO_BACKEND.items() if b == opts.format)
    implied = SUFFIX_TO_BACKEND.get(suffix)
    if implied is not None and implied != opts.format:
        hint = f", or --format {implied}" if implied in FORMATS else ""
        raise UsageError(f"--out {opts.out}: a {suffix} file is not what --format {opts.format} writes "
                         f"(use {own}{hint})")
    # infer, eval and bench pick the backend by the suffix: `--out model` or `model.bin` wrote a file
    # they then refused. A device (`--out /dev/null`, a dry run) is written in place, suffix or not.
    if implied is None and not special_file(opts.out):
        raise UsageError(f"--out {opts.out}: {f'a {suffix} file' if suffix else 'no suffix'}; name the "
                         f"{'graph' if opts.format == 'onnx' else 'engine'} {own} (matte infer, eval and bench "
                         "choose the backend by it)")
    if opts.tf32 and opts.format != "trt":
        raise UsageError("--tf32 is for --format trt (ONNX graphs carry no such setting)")
    if opts.verify and Path(opts.out).exists() and not Path(opts.out).is_file():  # /dev/null: "no such weights file"
        raise UsageError(f"--out {opts.out}: not a regular file, and --verify runs the model from the file written; "
                         "export to a file (and delete it after)")
    if opts.verify_sizes is not None and not opts.verify:  # else the sizes were silently not run
        raise UsageError("--verify-sizes is for --verify (add --verify to run the exported model at those sizes)")
    from mattecli.devices import resolve_device

    opts.device = resolve_device(opts.device, backend=opts.format)  # auto: where --verify can run the graph
    if opts.verify and opts.format == "trt" and not opts.device.startswith("cuda"):
        raise UsageError(f"--verify of a TensorRT engine runs it on a GPU: add --device cuda (got --device "
                         f"{opts.device})")
    _check_shapes_used(opts)
    if opts.dynamic:
        from exporters.tensorrt import check_profile

        check_profile(*(s.hw for s in opts.shapes))


def _check_shapes_used(opts: ExportOptions) -> None:
    """Refuse a shape option the export would ignore (they were accepted and silently dropped): the
    profile's min and max are an engine's with dynamic sizes; opt is an engine's, or a --static
    graph's one size. The defaults never trigger it."""
    profile = opts.format == "trt" and opts.dynamic
    unused = [name for name in opts.shapes_given
              if not (profile or (name == "--opt-shape" and not opts.dynamic))]
    if not unused:
        return
    if not opts.dynamic:
        why = "a --static graph has one size, --opt-shape's"
    else:
        why = ("a dynamic ONNX graph runs at any size; the shapes are a TensorRT engine's profile (--format trt), "
               "and --static --opt-shape WxH fixes an ONNX graph's size")
    raise UsageError(f"{', '.join(unused)}: not used by this export ({why})")


def _align_shapes(shapes, cfg, used, log) -> tuple:
    """Each size as the pipeline aligns a photo of that size for the model (`cfg`: the recipe's
    infer): up to the stride, or down for `resize-down` (a static graph aligned up could not run
    the photo size it was exported for); a note for each used one."""
    down = cfg.align == "resize-down"
    aligned = []
    for name, size, in_use in zip(("min", "opt", "max"), shapes, used):
        try:
            new = cfg.aligned(size)
        except ValueError as err:
            if in_use:
                raise UsageError(f"--{name}-shape {err}") from None
            new = size  # not used (a static graph's min and max, --opt-shape's copies): said of --opt-shape
        if new != size and in_use:
            log(f"matte: note: --{name}-shape {size} aligned {'down' if down else 'up'} to {new} (WIDTHxHEIGHT, a "
                f"multiple of the model's stride {cfg.stride}, as the inference pipeline aligns its inputs"
                f"{': this recipe resizes them down' if down else ''})")
        aligned.append(new)
    return tuple(aligned)


def _check_verify_sizes(sizes, cfg, shapes, dynamic: bool, trt_range: bool, asked_dynamic: bool) -> None:
    """A UsageError, before anything is exported, for a --verify-sizes size the written file cannot
    run once the pipeline has aligned it (`cfg`: the recipe's infer): under the stride of a recipe
    that aligns down, other than a static graph's one size, outside an engine's profile."""
    low, opt, high = shapes
    outside = []
    for size in sizes:
        try:
            aligned = cfg.aligned(size)
        except ValueError as err:
            raise UsageError(f"--verify-sizes {err}") from None
        if (not dynamic and aligned != opt) or (trt_range and not (
                low.height <= aligned.height <= high.height and low.width <= aligned.width <= high.width)):
            outside.append(str(size))
    if not outside:
        return
    if not dynamic:
        raise UsageError(f"--verify-sizes {','.join(outside)}: a static graph runs at --opt-shape {opt} only "
                         f"({'leave out --static' if not asked_dynamic else 'give the profile a range'})")
    raise UsageError(f"--verify-sizes {','.join(outside)}: outside the engine's profile, {low} .. {high} once "
                     "aligned (widen --min-shape/--max-shape)")


def export(opts: ExportOptions, log=print, track=None) -> Exported:
    """Write the ONNX graph or TensorRT engine `opts` asks for.

    Args:
        opts: the request (see `ExportOptions`).
        log: called with notes (shapes aligned to the stride).
        track: `mattecli.progress.track`, for a progress bar over the export itself (seconds for
            ONNX, minutes for an engine), which starts once the options and weights are checked.

    Returns:
        the written file with the model and recipe it came from.

    Raises:
        UsageError: bad options, a missing or unreadable weights file, trt without TensorRT or CUDA,
            --verify-sizes that a static graph cannot run.
    """
    from mattecli.weights import load_model

    check_options(opts)
    if opts.format == "trt":
        from exporters.tensorrt import fp16_graph_for

        fp16_graph_for(opts.half)  # "TensorRT is not installed" before loading anything
    model, recipe = load_model(opts.weights)  # UsageError naming the file when missing or unreadable
    low, opt, high = opts.shapes
    # an engine's graph has dynamic H/W where its profile spans a range; `--static` builds at opt only
    dynamic = opts.dynamic and not (opts.format == "trt" and low == opt == high)
    trt_range = opts.format == "trt" and dynamic
    used = (trt_range, trt_range or not dynamic, trt_range)  # a dynamic ONNX graph has no shapes to note
    shapes = _align_shapes(opts.shapes if dynamic else (opt,) * 3, recipe.infer, used, log)
    if opts.verify_sizes:
        _check_verify_sizes(opts.verify_sizes, recipe.infer, shapes, dynamic, trt_range, opts.dynamic)
    out = Path(opts.out)
    precision = "FP16" if opts.half else "FP32"
    working = track or functools.partial(progress_track, enabled=False)
    if opts.format == "onnx":
        from exporters.onnx import to_onnx

        with working(1, f"export ONNX ({precision})") as bar:
            path = to_onnx(model, out, opset=opts.opset, dynamic=dynamic, recipe=recipe, half=opts.half,
                           size=shapes[1].hw)
            bar.advance()
        axes = "dynamic batch, height and width" if dynamic else f"static batch 1 at {shapes[1]}"
        summary = (f"wrote {path}: ONNX opset {opts.opset}, {precision}, {axes}, recipe {recipe.name}, "
                   f"{path.stat().st_size / 2**20:.1f} MiB")
    else:
        import torch

        from exporters.tensorrt import build_engine

        # TensorRT builds on the current CUDA device (tuned for its architecture, in its memory):
        # --device cuda:1's, not always the first GPU's
        on_device = torch.cuda.device(opts.device) if opts.device.startswith("cuda") else contextlib.nullcontext()
        with on_device, working(1, f"build TensorRT engine ({precision})") as bar:
            path = build_engine(model, recipe, out, half=opts.half, tf32=opts.tf32,
                                shapes=tuple(s.hw for s in shapes), dynamic=dynamic, opset=opts.opset)
            bar.advance()
        summary = (f"wrote {path}: TensorRT engine ({precision}{', TF32' if opts.tf32 and not opts.half else ''}), "
                   f"recipe {recipe.name}, sizes {shapes[0]} .. {shapes[2]}")
    return Exported(path, model, recipe, dynamic, shapes, summary)


def verify_sizes(exported: Exported, opts: ExportOptions) -> list[Size]:
    """The sizes `--verify` runs: those asked for, else the defaults the file can run."""
    from exporters.verify import default_sizes

    if opts.verify_sizes:
        return list(opts.verify_sizes)
    low, opt, high = exported.shapes
    if not exported.dynamic:
        return [opt]
    sizes = default_sizes(exported.recipe.infer.stride)
    if opts.format == "trt":  # an engine runs only inside its profile
        sizes = [s for s in sizes if low.height <= s.height <= high.height and low.width <= s.width <= high.width] or [opt]
    return sizes


def verify_export(exported: Exported, opts: ExportOptions, sizes=None, on_size=None) -> list:
    """Run the written file and the PyTorch model (FP32, TF32 off) on the same fresh inputs.

    Args:
        exported: what `export` wrote.
        opts: the request (device, format, tolerance).
        sizes: `Size`s; default `verify_sizes(exported, opts)`.
        on_size: called with each `Parity` as it is measured.

    Returns:
        one `exporters.verify.Parity` per size.
    """
    from exporters.verify import verify
    from mattecli.inference.backends import TorchBackend, load_backend

    backend = load_backend(exported.path, opts.format, opts.device)
    reference = TorchBackend(exported.model, exported.recipe, opts.device)
    return verify(backend, reference, sizes or verify_sizes(exported, opts), tolerance=opts.tolerance,
                  on_size=on_size)
