"""``dtlabel import-labels RUN --from PATH --format cvat|labelstudio|png``: a person's labels of a
``synthesize --for-labeling`` set, back into it (``RUN/masks/`` + ``RUN/classes.json``; formats:
:mod:`dtlabel.annotations`). The set is then a ``data=folder`` data set whose images ``train-head``
reads at their stored latents (:mod:`dtlabel.labeling_set`)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from omegaconf import DictConfig

from dtlabel.annotations import import_labels
from dtlabel.errors import ConfigError
from dtlabel.runs import Run, read_run
from dtlabel.labeling_set import read_labeling_set

log = logging.getLogger(__name__)


def run(run: Run, cfg: DictConfig, args: argparse.Namespace) -> dict[str, Any]:
    root, source = cfg.inputs.get("labeling"), cfg.inputs.get("source")
    if not root:
        raise ConfigError("import-labels needs RUN: a synthesize --for-labeling run folder")
    if not source:
        raise ConfigError("import-labels needs --from PATH: the annotation tool's export")
    read_run(str(root), "synthesize", "RUN")
    record = read_labeling_set(str(root))
    classes = [str(c) for c in cfg.classes] if cfg.get("classes") else None
    counts = import_labels(str(root), str(cfg.format), str(source), list(record["keys"]), tuple(record["size"]),
                           classes)
    h, w = record["size"]
    log.info("imported %d labelled samples of %d into %s (%s); next: dtlabel train-head --teacher TEACHER data=folder "
             "data.root=%s 'data.size=[%d,%d]' 'data.splits.test=...' head.scale=null", counts["labelled"],
             record["count"], root, ", ".join(counts["classes"]), root, h, w)
    return {"labeling": str(root), "source": str(source), **counts}
