"""A background thread that encodes samples and writes tar shards while the teacher keeps sampling.

With ``encode_workers > 1`` the samples of a batch are encoded (PNG / JPEG / ``.npy``) by that many
threads, in order (OpenCV's and NumPy's encoders release the GIL), so a GPU that samples hundreds of
images a second is not held back by one encoding thread; the shard's bytes do not change.
"""

from __future__ import annotations

import logging
import os
import queue
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from dtlabel.io import sha256_file, write_json
from dtlabel.synth.shards import add_entries, encode_sample, shard_name, sidecar_name

log = logging.getLogger(__name__)

_STOP = object()


class ShardWriter:
    """Consumes ``open(j)``, ``add(samples)`` and ``close(j)`` calls in order on a bounded queue.

    A shard is written to ``.shard-NNNNNN.tar.tmp``; on ``close`` its sidecar JSON (count, sha256,
    per-sample scores, class pixel histogram, skipped files) is written, then the tar is renamed to
    its final name. Errors of the thread are raised again in the caller at the next call.
    """

    def __init__(self, folder: Path, num_classes: int, image_format: str, jpg_quality: int, queue_size: int,
                 on_written: Any = None, encode_workers: int = 1) -> None:
        self.folder = Path(folder)
        self.num_classes = int(num_classes)
        self.fmt, self.quality = image_format, int(jpg_quality)
        self.q: queue.Queue = queue.Queue(maxsize=max(1, int(queue_size)))
        self.on_written = on_written
        self.error: BaseException | None = None
        self.shards_done: list[dict[str, Any]] = []
        workers = max(1, int(encode_workers))
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="shard-encode") if workers > 1 else None
        self._thread = threading.Thread(target=self._loop, name="shard-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ caller side
    def _put(self, item: Any) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.q.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def open(self, j: int, first: int, last: int) -> None:
        self._put(("open", j, first, last))

    def add(self, samples: list[dict[str, Any]], skipped: list[dict[str, Any]] | None = None) -> None:
        self._put(("add", samples, skipped or []))

    def close(self, j: int) -> None:
        self._put(("close", j))

    def finish(self) -> list[dict[str, Any]]:
        self._put(_STOP)
        self._thread.join()
        if self._pool is not None:
            self._pool.shutdown()
        if self.error is not None:
            raise self.error
        return self.shards_done

    # ------------------------------------------------------------------ thread side
    def _loop(self) -> None:
        tar: tarfile.TarFile | None = None
        state: dict[str, Any] = {}
        try:
            while True:
                item = self.q.get()
                if item is _STOP:
                    return
                kind = item[0]
                if kind == "open":
                    _, j, first, last = item
                    tmp = self.folder / f".{shard_name(j)}.tmp"
                    tar = tarfile.open(tmp, mode="w", format=tarfile.USTAR_FORMAT)
                    state = {"j": j, "tmp": tmp, "first": first, "last": last, "indices": [], "scores": [],
                             "hist": np.zeros(self.num_classes, dtype=np.int64), "skipped": []}
                elif kind == "add":
                    _, samples, skipped = item
                    assert tar is not None
                    for s, entries in zip(samples, self._encode(samples)):
                        add_entries(tar, entries)
                        state["indices"].append(int(s["index"]))
                        state["scores"].append(float(s["score"]))
                        state["hist"] += np.bincount(s["label"].ravel(), minlength=self.num_classes)[: self.num_classes]
                    state["skipped"] += skipped
                    if self.on_written is not None:
                        self.on_written(len(samples) + len(skipped))
                elif kind == "close":
                    assert tar is not None
                    tar.close()
                    tar = None
                    self.shards_done.append(self._seal(state))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            self.error = exc
            # the unfinished shard goes (a full disk gets its space back); --resume writes it again
            if tar is not None:
                try:
                    tar.close()
                except OSError:
                    pass
            if state.get("tmp") is not None:
                Path(state["tmp"]).unlink(missing_ok=True)
            # drain so that the caller never blocks on a full queue
            while True:
                try:
                    self.q.get_nowait()
                except queue.Empty:
                    break

    def _encode(self, samples: list[dict[str, Any]]) -> Any:
        """The tar entries of each sample, in order (by the encoding threads when there are some)."""
        encode = lambda s: encode_sample(s, self.fmt, self.quality)  # noqa: E731
        return self._pool.map(encode, samples) if self._pool is not None else map(encode, samples)

    def _seal(self, st: dict[str, Any]) -> dict[str, Any]:
        j, tmp = st["j"], st["tmp"]
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        info = {
            "name": shard_name(j), "shard": j, "first": st["first"], "last": st["last"],
            "count": len(st["indices"]), "indices": st["indices"], "scores": [round(s, 6) for s in st["scores"]],
            "class_pixels": st["hist"].tolist(), "skipped": st["skipped"],
            "bytes": tmp.stat().st_size, "sha256": sha256_file(tmp),
        }
        write_json(self.folder / sidecar_name(j), info)  # sidecar first, then the rename commits the shard
        os.replace(tmp, self.folder / shard_name(j))
        return info
