"""A pretrain step against the sum of its parts, images/s and peak RSS, at the cpu preset.

Parts, timed interleaved in one run (the machine is shared and noisy): (1) the teacher's feature pass
on a batch (``PretrainTask.targets``), (2) the backbone + regressor forward/backward + AdamW step on
those targets, (3) the whole step as the engine runs it (targets, then the step). The claim to check:
(3) costs at most 1.10 x ((1) + (2)), i.e. the task adds no hidden work around its parts.

    OMP_NUM_THREADS=1 python benchmarks/pretrain_speed.py --teacher models/ccp --reps 5

Random images at the data size (CCP's 192x128 by default); the teacher is read as the cpu preset reads it.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import sys
import time

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

    cfg = compose("pretrain", [f"preset={args.preset}", *overrides])
    pc, device, size = cfg.pretrain, torch.device("cpu"), tuple(args.size)
    teacher = teacher_from_config(args.teacher, cfg.teacher, amp="off")
    torch.manual_seed(0)
    net = DistillationNet(create_backbone(str(pc.backbone)), teacher.feature_spec,
                          match_levels(teacher.feature_spec, teacher.image_size, size), int(pc.width))
    bs = int(pc.batch_size)
    images = torch.rand(bs * 4, 3, *size) * 2 - 1
    task = PretrainTask(net, TeacherFeatures(teacher, chunk=int(pc.teacher_batch) if pc.get("teacher_batch") else None),
                        TensorDataset(images), pc, 0, device)
    opt = torch.optim.AdamW(net.parameters(), lr=task.lr, betas=(0.9, 0.95), weight_decay=0.05)
    pos = list(range(bs))
    x = images[:bs]

    def targets() -> dict:
        return task.targets(x, pos, pos)

    def step(batch: dict) -> None:
        opt.zero_grad(set_to_none=True)
        task.training_step(net, {"images": x, **batch}, 0)["loss"].backward()
        opt.step()

    times: dict[str, list[float]] = {"teacher": [], "student": [], "whole": []}
    ready = targets()
    step(ready)  # warm-up
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
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["whole"] / (med["teacher"] + med["student"])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cmd = "python benchmarks/pretrain_speed.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    print(f"\npretrain step at the {args.preset} preset: {pc.backbone} + regressor width {pc.width}, batch {bs}, "
          f"{size[0]}x{size[1]}; teacher {teacher.family} {teacher.image_size[0]}x{teacher.image_size[1]}, "
          f"{len(teacher.feature_spec)} maps; {torch.get_num_threads()} thread(s), median of {args.reps}\n")
    print("| part | s/step |\n|---|---:|")
    for k, label in (("teacher", "teacher feature pass"), ("student", "backbone + regressor fwd/bwd + AdamW"),
                     ("whole", "whole step")):
        print(f"| {label} | {med[k]:.3f} |")
    print(f"\nwhole / (teacher + student) = {ratio:.3f} (target <= 1.10); {bs / med['whole']:.2f} images/s; "
          f"peak RSS {rss:.0f} MiB\n\nCommand: `{cmd}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
