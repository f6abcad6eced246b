"""Composition-1k / Distinctions-646 preparation with Adobe's exact composition rule.

The rule (docs/commands/prepare-data.md) in two functions, `adobe_background` and `adobe_blend`; the rest
plans which background goes with which foreground, and runs the plan over a process pool so that a
bad file costs only its own samples, an interrupted run can be re-run (existing outputs are skipped)
and every file is written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mattecli.data.manifest import Sample, write_manifest
from mattecli.errors import InputError, UsageError
from mattecli.files import atomic_write, remove_stale_temps
from mattecli.imageio import (EXIF_ORIENTATIONS, IMAGE_SUFFIXES, exif_orientation, missing_reason, read_gray,
                              read_image, utf8_name, write_png)
from mattecli.parallel import map_bounded, pool, usable_cores

ADOBE_PER_FG = {"train": 100, "test": 20}
D646_PER_FG = {"train": 80, "test": 20}


# --------------------------------------------------------------------------------------------------
# The composition rule


def adobe_background(bg: np.ndarray, w: int, h: int) -> np.ndarray:
    """A background as Adobe's script prepares it for a w x h foreground.

    Upscaled with Pillow's BICUBIC to (ceil(bw * r), ceil(bh * r)) when r = max(w/bw, h/bh) > 1,
    then cropped to its top-left w x h.

    Args:
        bg: (bh, bw, 3) uint8 RGB, decoded with Pillow (EXIF orientation not applied).
        w: foreground width.
        h: foreground height.

    Returns:
        (h, w, 3) uint8 background, exactly as it lies under the composite.
    """
    from PIL import Image

    bh, bw = bg.shape[:2]
    # Same float64 divisions and the same ceil as the script: the result can be one pixel larger.
    ratio = max(w / bw, h / bh)
    if ratio > 1:
        size = (math.ceil(bw * ratio), math.ceil(bh * ratio))
        bg = np.asarray(Image.fromarray(bg).resize(size, Image.BICUBIC))
    return np.ascontiguousarray(bg[:h, :w])


def adobe_blend(fg: np.ndarray, bg: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """`int(a * fg + (1 - a) * bg)` per channel with a = alpha / 255 in float64.

    Evaluated in the script's order (two products, then the sum) and truncated, which is what makes
    it pixel-identical; the script's special cases agree with the formula: a == 1 gives fg exactly
    and a == 0 gives bg exactly.

    Args:
        fg: (h, w, 3) uint8 foreground.
        bg: (h, w, 3) uint8 background, already `adobe_background`-prepared.
        alpha: (h, w) uint8 alpha (the first channel of the alpha file).

    Returns:
        (h, w, 3) uint8 composite.
    """
    a = alpha.astype(np.float64)[..., None] / 255
    comp = a * fg + (1 - a) * bg
    return comp.astype(np.uint8)  # truncation toward zero, as int(); values lie in [0, 255]


# --------------------------------------------------------------------------------------------------
# Plans: which files make which samples


@dataclass(frozen=True)
class Composite:
    """One output sample of a foreground."""

    name: str  # `{fg stem}_{k}`
    bg: Path
    trimap: Path | None = None  # a shipped trimap to copy (test split)


@dataclass(frozen=True)
class ForegroundJob:
    """One foreground and its composites: the unit of work of a worker process."""

    stem: str
    fg: Path
    alpha: Path
    composites: tuple[Composite, ...]
    out: Path  # the split folder
    merged: bool  # write merged/{name}.png
    alpha_per_composite: bool  # alpha/{name}.png (test contract) rather than alpha/{stem}.png
    fg_also: tuple[Path, ...] = ()  # the other folders searched for a missing foreground, for its error

    def outputs(self, c: Composite) -> dict[str, Path]:
        """Manifest column -> output path for one composite."""
        paths = {
            "fg": self.out / "fg" / f"{self.stem}.png",
            "alpha": self.out / "alpha" / f"{c.name if self.alpha_per_composite else self.stem}.png",
            "bg": self.out / "bg" / f"{c.name}.png",
        }
        if self.merged:
            paths["image"] = self.out / "merged" / f"{c.name}.png"
        if c.trimap is not None:
            paths["trimap"] = self.out / "trimap" / f"{c.name}.png"
        return paths


def read_names(path: Path) -> list[str]:
    """A names file (one file name per line; CRLF or LF; blank lines ignored)."""
    if not path.is_file():
        raise UsageError(f"{path}: names file not found (is --root the unpacked dataset folder?)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:  # Adobe's lists are ASCII: this one was edited or is another file
        raise UsageError(f"{path}: names file is not UTF-8 text (byte {err.object[err.start]:#04x} at "
                         f"offset {err.start})") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    for name in names:
        # a path ('sub/x.png', '../x.png': a names file edited by someone) was a ValueError traceback
        # when planning; the outputs are named after these names
        if Path(name).name != name or name == "..":
            raise UsageError(f"{path}: {name!r} is a path; each line names a file in its folder")
    return names


def stem_of(name: str) -> str:
    """The output stem: the file name minus its extension."""
    return name.rsplit(".", 1)[0] if "." in name else name


def _unique_stems(fg_names: list[str], where: Path) -> list[str]:
    """The foreground names, refused when two share a stem (`a.jpg`, `a.png`): samples and their
    files are named by the stem, so the second wrote over or was paired with the first's files."""
    seen: dict[str, str] = {}
    for name in fg_names:
        other = seen.get(stem_of(name))
        seen[stem_of(name)] = name
        if other is not None:
            again = "is listed twice" if other == name else f"and {other} share the stem {stem_of(name)!r}"
            raise UsageError(f"{where}: foreground {name} {again}, which names its samples and files: "
                             "rename one (or list it once)")
    return fg_names


def _find(name: str, folders: list[Path]) -> Path:
    """The first folder holding `name`; else the path in the first folder (whose reader then
    reports it missing, naming the path)."""
    return next((f / name for f in folders if (f / name).is_file()), folders[0] / name)


def plan_jobs(fg_names: list[str], bg_names: list[str], per_fg: int, fg_dirs: list[Path],
              alpha_dirs: list[Path], bg_dirs: list[Path], out: Path, merged: bool,
              trimap_dir: Path | None, names_file: Path, alpha_per_composite: bool
              ) -> list[ForegroundJob]:
    """Pair foregrounds with backgrounds in list order, `per_fg` consecutive backgrounds each.

    A missing foreground or background still consumes its slot, so one bad file cannot shift the
    pairing of every later sample.
    """
    _unique_stems(fg_names, fg_dirs[0].parent if len(fg_dirs) > 1 else fg_dirs[0])
    need = per_fg * len(fg_names)
    if len(bg_names) < need:
        raise UsageError(f"{names_file}: {len(bg_names)} background names, {need} needed "
                         f"({len(fg_names)} foregrounds x {per_fg})")
    jobs = []
    for i, fg_name in enumerate(fg_names):
        stem = stem_of(fg_name)
        fg_path = _find(fg_name, fg_dirs)
        # The alpha lives in the group (e.g. `Adobe-licensed images`, `Other`) of its foreground.
        alpha_path = alpha_dirs[fg_dirs.index(fg_path.parent)] / fg_name
        composites = tuple(
            Composite(name=f"{stem}_{k}", bg=_find(bg_names[i * per_fg + k], bg_dirs),
                      trimap=None if trimap_dir is None else trimap_dir / f"{stem}_{k}.png")
            for k in range(per_fg))
        missing = () if fg_path.is_file() else tuple(fg_dirs[1:])
        jobs.append(ForegroundJob(stem, fg_path, alpha_path, composites, out, merged,
                                  alpha_per_composite, missing))
    if jobs and not any(c.bg.is_file() for job in jobs for c in job.composites):
        # a wrong folder (COCO's parent, train2017) failed every sample on a line of its own: 43,100 lines
        raise UsageError(f"{names_file}: none of the {need} backgrounds it lists (e.g. {bg_names[0]}) is in "
                         f"{' or '.join(str(d) for d in bg_dirs)} (--coco is COCO's train2014 image folder, "
                         "--voc VOC2012's JPEGImages)")
    return jobs


# --------------------------------------------------------------------------------------------------
# Running a plan


@dataclass
class JobResult:
    samples: list[Sample]
    errors: list[str]
    done: int  # composites accounted for (written, skipped or failed), for the progress bar


def _copy_file(src: Path, dst: Path) -> None:
    if not src.is_file():
        raise InputError(src, "no such file")
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def _copy_trimap(src: Path, dst: Path, fg: np.ndarray) -> None:
    """Copy a shipped trimap byte for byte, after decoding it: an unreadable trimap, or one of
    another size than its foreground, fails its sample here rather than at `matte eval` later."""
    if not src.is_file():
        raise InputError(src, "no such file")
    trimap = read_gray(src)
    if trimap.shape != fg.shape[:2]:
        raise InputError(src, f"trimap is {trimap.shape[1]}x{trimap.shape[0]} but its composite is "
                              f"{fg.shape[1]}x{fg.shape[0]}")
    _copy_file(src, dst)


def _foreground(job: ForegroundJob) -> tuple[np.ndarray, np.ndarray]:
    if job.fg_also and not job.fg.is_file():  # named at the first folder searched; it is in none
        raise InputError(job.fg, f"no such file, nor in {' or '.join(str(d) for d in job.fg_also)}")
    fg = read_image(job.fg)
    alpha = read_gray(job.alpha)
    if alpha.shape != fg.shape[:2]:
        turned = [p for p in (job.fg, job.alpha) if exif_orientation(p) >= 5] if alpha.shape == fg.shape[1::-1] else []
        # a phone photo as a foreground: viewers show it upright, beside an alpha made upright
        why = (f" ({turned[0].name}'s EXIF tag says {EXIF_ORIENTATIONS[exif_orientation(turned[0])]!r}, which is "
               "ignored here as Adobe's script ignores it: save the file upright)") if turned else ""
        raise InputError(job.alpha, f"alpha is {alpha.shape[1]}x{alpha.shape[0]} but its "
                                    f"foreground {job.fg} is {fg.shape[1]}x{fg.shape[0]}{why}")
    return fg, alpha


def run_job(job: ForegroundJob) -> JobResult:
    """Write every missing output of one foreground's composites; never raises for bad inputs."""
    samples, errors, loaded = [], [], None
    for c in job.composites:
        paths = job.outputs(c)
        sample = Sample(name=c.name, **paths)
        if all(p.is_file() for p in paths.values()):
            samples.append(sample)
            continue
        try:
            if loaded is None:
                loaded = _foreground(job)
            fg, alpha = loaded
            bg = adobe_background(read_image(c.bg), fg.shape[1], fg.shape[0])
            if c.trimap is not None:
                _copy_trimap(c.trimap, paths["trimap"], fg)
            if not paths["fg"].is_file():
                write_png(paths["fg"], fg)
            if not paths["alpha"].is_file():
                write_png(paths["alpha"], alpha)
            write_png(paths["bg"], bg)
            if "image" in paths:
                write_png(paths["image"], adobe_blend(fg, bg, alpha))
            samples.append(sample)
        except InputError as err:
            if loaded is None:
                # The foreground itself is bad: every composite of it fails for the same reason.
                errors.append(f"{err} (skipping {len(job.composites)} composites of {job.stem})")
                return JobResult(samples, errors, len(job.composites))
            errors.append(f"{err} (sample {c.name})")
    return JobResult(samples, errors, len(job.composites))


def _worker_signals() -> None:
    import signal
    import sys

    # Ctrl-C goes to the parent (a worker ignores it: `parallel`), which stops the pool by terminating
    # the workers (SIGTERM): they leave through Python, so that atomic_write removes the temp file of a
    # write under way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))


def remove_stale_split_temps(split_dir: Path) -> None:
    """Delete temp files a killed run left in the split folder (manifest.csv's, d646's names files')
    and its output folders (a split is written by one run at a time, so every temp file there is
    stale)."""
    if split_dir.is_dir():
        remove_stale_temps(split_dir)
        for folder in split_dir.iterdir():
            remove_stale_temps(folder)


def run_jobs(jobs: list[ForegroundJob], workers: int, label: str) -> tuple[list[Sample], list[str]]:
    """Run jobs over `workers` processes (1: in this process) with a progress bar; samples come
    back in plan order."""
    from mattecli.progress import track

    total = sum(len(j.composites) for j in jobs)
    results: list[JobResult | None] = [None] * len(jobs)
    processes = workers if workers > 1 else 0
    # one foreground per task: foregrounds differ a lot in size, small tasks balance the workers
    with track(total, label) as bar, pool(processes, processes=True, initializer=_worker_signals) as executor:
        for i, result in map_bounded(executor, _indexed_run, enumerate(jobs), limit=2 * processes or 1):
            results[i] = result
            bar.advance(result.done)
    samples = [s for r in results for s in r.samples]
    errors = [e for r in results for e in r.errors]
    return samples, errors


def _indexed_run(i: int, job: ForegroundJob) -> tuple[int, JobResult]:
    return i, run_job(job)


# --------------------------------------------------------------------------------------------------
# Datasets


@dataclass
class PrepareReport:
    """What a preparation wrote: manifest per split, sample counts, and the failures."""

    manifests: dict[str, Path]
    counts: dict[str, int]
    errors: list[str]
    notes: list[str]


def _require_dir(path: Path, option: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{option} {path}: {missing_reason(path)}")
    return path


def _splits(split: str) -> list[str]:
    if split not in ("train", "test", "all"):
        raise UsageError(f"--split must be train, test or all, got {split!r}")
    return ["train", "test"] if split == "all" else [split]


def _require_backgrounds(split: str, coco: Path | None, voc: Path | None) -> None:
    """The background folders of the splits asked for: `--split test` (Composition-1k's
    evaluation) needs no COCO train2014, and may leave `--coco` out (None); `--split train` no VOC.
    The other split's folder, when given, need not exist (scripts written when both options were
    required pass one that is not on disk)."""
    needed = {"train": (coco, "--coco", "COCO's train2014 image folder: the training backgrounds"),
              "test": (voc, "--voc", "VOC2012's JPEGImages folder: the test backgrounds")}
    splits = _splits(split)
    missing = [(name, *needed[name]) for name in splits if needed[name][0] is None]
    if missing:
        hint = ""
        if split == "all" and len(missing) == 1:  # the split whose folder was given can be prepared alone
            other = "test" if missing[0][0] == "train" else "train"
            hint = f"; --split {other} prepares the {other} split alone"
        raise UsageError("; ".join(f"the {name} split needs {option} ({what})" for name, _, option, what in missing)
                         + hint)
    for name in splits:
        _require_dir(*needed[name][:2])


def check_out(out: Path, splits: list[str]) -> None:
    """One line, before any work, when `--out` or a split folder in it is a file or cannot be
    written (it was a traceback from the first worker that wrote there)."""
    from mattecli.imageio import check_out_dir

    check_out_dir(out)
    for name in splits:
        check_out_dir(Path(out) / name)


def _finish(out: Path, split: str, jobs: list[ForegroundJob], workers: int, label: str,
            report: PrepareReport) -> None:
    split_dir = out / split
    remove_stale_split_temps(split_dir)
    samples, errors = run_jobs(jobs, workers, label)
    report.manifests[split] = write_manifest(split_dir, samples)
    report.counts[split] = len(samples)
    report.errors.extend(errors)


def prepare_adobe(root: Path, coco: Path | None, voc: Path | None, out: Path, split: str = "all",
                  workers: int | None = None, composite: bool = False) -> PrepareReport:
    """Prepare Adobe's Combined_Dataset (Composition-1k test, 431 x 100 training samples).

    Args:
        root: the unpacked `Combined_Dataset` folder.
        coco: COCO train2014 images (training backgrounds).
        voc: VOC2012 JPEGImages (test backgrounds).
        out: output folder; splits go to `out/train`, `out/test`.
        split: train, test or all.
        workers: processes (default: all cores).
        composite: also write the training composites (`merged/`).

    Returns:
        A PrepareReport; `errors` lists every failed input with its reason.
    """
    root = _require_dir(root, "--root")
    nested = root / "Combined_Dataset"
    if nested.is_dir() and not any((root / s).is_dir() for s in ("Training_set", "Test_set")):
        # the folder Adobe's archive unpacks to, one level above
        raise UsageError(f"--root {root}: holds Combined_Dataset/; give --root {nested}")
    _require_backgrounds(split, coco, voc)
    bg_dirs = {"train": [Path(d) for d in (coco, voc) if d is not None],
               "test": [Path(d) for d in (voc, coco) if d is not None]}
    workers = workers or usable_cores()
    out = Path(out)
    check_out(out, _splits(split))
    plans = {}  # every split's names files are read and checked before any split is composed
    for name in _splits(split):
        if name == "train":
            base = root / "Training_set"
            groups = [base / "Adobe-licensed images", base / "Other"]
            fg_file, bg_file = base / "training_fg_names.txt", base / "training_bg_names.txt"
            trimap_dir = None
        else:
            base = root / "Test_set"
            groups = [base / "Adobe-licensed images"]
            fg_file, bg_file = base / "test_fg_names.txt", base / "test_bg_names.txt"
            trimap_dir = groups[0] / "trimaps"
        plans[name] = plan_jobs(read_names(fg_file), read_names(bg_file), ADOBE_PER_FG[name],
                                [g / "fg" for g in groups], [g / "alpha" for g in groups], bg_dirs[name],
                                out / name, merged=(name == "test" or composite), trimap_dir=trimap_dir,
                                names_file=bg_file, alpha_per_composite=(name == "test"))
    report = PrepareReport({}, {}, [], [])
    for name, jobs in plans.items():
        _finish(out, name, jobs, workers, f"adobe {name}", report)
    return report


def _image_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def _pick_backgrounds(folder: Path, count: int, rng: np.random.Generator, option: str) -> list[str]:
    names = _image_names(folder)
    if len(names) < count:
        raise UsageError(f"{option} {folder}: {len(names)} images, {count} backgrounds needed")
    return [names[i] for i in rng.choice(len(names), size=count, replace=False)]


def _names_file(path: Path, make) -> list[str]:
    """Reuse a names file written by an earlier run (so a re-run pairs exactly as before)."""
    if path.is_file():
        return read_names(path)
    names = make()
    for name in names:
        # the file is UTF-8, one name a line, each stripped when read back: a name in another encoding
        # (an upload named in Latin-1) was a UnicodeEncodeError traceback, and one with a line break or
        # edge spaces would be read back as other names on a re-run
        if not utf8_name(name) or name.splitlines() != [name] or name != name.strip():
            raise UsageError(f"{path}: cannot record the file name {ascii(name)} (not UTF-8, or a line break "
                             "or spaces at its ends): rename that file")
    atomic_write(path, lambda tmp: tmp.write_text("".join(f"{n}\n" for n in names), encoding="utf-8"))
    return names


def prepare_d646(root: Path, coco: Path | None, voc: Path | None, out: Path, split: str = "all",
                 workers: int | None = None, composite: bool = False, seed: int = 0) -> PrepareReport:
    """Prepare Distinctions-646 (596 train fg x 80 COCO, 50 test fg x 20 VOC) with Adobe's rule.

    Layout assumed (as the dataset is distributed): `Train/FG`, `Train/GT`, `Test/FG`, `Test/GT`,
    alpha files named like their foregrounds. There are no official background lists or test
    trimaps: backgrounds are drawn without replacement from the sorted folder listing with `seed`
    and written to `OUT/{split}/fg_names.txt` / `bg_names.txt` (reused on re-runs); test trimaps
    are grown from the alpha by a radius drawn per composite from the same seed, recorded in
    `OUT/test/trimaps.json`.
    """
    root = _require_dir(root, "--root")
    _require_backgrounds(split, coco, voc)
    sources = {"train": (coco and Path(coco), "--coco"), "test": (voc and Path(voc), "--voc")}
    workers = workers or usable_cores()
    out = Path(out)
    check_out(out, _splits(split))
    for name in _splits(split):
        _check_seed(out / name, seed)
    plans = {}  # both splits drawn and checked before either is composed
    for name in _splits(split):
        folder = _require_dir(root / name.capitalize(), "--root")
        fg_dir, gt_dir = _require_dir(folder / "FG", "--root"), _require_dir(folder / "GT", "--root")
        split_dir = out / name
        rng = np.random.default_rng(np.random.SeedSequence([seed, 646, int(name == "test")]))
        # checked before the listing is recorded, which a re-run reuses
        fg_names = _names_file(split_dir / "fg_names.txt", lambda: _unique_stems(_image_names(fg_dir), fg_dir))
        bg_dir, option = sources[name]
        fresh = not (split_dir / "bg_names.txt").is_file()
        if fresh:
            # recorded before the draw it seeds: a run stopped between the two left a draw without its
            # seed, which a re-run with another --seed then finished under the new seed's record
            atomic_write(split_dir / "seed.json", lambda tmp: tmp.write_text(json.dumps({"seed": seed}) + "\n"))
        try:
            bg_names = _names_file(split_dir / "bg_names.txt", lambda: _pick_backgrounds(
                bg_dir, D646_PER_FG[name] * len(fg_names), rng, option))
        except UsageError:
            if fresh:  # nothing was drawn (too few backgrounds): the seed binds no draw, so it must not bind a re-run
                (split_dir / "seed.json").unlink(missing_ok=True)
            raise
        plans[name] = plan_jobs(fg_names, bg_names, D646_PER_FG[name], [fg_dir], [gt_dir],
                                [bg_dir], split_dir, merged=(name == "test" or composite), trimap_dir=None,
                                names_file=split_dir / "bg_names.txt", alpha_per_composite=(name == "test"))
    report = PrepareReport({}, {}, [], [])
    for name, jobs in plans.items():
        _finish(out, name, jobs, workers, f"d646 {name}", report)
        if name == "test":
            _d646_trimaps(out / name, report, seed)
    return report


def _check_seed(split_dir: Path, seed: int) -> None:
    """A re-run finishes the split with the draw it started with: another --seed would mix two
    draws under one record (it reused the first run's backgrounds and trimaps, and recorded the
    new seed in trimaps.json)."""
    record = split_dir / "seed.json"
    if record.is_file():
        earlier = json.loads(record.read_text()).get("seed")
        if earlier != seed:
            raise UsageError(f"--out {split_dir.parent}: its {split_dir.name} split was drawn with --seed {earlier}; "
                             f"re-run with --seed {earlier} to finish it, or give another --out")


D646_TRIMAP_RADII = (10, 25)  # ours: wide enough to cover hair, as Composition-1k's trimaps do


def _d646_trimaps(split_dir: Path, report: PrepareReport, seed: int) -> None:
    """Generate (or keep) the test trimaps, record the seed and radii, and add the column."""
    from mattecli.data.manifest import read_manifest
    from mattecli.data.trimap import grown_trimap

    samples = read_manifest(split_dir)
    radii, kept = {}, []
    for s in samples:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 646, 2, *s.name.encode()]))
        radius = int(rng.integers(D646_TRIMAP_RADII[0], D646_TRIMAP_RADII[1] + 1))
        path = split_dir / "trimap" / f"{s.name}.png"
        try:
            if not path.is_file():
                write_png(path, grown_trimap(read_gray(s.alpha) / 255.0, radius))
        except InputError as err:
            report.errors.append(f"{err} (sample {s.name})")
            continue
        radii[s.name] = radius
        kept.append(dataclasses.replace(s, trimap=path))
    record = {"seed": seed, "method": "grown_trimap (distance-transform growth of 0<alpha<1)",
              "radius_range": list(D646_TRIMAP_RADII), "radius": radii}
    json_path = split_dir / "trimaps.json"
    atomic_write(json_path, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    report.manifests["test"] = write_manifest(split_dir, kept)
    report.counts["test"] = len(kept)
    report.notes.append(f"d646 test trimaps are generated (seed {seed}), not official: {json_path}")
