"""``dtlabel export RUN --format coco|png|cvat|labelstudio --out DIR``: pseudo-labels for annotation tools.

Reads a finished synthesize run (sampled images, an ``--images`` folder or a data set's pool: for a
head's predictions on a folder, synthesize it with ``--images`` first) and writes ``DIR/<format>/``
atomically (formats: :mod:`dtlabel.export`), then ``run.json``.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from omegaconf import DictConfig
from tqdm import tqdm

from dtlabel.errors import ConfigError
from dtlabel.export import FORMATS, Exporter
from dtlabel.io import atomic_dir
from dtlabel.runs import Run, read_run

log = logging.getLogger(__name__)


def run(run: Run, cfg: DictConfig, args: argparse.Namespace) -> dict[str, Any]:
    from dtlabel.synth import SynthSet

    fmt = str(cfg.format)
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    if not cfg.inputs.get("synth"):
        raise ConfigError("export needs RUN: a finished synthesize run folder (dtlabel export RUN --format ...)")
    min_area = int(cfg.min_area)
    read_run(str(cfg.inputs.synth), "synthesize", "RUN")
    synth = SynthSet(str(cfg.inputs.synth), drop_uncertain=float(cfg.drop_uncertain))
    names = list(synth.class_names)
    head_hash = (synth.manifest.get("head") or {}).get("hash")
    with atomic_dir(run.path / fmt) as tmp:
        exporter = Exporter(fmt, tmp, names, str(cfg.image_url_prefix), f"dtlabel head {head_hash}")
        for sample in tqdm(synth.iter(), total=len(synth), desc=f"export {fmt}", unit="img",
                           disable=bool(getattr(args, "quiet", False))):
            exporter.add(sample, min_area)
        counts = exporter.close()
    log.info("exported %d of %d samples as %s into %s: %s", len(synth), synth.manifest["count"], fmt,
             run.path / fmt, counts)
    return {"format": fmt, "folder": fmt, "synth": str(cfg.inputs.synth), "samples": len(synth),
            "drop_uncertain": float(cfg.drop_uncertain), "min_area": min_area, "class_names": names, **counts}
