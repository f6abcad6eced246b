"""`manifest.csv`: the one description of a prepared split that `train` and `eval --data` read.

One row per sample; paths are relative to the manifest's folder (empty where a split has no such
file, e.g. no `trimap` for training samples, no `image` for training samples that are composed on
the fly). Columns:

    name     sample name, unique in the split (the output stem, e.g. `{fg stem}_{k}`)
    image    the composite (test: always; train: with --composite)
    alpha    ground-truth alpha (single channel, 8-bit)
    trimap   benchmark trimap (0/128/255), test split
    fg       foreground colours
    bg       background exactly as cropped for this composite
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, fields
from pathlib import Path

from mattecli.errors import UsageError
from mattecli.files import atomic_write

COLUMNS = ("name", "image", "alpha", "trimap", "fg", "bg")


@dataclass(frozen=True)
class Sample:
    """One manifest row with absolute paths (None where the column is empty)."""

    name: str
    image: Path | None = None
    alpha: Path | None = None
    trimap: Path | None = None
    fg: Path | None = None
    bg: Path | None = None


def manifest_file(path: str | Path) -> Path:
    """A split folder or the manifest itself -> the manifest path. A path that does not exist yet
    is a folder unless it ends in `.csv` (a split whose every input failed, or `--test 0`, has no
    folder yet: its manifest must not be written as a file named after the split)."""
    path = Path(path)
    folder = path.is_dir() or (not path.exists() and path.suffix.lower() != ".csv")
    return path / "manifest.csv" if folder else path


def read_manifest(path: str | Path) -> list[Sample]:
    """Read a split's manifest (give the split folder or the CSV)."""
    path = manifest_file(path)
    if not path.is_file():
        raise UsageError(f"{path}: no manifest.csv here (prepare the data with `matte prepare-data`)")
    root = path.parent
    samples = []
    try:  # -sig: a manifest saved by a spreadsheet starts with a BOM
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:  # saved in a code page, or not a manifest: it was the decoder's traceback
        raise UsageError(f"{path}: manifest is not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
                         f"{err.start})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        missing = [c for c in ("name", "alpha") if c not in (reader.fieldnames or ())]
        if missing:
            raise UsageError(f"{path}: manifest lacks the column(s) {', '.join(missing)}")
        for row in reader:
            values = {c: (root / row[c] if row.get(c) else None) for c in COLUMNS if c != "name"}
            samples.append(Sample(name=row["name"], **values))
    except csv.Error as err:  # a field over the csv module's 128 KiB limit: it was csv's traceback
        raise UsageError(f"{path}: not readable as CSV ({err})") from None
    return samples


def write_manifest(path: str | Path, samples: list[Sample]) -> Path:
    """Write atomically (`files.atomic_write`); paths are stored relative to the manifest's folder."""
    path = manifest_file(path)
    root = path.parent

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as f:  # as read_manifest reads it, on any locale
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            for s in samples:
                row = [s.name]
                for field in fields(Sample)[1:]:
                    value = getattr(s, field.name)
                    row.append("" if value is None else os.path.relpath(value, root).replace(os.sep, "/"))
                writer.writerow(row)

    return atomic_write(path, write)


def missing_files(samples: list[Sample], columns) -> list[Path]:
    """The files in `columns` of `samples` that are not there: training checks them before it
    starts, not at the step (or the validation, hours in) that reads one."""
    return [p for s in samples for c in columns if (p := getattr(s, c)) is not None and not p.is_file()]
