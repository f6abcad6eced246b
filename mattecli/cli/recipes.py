"""`matte recipes`: every recipe with its family, trainable parameter count and description."""

from __future__ import annotations

import json

import typer


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


def main(as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table.")) -> None:
    """List the recipes: name, family, trainable parameters, one-line description."""
    rows = recipe_table()
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="matte recipes")
    for col, justify in (("name", "left"), ("family", "left"), ("params", "right"), ("description", "left")):
        table.add_column(col, justify=justify, no_wrap=col != "description")
    for r in rows:
        table.add_row(r["name"], r["family"], f"{r['params']:,}", r["description"])
    Console().print(table)
