"""Peak memory of head training: dtlabel's bounded train-head vs the peers' all-pixels-in-RAM recipe.

Each variant runs in its own subprocess; its peak resident set size is read from ``os.wait4``
(``ru_maxrss`` of that one child), so the variants do not contaminate each other:

- ``baseline``: Python + torch + diffusers imports, the data set, the teacher and the label choice,
  no training (the fixed cost every variant pays);
- ``interpreter`` / ``mlp-ensemble``: the real ``dtlabel train-head`` command (training, validation,
  test evaluation, pictures), features computed online per batch;
- ``naive``: what DDPM-seg / DatasetGAN do: every labeled image's features upsampled to the label
  size, concatenated and kept in one ``N x H x W x D`` float32 array, then the same pixel-MLP
  ensemble trained on random minibatches of that array.

Usage::

    python benchmarks/head_memory.py --tiny                                   # seconds, smoke test
    python benchmarks/head_memory.py --teacher runs/ccp-teacher --labels 10 --preset cpu \\
        data=ccp data.root=/path/to/ccp [--append docs/RESULTS.md]

Extra ``key=value`` arguments are passed to every variant as train-head overrides. The table is
printed as markdown (with the exact command); ``--append FILE`` also appends it to FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

VARIANTS = ("baseline", "interpreter", "mlp-ensemble", "naive")
HOLDS = {
    "baseline": "imports, data index, teacher, label choice (no training)",
    "interpreter": "one batch of native-resolution teacher maps + activations",
    "mlp-ensemble": "one batch of maps + `batch x pixels_per_image x D` sampled pixels",
    "naive": "all `N x H x W x D` upsampled features (float32) in one array",
}


# ---------------------------------------------------------------------------------------------- children
def _compose(args: argparse.Namespace):  # noqa: ANN202
    from dtlabel.config import compose

    overrides = [f"preset={args.preset}", f"labels={args.labels}", f"inputs.teacher={args.teacher}", *args.overrides]
    return compose("train_head", overrides)


def _setup(args: argparse.Namespace):  # noqa: ANN202
    """Data, label choice and teacher exactly as train-head does them."""
    from dtlabel.data import build_data, choose_labels, data_size
    from dtlabel.teachers import teacher_from_config

    cfg = _compose(args)
    bundle = build_data(cfg.data)
    seed = int(cfg.seed)
    ids = choose_labels(bundle.labeled, bundle.splits["train"], int(args.labels), seed)
    teacher = teacher_from_config(str(cfg.inputs.teacher), cfg.teacher, amp="off")
    return cfg, bundle, ids, teacher, data_size(cfg.data)


def child_baseline(args: argparse.Namespace) -> dict:
    _, _, ids, teacher, size = _setup(args)
    return {"labels": len(ids), "size": list(size), "D": teacher.feature_spec.total_channels}


def child_train_head(args: argparse.Namespace, kind: str) -> dict:
    from dtlabel.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        argv = ["train-head", "--preset", args.preset, "--labels", str(args.labels), "--teacher", args.teacher,
                "--out", str(Path(tmp) / "run"), "-q", f"head.kind={kind}", *args.overrides]
        code = main(argv)
        if code != 0:
            raise SystemExit(f"train-head exited with {code}")
        metrics = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
    return {"test_miou": metrics["miou"]}


def child_naive(args: argparse.Namespace) -> dict:
    """The peers' recipe: materialise every pixel's full feature vector, then train the MLPs."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from dtlabel.data.transforms import SegmentationDataset, build_transform
    from dtlabel.heads import create_head, to_teacher_size

    cfg, bundle, ids, teacher, size = _setup(args)
    spec = teacher.feature_spec
    h, w, d = size[0], size[1], spec.total_channels
    ds = SegmentationDataset(bundle.labeled, ids, build_transform(size, train=False))
    feats = np.empty((len(ids) * h * w, d), dtype=np.float32)  # the whole labeled set, every pixel
    labels = np.empty(len(ids) * h * w, dtype=np.int64)
    for k in range(len(ds)):
        image, mask = ds[k]
        f = teacher.features(to_teacher_size(image[None], teacher.image_size), seed=k)
        up = torch.cat([F.interpolate(f[n], size=size, mode="bilinear", align_corners=False) for n in spec.names], 1)
        feats[k * h * w:(k + 1) * h * w] = up[0].permute(1, 2, 0).reshape(-1, d).numpy()
        labels[k * h * w:(k + 1) * h * w] = mask.reshape(-1).numpy()
    keep = labels != bundle.labeled.ignore_index
    feats, labels = feats[keep], labels[keep]  # the peers drop ignored pixels (this copy is part of the cost)
    mc = cfg.head.mlp_ensemble
    torch.manual_seed(0)
    head = create_head("mlp-ensemble", spec, bundle.labeled.num_classes, members=int(mc.members),
                       hidden=list(mc.hidden) if mc.hidden else None)
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    batch = int(cfg.head.batch_size) * int(mc.pixels_per_image)
    g = np.random.default_rng(0)
    for _ in range(int(args.naive_steps)):
        idx = g.integers(0, len(labels), batch)
        x, y = torch.from_numpy(feats[idx]), torch.from_numpy(labels[idx])
        logits = head.member_logits(x)
        loss = F.cross_entropy(logits.reshape(-1, head.num_classes), y.repeat(len(head.members)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"feature_bytes": int(len(ids) * h * w * d * 4)}


# ---------------------------------------------------------------------------------------------- parent
def measure(variant: str, args: argparse.Namespace, argv: list[str]) -> dict:
    """Run ``variant`` in a subprocess; return its peak RSS (MiB), wall time and its own report."""
    with tempfile.NamedTemporaryFile("r", suffix=".json") as report:
        cmd = [sys.executable, __file__, *argv, "--child", variant, "--report", report.name]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        t0 = time.time()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"variant {variant} failed (exit {proc.returncode}): {' '.join(map(shlex.quote, cmd))}")
        data = json.loads(Path(report.name).read_text() or "{}")
    rss_kib = usage.ru_maxrss if sys.platform != "darwin" else usage.ru_maxrss / 1024
    return {"variant": variant, "rss_mib": rss_kib / 1024, "seconds": time.time() - t0, **data}


def table(rows: list[dict], info: dict, command: str) -> str:
    naive = next((r for r in rows if r["variant"] == "naive"), None)
    base = next((r for r in rows if r["variant"] == "baseline"), None)
    lines = [
        f"Peak RSS of head training, N = {info['labels']} labels at {info['size'][0]}x{info['size'][1]}, "
        f"D = {info['D']} feature channels per pixel (naive feature array: "
        f"{info['labels'] * info['size'][0] * info['size'][1] * info['D'] * 4 / 2**20:.1f} MiB).",
        "",
        "| variant | held in RAM | peak RSS (MiB) | above baseline (MiB) | naive / variant | wall (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        above = f"{r['rss_mib'] - base['rss_mib']:.0f}" if base else "-"
        ratio = f"{naive['rss_mib'] / r['rss_mib']:.2f}" if naive else "-"
        lines.append(f"| {r['variant']} | {HOLDS[r['variant']]} | {r['rss_mib']:.0f} | {above} | {ratio} | "
                     f"{r['seconds']:.1f} |")
    lines += ["", f"Command: `{command}`"]
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny random DDPM, default data at 32 px, N=8 (seconds)")
    p.add_argument("--teacher", help="teacher folder (fit-teacher run or diffusers model)")
    p.add_argument("--labels", type=int, default=None, help="N labeled images (default 8 with --tiny, else 10)")
    p.add_argument("--preset", default=None, help="train-head preset (default tiny with --tiny, else cpu)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {', '.join(VARIANTS)}")
    p.add_argument("--naive-steps", type=int, default=50, help="minibatches the naive variant trains for")
    p.add_argument("--append", metavar="FILE", help="also append the table to FILE (e.g. docs/RESULTS.md)")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--report", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="train-head overrides key=value")
    args = p.parse_args(argv)
    args.labels = args.labels or (8 if args.tiny else 10)
    args.preset = args.preset or ("tiny" if args.tiny else "cpu")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    if args.child:
        out = {"baseline": child_baseline, "naive": child_naive}.get(args.child)
        data = out(args) if out else child_train_head(args, args.child)
        Path(args.report).write_text(json.dumps(data))
        return 0
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise SystemExit(f"unknown variants {bad}; choose from {', '.join(VARIANTS)}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny and not args.teacher:
            from dtlabel.teachers.tiny import build_tiny_ddpm

            args.teacher = str(build_tiny_ddpm(Path(tmp) / "tiny-ddpm", sample_size=32))
        if not args.teacher:
            raise SystemExit("pass --teacher DIR (or --tiny)")
        child_argv = ["--teacher", args.teacher, "--labels", str(args.labels), "--preset", args.preset,
                      "--naive-steps", str(args.naive_steps), *args.overrides]
        if "baseline" not in variants:
            variants.insert(0, "baseline")  # the table needs N, size and D
        rows = []
        for v in variants:
            rows.append(measure(v, args, child_argv))
            print(f"{v}: {rows[-1]['rss_mib']:.0f} MiB, {rows[-1]['seconds']:.1f} s", file=sys.stderr)
        info = rows[0]
    command = "python benchmarks/head_memory.py " + " ".join(shlex.quote(a) for a in argv)
    text = table(rows, info, command)
    print(text)
    if args.append:
        with open(args.append, "a", encoding="utf-8") as f:
            f.write("\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
