"""Which samples of a synth set are copies of a student's own labeled, validation or test images.

A synth run over real images records each image's name and, where it came from a file, the file's
sha256 (``manifest["source"]["files"]``). A sample matches a data set image when the hashes agree
(any folder, any path: a user who pointed ``--images`` at the data set's own images folder) or,
for a run made from the same data set's pool (``synthesize data=...``), when the ids agree.
Pseudo-labels of validation or test images would leak into model selection and the test score;
those of the labeled images would train on the same image twice, once with a worse label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dtlabel.io import sha256_file


def _same_path(a: Any, b: Any) -> bool:
    if a is None or b is None or str(a) == "None" or str(b) == "None":
        return str(a) == str(b)
    return Path(str(a)).expanduser().resolve() == Path(str(b)).expanduser().resolve()


def matching_samples(synth: Any, source: Any, data_name: str, data_root: Any,
                     groups: Mapping[str, Sequence[str]]) -> dict[str, list[int]]:
    """``{group: sorted synth indices}`` of the kept samples of ``synth`` (a SynthSet) that are images
    of ``groups`` (``{"validation": ids, ...}``, ids of the labeled ``source``)."""
    origin = synth.manifest.get("source") or {}
    files = origin.get("files") or []
    if not files:
        return {g: [] for g in groups}  # sampled images: nothing to match
    same_data = origin.get("data") == data_name and _same_path(origin.get("root"), data_root)
    by_hash: dict[str, set[int]] = {}
    by_name: dict[str, set[int]] = {}
    for i, f in enumerate(files):
        if f.get("sha256"):
            by_hash.setdefault(f["sha256"], set()).add(i)
        by_name.setdefault(str(f.get("file")), set()).add(i)
    kept = set(synth.indices)
    out: dict[str, list[int]] = {}
    for group, ids in groups.items():
        hit: set[int] = set()
        for id_ in ids:
            if same_data:
                hit |= by_name.get(id_, set()) | by_name.get(f"labeled/{id_}", set())
            path = source.file(id_) if by_hash else None
            if path is not None:
                hit |= by_hash.get(sha256_file(path), set())
        out[group] = sorted(hit & kept)
    return out
