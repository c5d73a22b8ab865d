"""One short GPU session, prepared here: CUDA tests, throughput at the gpu preset, then a CCP teacher.

A GPU is lent for minutes, rarely, to a bare machine whose Python has torch, timm and friends but
not dtlabel's other dependencies, and which cannot reach a registry or ``../shared``. So the work
is split in two:

``prepare`` (here, once; it needs the package registry): writes a folder that travels with the
working tree (ignored by git, named in the device call's ``carry``): ``wheels/`` with the pinned
wheels the device image lacks (the versions of this environment, for CPython 3.12) and ``ccp/``,
the CCP folder resized to the data size (192x128 JPEG, quality 85, coarse masks by nearest). The
two take about 30 MiB, and with the tracked files about 59 of the 64 MiB a device call carries::

    python benchmarks/gpu_check.py prepare --data-root PATH/ccp --out .gpu

``run`` (on the device; at most ``--minutes`` of wall time, results written after every phase so
a cut run still returns what it measured)::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl &&
    PYTHONPATH=/tmp/site:. python3 benchmarks/gpu_check.py run --data .gpu/ccp --out $OUT --minutes 9.2

1. ``env``: torch, CUDA, the device's name and bf16 support.
2. ``tests``: ``tests/test_cuda.py`` (skipped on machines without CUDA).
3. ``throughput``: fit-teacher, pretrain, train-head, synthesize (sampled and ``--images``) and
   train-student at the gpu preset (AMP: bf16 where the GPU has it), a few dozen steps each;
   images/s is taken between the run's second and last metrics lines (warm-up left out), and a
   side-by-side of NCHW against channels_last for the student and the teacher UNet.
4. ``teachers``: the rest of the time (``--teacher-minutes`` is kept for it: throughput rows that
   would cut into it are skipped) trains two teachers side by side on the one GPU, both small and
   launch-bound there, both annealed by ``fit.optim.schedule=budget``: a CCP teacher (the cpu preset's
   8.19M UNet, whose fp16 export stays under 16 MiB) at 192x128, and the default data's teacher
   (``models/default``'s 4.33M UNet at 64x64, the demo's). Their folders come back as
   ``teacher.tar`` and ``default_teacher.tar`` (the latter with its samples, metrics and run.json).

Back in ``$OUT`` (flat, at most 8 files): ``results.json``, ``results.md``, ``gpu_check.log``,
``teacher.tar``, ``samples.png``, ``teacher_metrics.jsonl``, ``default_teacher.tar``.
``--tiny --device cpu`` runs every phase on the tiny preset and the embedded default data in about
a minute (tests/test_gpu_check.py). What the first run on an H200 measured: docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

ROOT = Path(__file__).resolve().parents[1]
# what the device image lacks (docs of the device kind list its packages), pinned to this environment
DEVICE_MISSING = ("diffusers", "segmentation-models-pytorch", "albumentations", "albucore", "stringzilla", "simsimd",
                  "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions",
                  "hydra-core", "omegaconf", "antlr4-python3-runtime", "pycocotools", "importlib-metadata")
PURE_SDIST = ("antlr4-python3-runtime",)  # published as an sdist only: built here into a pure-Python wheel
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")


# ----------------------------------------------------------------------------------------- prepare
def prepare(data_root: Path, out: Path, size: tuple[int, int] = (192, 128), wheels: bool = True, quality: int = 85) -> None:
    """Write ``out/ccp`` (resized CCP, the coarse masks) and ``out/wheels`` (the pinned wheels).

    JPEG quality 85 keeps the pack (about 30 MiB with the wheels) and the tracked files inside what
    a device call carries; at quality 90 (33.5 MiB) the first call on an H200 was refused as too large.
    """
    from PIL import Image

    h, w = size
    dst = out / "ccp"
    for sub, resample, kind in (("labeled/images", Image.BILINEAR, "jpg"), ("unlabeled/images", Image.BILINEAR, "jpg"),
                                ("labeled/masks_coarse8", Image.NEAREST, "png")):
        (dst / sub).mkdir(parents=True, exist_ok=True)
        for f in sorted((data_root / sub).iterdir()):
            if f.suffix.lower() not in (".jpg", ".jpeg", ".png"):
                continue
            im = Image.open(f)
            im = im.convert("RGB") if kind == "jpg" else im
            im = im.resize((w, h), resample)
            target = dst / sub / (f.stem + f.suffix)
            if kind == "jpg":
                im.save(target, quality=quality)
            else:
                im.save(target)
    for name in ("classes.json", "LICENSE", "README.md"):
        if (data_root / name).is_file():
            shutil.copy2(data_root / name, dst / name)
    if wheels:
        whl = out / "wheels"
        whl.mkdir(parents=True, exist_ok=True)
        pins = [f"{p}=={importlib.metadata.version(p)}" for p in DEVICE_MISSING]
        binary = [p for p in pins if p.split("==")[0] not in PURE_SDIST]
        plat = [a for p in PLATFORMS for a in ("--platform", p)]
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", *plat, "-d", str(whl), *binary], check=True)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(whl),
                        *[p for p in pins if p.split("==")[0] in PURE_SDIST]], check=True)
    pack = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    tracked = subprocess.run(["git", "ls-files", "-z"], capture_output=True, cwd=ROOT).stdout.decode().split("\0")
    tree = sum((ROOT / f).stat().st_size for f in tracked if f and (ROOT / f).is_file()) / 2**20
    print(f"{out}: {pack:.1f} MiB; with the {tree:.1f} MiB of tracked files {pack + tree:.1f} of the 64 MiB a device "
          f"call carries{' (too much: shrink the pack)' if pack + tree > 63 else ''}; name it in the call's carry")


# ---------------------------------------------------------------------------------------------- run
class Session:
    """The deadline, the log and the results file of one ``run``."""

    def __init__(self, out: Path, minutes: float) -> None:
        self.out, self.t0, self.deadline = out, time.time(), time.time() + 60 * minutes
        self.results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "minutes": minutes}
        out.mkdir(parents=True, exist_ok=True)
        self.log_path = out / "gpu_check.log"

    def left(self) -> float:
        return self.deadline - time.time()

    def log(self, text: str) -> None:
        line = f"[{time.time() - self.t0:7.1f}s] {text}"
        print(line, flush=True)
        with self.log_path.open("a") as f:
            f.write(line + "\n")

    def save(self) -> None:
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.out / "results.json")

    def command(self, argv: list[str], cap_s: float) -> tuple[int, float, str]:
        """Run ``python -m dtlabel.cli ARGV`` for at most ``cap_s`` (and the deadline); (rc, seconds, tail)."""
        timeout = max(5.0, min(cap_s, self.left()))
        self.log("+ dtlabel " + " ".join(argv))
        t = time.time()
        try:
            p = subprocess.run([sys.executable, "-m", "dtlabel.cli", *argv], capture_output=True, text=True,
                               timeout=timeout, cwd=ROOT)
            rc, tail = p.returncode, (p.stdout + p.stderr)[-1500:]
        except subprocess.TimeoutExpired as e:
            rc, tail = 124, str(e.stderr or "")[-1500:]
        seconds = time.time() - t
        if rc:
            self.log(f"  exit {rc} after {seconds:.0f}s:\n{tail}")
        return rc, seconds, tail


# rows whose start and first logged lines took most of a 45 s cap on the H200 (docs/RESULTS.md): twice the cap
SLOW_ROWS = {"fit-teacher": 2.0, "synthesize (pool)": 2.0}


def steady_rate(metrics: Path) -> float | None:
    """Images/s between the second and the last training line of ``metrics.jsonl`` (warm-up left out)."""
    if not metrics.is_file():
        return None
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r.get("images_per_s") and r.get("elapsed_s")]
    if len(rows) < 3:
        return rows[-1]["images_per_s"] if rows else None
    a, b = rows[1], rows[-1]
    seen = b["images_per_s"] * b["elapsed_s"] - a["images_per_s"] * a["elapsed_s"]
    return round(seen / max(b["elapsed_s"] - a["elapsed_s"], 1e-9), 2)


def synth_rate(log: Path) -> float | None:
    found = re.findall(r"\(([0-9.]+) samples/s\)", log.read_text()) if log.is_file() else []
    return float(found[-1]) if found else None


def plans(data: list[str], device: str, tiny: bool, work: Path) -> list[tuple[str, list[str], Path, str]]:
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


def data_args(data: Path | None, tiny: bool) -> list[str]:
    if tiny:
        return ["data=default", "data.n_unlabeled=24", "data.n_labeled=24", "data.n_val=8", "data.n_test=16"]
    return ["data=ccp", f"data.root={data}"]


def phase_env(s: Session, device: str) -> None:
    import torch

    env: dict[str, Any] = {"torch": torch.__version__, "python": sys.version.split()[0], "device": device,
                           "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        env.update(gpu=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)),
                   bf16=torch.cuda.is_bf16_supported(), memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    for pkg in ("diffusers", "timm", "segmentation-models-pytorch", "transformers", "huggingface-hub"):
        try:
            env[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            env[pkg] = None
    s.results["env"] = env
    s.log(f"env: {env}")


def phase_tests(s: Session, cap_s: float) -> None:
    s.log("+ pytest tests/test_cuda.py")
    t = time.time()
    try:
        p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "", "-p", "no:cacheprovider", "tests/test_cuda.py"],
                           capture_output=True, text=True, timeout=max(5.0, min(cap_s, s.left())), cwd=ROOT)
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = 124, str(e.stdout or "")
    summary = [x for x in out.strip().splitlines() if x.strip()][-1:] or [""]
    s.results["tests"] = {"rc": rc, "summary": summary[0], "seconds": round(time.time() - t, 1)}
    s.log(out[-4000:])


def phase_throughput(s: Session, data: list[str], device: str, tiny: bool, work: Path, cap_s: float,
                     reserve_s: float) -> None:
    """images/s of each command (rows skipped once only ``reserve_s`` is left), then the layouts."""
    rows = []
    for name, argv, out, how in plans(data, device, tiny, work):
        if s.left() - reserve_s < 20:
            rows.append({"command": name, "argv": argv, "rc": None, "seconds": 0, "images_per_s": None,
                         "error": "skipped: the time left is kept for the teachers"})
            s.log(f"{name}: skipped, {s.left():.0f}s left")
            continue
        rc, seconds, tail = s.command(argv, min(cap_s * SLOW_ROWS.get(name, 1.0), s.left() - reserve_s))
        rate = steady_rate(out / "metrics.jsonl") if how == "metrics" else synth_rate(out / "synthesize.log")
        rows.append({"command": name, "argv": argv, "rc": rc, "seconds": round(seconds, 1), "images_per_s": rate,
                     "error": tail.strip().splitlines()[-1] if rc and tail.strip() else None})
        s.log(f"{name}: {rate} images/s, {seconds:.0f}s, exit {rc}")
        s.results["throughput"] = rows
        s.save()
    if s.left() - reserve_s < 20:
        s.results["layouts"] = [{"error": "skipped: the time left is kept for the teachers"}]
        return
    try:
        s.results["layouts"] = bench_layouts(device, tiny, reps=2 if tiny else 10)
    except Exception as exc:  # noqa: BLE001 - a measurement that fails is recorded, the session goes on
        s.results["layouts"] = [{"error": f"{type(exc).__name__}: {exc}"}]
    s.log(f"layouts: {s.results['layouts']}")


def teacher_plans(data: list[str], device: str, tiny: bool, work: Path, minutes: float, batch: int, lr: float,
                  default_batch: int, default_lr: float) -> list[tuple[str, list[str], Path]]:
    """(name, argv, run folder) of the teachers trained side by side until the budget ends.

    ``ccp``: the cpu preset's 8.19M UNet at 192x128 on CCP (fp16 export under 16 MiB). ``default``:
    the demo's teacher (``models/default``: the 4.33M UNet at 64x64 on the default data's label-free
    pool, dtlabel/configs/demo/cpu.yaml), trained here two orders of magnitude longer than a CPU hour gives.
    Both anneal by time (``fit.optim.schedule=budget``) so that the last steps are taken at a low rate.
    """
    common = ["fit.steps=1000000", "fit.optim.schedule=budget", f"fit.max_minutes={minutes:.2f}", "fit.optim.warmup_steps=200",
              "fit.export_dtype=fp16", "fit.checkpoint_every=1000", "fit.sample_n=16",
              "fit.log_every=10" if tiny else "fit.log_every=100", "num_workers=0" if tiny else "num_workers=6", "-q"]
    ccp = ["fit-teacher", "--preset", "tiny" if tiny else "cpu", "--device", device, *data, f"fit.batch_size={batch}",
           f"fit.optim.lr={lr}", *common] + ([] if tiny else ["fit.size=[192,128]"])
    default_data = data if tiny else ["data=default"]
    default = ["fit-teacher", "--preset", "tiny" if tiny else "cpu", "--device", device, *default_data,
               f"fit.batch_size={default_batch}", f"fit.optim.lr={default_lr}", *common]
    if not tiny:
        default += ["fit.scale=1.0", "fit.model.block_out_channels=[32,64,128,128]"]
    return [("ccp", [*ccp, "--out", str(work / "teacher")], work / "teacher"),
            ("default", [*default, "--out", str(work / "default-teacher")], work / "default-teacher")]


def phase_teachers(s: Session, data: list[str], device: str, tiny: bool, work: Path, batch: int, lr: float,
                   default_batch: int, default_lr: float) -> None:
    """Train the CCP and the default-data teacher at once on the one device, each for the time left.

    They are small (launch-bound on a large GPU), so two processes share it better than one after the
    other. Returned: ``teacher.tar`` (the CCP teacher folder), ``samples.png``, ``teacher_metrics.jsonl``
    and ``default_teacher.tar`` (the default teacher folder with its samples, metrics and run.json).
    """
    minutes = 0.1 if tiny else max(0.5, (s.left() - 60) / 60)
    procs = []
    for name, argv, out in teacher_plans(data, device, tiny, work, minutes, batch, lr, default_batch, default_lr):
        s.log(f"+ [{name}] dtlabel " + " ".join(argv))
        log = (work / f"{name}-teacher.log").open("w")
        procs.append((name, argv, out, log, time.time(),
                      subprocess.Popen([sys.executable, "-m", "dtlabel.cli", *argv], stdout=log, stderr=subprocess.STDOUT,
                                       cwd=ROOT)))
    s.results["teachers"] = {}
    for name, argv, out, log, t, proc in procs:
        try:
            rc = proc.wait(timeout=max(5.0, s.left() - 10))
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = 124
        seconds = time.time() - t
        log.close()
        if rc:
            s.log(f"  [{name}] exit {rc} after {seconds:.0f}s:\n{(work / f'{name}-teacher.log').read_text()[-1500:]}")
        desc = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else {}
        result: dict[str, Any] = {"argv": argv, "rc": rc, "seconds": round(seconds, 1),
                                  "images_per_s": steady_rate(out / "metrics.jsonl"), "run": desc}
        tar_name = "teacher.tar" if name == "ccp" else f"{name}_teacher.tar"
        if (out / "teacher" / "model_index.json").is_file():
            with tarfile.open(s.out / (tar_name + ".tmp"), "w") as tar:
                tar.add(out / "teacher", arcname="teacher")
                if name != "ccp":  # one file per teacher beyond the CCP one: the return holds 8 files
                    for extra in ("samples.png", "metrics.jsonl", "run.json"):
                        if (out / extra).is_file():
                            tar.add(out / extra, arcname=extra)
            os.replace(s.out / (tar_name + ".tmp"), s.out / tar_name)
            result["tar_mib"] = round((s.out / tar_name).stat().st_size / 2**20, 2)
        if name == "ccp":
            for src, dst in ((out / "samples.png", "samples.png"), (out / "metrics.jsonl", "teacher_metrics.jsonl")):
                if src.is_file():
                    shutil.copy2(src, s.out / dst)
        s.results["teachers"][name] = result
        s.save()
        s.log(f"[{name}] teacher: exit {rc}, {seconds:.0f}s, {result['images_per_s']} images/s, "
              f"run {desc.get('steps')} steps")


def write_table(s: Session) -> None:
    r = s.results
    env = r.get("env", {})
    lines = [f"GPU check {r['started']}: {env.get('gpu', env.get('device'))}, torch {env.get('torch')}, "
             f"CUDA {env.get('cuda')}, bf16 {env.get('bf16')}", ""]
    if "tests" in r:
        lines += [f"tests/test_cuda.py: {r['tests']['summary']} (exit {r['tests']['rc']})", ""]
    lines += ["| command | images/s (steady) | wall s | exit |", "|---|---:|---:|---:|"]
    for row in r.get("throughput", []):
        lines.append(f"| {row['command']} | {row['images_per_s']} | {row['seconds']} | {row['rc']} |")
    lines += ["", "| model | size | batch | NCHW s | channels_last s | NCHW / channels_last |", "|---|---|---:|---:|---:|---:|"]
    for row in r.get("layouts", []):
        if "error" in row:
            lines.append(f"| {row['error']} | | | | | |")
        else:
            lines.append(f"| {row['model']} | {row['size']} | {row['batch']} | {row['nchw_s']} | {row['channels_last_s']} | "
                         f"{row['ratio_nchw_over_cl']} |")
    for name, t in r.get("teachers", {}).items():
        run = t.get("run", {})
        lines += ["", f"{name} teacher: {run.get('steps')} steps in {t['seconds']} s, {t['images_per_s']} images/s, "
                      f"final loss {run.get('final_loss')}, stopped early {run.get('stopped_early')}, tar {t.get('tar_mib')} MiB"]
    (s.out / "results.md").write_text("\n".join(lines) + "\n")


def run(args: argparse.Namespace) -> int:
    s = Session(Path(args.out), args.minutes)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data = data_args(Path(args.data) if args.data else None, args.tiny)
    phase_env(s, args.device)
    s.save()
    if not args.skip_tests:
        phase_tests(s, cap_s=90)
        s.save()
    phase_throughput(s, data, args.device, args.tiny, work, cap_s=60 if args.tiny else 45,
                     reserve_s=0 if args.tiny else 60 * args.teacher_minutes)
    s.save()
    phase_teachers(s, data, args.device, args.tiny, work, args.teacher_batch, args.teacher_lr, args.default_batch,
                   args.default_lr)
    s.results["seconds"] = round(time.time() - s.t0, 1)
    s.save()
    write_table(s)
    s.log((s.out / "results.md").read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="verb", required=True)
    pp = sub.add_parser("prepare", help="here: the data pack and the wheels that travel to the device")
    pp.add_argument("--data-root", required=True, type=Path)
    pp.add_argument("--out", default=".gpu", type=Path)
    pp.add_argument("--no-wheels", action="store_true")
    pp.add_argument("--quality", type=int, default=85, help="JPEG quality of the resized photos")
    pr = sub.add_parser("run", help="on the device: tests, throughput, then the CCP and default teachers until --minutes")
    pr.add_argument("--data", help="the prepared CCP folder (.gpu/ccp)")
    pr.add_argument("--out", required=True)
    pr.add_argument("--work", default="/tmp/dtlabel-gpu-check", help="run folders (not returned)")
    pr.add_argument("--minutes", type=float, default=8.0)
    pr.add_argument("--device", default="cuda")
    pr.add_argument("--teacher-batch", type=int, default=64)
    pr.add_argument("--teacher-lr", type=float, default=3e-4)
    pr.add_argument("--default-batch", type=int, default=256, help="the default-data teacher's batch")
    pr.add_argument("--default-lr", type=float, default=4e-4)
    pr.add_argument("--teacher-minutes", type=float, default=5.0,
                    help="kept for the teachers: throughput rows that would cut into it are skipped")
    pr.add_argument("--tiny", action="store_true", help="tiny preset, embedded data (tests)")
    pr.add_argument("--skip-tests", action="store_true")
    args = p.parse_args(argv)
    if args.verb == "prepare":
        prepare(args.data_root, args.out, wheels=not args.no_wheels, quality=args.quality)
        return 0
    if not args.tiny and not args.data:
        p.error("run needs --data (the folder prepare wrote) unless --tiny")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
