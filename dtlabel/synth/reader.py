"""Reading a finished ``dtlabel synthesize`` run: :class:`SynthSet` and a torch ``IterableDataset``.

::

    ds = SynthSet("runs/synthesize/x", drop_uncertain=0.1)   # drop the 10% most uncertain images
    for s in ds.iter(shuffle_buffer=256, seed=0):              # s["image"], s["label"], s["logits"], ...
        ...
    loader = DataLoader(SynthIterableDataset(ds, transform=fn), batch_size=8, num_workers=2)

Dropping uses the per-image scores of ``manifest.json``; shards are never rewritten. Sampled and
real-image runs read alike (``s["source"]`` says which).
"""

from __future__ import annotations

import json
import logging
import math
import random
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from dtlabel import seeds
from dtlabel.errors import ConfigError, DataError, RunError
from dtlabel.io import sha256_file

log = logging.getLogger(__name__)
from dtlabel.synth.shards import MANIFEST, decode_group, iter_groups, key_of

Sample = dict[str, Any]


class SynthSet:
    """A finished synthesize run folder, optionally without its most uncertain fraction of samples.

    ``first=N`` keeps the samples with index < N (``drop_uncertain`` then applies to those): the set a
    run of ``synthesize --n N`` with the same seeds writes, without sampling it again.

    Every shard is checked against the manifest when the set is opened: its size always, its sha256
    with ``verify`` (about 0.1 s per 100 MB; docs/RESULTS.md), so a damaged shard is one
    :class:`DataError` before training starts, not a crash in the middle of it. A shard that is
    damaged after opening fails the same way when it is read.
    """

    def __init__(self, run_dir: str | Path, drop_uncertain: float = 0.0, verify: bool = True,
                 first: int | None = None) -> None:
        self.path = Path(run_dir).expanduser()
        if not self.path.is_dir():
            raise RunError(f"synthesize run folder not found: {self.path}")
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise RunError(f"{self.path}: no {MANIFEST}, not a finished synthesize run "
                           "(rerun 'dtlabel synthesize' with --resume and the same --out)")
        try:
            self.manifest: dict[str, Any] = json.loads(mpath.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{mpath}: not valid JSON ({exc.msg})") from None
        if "shards" not in self.manifest or "scores" not in self.manifest:
            raise DataError(f"{mpath}: not a dtlabel synthesize manifest (no shards or scores)")
        drop = float(drop_uncertain)
        if not 0.0 <= drop < 1.0:
            raise ConfigError(f"drop_uncertain={drop_uncertain}: expected a fraction in [0, 1)")
        self.drop_uncertain = drop
        indices = len(self.manifest["scores"])  # the run's --n (a pool run may have skipped a few of them)
        if first is not None and not 1 <= int(first) <= indices:
            raise DataError(f"{self.path}: the first {first} samples were asked for, but the run made {indices}")
        self.first = indices if first is None else int(first)
        for sh in self.manifest["shards"]:
            self._check_shard(sh, bool(verify))
        m = self.manifest
        self.num_classes: int = int(m["num_classes"])
        self.class_names: list[str] = list(m["class_names"])
        self.size: tuple[int, int] = (int(m["size"][0]), int(m["size"][1]))
        self.logits_size: tuple[int, int] | None = tuple(m["logits_size"]) if m.get("logits_size") else None  # type: ignore[assignment]
        present = [(s, i) for i, s in enumerate(m["scores"][:self.first]) if s is not None]
        n_drop = int(math.floor(drop * len(present)))
        # most uncertain first; ties: the higher index goes first, so the choice is deterministic
        ranked = sorted(present, key=lambda si: (-si[0], -si[1]))
        self.dropped_uncertain = n_drop  # how many drop_uncertain left out (exclude() may drop more)
        self.indices: list[int] = sorted(i for _, i in ranked[n_drop:])
        self._keep = set(self.indices)

    def damaged(self, name: str, reason: str) -> DataError:
        """The one error line of a damaged shard: which shard, and the two ways out."""
        return DataError(f"{self.path / name}: damaged shard ({reason}); 'dtlabel data check data.root={self.path}' "
                         "lists every problem, and rerunning the same synthesize command with --resume rewrites it")

    def _check_shard(self, sh: dict[str, Any], verify: bool) -> None:
        f = self.path / sh["name"]
        if not f.is_file():
            raise DataError(f"{self.path}: shard {sh['name']} listed in {MANIFEST} is missing; rerun the same "
                            "synthesize command with --resume to write it again")
        size = f.stat().st_size
        if "bytes" in sh and size != int(sh["bytes"]):
            raise self.damaged(sh["name"], f"{size} bytes, the manifest says {sh['bytes']}")
        if verify and "sha256" in sh and sha256_file(f) != sh["sha256"]:
            raise self.damaged(sh["name"], "its sha256 differs from the manifest")

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return (f"SynthSet({str(self.path)!r}, {len(self)} of {self.manifest['count']} samples, "
                f"first={self.first}, drop_uncertain={self.drop_uncertain}, mode={self.manifest.get('mode')})")

    def exclude(self, indices: Any) -> int:
        """Leave the samples ``indices`` out of every later pass (e.g. copies of validation images);
        returns how many of them were still kept."""
        gone = self._keep & {int(i) for i in indices}
        self._keep -= gone
        self.indices = [i for i in self.indices if i not in gone]
        return len(gone)

    def score(self, index: int) -> float | None:
        return self.manifest["scores"][index]

    def shard_names(self) -> list[str]:
        return [sh["name"] for sh in self.manifest["shards"]]

    def iter(self, shuffle_buffer: int = 0, seed: int = 0, rank: int = 0, world: int = 1) -> Iterator[Sample]:
        """Stream the kept samples once. Consumer ``rank`` of ``world`` gets a disjoint part: whole
        shards when there are at least ``world`` shards, else the samples with ``index % world == rank``.
        ``shuffle_buffer > 0`` shuffles the shard order (by ``seed``) and the samples through a buffer."""
        if world < 1 or not 0 <= rank < world:
            raise ConfigError(f"rank {rank} / world {world}: expected 0 <= rank < world")
        # shards none of whose samples are kept (beyond ``first``) are not opened
        shards = [sh for sh in self.manifest["shards"] if sh["count"] > 0 and int(sh.get("first", 0)) < self.first]
        if shuffle_buffer > 0:
            random.Random(seed).shuffle(shards)
        if len(shards) >= world:
            mine, by_index = shards[rank::world], False
        else:
            mine, by_index = shards, world > 1
        keep = self._keep

        def wanted(key: str) -> bool:
            i = int(key)
            return i in keep and (not by_index or i % world == rank)

        def stream() -> Iterator[Sample]:
            for sh in mine:
                try:
                    for key, group in iter_groups(self.path / sh["name"], keep=wanted):
                        if not wanted(key):
                            continue
                        yield decode_group(group)
                except (OSError, EOFError, tarfile.TarError, KeyError, ValueError, zlib.error) as exc:
                    log.debug("reading %s failed", sh["name"], exc_info=True)  # the run's log keeps the traceback
                    raise self.damaged(sh["name"], f"{type(exc).__name__}: {exc}") from exc

        if shuffle_buffer <= 0:
            yield from stream()
            return
        rng = random.Random(seeds.shard_order(seed, rank))
        buf: list[Sample] = []
        for s in stream():
            if len(buf) < shuffle_buffer:
                buf.append(s)
                continue
            k = rng.randrange(len(buf))
            buf[k], s = s, buf[k]
            yield s
        rng.shuffle(buf)
        yield from buf

    def __iter__(self) -> Iterator[Sample]:
        return self.iter()

    def key(self, index: int) -> str:
        return key_of(index)


class SynthIterableDataset(torch.utils.data.IterableDataset):
    """A :class:`SynthSet` as a torch ``IterableDataset`` for DataLoader workers and DDP ranks.

    Consumers are ``(DDP rank, worker)`` pairs (rank from :mod:`dtlabel.dist`); each sample is yielded
    by exactly one consumer per epoch. ``set_epoch(e)`` reshuffles (the seed becomes ``seed + e``).
    Without a ``transform``, keys whose value is None (``file`` of a sampled run, ``logits`` of a run
    without them) are left out, so torch's default collate batches the samples as they are.
    """

    def __init__(self, ds: SynthSet, transform: Callable[[Sample], Sample] | None = None, shuffle_buffer: int = 256,
                 seed: int = 0, epoch: int = 0) -> None:
        super().__init__()
        self.ds, self.transform = ds, transform
        self.shuffle_buffer, self.seed, self.epoch = int(shuffle_buffer), int(seed), int(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[Sample]:
        from dtlabel import dist

        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        world = dist.world_size() * workers
        rank = dist.rank() * workers + worker
        for s in self.ds.iter(self.shuffle_buffer, seed=seeds.epoch(self.seed, self.epoch), rank=rank, world=world):
            yield self.transform(s) if self.transform is not None else {k: v for k, v in s.items() if v is not None}
