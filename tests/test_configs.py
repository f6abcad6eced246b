"""mattecli.configs: the family options are light, so reading a recipe never imports torch."""

import subprocess
import sys
from pathlib import Path

import pytest

from mattecli.configs import FAMILY_CONFIGS, A2UConfig
from mattecli.models import FAMILIES

ROOT = Path(__file__).resolve().parent.parent


def test_loading_recipes_leaves_torch_unimported():
    """What running an exported model in ONNX Runtime needs (a recipe from YAML or metadata)
    must not pay for importing torch: the config dataclasses import nothing heavy."""
    code = ("import sys; from mattecli.recipes import load_recipe, recipe_from_dict; "
            "rs = [load_recipe(n) for n in ('demo-indexnet', 'demo-a2u', 'demo-tcp')]; "
            "[recipe_from_dict(r.to_dict(), r.name) for r in rs]; "
            "assert 'torch' not in sys.modules, 'reading a recipe imported torch'")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_the_family_tables_agree():
    assert {name: pair[0] for name, pair in FAMILIES.items()} == FAMILY_CONFIGS


def test_configs_validate_on_construction():
    with pytest.raises(ValueError, match="k_up must be odd"):
        A2UConfig(k_up=4)
