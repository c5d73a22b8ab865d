"""dtlabel as an installed package: a wheel built from the sources carries its configs and the
default data's teacher, and its ``dtlabel demo --preset tiny`` runs away from the source tree.

No network: the wheel is built without build isolation and installed without dependencies into
a target folder; the dependencies are the ones this environment already has.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pip(*args: str, cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args, "--no-deps", "--no-index", "-q"], cwd=cwd,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_wheel_runs_the_demo_outside_the_source_tree(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a clean copy: setuptools' build/ of the checkout could hold stale files
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "dtlabel", src / "dtlabel", ignore=shutil.ignore_patterns("__pycache__"))
    _pip("wheel", str(src), "--no-build-isolation", "-w", str(tmp_path / "wheel"), cwd=tmp_path)
    (wheel,) = (tmp_path / "wheel").glob("dtlabel-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"dtlabel/configs/demo.yaml", "dtlabel/configs/preset/tiny.yaml",
            "dtlabel/models/default/model_index.json"} <= names
    assert not any(n.startswith(("models/", "dtlabel/models/ccp")) for n in names)  # CCP's teacher stays out

    target = tmp_path / "site"
    _pip("install", "--target", str(target), str(wheel), cwd=tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    env.pop("DTLABEL_CONFIG_DIR", None)
    where = subprocess.run([sys.executable, "-c", "import dtlabel; print(dtlabel.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True)
    assert Path(where.stdout.strip()).is_relative_to(target)  # the installed copy, not the checkout
    done = subprocess.run([sys.executable, str(target / "bin" / "dtlabel"), "demo", "--preset", "tiny", "--out",
                           "run", "-q"], cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| scratch student" in (work / "run" / "results.md").read_text()
    assert (work / "run" / "report.html").is_file()


def test_importing_dtlabel_leaves_the_environment_alone() -> None:
    """A notebook that imports the library keeps its Hugging Face hub, albumentations and matplotlib
    settings: only the ``dtlabel`` command sets what a run needs, when it runs."""
    code = ("import os, importlib, pkgutil\n"
            # the dependencies first: some set variables of their own at import (cv2, torch's inductor)
            "import torch, diffusers, timm, segmentation_models_pytorch, albumentations, cv2, matplotlib\n"
            "import dtlabel; before = dict(os.environ)\n"
            "skip = ('dtlabel.cli', 'dtlabel.__main__')\n"
            "for m in pkgutil.walk_packages(dtlabel.__path__, 'dtlabel.'):\n"
            "    importlib.import_module(m.name) if m.name not in skip else None\n"
            "import dtlabel.cli\n"
            "print(sorted(set(os.environ.items()) ^ set(before.items())))")
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "NO_ALBUMENTATIONS_UPDATE", "MPLBACKEND")}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
