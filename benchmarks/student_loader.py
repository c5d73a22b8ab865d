"""Student step time: streamed from the synth shards vs the same batches held in memory.

Both variants run the real training step of ``train-student`` (``_step``: synth augmentation,
forward, KD loss, backward, AdamW) on the same model and batch size:

- ``memory``: batches decoded and collated once beforehand, cycled from a Python list;
- ``shards``: batches from the ``DataLoader`` over ``SynthIterableDataset`` (tar shards decoded on
  the fly, shuffle buffer, ``--workers`` worker processes), restarted when the stream ends.

The ratio ``shards / memory`` (target <= 1.05) says whether the loader keeps the model fed.
Steps alternate between blocks of the two variants to cancel drifts of a shared machine.

Usage::

    python benchmarks/student_loader.py --tiny                          # makes a tiny synth run, seconds
    python benchmarks/student_loader.py --synth RUN [--preset cpu] [--workers 2] [--steps 40] \\
        [key=value ...]                                                 # train-student overrides

Prints a markdown table with the exact command.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


def _tiny_synth(root: Path, n: int) -> Path:
    from dtlabel.cli import main
    from dtlabel.teachers.tiny import build_tiny_ddpm

    teacher = build_tiny_ddpm(root / "ddpm", sample_size=32)
    assert main(["train-head", "--preset", "tiny", "-q", "--labels", "8", "--teacher", str(teacher),
                 "--out", str(root / "head")]) == 0
    assert main(["synthesize", "--preset", "tiny", "-q", "--n", str(n), "--teacher", str(teacher),
                 "--head", str(root / "head"), "--out", str(root / "synth")]) == 0
    return root / "synth"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--synth", help="a finished synthesize run folder")
    ap.add_argument("--tiny", action="store_true", help="make a tiny synth run and use the tiny preset")
    ap.add_argument("--n", type=int, default=64, help="samples of the tiny synth run")
    ap.add_argument("--preset", default=None, help="student preset (default tiny with --tiny, else cpu)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the shard loader")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--block", type=int, default=5, help="steps per block; variants alternate by block")
    args, overrides = ap.parse_known_args(argv)

    import torch

    from dtlabel.losses import kd_loss, weighted_ce_loss
    from dtlabel.students.task import smp_kwargs
    from dtlabel.synth.augment import augment_synth, collate_synth
    from dtlabel.config import compose
    from dtlabel.data import data_size
    from dtlabel.students import create_student
    from dtlabel.synth import SynthIterableDataset, SynthSet

    tmp = tempfile.TemporaryDirectory()
    synth_dir = Path(args.synth) if args.synth else _tiny_synth(Path(tmp.name), args.n) if args.tiny else None
    if synth_dir is None:
        ap.error("pass --synth RUN or --tiny")
    preset = args.preset or ("tiny" if args.tiny else "cpu")
    cfg = compose("train_student", [f"preset={preset}", *overrides])
    sc = cfg.student
    size = data_size(cfg.data)
    ds = SynthSet(synth_dir)
    bs = int(sc.batch_size)
    torch.manual_seed(0)
    model, spec = create_student(str(sc.arch), str(sc.encoder), ds.num_classes, **smp_kwargs(sc))
    device = torch.device("cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=float(sc.optim.lr))
    scale = tuple(float(s) for s in sc.scale) if sc.get("scale") is not None else None
    gen = torch.Generator().manual_seed(0)

    it_ds = SynthIterableDataset(ds, shuffle_buffer=int(sc.shuffle_buffer), seed=0)
    epoch = [0]

    def shard_batches():  # noqa: ANN202
        while True:
            it_ds.set_epoch(epoch[0])
            epoch[0] += 1
            yield from torch.utils.data.DataLoader(it_ds, batch_size=bs, num_workers=args.workers,
                                                   collate_fn=collate_synth, drop_last=True)

    memory = [collate_synth(chunk) for chunk in _chunks(list(ds.iter()), bs)]
    if not memory:
        ap.error(f"the synth run has fewer than {bs} samples")
    shards = shard_batches()
    mem_i = [0]

    def next_memory():  # noqa: ANN202
        b = memory[mem_i[0] % len(memory)]
        mem_i[0] += 1
        return b

    def one(get) -> float:  # noqa: ANN001
        t = time.perf_counter()
        batch = get()
        syn = augment_synth(batch, size, bool(sc.hflip), scale, 255, gen, device)  # the student task's synth step
        logits = model(syn["image"]).float()
        if str(sc.synth_loss) == "soft":
            loss = kd_loss(logits, syn["logits"], float(sc.tau), valid=syn["logits_valid"])
        else:
            loss = weighted_ce_loss(logits, syn["label"], 1.0 - syn["uncertainty"], 255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    model.train()
    for _ in range(args.warmup):
        one(next_memory)
        one(lambda: next(shards))
    times: dict[str, list[float]] = {"memory": [], "shards": []}
    while len(times["shards"]) < args.steps:
        for _ in range(args.block):
            times["memory"].append(one(next_memory))
        for _ in range(args.block):
            times["shards"].append(one(lambda: next(shards)))
    med = {k: statistics.median(v) for k, v in times.items()}
    mean = {k: statistics.fmean(v) for k, v in times.items()}
    cmd = "python benchmarks/student_loader.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    print(f"\nStudent step, shard loader vs in-memory batches ({spec.arch}/{spec.encoder_name}, batch {bs}, "
          f"{size[0]}x{size[1]}, {args.workers} workers, {len(ds)} synth samples, torch threads "
          f"{torch.get_num_threads()}):\n")
    print("| variant | median step (ms) | mean step (ms) |\n|---|---:|---:|")
    for k in ("memory", "shards"):
        print(f"| {k} | {1000 * med[k]:.1f} | {1000 * mean[k]:.1f} |")
    print(f"\nratio shards / memory: median {med['shards'] / med['memory']:.3f}, mean {mean['shards'] / mean['memory']:.3f}"
          f" (target <= 1.05)\n\nCommand: `{cmd}`")
    tmp.cleanup()
    return 0


def _chunks(items: list, n: int) -> list[list]:
    return [items[i:i + n] for i in range(0, len(items) - n + 1, n)]


if __name__ == "__main__":
    sys.exit(main())
