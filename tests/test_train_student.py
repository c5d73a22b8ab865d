"""train-student on the default data at 32 px: scratch (--labels), pseudo-labels (--synth, soft KD and
hard + real mix), plain-smp loading, exact resume, DDP on gloo, and the errors a user can hit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dtlabel.cli import main

TINY = ("--preset", "tiny", "-q")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ts") / "scratch"
    assert main(["train-student", *TINY, "--labels", "8", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """teacher -> head -> synthesize, each tiny (about 15 s)."""
    from dtlabel.teachers.tiny import build_tiny_ddpm

    root = tmp_path_factory.mktemp("chain")
    teacher = build_tiny_ddpm(root / "ddpm", sample_size=32)
    assert main(["train-head", *TINY, "--labels", "8", "--teacher", str(teacher), "--out", str(root / "head")]) == 0
    assert main(["synthesize", *TINY, "--n", "12", "--teacher", str(teacher), "--head", str(root / "head"),
                 "--out", str(root / "synth")]) == 0
    return root / "synth"


def test_scratch_outputs(scratch: Path) -> None:
    from omegaconf import OmegaConf

    from dtlabel.data import build_data, choose_labels

    for name in ("config.yaml", "train-student.log", "run.json", "labels.json", "metrics.json", "metrics.jsonl",
                 "overlays.png", "iou.png", "loss.png", "miou.png", "student/student.json", "student/student.safetensors"):
        assert (scratch / name).is_file(), name
    m = json.loads((scratch / "metrics.json").read_text())
    assert 0 <= m["miou"] <= 100 and m["n_test"] == 200 and len(m["per_class_iou"]) == 7
    assert m["val"]["miou"] is not None and m["selected"]["rule"] == "best validation mIoU"
    labels = json.loads((scratch / "labels.json").read_text())
    bundle = build_data(OmegaConf.load(scratch / "config.yaml").data)
    assert labels["ids"] == choose_labels(bundle.labeled, bundle.splits["train"], 8, 0)  # as train-head
    assert not set(labels["val_ids"]) & set(labels["ids"]) and not set(labels["val_ids"]) & set(bundle.splits["test"])
    desc = json.loads((scratch / "run.json").read_text())
    assert desc["steps"] == 4 and desc["epochs"] == 2 and desc["test_miou"] == m["miou"]
    rows = [json.loads(x) for x in (scratch / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if "test_miou" in r] == [1, 2]


def test_plain_smp_loads_and_reproduces_test_miou(scratch: Path) -> None:
    import segmentation_models_pytorch as smp
    from omegaconf import OmegaConf

    from dtlabel.students.task import score_student
    from dtlabel.data import build_data

    d = json.loads((scratch / "student" / "student.json").read_text())
    model = smp.create_model(d["arch"], encoder_name=d["encoder_name"], encoder_weights=None, classes=d["classes"],
                             in_channels=3, **d["smp_kwargs"])
    model.load_state_dict(load_file(str(scratch / "student" / "student.safetensors")), strict=True)
    bundle = build_data(OmegaConf.load(scratch / "config.yaml").data)
    ev = score_student(model, bundle.labeled, bundle.splits["test"], (32, 32), 16, torch.device("cpu"))
    assert ev.cm.summary()["miou"] == json.loads((scratch / "metrics.json").read_text())["miou"]


def test_smp_from_pretrained_loads_the_run_student(scratch: Path) -> None:
    import segmentation_models_pytorch as smp

    from dtlabel.students import load_student

    ours, _ = load_student(scratch)
    theirs = smp.from_pretrained(str(scratch / "student")).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(theirs(x), ours(x))


def _students_equal(a: Path, b: Path) -> bool:
    wa, wb = (load_file(str(p / "student" / "student.safetensors")) for p in (a, b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_time_budget_then_resume_matches(scratch: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    assert main(["train-student", *TINY, "--labels", "8", "student.max_minutes=0", "--out", str(out)]) == 0
    assert (out / "checkpoints" / "step_0000001").is_dir() and not (out / "run.json").exists()  # inside epoch 1
    assert main(["train-student", *TINY, "--labels", "8", "--out", str(out), "--resume"]) == 0
    assert _students_equal(scratch, out)
    assert json.loads((out / "metrics.json").read_text())["miou"] == json.loads((scratch / "metrics.json").read_text())["miou"]


def test_time_budget_mid_epoch_with_synth_resumes_to_the_same_student(synth: Path, tmp_path: Path) -> None:
    args = ["train-student", *TINY, "--synth", str(synth), "--labels", "8", "student.epoch_steps=3"]
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    out = tmp_path / "split"
    assert main([*args, "student.max_minutes=0", "--out", str(out)]) == 0
    assert main([*args, "--resume", "--out", str(out)]) == 0
    assert _students_equal(tmp_path / "full", out)


def test_two_stage_is_the_mixed_student_then_init_on_the_real_labels(synth: Path, tmp_path: Path) -> None:
    """With --synth and --labels the default is two stages in one run; it makes the very student
    of the two-command form (a one-stage run, then --init from it on the labels alone)."""
    args = ["train-student", *TINY, "--labels", "8"]
    two = tmp_path / "two"
    assert main([*args, "--synth", str(synth), "--out", str(two)]) == 0
    one = tmp_path / "one"
    assert main([*args, "--synth", str(synth), "student.stage2_epochs=0", "--out", str(one)]) == 0
    assert main([*args, "--init", str(one), "--out", str(tmp_path / "init")]) == 0
    assert _students_equal(two, tmp_path / "init")
    desc, first = (json.loads((p / "run.json").read_text()) for p in (two, one))
    assert first["stage1"] is None and desc["stage1"]["steps"] == first["steps"] == 2 * (12 // 3)
    assert desc["stage1"]["val_miou"] == first["val_miou"] and desc["stage_steps"] == [first["steps"], 2 * (8 // 4)]
    assert desc["steps"] == first["steps"] + 2 * (8 // 4)  # every step of the run, both stages
    assert json.loads((two / "metrics.json").read_text())["synth"] == "synth+real, then real"
    for name in ("metrics.jsonl", "loss.png", "miou.png"):
        assert (two / "stage1" / name).is_file() and (two / name).is_file(), name
    assert not (two / "stage1" / "checkpoints").exists()  # not needed once the student is saved


def test_two_stage_time_budget_resumes_step_by_step_to_the_same_student(synth: Path, tmp_path: Path) -> None:
    """A 0-minute budget stops after one step; resumed with it again and again, the run crosses from
    stage 1 to stage 2 and ends with the student of an uninterrupted run."""
    args = ["train-student", *TINY, "--synth", str(synth), "--labels", "8", "student.epochs=1", "student.stage2_epochs=1"]
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    out, calls = tmp_path / "split", 0
    while not (out / "run.json").exists():
        assert main([*args, "student.max_minutes=0", "--out", str(out), *(["--resume"] if calls else [])]) == 0
        calls += 1
        assert calls <= 8
    # at least one step per call (4 in stage 1, 2 in stage 2); the call that ends stage 1 takes one of stage 2
    assert calls == 12 // 3 + 8 // 4 - 1
    assert _students_equal(tmp_path / "full", out)


def test_synth_soft_kd(synth: Path, tmp_path: Path) -> None:
    out = tmp_path / "kd"
    assert main(["train-student", *TINY, "--synth", str(synth), "--out", str(out)]) == 0
    desc = json.loads((out / "run.json").read_text())
    assert desc["synth_loss"] == "soft" and desc["labels"] is None and desc["steps"] == 2 * (12 // 4)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["synth"] for r in rows if "synth" in r]
    assert len(losses) == 6 and all(0 <= v < 50 for v in losses)
    # the head's labeled images are kept out of the student's validation slice
    head_ids = json.loads((synth.parent / "head" / "labels.json").read_text())["ids"]
    manifest = json.loads((synth / "manifest.json").read_text())
    assert manifest["head"]["label_ids"] == head_ids and len(head_ids) == 8
    val_ids = json.loads((out / "labels.json").read_text())["val_ids"]
    assert val_ids and not set(val_ids) & set(head_ids)


def test_synth_hard_mixed_with_real(synth: Path, tmp_path: Path) -> None:
    out = tmp_path / "mix"
    assert main(["train-student", *TINY, "--synth", str(synth), "--labels", "8", "student.synth_loss=hard",
                 "student.drop_uncertain=0.25", "student.real_ratio=0.5", "--out", str(out)]) == 0
    rows = [json.loads(x) for x in (out / "stage1" / "metrics.jsonl").read_text().splitlines()]
    step = rows[0]
    assert {"real", "synth", "ce", "dice"} <= step.keys()
    assert step["loss"] == pytest.approx(0.5 * step["real"] + 0.5 * step["synth"], abs=1e-4)
    desc = json.loads((out / "run.json").read_text())
    # stage 1: 12 samples minus 25% dropped, 2 synth images per step; stage 2: 8 labels, batch 4
    assert desc["stage1"]["steps"] == 2 * (9 // 2) and desc["stage_steps"] == [2 * (9 // 2), 2 * (8 // 4)]
    assert desc["synth_samples"] == 9


def test_synth_samples_trains_on_the_first_n(synth: Path, tmp_path: Path) -> None:
    out = tmp_path / "first"
    assert main(["train-student", *TINY, "--synth", str(synth), "student.synth_samples=8", "--out", str(out)]) == 0
    desc = json.loads((out / "run.json").read_text())
    assert desc["synth_samples"] == 8 and desc["steps"] == 2 * (8 // 4)  # an epoch is one pass over the 8


def test_synth_samples_beyond_the_set_or_without_synth(cli, synth: Path, tmp_path: Path) -> None:  # noqa: ANN001
    err = _err(cli, tmp_path, "--synth", str(synth), "student.synth_samples=13")
    assert "the first 13 samples were asked for, but the run made 12" in err
    assert "student.synth_samples=4 takes the first samples of a --synth set" in _err(
        cli, tmp_path, "--labels", "4", "student.synth_samples=4")


def test_ddp_two_processes_gloo(synth: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547",
           "-m", "dtlabel.cli", "train-student", *TINY, "--synth", str(synth), "--labels", "8",
           "student.real_ratio=0.25", "--device", "cpu", "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    desc = json.loads((out / "run.json").read_text())
    assert desc["world_size"] == 2 and desc["stage1"]["steps"] == 2 * (12 // (3 * 2))
    assert desc["stage_steps"][1] == 2 * (8 // (4 * 2))  # stage 2: the 8 labels, 4 per process
    assert (out / "student" / "student.safetensors").is_file() and (out / "metrics.json").is_file()


def test_two_nodes_on_localhost(synth: Path, tmp_path: Path) -> None:
    """torchrun --nnodes 2 --nproc_per_node 1 (two machines' launch, on localhost): the DDP run of
    two processes, one run folder."""
    from conftest import torchrun_two_nodes

    out = tmp_path / "nodes"
    torchrun_two_nodes(["train-student", *TINY, "--synth", str(synth), "--labels", "8", "student.real_ratio=0.25",
                        "--device", "cpu", "--out", str(out)], port=29563)
    desc = json.loads((out / "run.json").read_text())
    assert desc["world_size"] == 2 and desc["stage1"]["steps"] == 2 * (12 // (3 * 2))
    assert (out / "student" / "student.safetensors").is_file() and len(list(out.glob("*.log"))) == 1


# ---------------------------------------------------------------------------------------------- errors
def _err(cli, tmp_path: Path, *args: str) -> str:  # noqa: ANN001
    code, _, err = cli("train-student", *TINY, "--out", tmp_path / "e", *args)
    assert code == 2 and err.startswith("dtlabel: error: ") and err.count("\n") == 1
    return err


def test_needs_labels_or_synth(cli, tmp_path: Path) -> None:
    assert "needs --labels N (real labels), --synth DIR" in _err(cli, tmp_path)


def test_unknown_arch_and_encoder(cli, tmp_path: Path) -> None:
    assert "unknown student architecture 'Unett' (did you mean: Unet" in _err(cli, tmp_path, "--labels", "4",
                                                                              "student.arch=Unett")


def test_unknown_encoder(cli, tmp_path: Path) -> None:
    assert "unknown student encoder 'resnet19' (did you mean: resnet18" in _err(cli, tmp_path, "--labels", "4",
                                                                                 "student.encoder=resnet19")


def test_bad_backbone(cli, tmp_path: Path) -> None:
    (tmp_path / "w.safetensors").write_bytes(b"junk")
    assert "cannot read weights" in _err(cli, tmp_path, "--labels", "4", "--backbone", str(tmp_path / "w.safetensors"))


def test_synth_not_a_synthesize_run(cli, scratch: Path, tmp_path: Path) -> None:
    assert "is a 'train-student' run, expected synthesize" in _err(cli, tmp_path, "--synth", str(scratch))


def test_synth_class_count_mismatch(cli, synth: Path, labeled_folder: Path, tmp_path: Path) -> None:
    err = _err(cli, tmp_path, "--synth", str(synth), "data=folder", f"data.root={labeled_folder}",
               "data.splits.test=[0011,0012]")
    assert "has 7 classes but data set" in err and "has 3" in err


def test_bad_option_values(cli, tmp_path: Path) -> None:
    assert "student.synth_loss=medium" in _err(cli, tmp_path, "--labels", "4", "student.synth_loss=medium")


def test_negative_stage2_epochs(cli, tmp_path: Path) -> None:  # noqa: ANN001
    assert "student.stage2_epochs=-1 must be >= 0" in _err(cli, tmp_path, "--labels", "4", "student.stage2_epochs=-1")


def test_unknown_amp_mode(cli, tmp_path: Path) -> None:  # noqa: ANN001
    assert "amp=fp8: expected one of auto, bf16, fp16, off" in _err(cli, tmp_path, "--labels", "4", "amp=fp8")


def test_init_from_a_student_run_starts_from_its_weights(scratch: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    """The second stage of a two-stage recipe starts from the first stage's whole student."""
    out = tmp_path / "stage2"
    assert main(["train-student", *TINY, "--labels", "8", "--init", str(scratch), "student.optim.lr=0", "student.epochs=1",
                 "--out", str(out)]) == 0
    a, b = (load_file(str(p / "student" / "student.safetensors")) for p in (scratch, out))
    convs = [k for k in a if k.endswith(".weight") and a[k].ndim == 4]
    assert convs and all(torch.equal(a[k], b[k]) for k in convs)  # lr 0: still the first stage's weights
    assert json.loads((out / "run.json").read_text())["init"]["from"] == str(scratch)
    code, _, err = cli("train-student", *TINY, "--labels", "8", "--init", scratch, "student.encoder=resnet18",
                       "--out", tmp_path / "mismatch")
    assert code == 2 and "does not fit this one" in err
    code, _, err = cli("train-student", *TINY, "--labels", "8", "--init", scratch, "--backbone", scratch,
                       "--out", tmp_path / "both")
    assert code == 2 and "not both" in err


def test_cpu_bf16_under_amp_auto_is_recorded(tmp_path: Path) -> None:
    """student.cpu_bf16 (the cpu preset's): amp=auto trains in bf16 where the CPU has bf16 instructions,
    float32 elsewhere; amp=off forces float32; run.json says which."""
    from dtlabel.device import cpu_has_bf16

    got = {}
    for amp in ("auto", "off"):
        out = tmp_path / amp
        assert main(["train-student", *TINY, "--labels", "8", "student.cpu_bf16=true", f"amp={amp}", "student.epochs=1",
                     "--out", str(out)]) == 0
        got[amp] = json.loads((out / "run.json").read_text())["precision"]
    assert got == {"auto": "bf16" if cpu_has_bf16() else "fp32", "off": "fp32"}


def test_every_training_image_labeled_warns_on_stderr_and_in_run_json(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from conftest import make_labeled_folder

    folder = make_labeled_folder(tmp_path / "d", n=12, size=(32, 32))
    out = tmp_path / "all"
    assert main(["train-student", *TINY, "--labels", "10", "data=folder", f"data.root={folder}",
                 'data.splits.test="0011-0012"', "student.epochs=1", "--out", str(out)]) == 0
    # a warning on the console (stdout: stderr is kept for the one error line) and in run.json
    assert "no validation image is left" in capsys.readouterr().out
    run = json.loads((out / "run.json").read_text())
    assert run["validation"] == {"images": 0, "from": "none (every training image is labeled)"}


def test_a_vision_transformer_student_trains_at_the_data_size(tmp_path: Path) -> None:
    """DPT on a timm ViT at 32x32 (its position table is for 224): the preset's DPT decoder, the
    smp hub format, and the run's numbers."""
    import segmentation_models_pytorch as smp

    out = tmp_path / "vit"
    assert main(["train-student", *TINY, "--labels", "8", "student.arch=DPT", "student.encoder=tu-vit_tiny_patch16_224",
                 "student.epochs=1", "student.epoch_steps=2", "--out", str(out)]) == 0
    desc = json.loads((out / "student" / "student.json").read_text())
    assert desc["arch"] == "DPT" and desc["smp_kwargs"]["dynamic_img_size"] is True
    assert desc["smp_kwargs"]["decoder_fusion_channels"] == 32  # student.decoders.DPT of the tiny preset
    run = json.loads((out / "run.json").read_text())
    assert 0.0 <= run["test_miou"] <= 100.0 and run["steps"] == 2
    hub = smp.from_pretrained(str(out / "student")).eval()
    with torch.no_grad():
        assert hub(torch.zeros(1, 3, 32, 32)).shape == (1, desc["classes"], 32, 32)
