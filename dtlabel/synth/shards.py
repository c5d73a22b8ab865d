"""The shard format of ``dtlabel synthesize``: plain tar files, one group of entries per sample.

Per sample, with ``key = f"{index:08d}"`` (entries of a sample are consecutive, webdataset style):

- ``{key}.png`` or ``{key}.jpg``: the RGB image (uint8).
- ``{key}.label.png``: the hard pseudo-label, uint8 class ids (mode L).
- ``{key}.uncert.png``: the head's per-pixel uncertainty as a 16-bit PNG, ``round(65535 * min(1, u / ln C))``
  with ``u`` in nats and ``C`` classes (entropy and the ensemble's Jensen-Shannon divergence are both
  at most ``ln C``), so ``value / 65535`` is the fraction of the maximum uncertainty. 16 bits, because
  the ensemble's divergence is typically 0.002-0.02 nats: 8 bits (format 1) rounded it to 0 or 1.
- ``{key}.logits.npy`` (optional): float16 ``(C, h, w)`` log-probabilities (natural log, clamped at
  ``ln 1e-6``) of the head's probabilities area-averaged to ``logits_size``; softmax gives them back.
- ``{key}.json``: ``index``, ``seed``, ``score`` (mean of the top ``score_top`` fraction of the stored
  uncertainty ``value / 65535``, higher = more uncertain), ``source`` (``"sample"`` or ``"image"``) and ``file`` in image mode.

Shard ``j`` holds indices ``[j * S, (j + 1) * S)``; it is written as ``shards/.shard-NNNNNN.tar.tmp``,
then its sidecar ``shards/shard-NNNNNN.json`` (count, sha256, scores, class histogram), then renamed
to ``shards/shard-NNNNNN.tar``: a ``.tar`` file without a matching sidecar hash is never accepted.
"""

from __future__ import annotations

import io
import json
import logging
import math
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dtlabel.io import sha256_file

log = logging.getLogger(__name__)

SHARD_DIR = "shards"
MANIFEST = "manifest.json"
PLAN = "plan.json"
LOGIT_FLOOR = math.log(1e-6)


def key_of(index: int) -> str:
    return f"{int(index):08d}"


def shard_name(j: int) -> str:
    return f"shard-{int(j):06d}.tar"


def sidecar_name(j: int) -> str:
    return f"shard-{int(j):06d}.json"


UNCERTAINTY_LEVELS = 65535


def uncertainty_to_uint16(u_norm: np.ndarray) -> np.ndarray:
    """``u / ln C`` in [0, 1] (float) -> uint16 0..65535 (the stored map)."""
    return np.clip(np.rint(u_norm * float(UNCERTAINTY_LEVELS)), 0, UNCERTAINTY_LEVELS).astype(np.uint16)


def uncertainty_from_png(im: Image.Image) -> np.ndarray:
    """The stored map as ``u / ln C`` float32: 16-bit PNGs (format 2) and the 8-bit ones of format 1."""
    if im.mode == "L":
        return np.asarray(im, dtype=np.uint8).astype(np.float32) / 255.0
    return np.asarray(im).astype(np.float32) / float(UNCERTAINTY_LEVELS)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def encode_image(arr: np.ndarray, fmt: str, quality: int = 95) -> bytes:
    if fmt == "png":
        return _png(arr)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def encode_sample(sample: dict[str, Any], fmt: str, quality: int) -> list[tuple[str, bytes]]:
    """Tar entries ``[(name, bytes)]`` of one sample (see the module docstring)."""
    key = key_of(sample["index"])
    entries = [
        (f"{key}.{fmt}", encode_image(sample["image"], fmt, quality)),
        (f"{key}.label.png", _png(sample["label"])),
        (f"{key}.uncert.png", _png(sample["uncert"])),
    ]
    if sample.get("logits") is not None:
        buf = io.BytesIO()
        np.save(buf, sample["logits"].astype(np.float16), allow_pickle=False)
        entries.append((f"{key}.logits.npy", buf.getvalue()))
    meta = {k: sample[k] for k in ("index", "seed", "score", "source") if k in sample}
    if sample.get("file") is not None:
        meta["file"] = sample["file"]
    entries.append((f"{key}.json", json.dumps(meta).encode()))
    return entries


def add_entries(tar: tarfile.TarFile, entries: list[tuple[str, bytes]]) -> None:
    for name, data in entries:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        info.mtime = 0  # reproducible bytes: same samples -> same shard hash
        tar.addfile(info, io.BytesIO(data))


def split_name(name: str) -> tuple[str, str]:
    """``"00000012.label.png"`` -> ``("00000012", "label.png")``."""
    base = name.rsplit("/", 1)[-1]
    key, _, ext = base.partition(".")
    return key, ext


def decode_group(group: dict[str, bytes]) -> dict[str, Any]:
    """Decode the entries of one sample (``ext -> bytes``) into the reader's sample dict."""
    meta = json.loads(group["json"])
    img_ext = "png" if "png" in group else "jpg"
    with Image.open(io.BytesIO(group[img_ext])) as im:
        image = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    with Image.open(io.BytesIO(group["label.png"])) as im:
        label = np.asarray(im, dtype=np.uint8).copy()
    with Image.open(io.BytesIO(group["uncert.png"])) as im:
        uncert = uncertainty_from_png(im)
    logits = np.load(io.BytesIO(group["logits.npy"]), allow_pickle=False) if "logits.npy" in group else None
    return {
        "key": key_of(meta["index"]), "index": int(meta["index"]), "image": image, "label": label,
        "uncertainty": uncert, "logits": logits, "score": float(meta["score"]), "seed": int(meta["seed"]),
        "source": str(meta.get("source", "sample")), "file": meta.get("file"),
    }


REQUIRED = ("json", "label.png", "uncert.png")


def iter_groups(path: Path, keep: Any = None):  # noqa: ANN201
    """Yield ``(key, {ext: bytes})`` per sample of the tar at ``path`` in file order.

    ``keep(key) -> bool`` skips reading the bytes of samples it rejects.
    """
    cur_key, group = None, {}
    with tarfile.open(path, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = split_name(member.name)
            if key != cur_key:
                if cur_key is not None and group:
                    yield cur_key, group
                cur_key, group = key, {}
            if keep is not None and not keep(key):
                continue
            f = tar.extractfile(member)
            group[ext] = f.read() if f is not None else b""
        if cur_key is not None and group:
            yield cur_key, group


def shard_ranges(n: int, per_shard: int) -> list[tuple[int, int]]:
    """``[(first, last)]`` inclusive index range of every shard."""
    return [(a, min(n, a + per_shard) - 1) for a in range(0, n, per_shard)]


def shard_complete(folder: Path, j: int, verify: bool) -> bool:
    """A shard counts when its tar exists beside its sidecar and (``verify``) the sha256 matches."""
    tar, side = folder / shard_name(j), folder / sidecar_name(j)
    if not tar.is_file() or not side.is_file():
        return False
    try:
        info = json.loads(side.read_text())
    except (json.JSONDecodeError, OSError):
        return False
    if info.get("bytes") != tar.stat().st_size:
        return False
    if verify and sha256_file(tar) != info.get("sha256"):
        log.warning("%s does not match its sidecar hash: writing it again", tar.name)
        return False
    return True
