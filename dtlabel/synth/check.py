"""``dtlabel data check data.root=SYNTH_RUN``: verify a synthesize run folder shard by shard."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dtlabel.errors import DataError
from dtlabel.io import sha256_file
from dtlabel.synth.shards import MANIFEST, REQUIRED, decode_group, iter_groups


def is_synth_run(path: str | Path | None) -> bool:
    """True for a folder holding a synthesize ``manifest.json`` (finished or not yet described)."""
    if not path:
        return False
    p = Path(path).expanduser()
    if not (p / MANIFEST).is_file():
        return False
    desc = p / "run.json"
    if desc.is_file():
        try:
            return json.loads(desc.read_text()).get("command") == "synthesize"
        except json.JSONDecodeError:
            return False
    return True


@dataclass
class SynthReport:
    path: str
    mode: str = ""
    count: int = 0
    shards: int = 0
    bytes: int = 0
    size: list[int] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    pixel_share: list[float] = field(default_factory=list)
    image_share: list[float] = field(default_factory=list)
    score_quantiles: dict[str, Any] = field(default_factory=dict)
    skipped: int = 0
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return self.__dict__.copy()

    def table(self) -> str:
        lines = [f"synthesize run {self.path}: {self.count} samples ({self.mode}), {self.shards} shards, "
                 f"{self.bytes / 1e6:.1f} MB ({self.bytes / max(1, self.count) / 1e3:.1f} kB per sample), "
                 f"size {self.size[0]}x{self.size[1]}" + (f", {self.skipped} skipped files" if self.skipped else "")]
        lines.append(f"{'id':>3}  {'class':<20} {'pixels %':>9} {'images %':>9}")
        for i, n in enumerate(self.class_names):
            lines.append(f"{i:>3}  {n:<20} {100 * self.pixel_share[i]:>9.2f} {100 * self.image_share[i]:>9.1f}")
        q = ", ".join(f"q{k}={v:.4g}" for k, v in self.score_quantiles.items() if v is not None)
        lines.append(f"uncertainty score quantiles: {q}")
        lines.append(f"problems: {len(self.problems)}")
        return "\n".join(lines)


def check_synth(path: str | Path, progress: bool = True) -> SynthReport:
    """Re-hash every shard, decode every sample, and compare with the manifest (never stops early)."""
    path = Path(path).expanduser()
    try:
        m = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path / MANIFEST}: cannot read ({exc.__class__.__name__})") from None
    c, size = int(m["num_classes"]), tuple(m["size"])
    logits_shape = (c, *m["logits_size"]) if m.get("logits_size") else None
    rep = SynthReport(path=str(path), mode=str(m.get("mode")), shards=len(m["shards"]), size=list(size),
                      class_names=list(m["class_names"]), score_quantiles=m["score"]["quantiles"],
                      skipped=len(m.get("skipped", [])))
    pix = np.zeros(c, dtype=np.int64)
    imgs = np.zeros(c, dtype=np.int64)
    seen: set[int] = set()
    for sh in tqdm(m["shards"], desc="shards", disable=not progress, leave=False):
        f = path / sh["name"]
        if not f.is_file():
            rep.problems.append(f"{sh['name']}: missing")
            continue
        rep.bytes += f.stat().st_size
        if sha256_file(f) != sh["sha256"]:
            rep.problems.append(f"{sh['name']}: sha256 differs from the manifest (damaged or replaced)")
            continue
        n = 0
        try:
            for key, group in iter_groups(f):
                where = f"{sh['name']}:{key}"
                missing = [e for e in REQUIRED if e not in group] + ([] if ("png" in group or "jpg" in group) else ["image"])
                if missing:
                    rep.problems.append(f"{where}: missing {', '.join(missing)}")
                    continue
                s = decode_group(group)
                i = s["index"]
                n += 1
                if s["key"] != key or not sh["first"] <= i <= sh["last"]:
                    rep.problems.append(f"{where}: index {i} outside the shard's range {sh['first']}..{sh['last']}")
                if i in seen:
                    rep.problems.append(f"{where}: index {i} appears twice")
                seen.add(i)
                if s["image"].shape[:2] != size or s["label"].shape != size or s["uncertainty"].shape != size:
                    rep.problems.append(f"{where}: image/label/uncertainty not {size[0]}x{size[1]}")
                    continue
                if int(s["label"].max()) >= c:
                    rep.problems.append(f"{where}: label value {int(s['label'].max())} >= {c} classes")
                    continue
                if logits_shape is not None and (s["logits"] is None or tuple(s["logits"].shape) != logits_shape):
                    rep.problems.append(f"{where}: logits missing or not {logits_shape}")
                if m["scores"][i] != s["score"]:
                    rep.problems.append(f"{where}: score {s['score']} != manifest {m['scores'][i]}")
                counts = np.bincount(s["label"].ravel(), minlength=c)[:c]
                pix += counts
                imgs += counts > 0
        except Exception as exc:  # noqa: BLE001 - a broken tar is a problem to report, not a crash
            rep.problems.append(f"{sh['name']}: cannot read ({exc.__class__.__name__}: {exc})")
            continue
        if n != sh["count"]:
            rep.problems.append(f"{sh['name']}: {n} samples, manifest says {sh['count']}")
    rep.count = len(seen)
    expected = {i for i, s in enumerate(m["scores"]) if s is not None}
    if seen != expected:
        rep.problems.append(f"samples {sorted(expected - seen)[:5]} of the manifest not found in the shards"
                            if expected - seen else f"samples {sorted(seen - expected)[:5]} not in the manifest")
    if rep.count != int(m["count"]):
        rep.problems.append(f"{rep.count} samples in the shards, manifest count {m['count']}")
    if pix.tolist() != list(m["class_pixels"]):
        rep.problems.append("class pixel histogram differs from the manifest")
    rep.pixel_share = (pix / max(1, int(pix.sum()))).round(6).tolist()
    rep.image_share = (imgs / max(1, rep.count)).round(6).tolist()
    return rep
