"""`matte convert`: import the authors' released checkpoints into a weights file."""

from __future__ import annotations

from pathlib import Path

import typer

# `--from` names and what each reads (mattecli.weights.IMPORTERS has the same keys; kept here so
# `--help` needs no torch import)
SOURCES = {
    "indexnet-official": "the IndexNet authors' indexnet_matting.pth.tar",
    "a2u-official": "an A2U authors' release (channel-shared or channel-wise)",
    "mmagic": "an OpenMMLab mmagic / MMEditing IndexNet .pth (recipe indexnet-mmagic by default)",
}


def main(
    src: Path = typer.Argument(..., help="The released checkpoint, e.g. indexnet_matting.pth.tar."),
    source: str = typer.Option(..., "--from", help="Checkpoint kind: " + "; ".join(
        f"{name} = {what}" for name, what in SOURCES.items()) + "."),
    out: Path = typer.Option(..., "--out", help="Output weights file (.safetensors)."),
    recipe: str = typer.Option(None, "--recipe", help="Recipe the checkpoint belongs to (default: detected from its tensors; "
                                "indexnet-mmagic for --from mmagic; its DIM-augmentation release holds the same tensors: "
                                "give it --recipe indexnet-mmagic-dimaug)."),
) -> None:
    """Import a released checkpoint: every source tensor consumed and every model tensor filled,
    or an error naming the keys. The recipe is stored in the weights file."""
    from mattecli.errors import UsageError
    from mattecli.files import Inputs
    from mattecli.imageio import check_out_file
    from mattecli.models.layers import count_parameters
    from mattecli.weights import IMPORTERS, save_weights

    if source not in IMPORTERS:
        raise UsageError(f"--from {source}: unknown source (known: {', '.join(IMPORTERS)})")
    if out.suffix.lower() != ".safetensors":  # as every command reads suffixes
        raise UsageError(f"--out {out}: weights files end in .safetensors")
    check_out_file(out, "--out")  # before the checkpoint is read and converted
    # a release republished as .safetensors, say; Inputs, not samefile, which took every file for
    # every other where the file system gives no inode numbers
    if out.exists() and out in Inputs([src]):
        raise UsageError(f"--out {out} is SRC: converting would replace the release with the converted file; "
                         "give another --out")
    model, rec = IMPORTERS[source](src, recipe)
    save_weights(model, rec, out)
    typer.echo(f"converted {src} ({source}) -> {out}: recipe {rec.name}, "
               f"{count_parameters(model):,} trainable parameters")
