"""Images as a viewer shows them: phone photos stored sideways (EXIF orientation), 16-bit grayscale
scaled by its range, float images outside [0, 1] refused; `data check` says how many were changed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from dtlabel.cli import main

TINY = ("--preset", "tiny", "-q")


def _displayed(h: int = 32, w: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """An image as it should be seen (a bright object top-left on dark) and its mask."""
    img = np.full((h, w, 3), 20, np.uint8)
    mask = np.zeros((h, w), np.uint8)
    img[2:12, 2:18] = 230
    mask[2:12, 2:18] = 1
    return img, mask


def _save_sideways(path: Path, displayed: np.ndarray) -> None:
    """Store ``displayed`` rotated a quarter turn counter-clockwise with EXIF orientation 6 (rotate
    clockwise to display), as a phone held upright does."""
    stored = Image.fromarray(np.rot90(displayed, 1).copy())
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(path, quality=95, exif=exif)


def _folder(root: Path, n: int = 8) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(1, n + 1):
        img, mask = _displayed()
        Image.fromarray(img).save(root / "images" / f"{i:04d}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i:04d}.png")
    (root / "classes.json").write_text(json.dumps(["bg", "object"]))
    return root


def test_a_phone_photo_stored_sideways_is_read_as_shown(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from dtlabel.data.folder import read_image

    root = _folder(tmp_path / "d")
    (root / "images" / "0001.png").unlink()
    img, _ = _displayed()
    _save_sideways(root / "images" / "0001.jpg", img)  # its mask (0001.png) matches the displayed view
    got = read_image(root / "images" / "0001.jpg")
    assert got.shape == (32, 48, 3)
    assert got[2:12, 2:18].mean() > 200 and got[16:, 24:].mean() < 50  # the object where the mask has it
    assert main(["data", "check", "data=folder", f"data.root={root}", "--out", str(tmp_path / "check")]) == 0
    out = capsys.readouterr().out
    assert "problems: 0" in out and "EXIF orientation: 1 images" in out


def test_sixteen_bit_grayscale_is_scaled_by_its_range(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from dtlabel.data.folder import read_image

    root = _folder(tmp_path / "d")
    ramp = np.tile(np.linspace(0, 65535, 48).round().astype(np.uint16), (32, 1))
    Image.fromarray(ramp).save(root / "images" / "0002.png")  # mode I;16
    with Image.open(root / "images" / "0002.png") as im:
        assert im.mode.startswith("I;16")
    got = read_image(root / "images" / "0002.png")
    assert got.shape == (32, 48, 3) and got.dtype == np.uint8
    assert got[0, 0, 0] == 0 and got[0, -1, 0] == 255 and 120 <= got[0, 24, 0] <= 135  # a ramp, not all 255
    assert main(["data", "check", "data=folder", f"data.root={root}", "--out", str(tmp_path / "check")]) == 0
    out = capsys.readouterr().out
    assert "bit depth: 1 images" in out and "problems: 0" in out


def test_a_float_image_outside_zero_one_is_one_line(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    root = _folder(tmp_path / "d")
    Image.fromarray(np.full((32, 48), 7.5, np.float32)).save(root / "images" / "0003.tif")
    (root / "images" / "0003.png").unlink()
    code = main(["train-student", *TINY, "--labels", "6", "data=folder", f"data.root={root}",
                 'data.splits.test="0007-0008"', "--out", str(tmp_path / "st")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "float image with values in [7.5, 7.5]" in err
