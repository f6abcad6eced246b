"""matte installed from a wheel (`pip install .`, `pip install git+...`), not only from a checkout:
the wheel must hold every package and the files the code reads (recipes, the example photo)."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_listed_packages_are_the_source_tree():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; matte runs on 3.10, where this file failed to load
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"]) - set(config["package-dir"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for top in ("mattecli", "exporters")
             for p in (ROOT / top).rglob("__init__.py")}
    assert listed == found


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from a copy of the sources (no build/ left in the checkout), unpacked as
    site-packages would hold it."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("mattecli", "exporters", "recipes", "examples"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    pytest.importorskip("setuptools", reason="building a wheel needs setuptools in this environment")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "--no-index", str(src), "-w", str(tmp / "dist")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    wheel, = (tmp / "dist").glob("matte-*.whl")
    site = tmp / "site"
    zipfile.ZipFile(wheel).extractall(site)
    return site


def run_installed(site: Path, code: str) -> str:
    """`code` in a fresh interpreter that imports matte from `site` (run from elsewhere, so the
    checkout is not on its path)."""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=site.parent,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_wheel_finds_its_recipes_and_example(installed):
    out = run_installed(installed, (
        "import json, mattecli\n"
        "from mattecli.recipes import RECIPES_DIR, list_recipe_names, load_recipe\n"
        "from mattecli.bench_e2e import EXAMPLES\n"
        "print(json.dumps([mattecli.__file__, str(RECIPES_DIR), list_recipe_names(), str(EXAMPLES),\n"
        "                  sorted(p.name for p in EXAMPLES.iterdir()),\n"
        "                  load_recipe('indexnet-mmagic-dimaug').family]))\n"))
    module, recipes_dir, names, examples, example_files, family = json.loads(out)
    assert Path(module).is_relative_to(installed)
    assert Path(recipes_dir) == installed / "mattecli" / "_recipes"
    assert names == sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))
    assert Path(examples) == installed / "mattecli" / "_examples"
    assert example_files == sorted(p.name for p in (ROOT / "examples").iterdir())
    assert family == "indexnet"  # a recipe with a `base:`, resolved inside the package


def test_wheel_command_line_lists_the_recipes(installed):
    out = run_installed(installed, "import sys; sys.argv = ['matte', 'recipes', '--json']\n"
                                   "from mattecli.cli import main; main()\n")
    assert sorted(r["name"] for r in json.loads(out)) == sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))



def test_a_script_block_is_the_last_statement_of_its_module():
    """`python -m mattecli.demo` (make demo) failed with a NameError: a helper defined below the
    `if __name__ == "__main__":` block did not exist yet when that block ran main(). Importing the
    module, as the tests do, defines everything first and could not see it."""
    import ast

    def is_script_block(node):
        return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")

    late = []
    for path in sorted([*(ROOT / "mattecli").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py"),
                        *(ROOT / "exporters").rglob("*.py")]):
        body = ast.parse(path.read_text()).body
        blocks = [i for i, node in enumerate(body) if is_script_block(node)]
        if blocks and blocks[-1] != len(body) - 1:
            late.append(str(path.relative_to(ROOT)))
    assert not late, late
