"""Images/s and peak RSS of a pretrain step and a student step: ViT-tiny and ConvNeXt-atto against
ResNet-18, at the cpu preset (issue 37, item 4).

Each (kind, backbone) runs in a process of its own, so its peak RSS is its own; the processes take
turns for ``--rounds`` rounds (the machine is shared and noisy: the ratios of one run are the figure,
not the absolute times), and the median of all timed steps is reported.

- pretrain step: backbone (a ViT with its simple feature pyramid) + FPN/PPM regressor forward and
  backward on the teacher's targets of one batch, and the AdamW step; the teacher's feature pass is
  the same for every backbone and is left out (benchmarks/pretrain_speed.py times it).
- student step: the cpu preset's student for that encoder (Unet for the CNNs, DPT with the preset's
  decoder for the ViT) forward + cross-entropy backward + AdamW, under the preset's precision.

    OMP_NUM_THREADS=1 python benchmarks/backbone_speed.py --teacher models/ccp --rounds 2 --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

BACKBONES = {"resnet18": ("resnet18", "Unet", "resnet18"),
             "convnext_atto": ("convnext_atto", "Unet", "tu-convnext_atto"),
             "vit_tiny": ("vit_tiny_patch16_224", "DPT", "tu-vit_tiny_patch16_224")}


def _child(kind: str, key: str, teacher_path: str, size: tuple[int, int], reps: int) -> dict:
    import torch

    from dtlabel.config import compose
    from dtlabel.device import amp_dtype, autocast, training_amp

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    timm_name, arch, encoder = BACKBONES[key]
    if kind == "pretrain":
        from dtlabel.heads.reading import TeacherFeatures
        from dtlabel.pretrain.model import DistillationNet, create_backbone, match_levels
        from dtlabel.pretrain.losses import feature_distillation_loss
        from dtlabel.teachers import teacher_from_config

        cfg = compose("pretrain", ["preset=cpu"])
        pc = cfg.pretrain
        teacher = teacher_from_config(teacher_path, cfg.teacher, amp="off")
        spec = teacher.feature_spec
        net = DistillationNet(create_backbone(timm_name, size), spec, match_levels(spec, teacher.image_size, size),
                              int(pc.width))
        bs = int(pc.batch_size)
        x = torch.rand(bs, 3, *size) * 2 - 1
        with torch.no_grad():
            target = TeacherFeatures(teacher)(x, list(range(bs)))  # at the teacher's size, as pretrain reads it
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            maps, _ = net(x)
            loss = feature_distillation_loss(maps, target, str(pc.teacher_norm), float(pc.at_weight),
                                             float(pc.mse_weight))["loss"]
            loss.backward()
            opt.step()
        dtype = None
    else:
        from dtlabel.students.model import create_student
        from dtlabel.students.task import smp_kwargs

        sc = compose("train_student", ["preset=cpu", f"student.arch={arch}", f"student.encoder={encoder}"]).student
        net, _ = create_student(arch, encoder, 8, **smp_kwargs(sc))
        bs = int(sc.batch_size)
        x, y = torch.rand(bs, 3, *size) * 2 - 1, torch.randint(0, 8, (bs, *size))
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        dtype = amp_dtype(torch.device("cpu"), training_amp("auto", bool(sc.cpu_bf16), torch.device("cpu")))

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with autocast(torch.device("cpu"), dtype):
                loss = torch.nn.functional.cross_entropy(net(x).float(), y)
            loss.backward()
            opt.step()
    net.train()
    step()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return {"kind": kind, "backbone": key, "batch": bs, "times": times, "precision": str(dtype or "float32"),
            "params_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 2),
            "rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True, help="teacher folder (e.g. models/ccp)")
    ap.add_argument("--size", type=int, nargs=2, default=[192, 128], metavar=("H", "W"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--child", nargs=2, metavar=("KIND", "BACKBONE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    size = (int(args.size[0]), int(args.size[1]))
    if args.child:
        print(json.dumps(_child(args.child[0], args.child[1], args.teacher, size, args.reps)))
        return 0
    results: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.rounds):
        for kind in ("pretrain", "student"):
            for key in BACKBONES:
                cmd = [sys.executable, __file__, "--teacher", args.teacher, "--size", *map(str, size),
                       "--reps", str(args.reps), "--child", kind, key]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
                results.setdefault((kind, key), []).append(json.loads(out))
    print(f"\none step at the cpu preset, {size[0]}x{size[1]}, {os.environ.get('OMP_NUM_THREADS', '1')} thread(s), "
          f"median of {args.rounds} rounds x {args.reps} steps\n")
    print("| step | backbone | parameters (M) | batch | precision | s/step | images/s | vs ResNet-18 | peak RSS (MiB) |")
    print("|---|---|---:|---:|---|---:|---:|---:|---:|")
    for kind in ("pretrain", "student"):
        base = None
        for key in BACKBONES:
            runs = results[(kind, key)]
            med = statistics.median(t for r in runs for t in r["times"])
            base = base or med
            r = runs[0]
            print(f"| {kind} | {key} | {r['params_m']} | {r['batch']} | {r['precision']} | {med:.3f} | "
                  f"{r['batch'] / med:.1f} | {med / base:.2f}x | {max(x['rss_mib'] for x in runs)} |")
    print(f"\nCommand: `python benchmarks/backbone_speed.py {' '.join(argv or sys.argv[1:])}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
