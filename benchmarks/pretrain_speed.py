"""A pretrain step against the sum of its parts, images/s and peak RSS, at the cpu preset.

Parts, timed interleaved in one run (the machine is shared and noisy): (1) the teacher's feature pass
on a batch (``PretrainTask.targets``), (2) the backbone + regressor forward/backward + AdamW step on
those targets, (3) the whole step as the engine runs it (targets, then the step). The claim to check:
(3) costs at most 1.10 x ((1) + (2)), i.e. the task adds no hidden work around its parts. Then
the same with ``pretrain.cache_draws=1``: (4) the targets read from a warm feature cache and (5) the
whole step on them, i.e. what a step costs once every image has been seen (the cache's speed-up is
(3) / (5)), with the disk size of one cache entry.

    OMP_NUM_THREADS=1 python benchmarks/pretrain_speed.py --teacher models/ccp --reps 5

Random images at the data size (CCP's 192x128 by default); the teacher is read as the cpu preset reads it.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True, help="teacher folder (e.g. models/ccp)")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--size", type=int, nargs=2, default=[192, 128], metavar=("H", "W"))
    ap.add_argument("--reps", type=int, default=5)
    args, overrides = ap.parse_known_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    from torch.utils.data import TensorDataset

    from dtlabel.config import compose
    from dtlabel.heads.reading import TeacherFeatures
    from dtlabel.pretrain.model import DistillationNet, create_backbone, match_levels
    from dtlabel.pretrain.task import PretrainTask
    from dtlabel.teachers import teacher_from_config
    from dtlabel.teachers.cache import FeatureCache

    cfg = compose("pretrain", [f"preset={args.preset}", *overrides])
    pc, device, size = cfg.pretrain, torch.device("cpu"), tuple(args.size)
    teacher = teacher_from_config(args.teacher, cfg.teacher, amp="off")
    torch.manual_seed(0)
    net = DistillationNet(create_backbone(str(pc.backbone)), teacher.feature_spec,
                          match_levels(teacher.feature_spec, teacher.image_size, size), int(pc.width))
    bs = int(pc.batch_size)
    images = torch.rand(bs * 4, 3, *size) * 2 - 1
    chunk = int(pc.teacher_batch) if pc.get("teacher_batch") else None
    task = PretrainTask(net, TeacherFeatures(teacher, chunk=chunk), TensorDataset(images), pc, 0, device)
    cache_root = Path(tempfile.mkdtemp(prefix="pretrain-cache-"))
    cached_pc = pc.copy()
    cached_pc.cache_draws = 1
    cached = PretrainTask(net, TeacherFeatures(teacher, FeatureCache(cache_root), chunk=chunk), TensorDataset(images),
                          cached_pc, 0, device)
    opt = torch.optim.AdamW(net.parameters(), lr=task.lr, betas=(0.9, 0.95), weight_decay=0.05)
    pos = list(range(bs))
    x = images[:bs]

    def targets() -> dict:
        return task.targets(x, pos, pos)

    def step(batch: dict) -> None:
        opt.zero_grad(set_to_none=True)
        task.training_step(net, {"images": x, **batch}, 0)["loss"].backward()
        opt.step()

    times: dict[str, list[float]] = {"teacher": [], "student": [], "whole": [], "hit": [], "cached": []}
    ready = targets()
    step(ready)  # warm-up
    cached.targets(x, pos, pos)  # fills the cache: every later call is a hit
    entry_mb = sum(f.stat().st_size for f in cache_root.rglob("*") if f.is_file()) / bs / 1e6
    for _ in range(args.reps):
        t = time.perf_counter()
        ready = targets()
        times["teacher"].append(time.perf_counter() - t)
        t = time.perf_counter()
        step(ready)
        times["student"].append(time.perf_counter() - t)
        t = time.perf_counter()
        step(targets())
        times["whole"].append(time.perf_counter() - t)
        t = time.perf_counter()
        cached.targets(x, pos, pos)
        times["hit"].append(time.perf_counter() - t)
        t = time.perf_counter()
        step(cached.targets(x, pos, pos))
        times["cached"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["whole"] / (med["teacher"] + med["student"])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cmd = "python benchmarks/pretrain_speed.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    print(f"\npretrain step at the {args.preset} preset: {pc.backbone} + regressor width {pc.width}, batch {bs}, "
          f"{size[0]}x{size[1]}; teacher {teacher.family} {teacher.image_size[0]}x{teacher.image_size[1]}, "
          f"{len(teacher.feature_spec)} maps; {torch.get_num_threads()} thread(s), median of {args.reps}\n")
    print("| part | s/step |\n|---|---:|")
    for k, label in (("teacher", "teacher feature pass"), ("student", "backbone + regressor fwd/bwd + AdamW"),
                     ("whole", "whole step"), ("hit", "targets from a warm cache (pretrain.cache_draws=1)"),
                     ("cached", "whole step, warm cache")):
        print(f"| {label} | {med[k]:.3f} |")
    print(f"\nwhole / (teacher + student) = {ratio:.3f} (target <= 1.10); {bs / med['whole']:.2f} images/s online, "
          f"{bs / med['cached']:.2f} with a warm cache (step speed-up {med['whole'] / med['cached']:.2f}x; "
          f"{entry_mb:.2f} MB per cache entry); peak RSS {rss:.0f} MiB\n\nCommand: `{cmd}`")
    shutil.rmtree(cache_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
