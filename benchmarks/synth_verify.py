"""What verifying a synth set against its manifest costs: ``SynthSet(run, verify=True)`` (sha256 of
every shard) against ``verify=False`` (sizes only) and against one decoding pass over the samples.

Writes a synth run of ``--n`` samples shaped like the cpu preset's CCP shards (192x128 RGB PNG,
uint8 label, 16-bit uncertainty, fp16 logits of 8 classes at half size: about 150 kB per sample)
through the library's shard writer and manifest, then times the three, interleaved ``--reps`` times
(medians; this machine is shared, so the ratios are the figures)::

    OMP_NUM_THREADS=1 python benchmarks/synth_verify.py --n 1000 --reps 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from dtlabel.io import write_json
from dtlabel.synth import SynthSet
from dtlabel.synth.shards import SHARD_DIR, MANIFEST, shard_name, shard_ranges, sidecar_name, uncertainty_to_uint16
from dtlabel.synth.writer import ShardWriter


def _sample(i: int, size: tuple[int, int], classes: int, rng: np.random.Generator) -> dict:
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) * 127 // (h + w))], -1)
    image = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)  # photo-like PNG size
    label = ((xx // 24 + yy // 24 + i) % classes).astype(np.uint8)
    u = rng.random((h, w)) * 0.3
    logits = np.log(rng.dirichlet(np.ones(classes), (h // 2, w // 2)).transpose(2, 0, 1) + 1e-6)
    return {"index": i, "seed": i, "image": image, "label": label, "uncert": uncertainty_to_uint16(u),
            "logits": logits.astype(np.float16), "score": float(np.quantile(u, 0.9)), "source": "sample"}


def build(run: Path, n: int, per_shard: int, size: tuple[int, int], classes: int) -> int:
    """A synth run folder of ``n`` samples; returns its shard bytes."""
    folder = run / SHARD_DIR
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    ranges = shard_ranges(n, per_shard)
    writer = ShardWriter(folder, classes, "png", 95, 8)
    for j, (first, last) in enumerate(ranges):
        writer.open(j, first, last)
        writer.add([_sample(i, size, classes, rng) for i in range(first, last + 1)])
        writer.close(j)
    writer.finish()
    shards, scores, total = [], [None] * n, 0
    for j, (first, last) in enumerate(ranges):
        info = json.loads((folder / sidecar_name(j)).read_text())
        for i, s in zip(info["indices"], info["scores"]):
            scores[i] = s
        total += info["bytes"]
        shards.append({"name": f"{SHARD_DIR}/{shard_name(j)}", "count": info["count"], "first": first, "last": last,
                       "bytes": info["bytes"], "sha256": info["sha256"]})
    write_json(run / MANIFEST, {"format": "dtlabel-synth/2", "mode": "sample", "count": n, "n": n,
                                "num_classes": classes, "class_names": [f"c{k}" for k in range(classes)],
                                "size": list(size), "logits_size": [size[0] // 2, size[1] // 2],
                                "scores": scores, "shards": shards})
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--per-shard", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "synth"
        total = build(run, a.n, a.per_shard, (128, 192), 8)
        times: dict[str, list[float]] = {"open, sizes only": [], "open, sha256 verified": [], "one decoding pass": []}
        for _ in range(a.reps):
            t = time.perf_counter()
            SynthSet(run, verify=False)
            times["open, sizes only"].append(time.perf_counter() - t)
            t = time.perf_counter()
            ds = SynthSet(run, verify=True)
            times["open, sha256 verified"].append(time.perf_counter() - t)
            t = time.perf_counter()
            count = sum(1 for _ in ds)
            times["one decoding pass"].append(time.perf_counter() - t)
        assert count == a.n
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{a.n} samples, {total / 1e6:.1f} MB ({total / a.n / 1e3:.1f} kB per sample), median of {a.reps}:")
    for k, v in med.items():
        print(f"  {k:<24} {v:8.3f} s")
    ratio = (med["open, sha256 verified"] - med["open, sizes only"]) / med["one decoding pass"]
    print(f"  verification / one decoding pass = {ratio:.3f}")
    if a.out:
        a.out.write_text(json.dumps({"n": a.n, "bytes": total, "median_s": med, "verify_over_pass": ratio}, indent=2))


if __name__ == "__main__":
    main()
