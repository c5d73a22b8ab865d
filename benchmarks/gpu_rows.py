"""The rows ``benchmarks/gpu_check.py run`` measures on a lent GPU: the commands of each phase (argv,
run folder, how the rate is read) and the layout side-by-side. Kept apart so that the session
logic (deadlines, caps, what comes back) and the list of what is measured read on their own.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: (row name, argv, run folder, how the rate is read: metrics | log | shards)
Row = tuple[str, list[str], Path, str]


def plans(data: list[str], device: str, tiny: bool, work: Path) -> list[Row]:
    """(row name, argv, run folder, how the rate is read) for the throughput phase."""
    preset = "tiny" if tiny else "gpu"
    common = ["--preset", preset, "--device", device, *data, "num_workers=0" if tiny else "num_workers=8", "-q"]
    teacher = str(work / "fit") if tiny else str(ROOT / "models" / "ccp")
    n_steps = 8 if tiny else 40
    rows = [
        ("fit-teacher", ["fit-teacher", f"fit.steps={n_steps}", "fit.log_every=2" if tiny else "fit.log_every=5",
                         "fit.sample_n=0", "fit.checkpoint_every=1000"], work / "fit", "metrics"),
        ("pretrain", ["pretrain", "--teacher", teacher, f"pretrain.steps={n_steps // 2}", "pretrain.log_every=2",
                      "pretrain.checkpoint_every=1000"] + (["pretrain.backbone=mobilenetv3_small_050"] if tiny else []),
         work / "pretrain", "metrics"),
        ("train-head", ["train-head", "--teacher", teacher, "--labels", "8" if tiny else "50", "head.epochs=3" if tiny else
                        "head.epochs=6", "head.eval_every=1000", "head.log_every=2"], work / "head", "metrics"),
        ("synthesize (sampled)", ["synthesize", "--teacher", teacher, "--head", str(work / "head"),
                                  "--n", "8" if tiny else "256"], work / "synth-n", "log"),
        ("synthesize (pool)", ["synthesize", "--teacher", teacher, "--head", str(work / "head")], work / "synth-pool", "log"),
        ("train-student", ["train-student", "--labels", "8" if tiny else "50", "student.epochs=1",
                           f"student.epoch_steps={n_steps}", "student.log_every=2", "student.val_size=4"],
         work / "student", "metrics"),
    ]
    return [(name, [*argv, *common, "--out", str(out)], out, how) for name, argv, out, how in rows]


#: the sampling switches, off then on one by one (each row keeps the ones before it)
SWITCHES = (("CPU noise, 1 encoder", ["teacher.noise_device=cpu", "synth.encode_workers=1"]),
            ("+ noise on the device", ["teacher.noise_device=device", "synth.encode_workers=1"]),
            ("+ 8 encoding threads (the gpu preset)", ["teacher.noise_device=device", "synth.encode_workers=8"]),
            ("+ channels_last", ["teacher.noise_device=device", "synth.encode_workers=8", "teacher.channels_last=true"]),
            ("+ torch.compile", ["teacher.noise_device=device", "synth.encode_workers=8", "teacher.channels_last=true",
                                 "teacher.compile=true"]))


def default_plans(data: list[str], device: str, tiny: bool, work: Path) -> list[Row]:
    """(row, argv, run folder, how the rate is read) of the default-teacher phase: its fit recipe, a
    head, the sampling switches at 20 steps, then the 100k run (last: its cap is what is left)."""
    preset = "tiny" if tiny else "gpu"
    common = ["--preset", preset, "--device", device, *(data if tiny else ["data=default"]),
              "num_workers=0" if tiny else "num_workers=8", "-q"]
    teacher = str(work / "fit") if tiny else "models/default"
    head = work / "head-default"
    fit = ["fit-teacher", "fit.steps=8" if tiny else "fit.steps=60", "fit.log_every=2" if tiny else "fit.log_every=10",
           "fit.sample_n=0", "fit.checkpoint_every=1000"]
    if not tiny:
        fit += ["fit.scale=1.0", "fit.model.block_out_channels=[32,64,128,128]", "fit.batch_size=256"]
    # shards of 256: a rate from several shards within a row's cap at 35 samples/s (the first H200 run) as at 2000
    n, shard = ("8", "synth.samples_per_shard=2") if tiny else ("4096", "synth.samples_per_shard=256")
    synth = ["synthesize", "--teacher", teacher, "--head", str(head), "synth.sample_steps=20"]
    rows = [("fit-teacher (default 64x64)", fit, work / "fit-default", "metrics"),
            ("train-head (default)", ["train-head", "--teacher", teacher, "--labels", "8" if tiny else "20",
                                      "head.epochs=2", "head.eval_every=1000", "head.log_every=2"], head, "metrics")]
    switches = SWITCHES[:-1] if tiny else SWITCHES  # inductor's CPU compile takes minutes: tests/test_teacher_speed.py
    rows += [(f"synthesize --n {n}, 20 steps: {name}", [*synth, shard, "--n", n, *switch], work / f"synth-switch-{k}",
              "shards") for k, (name, switch) in enumerate(switches)]
    big = ["--n", "32", "synth.samples_per_shard=4"] if tiny else ["--n", "100000"]  # the preset's shards of 1000
    rows.append(("synthesize --n 100000, 20 steps (gpu preset)", [*synth, *big], work / "synth-100k", "shards"))
    return [(name, [*argv, *common, "--out", str(out)], out, how) for name, argv, out, how in rows]


def bench_layouts(device: str, tiny: bool, reps: int) -> list[dict[str, Any]]:
    """Median fwd+bwd seconds of the student and the teacher UNet, NCHW against channels_last, interleaved."""
    import torch

    from dtlabel.config import compose
    from dtlabel.device import amp_dtype, autocast, select_device
    from dtlabel.students.model import create_student
    from dtlabel.students.task import smp_kwargs
    from dtlabel.teachers.fit_arch import build_unet

    dev = select_device(device)
    dtype = amp_dtype(dev, "auto")
    size, batch = ((32, 32), 2) if tiny else ((192, 128), 16)
    sc = compose("train_student", [f"preset={'tiny' if tiny else 'gpu'}"]).student
    student, _ = create_student(sc.arch, sc.encoder, 8, **smp_kwargs(sc))
    fc = compose("fit_teacher", [f"preset={'tiny' if tiny else 'cpu'}"]).fit
    unet = build_unet(fc.model, size)
    out = []
    for name, model, call in (("train-student", student, lambda m, x: m(x)),
                              ("teacher UNet", unet, lambda m, x: m(x, torch.full((x.shape[0],), 50, device=x.device)).sample)):
        model = model.to(dev).train()
        x = torch.randn(batch if name == "train-student" else 2 * batch, 3, *size, device=dev)
        times: dict[str, list[float]] = {"nchw": [], "channels_last": []}
        for rep in range(reps + 2):
            for layout in times:
                fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
                m, xi = model.to(memory_format=fmt), x.contiguous(memory_format=fmt)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                with autocast(dev, dtype):
                    y = call(m, xi)
                y.float().mean().backward()
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                if rep >= 2:
                    times[layout].append(time.perf_counter() - t)
                m.zero_grad(set_to_none=True)
        a, b = statistics.median(times["nchw"]), statistics.median(times["channels_last"])
        out.append({"model": name, "size": list(size), "batch": int(x.shape[0]), "nchw_s": round(a, 5),
                    "channels_last_s": round(b, 5), "ratio_nchw_over_cl": round(a / b, 3)})
    return out


def teacher_plans(data: list[str], device: str, tiny: bool, work: Path, minutes: float, batch: int, lr: float,
                  default_batch: int, default_lr: float, with_default: bool = False) -> list[tuple[str, list[str], Path]]:
    """(name, argv, run folder) of the teachers trained side by side until the budget ends.

    ``ccp``: ``models/ccp`` continued from its weights at its own 96x64 (``fit.init_from``: the cpu
    preset's 8.19M UNet; a fresh optimiser; fp16 export under 16 MiB): the last GPU run's 192x128
    teacher from scratch lost 3.5 held-out points to it after 4 minutes. ``default`` (with
    ``with_default``): the demo's teacher (the 4.33M UNet at 64x64 on the default data's label-free
    pool), from scratch. Both anneal by time (``fit.optim.schedule=budget``) so that the last steps
    are taken at a low rate.
    """
    common = ["fit.steps=1000000", "fit.optim.schedule=budget", f"fit.max_minutes={minutes:.2f}", "fit.optim.warmup_steps=200",
              "fit.export_dtype=fp16", "fit.checkpoint_every=1000", "fit.sample_n=16",
              "fit.log_every=10" if tiny else "fit.log_every=100", "num_workers=0" if tiny else "num_workers=6", "-q"]
    init = str(work / "fit" / "teacher") if tiny else "models/ccp"
    ccp = ["fit-teacher", "--preset", "tiny" if tiny else "cpu", "--device", device, *data, f"fit.batch_size={batch}",
           f"fit.optim.lr={lr}", f"fit.init_from={init}", *common] + ([] if tiny else ["fit.size=[96,64]"])
    default_data = data if tiny else ["data=default"]
    default = ["fit-teacher", "--preset", "tiny" if tiny else "cpu", "--device", device, *default_data,
               f"fit.batch_size={default_batch}", f"fit.optim.lr={default_lr}", *common]
    if not tiny:
        default += ["fit.scale=1.0", "fit.model.block_out_channels=[32,64,128,128]"]
    plans_ = [("ccp", [*ccp, "--out", str(work / "teacher")], work / "teacher")]
    return plans_ + ([("default", [*default, "--out", str(work / "default-teacher")], work / "default-teacher")]
                     if with_default else [])
