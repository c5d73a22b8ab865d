"""The CLI contract: run folders, descriptors, option mapping and one-line errors with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def test_data_check_default_writes_run_folder(cli, tmp_path: Path) -> None:
    code, out, err = cli("data", "check", "--preset", "tiny", "--out", tmp_path / "run", "-q")
    assert code == 0, err
    assert "data set default: 450 labeled, 2000 unlabeled images" in out
    run = tmp_path / "run"
    desc = json.loads((run / "run.json").read_text())
    assert desc["command"] == "data-check" and desc["labeled"] == 450 and desc["problems"] == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["preset"] == "tiny" and cfg["data"]["size"] == [32, 32]
    assert (run / "data-check.log").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert abs(sum(summary["pixel_share"]) - 1.0) < 1e-4
    assert len(summary["class_names"]) == 7


def test_data_preview_writes_png(cli, tmp_path: Path) -> None:
    code, _, err = cli("data", "preview", "--preset", "tiny", "--n", "4", "--split", "test", "--out", tmp_path / "p", "-q")
    assert code == 0, err
    png = tmp_path / "p" / "preview.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert len(json.loads((tmp_path / "p" / "ids.json").read_text())) == 4


def test_options_map_to_config(cli, tmp_path: Path) -> None:
    code, _, err = cli("data", "check", "--preset", "tiny", "--seed", "7", "--device", "cpu", "data.n_unlabeled=3",
                       "--out", tmp_path / "r", "-q")
    assert code == 0, err
    cfg = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert cfg["seed"] == 7 and cfg["device"] == "cpu" and cfg["data"]["n_unlabeled"] == 3


def _one_line_error(code: int, err: str) -> str:
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("dtlabel: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_unknown_command_suggests(cli) -> None:
    line = _one_line_error(*cli("fit-teachr")[::2])
    assert "did you mean: fit-teacher" in line


def test_group_needs_subcommand(cli) -> None:
    line = _one_line_error(*cli("data")[::2])
    assert "check" in line and "preview" in line


def test_unknown_config_key_suggests(cli, tmp_path: Path) -> None:
    line = _one_line_error(*cli("data", "check", "data.sizee=[8,8]", "--out", tmp_path / "r")[::2])
    assert "unknown config key 'data.sizee'" in line and "data.size" in line
    assert not (tmp_path / "r").exists()


def test_unknown_group_option_suggests(cli) -> None:
    line = _one_line_error(*cli("data", "check", "data=cpp")[::2])
    assert "unknown data 'cpp'" in line and "ccp" in line


def test_unknown_preset(cli) -> None:
    line = _one_line_error(*cli("data", "check", "--preset", "tinny")[::2])
    assert "unknown preset 'tinny'" in line and "tiny" in line


def test_unknown_option_suggests(cli) -> None:
    line = _one_line_error(*cli("data", "check", "--sead", "3")[::2])
    assert "--sead" in line and "--seed" in line


def test_bad_override_syntax(cli) -> None:
    line = _one_line_error(*cli("data", "check", "data.size")[::2])
    assert "key=value" in line


def test_existing_out_needs_resume(cli, tmp_path: Path) -> None:
    assert cli("data", "check", "--preset", "tiny", "--out", tmp_path / "r", "-q")[0] == 0
    line = _one_line_error(*cli("data", "check", "--preset", "tiny", "--out", tmp_path / "r")[::2])
    assert "--resume" in line


def test_resume_other_command_refused(cli, tmp_path: Path) -> None:
    assert cli("data", "check", "--preset", "tiny", "--out", tmp_path / "r", "-q")[0] == 0
    line = _one_line_error(*cli("data", "preview", "--preset", "tiny", "--resume", "--out", tmp_path / "r")[::2])
    assert "'data-check' run" in line


def test_device_cuda_missing_is_user_error(cli, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        return
    line = _one_line_error(*cli("fit-teacher", "--preset", "tiny", "--device", "cuda", "--out", tmp_path / "r")[::2])
    assert "CUDA is not available" in line


def test_help_and_version(cli) -> None:
    code, out, _ = cli("--help")
    assert code == 0 and "fit-teacher" in out
    code, out, _ = cli("--version")
    assert code == 0 and "dtlabel" in out


def test_help_is_plain_text(cli) -> None:
    code, out, _ = cli("--help")
    assert code == 0 and "``" not in out and "Label distillation" in out


def test_a_reader_that_stops_early_is_no_error(tmp_path: Path) -> None:
    """``dtlabel data check ... | head -1``: no traceback when the pipe closes."""
    import os
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "dtlabel.cli", "data", "check", "--out", str(tmp_path / "c")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout is not None and proc.stdout.readline().startswith(b"dtlabel data check")
    proc.stdout.close()  # the reader leaves
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err and "Logging error" not in err, err


def test_data_check_without_out_leaves_no_run_folder_and_says_its_counts_once(cli, tmp_path: Path,  # noqa: ANN001
                                                                              monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli("data", "check", "--preset", "tiny", "data.n_unlabeled=3")
    assert code == 0 and not (tmp_path / "runs").exists() and list(tmp_path.iterdir()) == []
    assert out.count("labeled,") == 1  # one summary line of the counts, not the loader's too


def test_a_missing_config_folder_is_one_line(cli, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("DTLABEL_CONFIG_DIR", str(tmp_path / "none"))
    code, _, err = cli("train-student", "--preset", "tiny", "--labels", "4")
    assert code == 2 and err.count("\n") == 1 and "config folder not found" in err and "DTLABEL_CONFIG_DIR" in err
