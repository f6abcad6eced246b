"""`matte recipes`: every recipe with its family, trainable parameter count and description, or
one recipe printed whole."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from mattecli.errors import printable


def recipe_table() -> list[dict]:
    """One dict per recipe in `recipes/`: name, family, params (trainable), description."""
    from mattecli.models import build_model
    from mattecli.models.layers import count_parameters
    from mattecli.recipes import list_recipe_names, load_recipe

    rows = []
    for name in list_recipe_names():
        recipe = load_recipe(name)
        rows.append({"name": name, "family": recipe.family,
                     "params": count_parameters(build_model(recipe)), "description": recipe.description})
    return rows


def recipe_text(name: str, as_json: bool = False) -> tuple[str, str]:
    """One recipe, resolved (`base:` merged, defaults filled in) -> (a header line naming where it
    came from, the recipe as YAML that loads back to the same recipe or as JSON). `name` may also
    be a model file (weights, ONNX graph, engine): the recipe it carries, with its other metadata
    (a best model's selection, a graph's precision) in the header."""
    import yaml

    from mattecli.inference.backends import SUFFIX_TO_BACKEND  # model files carry their recipe
    from mattecli.recipes import carried_recipe, load_recipe, recipe_path

    if Path(name).suffix.lower() in SUFFIX_TO_BACKEND:
        recipe, notes = carried_recipe(Path(name))
        source = f"carried by {name}" + "".join(f"; {k}: {v}" for k, v in notes.items())
    else:
        recipe, source = load_recipe(name), f"resolved from {recipe_path(name)}"
    resolved = json.loads(json.dumps(recipe.to_dict()))  # tuples as lists, which YAML writes plainly
    # a model file's recipe name and metadata are anyone's text: a newline in them ended the comment
    header = printable(f"# {recipe.name}, {source}") + "\n"
    if as_json:
        return header, json.dumps(resolved, indent=2, ensure_ascii=False) + "\n"
    return header, yaml.safe_dump(resolved, sort_keys=False, width=100, allow_unicode=True)


def main(name: str = typer.Argument(None, metavar="[NAME]",
                                    help="One recipe (a name or a .yaml path): print it whole, its base: merged "
                                         "and every default filled in, as YAML that trains as it is "
                                         "(--recipe FILE). Or a model file (.safetensors, .onnx, .engine): "
                                         "the recipe it carries."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table (or of YAML).")) -> None:
    """List the recipes: name, family, trainable parameters, one-line description; or print one."""
    if name is not None:
        header, text = recipe_text(name, as_json)
        # JSON has no comments: the header goes to stderr, so that stdout stays a recipe that loads back
        print(header, end="", file=sys.stderr if as_json else sys.stdout)
        print(text, end="")
        return
    rows = recipe_table()
    if as_json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="matte recipes")
    for col, justify in (("name", "left"), ("family", "left"), ("params", "right"), ("description", "left")):
        table.add_column(col, justify=justify, no_wrap=col != "description")
    for r in rows:
        table.add_row(r["name"], r["family"], f"{r['params']:,}", r["description"])
    Console().print(table)
