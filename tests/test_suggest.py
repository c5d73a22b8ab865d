"""dtlabel suggest: uncertain and diverse picks, deterministic outputs, and a label list train-head takes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dtlabel.cli import main

TINY = ("--preset", "tiny", "-q")


def test_weighted_k_center_prefers_new_regions_then_uncertainty() -> None:
    from dtlabel.suggest import weighted_k_center

    # three tight clusters; the labeled centre sits on cluster A; cluster C's members are the uncertain ones
    a, b, c = np.array([0.0, 0.0]), np.array([1.0, 0.0]), np.array([0.0, 1.0])
    feats = np.stack([a, a + 0.01, b, b + 0.01, b - 0.01, c, c + 0.01])
    unc = np.array([0.9, 0.9, 0.1, 0.1, 0.2, 0.8, 0.7])
    picks = weighted_k_center(feats, unc, centres=a[None], k=2)
    assert [p.index for p in picks] == [5, 4]  # C (far and uncertain), then B's most uncertain, never a near-duplicate
    coreset = weighted_k_center(feats, unc, centres=a[None], k=2, uncertainty_weight=0.0)
    cluster = {2: "B", 3: "B", 4: "B", 5: "C", 6: "C"}
    assert sorted(cluster[p.index] for p in coreset) == ["B", "C"]  # pure diversity: one from each new cluster


def test_typical_picks_the_centre_of_each_unlabeled_cluster_largest_first() -> None:
    from dtlabel.suggest import typical_picks

    rng = np.random.default_rng(0)
    a, b, c = np.array([0.0, 0.0]), np.array([4.0, 0.0]), np.array([0.0, 4.0])
    feats = np.concatenate([a + 0.1 * rng.standard_normal((6, 2)), b + 0.1 * rng.standard_normal((12, 2)),
                            [b + [0.9, 0.9]], c + 0.1 * rng.standard_normal((5, 2))])
    unc = np.linspace(0.0, 1.0, len(feats))  # the outlier of B (index 18) is more uncertain than B's core
    picks, notes = typical_picks(feats, unc, centres=a[None], k=2)
    idx = [p.index for p in picks]
    assert 6 <= idx[0] < 18 and 19 <= idx[1] < 24  # B (12 + 1 images) before C (5), from the dense core
    core_b = feats[6:18]
    assert np.linalg.norm(feats[idx[0]] - core_b.mean(0)) < np.median(np.linalg.norm(core_b - core_b.mean(0), axis=1))
    assert all(p.score > 0 for p in picks) and "cluster of 13 (0 labeled" in notes[0]
    again, _ = typical_picks(feats, unc, centres=a[None], k=2)
    assert [p.index for p in again] == idx  # deterministic


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dtlabel.teachers.tiny import build_tiny_ddpm

    root = tmp_path_factory.mktemp("suggest")
    teacher = build_tiny_ddpm(root / "ddpm", sample_size=32)
    assert main(["train-head", *TINY, "--labels", "8", "--teacher", str(teacher), "data.n_test=4",
                 "--out", str(root / "head")]) == 0
    return root / "head"


def test_suggest_writes_a_ranking_a_sheet_and_labels_train_head_takes(head: Path, tmp_path: Path) -> None:
    out = tmp_path / "s1"
    assert main(["suggest", *TINY, "--head", str(head), "--n", "5", "strategy=k-center", "--out", str(out)]) == 0
    rows = json.loads((out / "suggestions.json").read_text())["suggestions"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5] and all(r["why"].startswith("distance") for r in rows)
    assert (out / "contact_sheet.png").is_file() and (out / "suggestions.csv").read_text().count("\n") == 6
    old = json.loads((head / "labels.json").read_text())["ids"]
    assert not {r["name"] for r in rows} & set(old)  # never an image that is labeled already
    ids = (out / "label_ids.txt").read_text().split()
    assert sorted(ids) == sorted([*old, *(r["name"] for r in rows)])
    again = tmp_path / "s2"
    assert main(["suggest", *TINY, "--head", str(head), "--n", "5", "strategy=k-center", "--out", str(again)]) == 0
    assert (again / "suggestions.csv").read_bytes() == (out / "suggestions.csv").read_bytes()
    teacher = json.loads((head / "run.json").read_text())["teacher"]
    nxt = tmp_path / "head13"
    assert main(["train-head", *TINY, "label_ids=" + str(out / "label_ids.txt"), "--teacher", teacher,
                 "data.n_test=4", "--out", str(nxt)]) == 0
    labels = json.loads((nxt / "labels.json").read_text())
    assert labels["ids"] == sorted(ids) and labels["n"] == 13


def test_suggest_input_errors(head: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    from dtlabel.teachers.tiny import build_tiny_ddpm

    (tmp_path / "empty").mkdir()
    code, _, err = cli("suggest", *TINY, "--head", head, "--n", "2", "--images", tmp_path / "empty", "--out", tmp_path / "a")
    assert code == 2 and "no images found" in err
    code, _, err = cli("suggest", *TINY, "--head", head, "--n", "100000", "--out", tmp_path / "b")
    assert code == 2 and "holds only" in err
    other = build_tiny_ddpm(tmp_path / "other", sample_size=32, seed=3)
    code, _, err = cli("suggest", *TINY, "--head", head, "--teacher", other, "--n", "2", "--out", tmp_path / "c")
    assert code == 2 and "not the teacher the head was trained on" in err
    unfinished = tmp_path / "unfinished"
    shutil.copytree(head, unfinished)
    (unfinished / "run.json").unlink()
    code, _, err = cli("suggest", *TINY, "--head", unfinished, "--n", "2", "--out", tmp_path / "d")
    assert code == 2 and "unfinished" in err
    code, _, err = cli("train-head", *TINY, "--labels", "3", "label_ids=[l00001,l00002]", "--teacher", other,
                       "--out", tmp_path / "e")
    assert code == 2 and "pass one of the two" in err


def test_random_baseline_draws_from_the_same_pool_and_repeats(head: Path, tmp_path: Path) -> None:
    labels = json.loads((head / "labels.json").read_text())
    old, val = labels["ids"], labels["val_ids"]
    assert val  # the tiny head has a validation slice: the draw must avoid it too
    runs = {}
    for name, seed in (("r0", 0), ("r0b", 0), ("r1", 1)):
        assert main(["suggest", *TINY, "--head", str(head), "--n", "5", "strategy=random", f"random_seed={seed}",
                     "--out", str(tmp_path / name)]) == 0
        runs[name] = json.loads((tmp_path / name / "suggestions.json").read_text())
    rows = runs["r0"]["suggestions"]
    names = [r["name"] for r in rows]
    assert runs["r0"]["strategy"] == "random" and len(set(names)) == 5
    assert not set(names) & {*old, *val}  # never a labeled or validation image of the head
    assert all(r["why"].startswith("random draw") and r["distance"] > 0 for r in rows)
    assert (tmp_path / "r0b" / "suggestions.csv").read_bytes() == (tmp_path / "r0" / "suggestions.csv").read_bytes()
    assert [r["name"] for r in runs["r1"]["suggestions"]] != names  # another seed, another draw
    ids = (tmp_path / "r0" / "label_ids.txt").read_text().split()
    assert sorted(ids) == sorted([*old, *names])


def test_suggest_unknown_strategy(head: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    code, _, err = cli("suggest", *TINY, "--head", head, "--n", "2", "strategy=entropy", "--out", tmp_path / "a")
    assert code == 2 and err.count("\n") == 1 and "strategy=entropy" in err and "typical, k-center, random" in err


def test_default_typical_strategy_avoids_the_labels_and_repeats(head: Path, tmp_path: Path) -> None:
    labels = json.loads((head / "labels.json").read_text())
    assert main(["suggest", *TINY, "--head", str(head), "--n", "4", "--out", str(tmp_path / "t")]) == 0  # the default
    rows = json.loads((tmp_path / "t" / "suggestions.json").read_text())["suggestions"]
    names = [r["name"] for r in rows]
    assert len(set(names)) == 4 and not set(names) & {*labels["ids"], *labels["val_ids"]}
    assert all(r["why"].startswith("most typical image of a cluster") and r["score"] > 0 for r in rows)
    assert main(["suggest", *TINY, "--head", str(head), "--n", "4", "--out", str(tmp_path / "t2")]) == 0
    assert (tmp_path / "t2" / "suggestions.csv").read_bytes() == (tmp_path / "t" / "suggestions.csv").read_bytes()
