"""What ``amp=bf16`` buys on a CPU: one optimisation step of each training command, float32 against
``torch.autocast("cpu", torch.bfloat16)``, side by side in one run.

For each training command the script builds the command's own task object (``FitTask``,
``HeadTask``, ``StudentTask``) at the preset's size, on random weights and random images and masks
(timing does not depend on them; nothing is downloaded), once for ``amp=auto`` (float32 on a CPU)
and once for ``amp=bf16``, both from the same initial weights. The engine's settings come from the
task's own ``LoopConfig`` and the precision from ``dtlabel.device.amp_dtype(device, amp)``, as in
``dtlabel.engine.train``. One timed step is what the engine does per step: the task's micro-batches
(for train-head that includes the teacher's features of the batch), ``training_step`` under
``dtlabel.device.autocast``, backward, gradient clipping, AdamW and ``after_step`` (fit-teacher's
EMA). The batch is drawn from the task's stream once, before timing, and reused: the data pipeline
does not depend on the precision.

- fit-teacher: the preset's UNet at the teacher size (cpu: 96x64 for the 192x128 CCP data), batch
  ``fit.batch_size``; denoising MSE.
- train-head: the preset's interpreter on the features of a random-weight DDPM teacher of the
  preset's UNet (saved as a diffusers ``DDPMPipeline`` folder and loaded like ``--teacher DIR``
  with the preset's ``teacher`` section), batch ``head.batch_size`` in micro-batches of
  ``head.micro_batch`` (teacher batch ``head.teacher_batch``), logits at the data size; CE + Dice.
  The teacher runs outside autocast, as in the engine, and in float32 on a CPU whatever ``amp``.
- train-student: the preset's smp student at the data size, batch ``student.batch_size``, real
  labels only; CE + Dice.

Each configuration is warmed up with one step (the loss of that first step, from identical weights,
batch and seeds, gives the bf16 loss difference), then ``--reps`` steps are timed interleaved
(fp32, bf16, bf16, fp32, ...) so machine noise hits both alike; the table gives medians and the
ratio fp32 / bf16 (above 1: bf16 is faster). On a CPU without native bf16 (no avx512_bf16 / AMX)
bf16 autocast falls back to slow kernels; when a warm-up bf16 step is more than ``--max-slowdown``
times the fp32 one, its bf16 side is not repeated and the warm-up step is reported (marked).

    OMP_NUM_THREADS=1 python benchmarks/amp_speed.py --reps 5 --out amp_speed.json
    OMP_NUM_THREADS=1 python benchmarks/amp_speed.py --preset tiny --reps 2     # smoke run, seconds
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dtlabel.data.base import LabeledSource  # noqa: E402

MODES = ("auto", "bf16")  # amp=auto is float32 on a CPU
COMMANDS = ("fit-teacher", "train-head", "train-student")
DATA = {"cpu": "ccp", "tiny": "default"}  # the data config whose size the preset is measured at


class RandomSource(LabeledSource):
    """Random RGB images with blocky random masks of ``num_classes`` classes at ``size``."""

    def __init__(self, n: int, size: tuple[int, int], num_classes: int, seed: int = 0) -> None:
        self._ids = [f"r{i:04d}" for i in range(n)]
        self.size, self.seed = size, seed
        self.class_names = [f"class{c}" for c in range(num_classes)]
        self.ignore_index = 255

    @property
    def ids(self) -> list[str]:
        return self._ids

    def _rng(self, id_: str) -> np.random.Generator:
        return np.random.default_rng(self.seed * 100_000 + int(id_[1:]))

    def image(self, id_: str) -> np.ndarray:
        return self._rng(id_).integers(0, 256, (*self.size, 3), dtype=np.uint8)

    def mask(self, id_: str) -> np.ndarray:
        h, w = self.size
        blocks = self._rng(id_).integers(0, self.num_classes, (-(-h // 16), -(-w // 16)), dtype=np.uint8)
        return np.kron(blocks, np.ones((16, 16), np.uint8))[:h, :w]


@dataclass
class Config:
    """One command at one precision: the task, its optimiser and a fixed batch."""

    task: Any
    opt: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    grad_clip: float
    dtype: torch.dtype | None
    batch: Any
    seed: int


@dataclass
class Row:
    command: str
    size: str
    batch: str
    configs: dict[str, Config] = field(default_factory=dict)
    warmup: dict[str, float] = field(default_factory=dict)
    first_loss: dict[str, float] = field(default_factory=dict)
    times: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in MODES})
    losses: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in MODES})
    repeat_bf16: bool = True


def step(cfg: Config, step_index: int, device: torch.device) -> float:
    """One engine step (as ``dtlabel.engine.loop.train``): micro-batches, autocast forward, backward,
    clipping, AdamW, ``after_step``; returns the step's loss."""
    from dtlabel import seeds
    from dtlabel.device import autocast

    task = cfg.task
    torch.manual_seed(seeds.torch_step(cfg.seed, step_index, 0))
    cfg.opt.zero_grad(set_to_none=True)
    total = 0.0
    for part, weight in task.micro_batches(cfg.batch, step_index):
        with autocast(device, cfg.dtype):
            losses = task.training_step(task.model, part, step_index)
        loss = losses["loss"].float()
        if not torch.isfinite(loss):
            raise RuntimeError(f"{task.name}: non-finite loss {loss.item()} at step {step_index} ({cfg.dtype})")
        (loss * float(weight)).backward()
        total += float(weight) * float(loss.detach())
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(cfg.params, cfg.grad_clip)
    cfg.opt.step()
    task.after_step(step_index)
    return total


def _optimiser(task: Any, lc: Any, device: torch.device, batch: Any) -> Config:
    from dtlabel.device import amp_dtype

    params = [p for p in task.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(lc.lr), betas=tuple(float(b) for b in lc.betas),
                            weight_decay=float(lc.weight_decay))
    return Config(task, opt, params, float(lc.grad_clip), amp_dtype(device, lc.amp), batch, int(lc.seed))


def _compose(command: str, preset: str) -> Any:
    from dtlabel.config import compose

    return compose(command, [f"preset={preset}", f"data={DATA[preset]}"])


def build_fit(preset: str, seed: int, device: torch.device) -> Row:
    from diffusers import DDPMScheduler

    from dtlabel.teachers.fit import FitTask, build_unet, loop_config, teacher_size
    from dtlabel.teachers.fit_arch import scheduler_settings

    cfg = _compose("fit_teacher", preset)
    fit = cfg.fit
    size = teacher_size(fit, cfg.data)
    torch.manual_seed(seed)
    unet = build_unet(fit.model, size).to(device)
    gen = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, *size, generator=gen) * 2 - 1 for _ in range(2 * int(fit.batch_size))]
    row = Row("fit-teacher", f"{size[0]}x{size[1]}", str(int(fit.batch_size)))
    for mode in MODES:
        task = FitTask(copy.deepcopy(unet), DDPMScheduler(**scheduler_settings(fit, None)), images, fit, seed, device)
        batch = next(task.batches(0))
        row.configs[mode] = _optimiser(task, loop_config(fit, seed, mode), device, batch)
    n = sum(p.numel() for p in unet.parameters()) / 1e6
    row.size += f" ({n:.2f}M UNet)"
    return row


def build_head(preset: str, seed: int, device: torch.device, classes: int, folder: Path) -> Row:
    from diffusers import DDPMPipeline, DDPMScheduler

    from dtlabel.data import data_size
    from dtlabel.heads import create_head
    from dtlabel.heads.reading import TeacherFeatures
    from dtlabel.heads.task import HeadTask, head_kwargs
    from dtlabel.teachers import teacher_from_config
    from dtlabel.teachers.fit import build_unet, teacher_size
    from dtlabel.teachers.fit_arch import scheduler_settings

    fcfg = _compose("fit_teacher", preset)
    tsize = teacher_size(fcfg.fit, fcfg.data)
    torch.manual_seed(seed)
    unet = build_unet(fcfg.fit.model, tsize)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**scheduler_settings(fcfg.fit, None))).save_pretrained(
        folder, safe_serialization=True)

    cfg = _compose("train_head", preset)
    hc, kind = cfg.head, str(cfg.head.kind)
    size = data_size(cfg.data)
    source = RandomSource(max(10, int(hc.batch_size)), size, classes, seed)
    head = None
    row = Row("train-head", "", "")
    for mode in MODES:
        teacher = teacher_from_config(folder, cfg.teacher, amp=mode).to(device)
        if head is None:
            torch.manual_seed(seed)
            head = create_head(kind, teacher.feature_spec, classes, **head_kwargs(hc, kind)).to(device)
            spec = teacher.feature_spec
        feats = TeacherFeatures(teacher, None, chunk=int(hc.teacher_batch) if hc.get("teacher_batch") else None)
        task = HeadTask(copy.deepcopy(head), feats, source, source.ids, [], size, hc, seed)
        batch = next(task.batches(0))
        row.configs[mode] = _optimiser(task, task.loop_config(mode, None), device, batch)
    t = row.configs["auto"].task
    row.size = (f"{kind} width {head_kwargs(hc, kind).get('width')}, teacher {tsize[0]}x{tsize[1]} "
                f"(t={','.join(map(str, teacher.timesteps))}, {len(spec)} blocks), logits {size[0]}x{size[1]}")
    row.batch = f"{t.batch} (micro {t.micro}, teacher {hc.get('teacher_batch') or t.batch})"
    return row


def build_student(preset: str, seed: int, device: torch.device, classes: int) -> Row:
    from dtlabel.data import data_size
    from dtlabel.students.model import create_student
    from dtlabel.students.task import StudentTask, smp_kwargs

    cfg = _compose("train_student", preset)
    sc = cfg.student
    size = data_size(cfg.data)
    source = RandomSource(2 * int(sc.batch_size), size, classes, seed)
    torch.manual_seed(seed)
    model, spec = create_student(str(sc.arch), str(sc.encoder), classes, **smp_kwargs(sc))
    model.to(device)
    row = Row("train-student", f"{spec.arch}/{spec.encoder_name} {size[0]}x{size[1]}", str(int(sc.batch_size)))
    for mode in MODES:
        task = StudentTask(copy.deepcopy(model), source, source.ids, None, [], [], size, sc, seed, device, mode)
        batch = next(task.batches(0))
        row.configs[mode] = _optimiser(task, task.loop_config(None), device, batch)
    return row


def machine() -> dict[str, Any]:
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": model, "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
            "bf16_flags": sorted(f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f"))}


def _fmt(x: float) -> str:
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def table(rows: list[Row]) -> str:
    lines = ["| command | size | batch | fp32 s/step | bf16 s/step | ratio fp32/bf16 | loss rel. diff |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        f32 = statistics.median(r.times["auto"])
        b16 = statistics.median(r.times["bf16"])
        mark = "" if r.repeat_bf16 else " *"
        a, b = r.first_loss["auto"], r.first_loss["bf16"]
        rel = abs(b - a) / max(abs(a), 1e-12)
        lines.append(f"| {r.command} | {r.size} | {r.batch} | {_fmt(f32)} | {_fmt(b16)}{mark} | {f32 / b16:.2f} | "
                     f"{rel:.1e} |")
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="timed steps per configuration (after one warm-up step)")
    ap.add_argument("--preset", choices=sorted(DATA), default="cpu", help="cpu: the measurement; tiny: a smoke run")
    ap.add_argument("--commands", default=",".join(COMMANDS), help="comma-separated subset of " + ", ".join(COMMANDS))
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-slowdown", type=float, default=3.0,
                    help="do not repeat bf16 steps that took more than this many fp32 steps in the warm-up "
                         "(their warm-up step is reported; 0: always repeat)")
    ap.add_argument("--out", type=Path, default=None, help="write the raw timings as JSON")
    args = ap.parse_args(argv)
    args.commands = [c.strip() for c in args.commands.split(",") if c.strip()]
    bad = [c for c in args.commands if c not in COMMANDS]
    if bad or not args.commands:
        ap.error(f"--commands: unknown {bad}; choose from {', '.join(COMMANDS)}")
    if args.reps < 1:
        ap.error("--reps must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    command = "OMP_NUM_THREADS=1 python benchmarks/amp_speed.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    info = machine()
    print(f"{info['cpu']}, torch {info['torch']} ({info['cpu_capability']}), {info['threads']} thread(s), "
          f"bf16-related CPU flags: {', '.join(info['bf16_flags']) or 'none'}", flush=True)

    with tempfile.TemporaryDirectory(prefix="amp_speed_") as tmp:
        builders: dict[str, Callable[[], Row]] = {
            "fit-teacher": lambda: build_fit(args.preset, args.seed, device),
            "train-head": lambda: build_head(args.preset, args.seed, device, args.classes, Path(tmp) / "teacher"),
            "train-student": lambda: build_student(args.preset, args.seed, device, args.classes),
        }
        rows = [builders[c]() for c in args.commands]
        print(f"built {len(rows)} command(s) in {time.perf_counter() - t_start:.1f} s; warming up", flush=True)

        for r in rows:  # warm-up: step 0 of both precisions from identical weights, batch and seeds
            for mode in MODES:
                t0 = time.perf_counter()
                r.first_loss[mode] = step(r.configs[mode], 0, device)
                r.warmup[mode] = time.perf_counter() - t0
                print(f"  {r.command} amp={mode}: warm-up {r.warmup[mode]:.2f} s, loss {r.first_loss[mode]:.5f}",
                      flush=True)
            if args.max_slowdown > 0 and r.warmup["bf16"] > args.max_slowdown * r.warmup["auto"]:
                r.repeat_bf16 = False
                r.times["bf16"].append(r.warmup["bf16"])
                r.losses["bf16"].append(r.first_loss["bf16"])
                print(f"  {r.command}: bf16 is {r.warmup['bf16'] / r.warmup['auto']:.1f}x slower than fp32 in the "
                      f"warm-up (> --max-slowdown {args.max_slowdown:g}); its bf16 steps are not repeated", flush=True)

        for k in range(args.reps):  # interleaved: fp32 bf16 | bf16 fp32 | ...
            order = MODES if k % 2 == 0 else MODES[::-1]
            for r in rows:
                for mode in order:
                    if mode == "bf16" and not r.repeat_bf16:
                        continue
                    t0 = time.perf_counter()
                    loss = step(r.configs[mode], k + 1, device)
                    r.times[mode].append(time.perf_counter() - t0)
                    r.losses[mode].append(loss)
            print(f"  rep {k + 1}/{args.reps} done ({time.perf_counter() - t_start:.0f} s)", flush=True)

    wall = time.perf_counter() - t_start
    finite = all(math.isfinite(x) for r in rows for m in MODES for x in [*r.losses[m], r.first_loss[m]])
    print()
    print(f"One optimisation step per training command, preset {args.preset}, CPU, {args.threads} thread(s); "
          f"median of {args.reps} interleaved steps after one warm-up; random weights and data. {info['cpu']}, "
          f"torch {info['torch']}, CPU capability {info['cpu_capability']}, bf16 CPU flags: "
          f"{', '.join(f for f in info['bf16_flags'] if 'bf16' in f) or 'none'}.\n")
    print(table(rows))
    print()
    if not all(r.repeat_bf16 for r in rows):
        print(f"\\* bf16 more than {args.max_slowdown:g}x slower than fp32 in the warm-up: the warm-up step "
              "(one step) is reported, not a median.\n")
    print("ratio fp32/bf16 above 1: bf16 is faster. loss rel. diff: |loss_bf16 - loss_fp32| / |loss_fp32| of the "
          f"first step (same weights, batch and seeds). All losses finite: {'yes' if finite else 'NO'}.\n")
    print(f"Command: `{command}`  \nWall time: {wall:.0f} s")

    if args.out is not None:
        rec = {"command": command, "preset": args.preset, "reps": args.reps, "max_slowdown": args.max_slowdown,
               "machine": info, "wall_s": round(wall, 1), "all_losses_finite": finite, "rows": [
                   {"command": r.command, "size": r.size, "batch": r.batch, "warmup_s": r.warmup,
                    "first_loss": r.first_loss, "bf16_repeated": r.repeat_bf16,
                    "times_s": {("fp32" if m == "auto" else m): v for m, v in r.times.items()},
                    "losses": {("fp32" if m == "auto" else m): v for m, v in r.losses.items()},
                    "median_s": {("fp32" if m == "auto" else m): statistics.median(v) for m, v in r.times.items()}}
                   for r in rows]}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rec, indent=2) + "\n")
        print(f"raw timings: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
