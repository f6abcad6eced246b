"""mattecli.eval_report: the error map's numbers and the page's files, order and escaping."""

import numpy as np

from mattecli.eval_report import ReportEntry, error_map, write_report
from mattecli.imageio import read_gray, read_image


def test_error_map_is_black_where_exact_and_dims_known_pixels():
    gt = np.full((4, 6), 100, np.uint8)
    pred = gt.copy()
    pred[:, 3:] = 255  # large error on the right half
    trimap = np.full((4, 6), 128, np.uint8)
    trimap[2:] = 255  # bottom rows known
    rgb = error_map(pred, gt, trimap)
    assert rgb.shape == (4, 6, 3) and rgb.dtype == np.uint8
    assert (rgb[:2, :3] == rgb[0, 0]).all() and rgb[0, 0].sum() < 10  # inferno(0) is near black
    bright = rgb[0, 3].astype(int)
    assert bright.sum() > 300  # sqrt(155/255) * 255 = 199: a bright inferno colour
    assert np.array_equal(rgb[2, 3], (bright // 4).astype(np.uint8))  # known: dimmed to a quarter


def test_square_root_scale_shows_small_errors():
    gt = np.zeros((1, 2), np.uint8)
    pred = np.array([[0, 3]], np.uint8)
    rgb = error_map(pred, gt, np.full((1, 2), 128, np.uint8))
    # an error of 3 levels maps to round(sqrt(3/255) * 255) = 28 on the colour scale, not 3
    import cv2

    want = cv2.applyColorMap(np.array([[28]], np.uint8), cv2.COLORMAP_INFERNO)[0, 0, ::-1]
    assert np.array_equal(rgb[0, 1], want)


def test_write_report_keeps_order_escapes_names_and_writes_every_panel(tmp_path):
    rng = np.random.default_rng(0)

    def entry(name, sad, image=True):
        gt = rng.integers(0, 256, (12, 10)).astype(np.uint8)
        return ReportEntry(name, {"sad": sad, "mse": 0.01, "grad": 1.0, "conn": 2.0},
                           pred=gt[::-1].copy(), gt=gt, trimap=np.full((12, 10), 128, np.uint8),
                           image=rng.integers(0, 256, (12, 10, 3)).astype(np.uint8) if image else None)

    entries = [entry("<b>x&y</b>", 9.5), entry("plain", 1.25, image=False)]
    page = write_report(tmp_path / "r", entries, title="t")
    text = page.read_text()
    assert page == tmp_path / "r" / "index.html" and text.count("class='entry'") == 2
    assert "&lt;b&gt;x&amp;y&lt;/b&gt;" in text and "<b>x&y</b>" not in text
    assert text.index("#1 ") < text.index("#2 ") and "9.500" in text and "1.250" in text
    images = sorted(p.name for p in (tmp_path / "r" / "images").iterdir())
    assert len(images) == 5 + 4  # the second entry has no composite
    assert all(name.startswith(("001_", "002_")) and "<" not in name for name in images)
    pred_file = next(p for p in (tmp_path / "r" / "images").iterdir()
                     if p.name.startswith("002_") and "prediction" in p.name)
    assert np.array_equal(read_gray(pred_file), entries[1].pred)
    sheet = read_image(tmp_path / "r" / "contact_sheet.png")
    assert sheet.shape[0] == 2 * (22 + 160 + 6) and sheet.shape[2] == 3  # banner, panels, gap per row


def test_a_name_that_is_not_utf8_is_written_escaped_not_a_crash(tmp_path):
    """eval --report over an upload named b'bad\\xff.png' ('bad\\udcff' in Python) died with a
    segmentation fault in OpenCV's putText (the contact sheet's label), and the page would have been a
    UnicodeEncodeError; run in a child for that reason."""
    import subprocess
    import sys

    code = ("import sys, numpy as np; from pathlib import Path; from mattecli.eval_report import ReportEntry, "
            "write_report; a = np.zeros((12, 10), np.uint8); "
            "e = ReportEntry('bad\\udcff', {'sad': 1.0, 'mse': 0.0, 'grad': 0.0, 'conn': 0.0}, pred=a, gt=a, "
            "trimap=a + 128, image=None); print(write_report(Path(sys.argv[1]), [e], title='t'))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "#1 bad\\udcff" in (tmp_path / "r" / "index.html").read_text(encoding="utf-8")
    assert read_image(tmp_path / "r" / "contact_sheet.png").shape[0] == 22 + 160 + 6


def test_report_sizes_metrics_and_the_contact_sheet_layout(tmp_path):
    """Size as width x height; MSE to 5 decimals (its values are small); each panel scaled to 160 px high at
    its aspect ratio (a 40 wide, 20 high image: 320 px wide tiles, 4 px white gaps); a narrower row padded
    with white; no sheet when not asked for."""
    def entry(name, w, h, mse):
        gt = np.zeros((h, w), np.uint8)
        return ReportEntry(name, {"sad": 1.0, "mse": mse, "grad": 0.0, "conn": 0.0}, pred=gt, gt=gt,
                           trimap=gt + 128)

    page = write_report(tmp_path / "r", [entry("wide", 40, 20, 0.00123), entry("narrow", 20, 40, 0.5)])
    text = page.read_text()
    assert text.index("<td>40&times;20</td>") < text.index("<td>20&times;40</td>") and "<td>0.00123</td>" in text
    sheet = read_image(tmp_path / "r" / "contact_sheet.png")
    # wide: 4 panels (trimap, gt, prediction, error) of 320 + 4; narrow: of 80 + 4
    assert sheet.shape == (2 * (22 + 160 + 6), 4 * (320 + 4), 3)
    assert (sheet[22:22 + 160, 320:324] == 255).all()  # the gap after the first tile
    second = sheet[22 + 160 + 6 + 22:22 + 160 + 6 + 22 + 160]
    assert (second[:, 4 * (80 + 4):] == 255).all()  # padded with white, not black
    assert (second[:, :80] == 128).all()  # the trimap's first tile, scaled, not distorted
    write_report(tmp_path / "n", [entry("wide", 40, 20, 0.1)], contact_sheet=False)
    assert not (tmp_path / "n" / "contact_sheet.png").exists()
