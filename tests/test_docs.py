"""The docs stand on their own: every relative link resolves inside the repository, and every
`matte ...` command line they show uses only commands and options that exist (read from the Typer
app itself; no model runs), as does every `benchmarks/...` command that reproduces a figure."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer.main

from mattecli.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?$(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`(matte [^`]+)`")


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {_anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*)$", text, re.M)}


def _links(path: Path):
    text = FENCE.sub("", path.read_text())
    for m in LINK.finditer(text):
        yield m.group(1) or m.group(2)


def test_there_are_docs():
    assert (ROOT / "docs").is_dir() and len(DOCS) > 3


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(doc):
    for target in _links(doc):
        if re.match(r"[a-z]+:", target):  # http(s), mailto
            continue
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        assert dest.exists(), f"{doc.name}: link to {target} does not resolve"
        assert ROOT in dest.parents or dest == ROOT, f"{doc.name}: link to {target} leaves the repository"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{doc.name}: no heading for #{anchor} in {dest.name}"
    assert "../shared" not in doc.read_text(), f"{doc.name} sends readers outside the repository"


def _command_lines(doc: Path):
    """Every `matte ...` command in fenced blocks (joined over trailing backslashes) and inline code."""
    for block in FENCE.findall(doc.read_text()):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip().lstrip("$ ").strip()
            if line.startswith("matte ") or line == "matte":
                yield line
    for m in INLINE.finditer(FENCE.sub("", doc.read_text())):
        yield m.group(1)


def _click_tree():
    return typer.main.get_command(app)


def _check_line(line: str, root) -> list[str]:
    """Problems with one documented command line: unknown command, unknown option."""
    # placeholders and alternatives as docs write them: [--a X], a|b, {stem}, ...
    text = re.sub(r"[\[\]]", " ", line)
    try:
        words = shlex.split(text, posix=True)
    except ValueError:
        words = text.split()
    words = words[1:]  # "matte"
    cmd = root
    path = ["matte"]
    while hasattr(cmd, "commands") and words and not words[0].startswith("-"):
        names = words[0].split("|")  # alternatives as docs write them: adobe|d646|synthetic
        missing = [n for n in names if n not in cmd.commands]
        if missing:
            return [f"{line!r}: {' '.join(path)} has no command {missing[0]!r}"]
        cmd = cmd.commands[names[0]]
        path.append(names[0])
        words = words[1:]
    known = {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
    if hasattr(cmd, "commands"):
        known |= {"--help"}
    problems = []
    for w in words:
        for part in w.split("|"):
            opt = part.split("=")[0]
            if opt.startswith("--") and opt not in known | {"--help", "--version"}:
                problems.append(f"{line!r}: {' '.join(path)} has no option {opt}")
    return problems


def test_every_documented_command_line_exists():
    root = _click_tree()
    problems = [p for doc in DOCS for line in _command_lines(doc) for p in _check_line(line, root)]
    assert not problems, "\n".join(problems)


def test_the_checker_catches_what_it_should():
    root = _click_tree()
    assert _check_line("matte infer --weights w --images d --out o", root) == []
    assert _check_line("matte infer --weights w --no-such-option", root)
    assert _check_line("matte no-such-command --x", root)
    assert _check_line("matte prepare-data synthetic --out o --train 4", root) == []
    assert _check_line("matte prepare-data synthetic --not-an-option 1", root)


TENSORRT = re.compile(r"\btrt\b|\.engine\b|\.plan\b")


def _unlabelled_tensorrt_lines(text: str) -> list[str]:
    """Fenced command lines that use TensorRT (`--format trt`, `--backends ...trt`, an engine file)
    without saying on the line that no machine of this project has run it."""
    found = []
    for block in FENCE.findall(text):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            command = line.split(" #")[0]
            if command.strip().startswith("matte ") and TENSORRT.search(command) and "unverified" not in line:
                found.append(line.strip())
    return found


def test_every_tensorrt_command_in_the_docs_says_it_is_unverified():
    """A reader who copies an example from export.md or bench.md alone learns there that the
    TensorRT path has never run on real hardware (those two pages showed it without a word)."""
    problems = [f"{doc.name}: {line}" for doc in DOCS for line in _unlabelled_tensorrt_lines(doc.read_text())]
    assert not problems, "\n".join(problems)
    fence = "```\n"
    assert _unlabelled_tensorrt_lines(fence + "matte export --weights w --format trt --out w.engine\n" + fence)
    assert _unlabelled_tensorrt_lines(fence + "matte infer --weights w.engine \\\n  --out o   # fast\n" + fence)
    assert not _unlabelled_tensorrt_lines(fence + "matte bench --weights w --backends trt   # unverified\n" + fence)
    assert not _unlabelled_tensorrt_lines(fence + "matte export --weights w --out w.onnx   # not trt\n" + fence)
    # and --help, where a newcomer reads first
    root = _click_tree()
    export_format = next(p for p in root.commands["export"].params if p.name == "format")
    assert "unverified" in root.help and "unverified" in export_format.help


def _page_options(text: str) -> tuple[set[str], set[str]]:
    """(options in the first column of the page's tables, options named anywhere on the page)."""
    tabled = set()
    for line in text.splitlines():
        if line.startswith("| `"):
            tabled |= set(re.findall(r"--[a-z][a-z0-9-]*", line.split("|")[1]))
    return tabled, set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))


def _help_options(cmd) -> set[str]:
    """Every option --help lists for a command (for a group: for any of its subcommands)."""
    cmds = cmd.commands.values() if hasattr(cmd, "commands") else [cmd]
    return {o for c in cmds for p in c.params if p.param_type_name == "option" and not getattr(p, "hidden", False)
            for o in (*p.opts, *p.secondary_opts) if o.startswith("--")} - {"--help"}


@pytest.mark.parametrize("name", sorted(_click_tree().commands))
def test_every_option_in_help_is_on_its_page_and_the_page_documents_no_other(name):
    cmd = _click_tree().commands[name]
    page = ROOT / "docs" / "commands" / f"{name}.md"
    assert page.exists(), f"matte {name} has no page in docs/commands"
    tabled, named = _page_options(page.read_text())
    documented = named if hasattr(cmd, "commands") else tabled  # a group's page may name some in prose
    assert not _help_options(cmd) - documented, f"{page.name} lacks {sorted(_help_options(cmd) - documented)}"
    extra = sorted(tabled - _help_options(cmd))
    assert not extra, f"{page.name} documents {extra}, not in --help"
    arguments = {p.name.upper() for p in cmd.params if p.param_type_name == "argument"}
    assert all(f"| `{a}`" in page.read_text() for a in arguments), f"{page.name} lacks an argument row"


def test_the_option_table_check_catches_what_it_should():
    tabled, named = _page_options("| `--a` / `--b` | x `--c` |\n| `--d K/N` | y |\nsee `--e`.")
    assert tabled == {"--a", "--b", "--d"} and named == {"--a", "--b", "--c", "--d", "--e"}


def test_the_recipe_tables_are_what_matte_recipes_prints():
    """README's and docs/recipes.md's tables: every recipe, with its family, parameter count and
    description as `matte recipes` prints them (a recipe added or changed shows up here)."""
    from mattecli.cli.recipes import recipe_table

    printed = {r["name"]: (r["family"], f"{r['params']:,}", r["description"]) for r in recipe_table()}
    for doc in (ROOT / "README.md", ROOT / "docs" / "recipes.md"):
        rows = re.findall(r"^\| `([^`]+)` \| (\w+) \| ([\d,]+) \| (.*) \|$", doc.read_text(), re.M)
        assert {name: tuple(rest) for name, *rest in rows} == printed, f"{doc.name}'s recipe table"


def test_the_index_links_every_page():
    """docs/README.md is the index: a page it does not link is a page a newcomer never finds."""
    index = ROOT / "docs" / "README.md"
    linked = {(index.parent / t.partition("#")[0]).resolve() for t in _links(index) if not re.match(r"[a-z]+:", t)}
    pages = set(DOCS) - {ROOT / "README.md", index}
    unlinked = sorted(str(p.relative_to(ROOT)) for p in pages - linked)
    assert not unlinked, f"docs/README.md links none of {unlinked}"


@pytest.mark.parametrize("name", sorted(_click_tree().commands))
def test_every_default_in_code_is_the_one_its_row_states(name):
    """An option whose default is a value in the code (not None: resolved at run time, which the
    row describes in words) has that value on its row, so a changed default shows up here."""
    cmd = _click_tree().commands[name]
    subs = cmd.commands.values() if hasattr(cmd, "commands") else [cmd]
    params = {o: p for c in subs for p in c.params for o in (*p.opts, *p.secondary_opts)}
    wrong, seen = [], set()
    for line in (ROOT / "docs" / "commands" / f"{name}.md").read_text().splitlines():
        if line.startswith("| `--"):
            first, meaning = line.split("|")[1:3]
            for opt in set(re.findall(r"--[a-z][a-z0-9-]*", first)) - seen:  # its row in the options table
                seen.add(opt)
                default = params[opt].default
                if default is not None and not isinstance(default, (bool, list, tuple)) and str(default) not in meaning:
                    wrong.append(f"{opt}: default {default!r} in the code, not on its row")
    assert not wrong, "\n".join(wrong)


def _python_blocks(doc: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", doc.read_text(), re.S | re.M)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_examples_compile(doc):
    for block in _python_blocks(doc):
        if ") -> " not in block:  # a signature (`load(weights, ...) -> Matter`) is not code
            compile(block, str(doc), "exec")


@pytest.mark.parametrize("doc", ["README.md", "docs/python-api.md"])
def test_the_python_examples_run_as_written(doc, tmp_path, monkeypatch):
    """With the files they name present (a seeded tiny model under the name they use, the lemur cut
    small as the photo, its trimap, a mask from it), the Python examples of the README and of the
    API page run as they are (a signature block is not an example)."""
    import warnings

    import numpy as np
    import torch
    from PIL import Image

    from mattecli.models import build_model
    from mattecli.recipes import load_recipe
    from mattecli.weights import save_weights

    torch.manual_seed(0)
    recipe = load_recipe("demo-a2u")
    save_weights(build_model(recipe), recipe, tmp_path / "indexnet.safetensors")
    box = (230, 100, 330, 164)
    Image.open(ROOT / "examples" / "lemur.png").convert("RGB").crop(box).save(tmp_path / "photo.jpg")
    trimap = Image.open(ROOT / "examples" / "lemur_trimap.png").crop(box)
    trimap.save(tmp_path / "photo_trimap.png")
    Image.fromarray(np.where(np.asarray(trimap.convert("L")) >= 102, 255, 0).astype(np.uint8)).save(
        tmp_path / "photo_mask.png")
    blocks = [b for b in _python_blocks(ROOT / doc) if ") -> " not in b]
    assert blocks
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        scope: dict = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the hand-drawn trimap is mapped with a note
            exec(compile(block, doc, "exec"), scope)
        assert scope["alpha"].shape == (64, 100) and set(np.unique(scope["trimap"])) <= {0, 128, 255}
        assert scope.get("fg", np.zeros((64, 100, 3))).shape == (64, 100, 3)


def _benchmark_problems(text: str) -> list[str]:
    """Problems with the `benchmarks/NAME.py --option ...` commands in a doc's text: a script that
    is not there, or an option its parser does not define (`device_check.sh` passes its options
    on to `device_check.py`)."""
    problems = []
    joined = re.sub(r"\\\n\s*", " ", text)  # lines continued by a backslash
    for name, suffix, rest in re.findall(r"benchmarks/([a-z][a-z0-9_]*)\.(py|sh)([^`#\n]*)", joined):  # not NAME
        script = ROOT / "benchmarks" / f"{name}.{suffix}"
        if not script.exists():
            problems.append(f"benchmarks/{name}.{suffix} does not exist")
            continue
        source = (ROOT / "benchmarks" / f"{name}.py").read_text()
        options = re.findall(r"(?<!\S)--[a-z][\w-]*", rest)
        problems += [f"benchmarks/{name}.{suffix} has no option {opt}" for opt in options if f'"{opt}"' not in source]
    return problems


def test_every_benchmark_command_in_the_docs_exists():
    """A figure's reproduce command names a script that is there, with options it takes."""
    problems = [f"{doc.name}: {p}" for doc in DOCS for p in _benchmark_problems(doc.read_text())]
    assert not problems, "\n".join(problems)


def test_the_benchmark_check_catches_what_it_should():
    assert _benchmark_problems("`PYTHONPATH=. python benchmarks/png_level.py --size 3840x2160`") == []
    assert _benchmark_problems("bash benchmarks/device_check.sh \\\n    --only model --sizes 3840x2160  # x") == []
    assert _benchmark_problems("benchmarks/png_level.py --no-such 1") == [
        "benchmarks/png_level.py has no option --no-such"]
    assert _benchmark_problems("benchmarks/gone.py, benchmarks/NAME.py") == ["benchmarks/gone.py does not exist"]


def test_every_make_target_the_docs_name_is_in_the_makefile():
    """`make demo`, `make test`, ...: what the README tells a newcomer to run is a Makefile target."""
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    named = set()
    for doc in DOCS:
        text = doc.read_text()
        named |= {(doc.name, t) for block in FENCE.findall(text) for t in re.findall(r"^\s*make ([\w-]+)", block, re.M)}
        named |= {(doc.name, t) for t in re.findall(r"`make ([\w-]+)`", FENCE.sub("", text))}
    assert {t for _, t in named} >= {"demo", "test"}
    assert not [n for n in named if n[1] not in targets], sorted(n for n in named if n[1] not in targets)


def _deployment_block() -> str:
    """The Python block of docs/deployment.md that runs a graph with onnxruntime, numpy and Pillow."""
    blocks = [b for b in _python_blocks(ROOT / "docs" / "deployment.md") if "onnxruntime" in b]
    assert len(blocks) == 1
    return blocks[0]


# (recipe, overrides, static, exact): `pad` is matte's arithmetic bit for bit; the numpy bicubic of
# `resize` and `resize-down` differs from OpenCV's and torch's in the float rounding (a level at most)
@pytest.mark.parametrize("name, overrides, static, exact", [
    ("demo-indexnet", (), False, False),
    ("demo-indexnet", (), True, False),
    ("demo-tcp", (), True, True),  # one-hot trimap
    ("demo-a2u", ("infer.normalise=pixel", "infer.known=force", "infer.rounding=half-even"), False, True),  # mmagic's
    ("demo-a2u", ("infer.align=resize-down",), False, False),
])
def test_the_deployment_recipe_without_matte_gives_matte_infers_matte(name, overrides, static, exact, tmp_path):
    """The documented numpy + Pillow + onnxruntime code, run as written with matte, OpenCV and torch
    out of reach, on a crop of the lemur of odd size (RGBA, its trimap drawn with 102 for unknown),
    gives the matte `matte infer` gives for the same graph (dynamic, or static at the aligned size)."""
    import subprocess
    import sys
    import warnings

    import numpy as np
    import torch
    from PIL import Image

    from exporters.onnx import to_onnx
    from mattecli.imageio import read_image, read_trimap
    from mattecli.inference.pipeline import load_pipeline
    from mattecli.models import build_model
    from mattecli.recipes import load_recipe
    from mattecli.sizes import aligned_size

    box = (200, 90, 337, 173)  # 137x83: aligned up (and down) both ways
    Image.open(ROOT / "examples" / "lemur.png").crop(box).save(tmp_path / "photo.png")
    Image.open(ROOT / "examples" / "lemur_trimap.png").crop(box).save(tmp_path / "photo_trimap.png")
    torch.manual_seed(0)
    recipe = load_recipe(name, overrides)
    size = aligned_size(83, 137, recipe.infer.stride)
    graph = to_onnx(build_model(recipe), tmp_path / "model.onnx", recipe=recipe, dynamic=not static, size=size)
    (tmp_path / "run.py").write_text(_deployment_block())
    block = ("import sys; sys.modules.update(dict.fromkeys(('mattecli', 'exporters', 'cv2', 'torch'))); "
             "exec(open('run.py').read())")
    res = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the hand-drawn trimap is mapped with a note
        trimap, _ = read_trimap(tmp_path / "photo_trimap.png", apply_exif=True)
        want = load_pipeline(graph).predict_whole(read_image(tmp_path / "photo.png", apply_exif=True), trimap)
    got = np.asarray(Image.open(tmp_path / "photo_alpha.png"))
    assert got.shape == want.shape == (83, 137) and got.dtype == np.uint8
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= (0 if exact else 1), (diff.max(), int((diff > 0).sum()))


def test_the_documented_nearest_rule_is_torchs_for_resize_down():
    """deployment.md's nearest() used OpenCV's float64 index rule for resize-down too, where matte
    resizes with torch (float32): different trimap rows or columns for 161 of 1,325 sizes (232 -> 224)."""
    import numpy as np
    import torch

    source = re.search(r"^def nearest\(.*?(?=^\S)", _deployment_block(), re.M | re.S).group(0)
    for align in ("resize-down", "resize"):
        for h in (232, 248, 168, 112, 300, 1079, 33):
            w = h + 7
            space = {"np": np, "pre": {"align": align}, "h": h, "w": w}
            exec(source, space)
            x = np.arange(h * w, dtype=np.int64).reshape(h, w)
            out_h, out_w = (h - h % 32, w - w % 32) if align == "resize-down" else (-(-h // 32) * 32, -(-w // 32) * 32)
            got = space["nearest"](x, out_h, out_w)
            if align == "resize-down":
                want = torch.nn.functional.interpolate(torch.from_numpy(x)[None, None].float(), (out_h, out_w),
                                                       mode="nearest")[0, 0].long().numpy()
            else:
                import cv2

                want = cv2.resize(x.astype(np.float64), (out_w, out_h), interpolation=cv2.INTER_NEAREST)
            assert np.array_equal(got, want.astype(np.int64)), (align, h)


REPO_PATH = re.compile(r"`((?:mattecli|exporters|tests|benchmarks|recipes|examples)/[\w./-]*)(.?)")
NOT_IN_THE_TREE = {"mattecli/_recipes", "mattecli/_examples",  # recipes/ and examples/ as a wheel installs them
                   "benchmarks/out"}  # the device check's OUT, made when it runs


def _missing_paths(text: str) -> list[str]:
    """Repository paths in a doc's code spans (`mattecli/inference/tiling.py`, `tests/test_x.py`)
    that are not in the checkout, and `file.py: name` references whose file defines no such name.
    A path written as a pattern (`NAME`, `*`, `{stem}`) is not checked."""
    missing = []
    for m in REPO_PATH.finditer(text):
        path, after = m.group(1).rstrip("."), m.group(2)
        if (after and after in "*{") or "NAME" in path or path in NOT_IN_THE_TREE:
            continue
        if not (ROOT / path).exists():
            missing.append(path)
    for file, name in re.findall(r"`((?:mattecli|exporters|benchmarks)/[\w/]+\.py): (\w+)", text):
        source = (ROOT / file).read_text() if (ROOT / file).exists() else ""
        if not re.search(rf"^\s*(?:def|class)\s+{name}\b|^{name}\s*[:=]", source, re.M):
            missing.append(f"{file}: {name}")
    return missing


def test_every_repository_path_the_docs_name_exists():
    """A file renamed or removed leaves no page pointing at it (`mattecli/...`, `tests/...`,
    `benchmarks/...`, and `exporters/onnx.py: ALLOWED_OPS`-style references to a definition)."""
    problems = [f"{doc.relative_to(ROOT)}: {p}" for doc in DOCS for p in _missing_paths(doc.read_text())]
    assert not problems, "\n".join(problems)
    assert _missing_paths("`mattecli/gone.py`, `tests/test_docs.py`, `recipes/NAME.yaml`") == ["mattecli/gone.py"]
    assert _missing_paths("`benchmarks/results/x-*.json`, `exporters/onnx.py: compact`") == []
    assert _missing_paths("`exporters/onnx.py: no_such_name`") == ["exporters/onnx.py: no_such_name"]


def _unknown_recipe_keys(text: str) -> list[str]:
    """Recipe keys a doc names in code (`train.lr`, `infer.align`, `model.tcp_tile`, `--set KEY=VALUE`)
    that no recipe takes: a key renamed in the code leaves no page telling readers to set the old one."""
    import dataclasses

    from mattecli.configs import FAMILY_CONFIGS
    from mattecli.recipes import DataConfig, InferConfig, TrainConfig

    fields = {"data": DataConfig, "train": TrainConfig, "infer": InferConfig}
    known = {s: {f.name for f in dataclasses.fields(c)} for s, c in fields.items()}
    known["model"] = {f.name for c in FAMILY_CONFIGS.values() for f in dataclasses.fields(c)} | {"family"}
    spans = re.findall(r"`([^`\n]+)`", FENCE.sub("", text)) + FENCE.findall(text)
    key = re.compile(r"(?<![\w./-])((?:model|data|train|infer)\.[a-z_0-9]+)(?![\w.(])")
    keys = {m for span in spans for m in key.findall(span)}
    files = {"py", "sh", "onnx", "safetensors", "engine", "plan", "pt", "yaml", "json", "png", "md"}  # train.py
    return sorted(k for k in keys if k.partition(".")[2] not in known[k.partition(".")[0]] | files)


def test_every_recipe_key_the_docs_name_is_one_a_recipe_takes():
    problems = [f"{doc.relative_to(ROOT)}: {k}" for doc in DOCS for k in _unknown_recipe_keys(doc.read_text())]
    assert not problems, "\n".join(problems)
    assert _unknown_recipe_keys("`train.lr`, `--set model.tcp_tile=0`, `infer.py`, `model.onnx`") == []
    assert _unknown_recipe_keys("`--set train.no_such=1` and `infer.aligned`") == ["infer.aligned", "train.no_such"]


def _enumerated_values() -> dict[str, set[str]]:
    """The options whose values are names from a list in the code, and those names."""
    from mattecli.bench_e2e import PHOTO_FORMATS
    from mattecli.cli.convert import SOURCES
    from mattecli.cli.trimap import EMPTY_CHOICES
    from mattecli.data.make_trimaps import METHODS
    from mattecli.inference.backends import BACKEND_NAMES
    from mattecli.inference.outputs import OUTPUT_KINDS

    return {"--save": set(OUTPUT_KINDS), "--from": set(SOURCES), "--format": {"onnx", "trt"},
            "--backend": set(BACKEND_NAMES), "--backends": set(BACKEND_NAMES), "--method": set(METHODS),
            "--split": {"train", "test", "all"}, "--empty": set(EMPTY_CHOICES), "--photos": set(PHOTO_FORMATS)}


def _bad_values(line: str) -> list[str]:
    """Values a documented command line gives that the command does not take: a `--save` kind, a
    `--from` source, a backend, ... or a recipe by a name no recipe has (`--recipe`, `matte recipes
    NAME`). Placeholders (`NAME`, `a|b` alternatives checked one by one) and paths are let through."""
    from mattecli.recipes import list_recipe_names

    allowed, recipes = _enumerated_values(), set(list_recipe_names())
    try:
        words = shlex.split(re.sub(r"[\[\]]", " ", line))
    except ValueError:
        return []
    bad = []
    for option, value in zip(words, words[1:]):
        option, _, inline = option.partition("=")
        value = inline or value
        if value.startswith("-") or value.isupper():
            continue
        names = {n for part in value.split("|") for n in part.split(",")}
        if option in allowed:
            bad += [f"{option} {n}" for n in sorted(names - allowed[option])]
        elif option == "--recipe" and not re.search(r"[/.]", value) and value not in recipes:
            bad.append(f"--recipe {value}")
    if words[1:2] == ["recipes"] and len(words) > 2 and re.fullmatch(r"[a-z0-9][a-z0-9.-]*", words[2]):
        if "." not in words[2] and words[2] not in recipes:
            bad.append(f"recipes {words[2]}")
    return bad


def test_every_documented_option_value_is_one_the_command_takes():
    problems = [f"{doc.relative_to(ROOT)}: {line!r}: {b}" for doc in DOCS for line in _command_lines(doc)
                for b in _bad_values(line)]
    assert not problems, "\n".join(problems)
    assert _bad_values("matte infer --weights W --save alpha,fg --backend onnx --out o") == []
    assert _bad_values("matte infer --weights W --save alpha,mask --out o") == ["--save mask"]
    assert _bad_values("matte convert x.pth --from mmagic|indexnet-offical --out y") == ["--from indexnet-offical"]
    assert _bad_values("matte train --recipe indexnet-m2o-nl --data d") == []
    assert _bad_values("matte train --recipe indexnet-nl-m2o --data d") == ["--recipe indexnet-nl-m2o"]
    assert _bad_values("matte train --recipe my.yaml --data d") == _bad_values("matte recipes NAME") == []
    assert _bad_values("matte recipes tcpp --json") == ["recipes tcpp"]


def test_the_documented_signatures_are_the_functions():
    """python-api.md's signature lines (`mattecli.load(weights, device="auto", *, ...) -> Matter`) name
    the parameters, in order and kind, with the defaults the functions have (`<default>`: one the
    page describes in words)."""
    import inspect

    import mattecli

    blocks = [b for b in _python_blocks(ROOT / "docs" / "python-api.md") if ") -> " in b]
    assert len(blocks) == 2
    for block in blocks:
        name, params = re.match(r"mattecli\.(\w+)\((.*)\) -> ", block.strip()).groups()
        scope: dict = {}
        exec(f"def documented({params.replace('<default>', 'None')}): pass", scope)
        want = inspect.signature(scope["documented"]).parameters
        have = inspect.signature(getattr(mattecli, name)).parameters
        assert [(p.name, p.kind) for p in want.values()] == [(p.name, p.kind) for p in have.values()], name
        for p in want.values():
            if "<default>" not in params.split(p.name + "=")[-1].split(",")[0]:
                assert p.default == have[p.name].default, f"{name}: {p.name}={have[p.name].default!r} in the code"


def test_the_conventions_name_every_option_given_once_for_each_value():
    """docs/README.md's conventions list the options that may be given once per value (`--save a
    --save b`); an option made repeatable, or no longer, shows up here."""
    def walk(cmd):
        yield cmd
        for sub in getattr(cmd, "commands", {}).values():
            yield from walk(sub)

    repeatable = {o for c in walk(_click_tree()) for p in c.params if getattr(p, "multiple", False) for o in p.opts}
    text = (ROOT / "docs" / "README.md").read_text().replace("\n", " ")
    listed = re.search(r"Lists \(([^)]*)\) may be given once for each value", text)
    assert listed, "docs/README.md no longer says which options take one value each time"
    assert set(re.findall(r"--[a-z][a-z-]*", listed.group(1))) == repeatable
