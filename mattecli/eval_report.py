"""`matte eval --report DIR`: the worst images by SAD on one HTML page, to be looked at.

The page is self-contained (inline CSS, no scripts, nothing fetched); its images are PNG files
beside it in `DIR/images/`. Each row shows the composite (when known), trimap, ground truth,
prediction and an error map with the image's metrics; `DIR/contact_sheet.png` puts the same rows
in one picture.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mattecli.files import write_text
from mattecli.imageio import write_png

@dataclass
class ReportEntry:
    name: str
    metrics: dict[str, float]
    pred: np.ndarray
    gt: np.ndarray
    trimap: np.ndarray
    image: np.ndarray | None = None


def error_map(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> np.ndarray:
    """|pred - gt| in the inferno colour map (RGB), on a square-root scale so that small errors
    show; outside the unknown region dimmed to a quarter, since the metrics do not count it."""
    import cv2

    err = np.abs(pred.astype(np.float64) - gt.astype(np.float64)) / 255
    err = np.round(np.sqrt(err) * 255).astype(np.uint8)
    rgb = cv2.applyColorMap(err, cv2.COLORMAP_INFERNO)[..., ::-1]
    known = trimap != 128
    rgb = rgb.copy()
    rgb[known] = rgb[known] // 4
    return np.ascontiguousarray(rgb)


def _panels(entry: ReportEntry) -> dict[str, np.ndarray]:
    panels = {"image": entry.image, "trimap": entry.trimap, "ground truth": entry.gt,
              "prediction": entry.pred, "error": error_map(entry.pred, entry.gt, entry.trimap)}
    return {k: v for k, v in panels.items() if v is not None}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
table.metrics td, table.metrics th { padding: 0 0.8em; text-align: right; }
.entry { margin: 1.5em 0; padding: 0.8em; background: #fff; border: 1px solid #ddd; }
.row { display: flex; gap: 6px; }
figure { margin: 0; flex: 1; min-width: 0; }
figure img { width: 100%; image-rendering: pixelated; background: #888; display: block; }
figcaption { font-size: 0.8em; color: #555; text-align: center; }
h2 { font-size: 1.05em; margin: 0 0 0.4em 0; }
"""


def write_report(out_dir: Path, entries: list[ReportEntry], title: str = "matte eval",
                 contact_sheet: bool = True) -> Path:
    """Write `out_dir/index.html` (entries in the given order), the panels as PNG files in
    `out_dir/images/`, and `out_dir/contact_sheet.png`. Returns the HTML path."""
    out_dir = Path(out_dir)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>The {len(entries)} worst image(s) by SAD. Metrics in the papers' units (SAD/1000, "
             "MSE, Grad/1000, Conn/1000) on the unknown region (trimap = 128). Error map: |prediction &minus; "
             "ground truth| on a square-root scale (inferno: black 0, yellow 255); known regions dimmed.</p>"]
    sheet_rows = []
    for rank, entry in enumerate(entries, 1):
        panels = _panels(entry)
        m = entry.metrics
        parts.append(f"<div class='entry'><h2>#{rank} {html.escape(entry.name)}</h2>"
                     "<table class='metrics'><tr><th>SAD</th><th>MSE</th><th>Grad</th><th>Conn</th>"
                     f"<th>size</th></tr><tr><td>{m['sad']:.3f}</td><td>{m['mse']:.5f}</td>"
                     f"<td>{m['grad']:.3f}</td><td>{m['conn']:.3f}</td>"
                     f"<td>{entry.gt.shape[1]}&times;{entry.gt.shape[0]}</td></tr></table><div class='row'>")
        for kind, array in panels.items():
            rel = f"images/{rank:03d}_{_safe(entry.name)}_{kind.replace(' ', '_')}.png"
            write_png(out_dir / rel, np.ascontiguousarray(array))
            parts.append(f"<figure><a href='{html.escape(rel)}'><img src='{html.escape(rel)}' "
                         f"alt='{kind}' loading='lazy'></a><figcaption>{kind}</figcaption></figure>")
        parts.append("</div></div>")
        if contact_sheet:
            sheet_rows.append(_sheet_row(f"#{rank} {entry.name}  SAD {m['sad']:.2f}", panels))
    parts.append("</body></html>\n")
    page = "".join(parts)
    path = out_dir / "index.html"
    write_text(path, page)  # atomically, as UTF-8, a name that is not UTF-8 escaped
    if sheet_rows:
        width = max(r.shape[1] for r in sheet_rows)
        sheet = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255)
                                for r in sheet_rows])
        write_png(out_dir / "contact_sheet.png", sheet)
    return path


def _sheet_row(label: str, panels: dict[str, np.ndarray], height: int = 160) -> np.ndarray:
    import cv2

    tiles = []
    for array in panels.values():
        rgb = array if array.ndim == 3 else np.repeat(array[..., None], 3, axis=2)
        h, w = rgb.shape[:2]
        new_w = max(1, round(w * height / h))
        tiles.append(cv2.resize(rgb, (new_w, height), interpolation=cv2.INTER_AREA if h > height
                                else cv2.INTER_NEAREST))
        tiles.append(np.full((height, 4, 3), 255, np.uint8))
    strip = np.concatenate(tiles, axis=1)
    banner = np.full((22, strip.shape[1], 3), 255, np.uint8)
    # Hershey fonts draw ASCII only, and a lone surrogate (a name not valid UTF-8) crashed putText
    label = label.encode("ascii", "backslashreplace").decode("ascii")
    cv2.putText(banner, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([banner, strip, np.full((6, strip.shape[1], 3), 255, np.uint8)])
