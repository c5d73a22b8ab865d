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
4. ``default``: the shipped default teacher (``models/default``, 4.33M UNet at 64x64, the demo's):
   fit-teacher at its recipe (batch 256; target 8000 images/s), a head on it, then ``synthesize
   --n`` at 20 DDIM steps with the sampling switches off and on one by one (CPU noise and one
   encoding thread; ``teacher.noise_device=device``; ``synth.encode_workers=8``;
   ``teacher.channels_last``; ``teacher.compile``; samples/s between the first and the last shard,
   so a compile is left out; target 2000 samples/s), then ``synthesize --n 100000`` at the gpu
   preset for at most ``--big-seconds`` (samples written and samples/s come back either way).
5. ``teachers``: the rest of the time (``--teacher-minutes`` is kept for it: rows that would cut
   into it are skipped) continues the teacher every CCP figure rests on, ``models/ccp``, at its own
   96x64 from its weights (``fit.init_from``; the cpu preset's 8.19M UNet, fp16 export under 16
   MiB), annealed by ``fit.optim.schedule=budget``; it comes back as ``teacher.tar``, to be
   compared with ``models/ccp`` on the held-out heads here (benchmarks/teacher_curve.py) before it
   replaces it. ``--default-teacher`` also trains the default data's teacher beside it (the first
   run's second teacher; ``default_teacher.tar``).

Back in ``$OUT`` (flat, at most 8 files): ``results.json``, ``results.md``, ``gpu_check.log``,
``teacher.tar``, ``samples.png``, ``teacher_metrics.jsonl`` (and ``default_teacher.tar``).
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
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_rows import Row, bench_layouts, default_plans, plans, teacher_plans  # noqa: E402
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


def shard_progress(run: Path) -> tuple[int, float | None]:
    """(samples in finished shards, samples/s between the first and the last shard to finish).

    The first shard's time holds the start, the compile and the warm-up, so it is left out; a run
    cut by its time cap still has its finished shards."""
    sides = sorted((run / "shards").glob("*.json"), key=lambda p: p.stat().st_mtime) if (run / "shards").is_dir() else []
    counts = [json.loads(p.read_text())["count"] for p in sides]
    if len(sides) < 2:
        return sum(counts), None
    span = sides[-1].stat().st_mtime - sides[0].stat().st_mtime
    return sum(counts), round(sum(counts[1:]) / span, 2) if span > 0 else None


def synth_rate(log: Path) -> float | None:
    found = re.findall(r"\(([0-9.]+) samples/s\)", log.read_text()) if log.is_file() else []
    return float(found[-1]) if found else None


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


def measure_rows(s: Session, key: str, plan: list[Row], cap_s: float, reserve_s: float,
                 last_cap_s: float | None = None) -> None:
    """Run each row (skipped once only ``reserve_s`` is left) into ``s.results[key]``; the last row
    may have its own cap (``last_cap_s``: the 100k run)."""
    rows = []
    for k, (name, argv, out, how) in enumerate(plan):
        if s.left() - reserve_s < 20:
            rows.append({"command": name, "argv": argv, "rc": None, "seconds": 0, "images_per_s": None,
                         "error": "skipped: the time left is kept for the teachers"})
            s.log(f"{name}: skipped, {s.left():.0f}s left")
            continue
        cap = last_cap_s if last_cap_s is not None and k == len(plan) - 1 else cap_s * SLOW_ROWS.get(name, 1.0)
        rc, seconds, tail = s.command(argv, min(cap, s.left() - reserve_s))
        row: dict[str, Any] = {"command": name, "argv": argv, "rc": rc, "seconds": round(seconds, 1)}
        if how == "shards":
            row["samples"], row["images_per_s"] = shard_progress(out)
        else:
            row["images_per_s"] = steady_rate(out / "metrics.jsonl") if how == "metrics" else synth_rate(out / "synthesize.log")
        row["error"] = tail.strip().splitlines()[-1] if rc and tail.strip() else None
        rows.append(row)
        s.log(f"{name}: {row['images_per_s']} images/s, {seconds:.0f}s, exit {rc}")
        s.results[key] = rows
        s.save()


def phase_throughput(s: Session, data: list[str], device: str, tiny: bool, work: Path, cap_s: float,
                     reserve_s: float) -> None:
    """images/s of each command (rows skipped once only ``reserve_s`` is left), then the layouts."""
    measure_rows(s, "throughput", plans(data, device, tiny, work), cap_s, reserve_s)
    if s.left() - reserve_s < 20:
        s.results["layouts"] = [{"error": "skipped: the time left is kept for the teachers"}]
        return
    try:
        s.results["layouts"] = bench_layouts(device, tiny, reps=2 if tiny else 10)
    except Exception as exc:  # noqa: BLE001 - a measurement that fails is recorded, the session goes on
        s.results["layouts"] = [{"error": f"{type(exc).__name__}: {exc}"}]
    s.log(f"layouts: {s.results['layouts']}")


def phase_teachers(s: Session, data: list[str], device: str, tiny: bool, work: Path, batch: int, lr: float,
                   default_batch: int, default_lr: float, with_default: bool = False) -> None:
    """Train the CCP (and the default-data) teacher at once on the one device, each for the time left.

    They are small (launch-bound on a large GPU), so two processes share it better than one after the
    other. Returned: ``teacher.tar`` (the CCP teacher folder), ``samples.png``, ``teacher_metrics.jsonl``
    and ``default_teacher.tar`` (the default teacher folder with its samples, metrics and run.json).
    """
    minutes = 0.1 if tiny else max(0.5, (s.left() - 60) / 60)
    procs = []
    for name, argv, out in teacher_plans(data, device, tiny, work, minutes, batch, lr, default_batch, default_lr,
                                         with_default):
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
    lines += ["", "| default teacher | images or samples/s (steady) | samples written | wall s | exit |",
              "|---|---:|---:|---:|---:|"]
    for row in r.get("default", []):
        lines.append(f"| {row['command']} | {row['images_per_s']} | {row.get('samples', '')} | {row['seconds']} | {row['rc']} |")
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
    reserve = 0 if args.tiny else 60 * args.teacher_minutes
    phase_throughput(s, data, args.device, args.tiny, work, cap_s=60 if args.tiny else 45, reserve_s=reserve)
    s.save()
    measure_rows(s, "default", default_plans(data, args.device, args.tiny, work), cap_s=60 if args.tiny else 45,
                 reserve_s=reserve, last_cap_s=args.big_seconds)
    s.save()
    phase_teachers(s, data, args.device, args.tiny, work, args.teacher_batch, args.teacher_lr, args.default_batch,
                   args.default_lr, args.default_teacher)
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
    pr = sub.add_parser("run", help="on the device: tests, throughput, the default teacher's sampling, then the CCP "
                                    "teacher until --minutes")
    pr.add_argument("--data", help="the prepared CCP folder (.gpu/ccp)")
    pr.add_argument("--out", required=True)
    pr.add_argument("--work", default="/tmp/dtlabel-gpu-check", help="run folders (not returned)")
    pr.add_argument("--minutes", type=float, default=8.0)
    pr.add_argument("--device", default="cuda")
    pr.add_argument("--teacher-batch", type=int, default=64)
    pr.add_argument("--teacher-lr", type=float, default=1.5e-4, help="the CCP teacher's lr (models/ccp went on at 1.5e-4)")
    pr.add_argument("--big-seconds", type=float, default=120.0, help="cap of the synthesize --n 100000 row")
    pr.add_argument("--default-teacher", action="store_true", help="also train the default data's teacher anew")
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
