"""Pseudo-labeled data sets written by ``dtlabel synthesize`` (tar shards + ``manifest.json``).

``SynthSet(run_dir, drop_uncertain=0.1)`` reads a finished run; ``SynthIterableDataset`` feeds it to
a torch ``DataLoader`` (workers and DDP ranks split the shards). Format: :mod:`dtlabel.synth.shards`.
"""

from dtlabel.synth.reader import SynthIterableDataset, SynthSet

__all__ = ["SynthIterableDataset", "SynthSet"]
