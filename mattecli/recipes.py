"""Recipes: YAML files in `recipes/` turned into frozen, validated dataclasses.

A recipe has four sections — `model` (a family and that family's options), `data` (the training
pipeline), `train` (the schedule) and `infer` (how the inference pipeline aligns and encodes the
input for this model). Unknown keys fail naming the key; a recipe may name one `base:` recipe whose
values it overrides (one level only); `--set a.b=value` overrides any value from the command line.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mattecli.errors import UsageError


def shipped(folder: str) -> Path:
    """The folder of files that come with matte, `recipes` or `examples`: at the root of a source
    checkout (an editable install included), or inside the installed package, where the wheel puts
    them as `mattecli/_recipes` and `mattecli/_examples` (pyproject.toml)."""
    package = Path(__file__).resolve().parent
    checkout, project = package.parent / folder, package.parent / "pyproject.toml"
    if checkout.is_dir() and project.is_file() and 'name = "matte"' in project.read_text(errors="replace"):
        return checkout
    return package / f"_{folder}"


RECIPES_DIR = shipped("recipes")
RECIPE_SUFFIXES = (".yaml", ".yml", ".json")  # .json: a run folder's recipe.json, the recipe resolved
LOSS_NAMES = ("dim", "dim-a2u", "l1", "alpha", "tcp", "mmagic")  # mattecli.train.losses.LOSSES, without torch


def _check_choices(config, **choices: tuple[str, ...]) -> None:
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(config, name)!r}")


def _check_at_least(config, low: float, *names: str) -> None:
    """A zero batch, stride or logging interval, or a negative size or rate, is a typo that would
    otherwise surface as a ZeroDivisionError or an OpenCV assertion deep inside a run."""
    for name in names:
        values = getattr(config, name)
        for value in values if isinstance(values, tuple) else (values,):
            if value < low:
                raise ValueError(f"{name} must be at least {low:g}, got {values!r}")


@dataclass(frozen=True)
class DataConfig:
    """Training data: which pipeline (specs/data.md) and its main sizes."""

    pipeline: str = "dim"  # a name in mattecli.data.pipelines.PIPELINES (dim, gca, tcp-composited, mmagic, ...)
    crop_size: int = 320
    val_every: int = 0  # validate every val_every val_units on the test split; 0 = never
    val_unit: str = "iters"  # iters | epochs (passes over this run's training set)
    val_metric: str = "sad"  # the metric that picks best.safetensors (lowest wins): sad | mse | grad | conn

    def __post_init__(self):
        _check_choices(self, val_unit=("iters", "epochs"), val_metric=("sad", "mse", "grad", "conn"))
        _check_at_least(self, 1, "crop_size")
        _check_at_least(self, 0, "val_every")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation schedule; learning-rate multipliers per parameter group."""

    iters: int = 1000
    batch_size: int = 16
    lr: float = 1e-2  # new layers (index blocks, ASPP, decoder, head)
    encoder_lr: float = 1e-4  # the (pretrained) encoder
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    schedule: str = "multistep"  # multistep | cosine
    milestones: tuple[int, ...] = ()  # where lr *= gamma (multistep), in milestone_unit
    # iters | epochs: an epochs milestone takes effect at the first iteration of that epoch (the
    # authors' scheduler.step() once per epoch), wherever the epoch boundary falls
    milestone_unit: str = "iters"
    gamma: float = 0.1
    warmup_iters: int = 0
    freeze_encoder_bn: bool = True  # encoder BN in eval mode while training
    # which BatchNorms freeze_encoder_bn holds in eval mode: backbone (the pretrained encoder, the
    # low-lr group) | index-encoder (IndexNet: also the index blocks and ASPP, as mmagic's
    # IndexNetEncoder(freeze_bn=True).train() does)
    freeze_bn_scope: str = "backbone"
    sync_bn: bool = False  # SyncBatchNorm across the processes of a multi-GPU run
    pretrained: str = "imagenet"  # imagenet: needs --pretrained FILE (or `none`) | none: from scratch
    grad_clip: float = 0.0  # 0 = off
    amp: bool = True  # mixed precision (float16 autocast + loss scaling); CUDA only
    compile: bool = False  # torch.compile the network
    # dim (IndexNet: 0.5 alpha + 0.5 composition) | dim-a2u (A2U: +1 in the denominators) | l1 | alpha | tcp
    # | mmagic (0.5 alpha + 1.5 composition, sample-wise)
    loss: str = "dim"
    log_every: int = 10
    checkpoint_every: int = 500

    def __post_init__(self):
        _check_choices(self, pretrained=("imagenet", "none"), milestone_unit=("iters", "epochs"),
                       schedule=("multistep", "cosine"), loss=LOSS_NAMES,
                       freeze_bn_scope=("backbone", "index-encoder"))
        _check_at_least(self, 1, "iters", "batch_size", "log_every", "checkpoint_every")
        _check_at_least(self, 0, "lr", "encoder_lr", "betas", "weight_decay", "milestones", "gamma",
                        "warmup_iters", "grad_clip")
        if any(beta >= 1 for beta in self.betas):  # Adam's traceback at the first step
            raise ValueError(f"betas must be two values under 1, got {self.betas!r}")


@dataclass(frozen=True)
class InferConfig:
    """How the shared inference pipeline prepares input for this model and restores its output."""

    # resize: up to the stride, OpenCV bicubic image / nearest trimap (IndexNet demo) | pad: reflect,
    # bottom/right, cropped back | resize-down: down to the stride with torch bicubic / nearest,
    # back with torch bicubic (mmagic's `interp` test_cfg)
    align: str = "resize"
    stride: int = 32
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    trimap: str = "scalar"  # scalar: trimap/255 as one channel | onehot: bg/unknown/fg channels
    # unit: x/255 in float32, then (x - mean) / std in float64, trimap x (1/255) (IndexNet's) |
    # unit-float32: x / 255, (x - mean) / std and trimap / 255, all in float32 (A2U's ToTensor) |
    # pixel: (x - 255 mean) / (255 std) and trimap / 255 in float32 (mmagic's MattorPreprocessor)
    normalise: str = "unit"
    known: str = "copy"  # copy: every trimap value but 128 copied | force: only 0 -> 0 and 255 -> 255
    rounding: str = "truncate"  # truncate (the authors') | half-even (mmagic: torch.round)
    # Peak activation memory of one forward pass per input pixel (float32), measured with
    # benchmarks/measure_memory.py; `matte infer --max-memory` decides whole image vs tiles from it.
    # The default is deliberately high so an unmeasured family errs towards tiling.
    bytes_per_pixel: int = 4096
    # The same on CUDA (torch.cuda.max_memory_allocated, benchmarks/device_check.sh), in float32 and
    # under --half; 0: not measured yet, the CPU figure stands in (tiling.model_bytes_per_pixel).
    cuda_bytes_per_pixel: int = 0
    cuda_half_bytes_per_pixel: int = 0
    # Under --compile on CUDA (static graphs, float16), where it is above the eager figure (A2U: the
    # compiled graph holds more of its taps at once); float32 counts twice it. 0: as eager.
    cuda_compiled_half_bytes_per_pixel: int = 0
    # Eager --half passes on CUDA in channels_last (NHWC) memory layout: only where it measured faster
    # (benchmarks/device_check.sh's fp16-channels-last rows; TCP 0.76x the time, IndexNet and A2U slower)
    cuda_half_channels_last: bool = False
    # The exported graph's in ONNX Runtime on a CPU (peak RSS, benchmarks/measure_memory.py --onnx),
    # which runs it untiled and in its own order: above the PyTorch figure for some recipes (TCP's
    # textural path, A2U's point-wise taps). 0: the CPU figure stands in (measured to cover ONNX
    # Runtime's need for the released families' other recipes: the recipes' comments say so).
    onnx_bytes_per_pixel: int = 0

    @property
    def input_channels(self) -> int:
        """Channels of the network input: RGB and the trimap's encoding (1 scalar, 3 one-hot)."""
        return 3 + (3 if self.trimap == "onehot" else 1)

    def aligned(self, size):
        """The network input size (`Size`) for a photo of `size`, as the pipeline aligns it: up to the
        stride, or down for `resize-down` (a ValueError for a side under the stride, which such a
        recipe cannot run)."""
        return size.aligned(self.stride, down=self.align == "resize-down")

    def __post_init__(self):
        _check_choices(self, align=("resize", "pad", "resize-down"), normalise=("unit", "unit-float32", "pixel"),
                       trimap=("scalar", "onehot"), known=("copy", "force"), rounding=("truncate", "half-even"))
        _check_at_least(self, 1, "stride", "bytes_per_pixel")
        _check_at_least(self, 0, "cuda_bytes_per_pixel", "cuda_half_bytes_per_pixel",
                        "cuda_compiled_half_bytes_per_pixel", "onnx_bytes_per_pixel")
        if not all(s > 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std!r}")


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    family: str
    model: Any  # the family's config dataclass (e.g. IndexNetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)

    def to_dict(self) -> dict:
        """The fully resolved recipe (no `base:`), as stored in weights files."""
        return {
            "name": self.name,
            "description": self.description,
            "model": {"family": self.family, **dataclasses.asdict(self.model)},
            "data": dataclasses.asdict(self.data),
            "train": dataclasses.asdict(self.train),
            "infer": dataclasses.asdict(self.infer),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check/convert a YAML value to a dataclass field's annotated type."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(annotation)
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        if item is None and len(args) != len(value):
            raise UsageError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, item or args[i], f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(annotation):
            return None
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if annotation is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise UsageError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def build_dataclass(cls: type, values: dict, section: str, where: Callable[..., str]):
    """Build a frozen dataclass from a recipe's section, failing on unknown keys with the key named.
    `where(section, key)` names what wrote a key (its recipe file), the first words of each error."""
    if not isinstance(values, dict):
        raise UsageError(f"{where(section)}: {section}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UsageError(f"{where(section, unknown[0])}: {section}: unknown key '{unknown[0]}' "
                         f"(known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{where(section, k)}: {section}.{k}") for k, v in values.items()}
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as err:
        # the checks name the value first ("crop_size must be at least 1"): the file that wrote it
        raise UsageError(f"{where(section, str(err).partition(' ')[0])}: {section}: {err}") from None
    return obj


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if value is None and isinstance(out.get(key), dict):
            continue  # `train:` with its lines commented out is null, not "drop the base's section"
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def recipe_path(name_or_path: str | Path) -> Path:
    """`NAME` resolves to `recipes/NAME.yaml`; an existing path is used as is (`.yaml`, or a run
    folder's `recipe.json`)."""
    path = Path(name_or_path)
    if path.suffix in RECIPE_SUFFIXES and path.is_file():
        return path
    candidate = RECIPES_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = ", ".join(list_recipe_names()[:8])
    from mattecli.inference.backends import SUFFIX_TO_BACKEND

    if path.is_file() and path.suffix.lower() in SUFFIX_TO_BACKEND:
        raise UsageError(f"{path}: a model file, not a recipe; `matte recipes {path} > recipe.yaml` writes the "
                         "recipe it carries")
    if path.is_dir():  # said "unknown recipe"
        run = path / "recipe.json"
        raise UsageError(f"{path}: a folder, not a recipe" + (f"; the run's recipe is {run}" if run.is_file() else ""))
    if path.is_file() and path.name.lower().endswith((".pth", ".pt", ".pth.tar", ".ckpt")):
        raise UsageError(f"{path}: a PyTorch checkpoint, not a recipe (`matte convert` turns a released one into "
                         "a weights file that carries its recipe)")
    if path.is_file():  # said "not a file" of a file
        raise UsageError(f"{path}: not a recipe file (recipes end in .yaml, or .json as a run's recipe.json); "
                         f"a name is one of {known}, ...")
    raise UsageError(f"unknown recipe '{name_or_path}' (not a file, not in {RECIPES_DIR}; e.g. {known}, ...)")


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the last without
    a word, so `lr: 0.02` added at the end of a section silently beat, or lost to, the `lr` above it.
    Keys a `<<:` merge brings in may be overridden, as YAML means them to be."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (first at line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def _read_recipe_file(path: Path) -> dict:
    if path.suffix == ".json":
        # a run folder's recipe.json, the recipe resolved (to resume a run whose .yaml is gone, say),
        # read as JSON, not as YAML: PyYAML reads JSON's 1e-05 as a string
        try:
            data = json.loads(path.read_bytes())
        except (ValueError, RecursionError) as err:
            raise UsageError(f"{path}: not valid JSON ({' '.join(str(err).split()) or type(err).__name__})") from None
    else:
        try:  # bytes: PyYAML reads UTF-8 and UTF-16 by their marks and names any other encoding's bytes
            data = yaml.load(path.read_bytes(), Loader=_RecipeLoader)
        except yaml.YAMLError as err:  # its str() spans several lines, quoting the file
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            reason = getattr(err, "problem", None) or " ".join(str(err).split())
            raise UsageError(f"{path}: not valid YAML{where} ({reason})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a recipe is a mapping")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=1e-4` -> (["train", "lr"], 1e-4), the value parsed as YAML."""
    if "=" not in text:
        raise UsageError(f"--set {text!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw else ""
    if isinstance(value, str):  # YAML reads 1e-4 as a string
        try:
            value = float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            pass
    return key.strip().split("."), value


def recipe_from_dict(raw: dict, name: str, overrides: tuple[str, ...] = (),
                     written_by: dict[tuple[str, ...], str] | None = None) -> Recipe:
    """Validate a resolved recipe dict (as read from YAML or a weights file's metadata).

    `written_by` maps a key (`("train", "lr")`) to the file that wrote it, which an error about it
    names; any other key (one `--set` gives, one of a weights file) is named as `recipe NAME`'s."""
    from mattecli.configs import FAMILY_CONFIGS  # torch-free: reading a recipe never imports torch

    raw, written_by = dict(raw), dict(written_by or {})
    for text in overrides:
        keys, value = parse_override(text)
        written_by = {key: file for key, file in written_by.items() if key[:len(keys)] != tuple(keys)}
        node = raw
        for depth, key in enumerate(keys[:-1]):
            if not isinstance(node.get(key) or {}, dict):
                raise UsageError(f"--set {text}: {'.'.join(keys[:depth + 1])} is a value, not a section")
            node[key] = dict(node.get(key) or {})
            node = node[key]
        node[keys[-1]] = value

    def where(*keys: str) -> str:
        return written_by.get(keys, f"recipe {name}")

    allowed = {"name", "description", "model", "data", "train", "infer"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise UsageError(f"{where(unknown[0])}: unknown key '{unknown[0]}' (known: {', '.join(sorted(allowed))})")
    for key in ("name", "description"):
        if not isinstance(raw.get(key, ""), str):
            raise UsageError(f"{where(key)}: {key}: expected a string, got {raw[key]!r}")
    model = raw.get("model") or {}
    if not isinstance(model, dict):
        raise UsageError(f"{where('model')}: model: expected a mapping, got {model!r}")
    model = dict(model)
    family = model.pop("family", None)
    if family not in FAMILY_CONFIGS:
        raise UsageError(f"{where('model', 'family')}: model.family must be one of {', '.join(FAMILY_CONFIGS)}, "
                         f"got {family!r}")
    config_cls = FAMILY_CONFIGS[family]
    return Recipe(
        name=raw.get("name", name),
        description=raw.get("description", ""),
        family=family,
        model=build_dataclass(config_cls, model, "model", where),
        data=build_dataclass(DataConfig, raw.get("data") or {}, "data", where),
        train=build_dataclass(TrainConfig, raw.get("train") or {}, "train", where),
        infer=build_dataclass(InferConfig, raw.get("infer") or {}, "infer", where),
    )


FILE_FORMAT_VERSION = "1"  # of matte-weights/N, matte-onnx/N and matte-engine/N, written in every model file


def stored_recipe(value: str | dict, path: Path, file_format=None) -> Recipe:
    """The recipe a model file carries (JSON text in a weights file's or a graph's metadata, an
    object in an engine's header), validated as a recipe file is. `file_format`: the file's own
    "format" entry (`matte-weights/1`), whose version must be one this matte reads.

    Raises:
        UsageError: naming the file, when it was written by a newer matte (a format version this one
            does not know: it would be misread), when the recipe is not a JSON object (a file made or
            edited by someone else: it was json's or Python's traceback), or not a valid recipe.
    """
    if isinstance(file_format, str) and file_format.startswith("matte-"):
        version = file_format.rpartition("/")[2]
        if version != FILE_FORMAT_VERSION:
            from mattecli import __version__

            raise UsageError(f"{path}: written in {file_format}, a format this matte ({__version__}) does not read "
                             f"(it reads version {FILE_FORMAT_VERSION}); upgrade matte")
    try:
        raw = json.loads(value) if isinstance(value, str) else value
    except (ValueError, RecursionError) as err:  # RecursionError: brackets nested thousands deep
        raise UsageError(f"{path}: the recipe in its metadata is not JSON ({type(err).__name__})") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: the recipe in its metadata is not a JSON object")
    name = raw.get("name")
    try:
        return recipe_from_dict(raw, name if isinstance(name, str) else Path(path).stem)
    except UsageError as err:  # "recipe NAME: ...": the name inside the file, not the file
        raise UsageError(f"{path}: the recipe in its metadata is not valid: {err}") from None


def load_recipe(name_or_path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> Recipe:
    """Load `recipes/NAME.yaml` (or a path), resolve its one `base:` level and apply overrides."""
    path = recipe_path(name_or_path)
    raw = _read_recipe_file(path)
    base = raw.pop("base", None)
    if base is not None and not isinstance(base, str):
        raise UsageError(f"{path}: base: expected a recipe name or path, got {base!r}")
    written_by = _keys_written(raw, _file_label(path, name_or_path))
    if base is not None:
        beside = path.parent / base  # a file named by a relative path sits beside the recipe, wherever matte runs
        named = beside if beside.suffix in RECIPE_SUFFIXES and beside.is_file() else base
        base_path = recipe_path(named)
        base_raw = _read_recipe_file(base_path)
        if "base" in base_raw:
            # the demo recipes, the ones to start from, each have a base: say how to build on one
            raise UsageError(f"{path}: base recipe '{base}' has a base itself; only one level is allowed "
                             f"(`matte recipes {base} > base.yaml` writes it resolved, a base that has none)")
        for key in ("name", "description"):  # the recipe's own, never its base's (a printed base names itself)
            base_raw.pop(key, None)
        # a key of the base was named as the recipe's, which does not hold it
        written_by = {**_keys_written(base_raw, _file_label(base_path, named)), **written_by}
        raw = _deep_merge(base_raw, raw)
    raw.setdefault("name", path.stem)
    return recipe_from_dict(raw, path.stem, tuple(overrides), written_by)


def _file_label(path: Path, name_or_path: str | Path) -> str:
    """How errors name a recipe file: its path, or `recipe NAME` for a shipped recipe named by name."""
    return str(path) if path == Path(name_or_path) else f"recipe {path.stem}"


def _keys_written(raw: dict, label: str) -> dict[tuple[str, ...], str]:
    """`label` for each key a recipe file writes: its own, and those of its sections."""
    keys = {(key,): label for key in raw}
    keys.update({(key, sub): label for key, section in raw.items() if isinstance(section, dict) for sub in section})
    return keys


def list_recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def carried_recipe(path: Path):
    """-> (the recipe a model file carries, its other metadata worth showing): a `.safetensors`
    weights file (e.g. `selected_by` of a run's best model), an exported `.onnx` graph (its
    precision) or a TensorRT `.engine` (read without TensorRT). Nothing but the metadata is read.

    Raises:
        UsageError: naming the file, when it is missing, unreadable or carries no recipe.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    if suffix == ".safetensors":
        from mattecli.weights import read_weights_header

        recipe, meta = read_weights_header(path)
        return recipe, {k: v for k, v in meta.items() if k not in ("recipe", "format")}
    if suffix == ".onnx":
        from mattecli.inference.backends import onnx_metadata

        meta = onnx_metadata(path)
        extra = {k: meta[k] for k in ("precision",) if k in meta}
    else:
        from mattecli.inference.engine import read_engine_file

        meta, _ = read_engine_file(path, header_only=True)
        extra = {k: meta[k] for k in ("tensorrt", "half", "profile") if k in meta}
    if "recipe" not in meta:
        raise UsageError(f"{path}: carries no recipe (not exported by matte)")
    return stored_recipe(meta["recipe"], path, meta.get("format")), extra
