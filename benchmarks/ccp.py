"""The CCP coarse-8 experiment: heads, students and the scratch baseline for one label count and draw.

Each stage is an ordinary ``dtlabel`` command with its own run folder under ``--out`` (named
``<stage>-<N>``, e.g. ``head-int-50``); a stage whose folder holds ``run.json`` is skipped and an
unfinished one continues with ``--resume``, so the script can be stopped and started again. The
stages (``--stages`` picks some, in this order):

- ``scratch``:      ``train-student --labels N`` (the baseline: smp Unet-resnet18 on the N labels only)
- ``head-int``:     ``train-head --labels N`` (interpreter head on the teacher's features)
- ``head-mlp``:     ``train-head --labels N head.kind=mlp-ensemble`` (pixel-MLP ensemble)
- ``synth-img``:    ``synthesize --images UNLABELED`` with the head of the better *validation* mIoU
                    (pseudo-labels of the real unlabeled photos, at the data size)
- ``student-pr``:   ``train-student --synth synth-img --labels N student.stage2_epochs=0`` (one stage:
                    pseudo-labels + the N real labels)
- ``student-2s``:   ``train-student --init student-pr --labels N`` (the student-pr student fine-tuned on
                    the N real labels alone, the scratch recipe from its weights: the default two-stage
                    recipe of ``train-student --synth --labels`` in two commands, the same student, with
                    a row for each stage)
- ``student-p``:    ``train-student --synth synth-img`` (pseudo-labels only)
- ``synth-sampled``: ``synthesize --n SAMPLES`` (teacher samples labeled by the same head)
- ``student-s``:    ``train-student --synth synth-sampled --labels N`` (sampled pseudo-labels + the N real labels)

The semi-supervised peers and the recipes that combine them (issue 33), each a default two-stage
``train-student --synth S --labels N`` on the pseudo-labels of the same unlabeled photos:

- ``synth-self`` / ``student-self``: self-training, the scratch student labels (``--labeler scratch``);
- ``synth-iter`` / ``student-iter``: iterated distillation, the two-stage student labels again
  (``--labeler student-2s``);
- ``synth-comb`` / ``student-comb``: the combined recipe, the mean of the head and the scratch student
  (``--ensemble head scratch``);
- ``synth-comb-iter`` / ``student-comb-iter``: the combined student labels again;
- ``unimatch``:     ``train-student --labels N student.unlabeled=unimatch`` (the consistency peer on the
                    data set's label-free pool).

At the end it prints the test table of the finished heads and students (and the class pixel share
of the synth sets next to the real labels'), and writes it to ``OUT/results-<N>.md``. Test split:
the data set's (CCP: 0805-1004), never used for selection. Example (the rows in docs/RESULTS.md)::

    OMP_NUM_THREADS=1 python benchmarks/ccp.py --data-root PATH/ccp --labels 50 --out runs/ccp
    OMP_NUM_THREADS=1 python benchmarks/ccp.py --data-root PATH/ccp --labels 10 --stages scratch head-int head-mlp

``--label-seed S`` draws another set of N labels (``head.label_seed`` / ``student.label_seed``);
its run folders are ``<stage>-<N>-s<S>`` and its table ``results-<N>-s<S>.md`` (draw 0 keeps the plain
names). Extra ``key=value`` words go to every stage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from stages import done, run_stage  # noqa: E402

STAGES = ("scratch", "head-int", "head-mlp", "synth-img", "student-pr", "student-2s", "student-p", "synth-sampled",
          "student-s", "synth-self", "student-self", "synth-iter", "student-iter", "synth-comb", "student-comb",
          "synth-comb-iter", "student-comb-iter", "unimatch")
# pseudo-labelled sets of the unlabeled photos made by finished models: stage -> (labelers, the student it feeds)
LABELED_BY = {"synth-self": (("scratch",), "student-self"), "synth-iter": (("student-2s",), "student-iter"),
              "synth-comb": (("head", "scratch"), "student-comb"),
              "synth-comb-iter": (("student-comb",), "student-comb-iter")}
LABELS = {"scratch": "scratch student (N real labels)", "head-int": "head: interpreter",
          "head-mlp": "head: mlp-ensemble", "student-pr": "student (pseudo-labels + N real labels)",
          "student-2s": "two-stage student (student-pr, then a fine-tune on the N real labels)",
          "student-p": "student (pseudo-labels only)",
          "student-s": "student (sampled pseudo-labels + N real labels)",
          "student-self": "self-training (the scratch student labels; two stages)",
          "student-iter": "iterated (the two-stage student labels; two stages)",
          "student-comb": "combined (head + scratch student ensemble labels; two stages)",
          "student-comb-iter": "combined, iterated (the combined student labels; two stages)",
          "unimatch": "UniMatch-style consistency (N labels + the label-free pool)"}


def _val_miou(folder: Path) -> float:
    return json.loads((folder / "run.json").read_text()).get("val_miou") or -1.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True, help="the prepared CCP folder (datasets/ccp)")
    p.add_argument("--data", default="ccp", help="data config (ccp | ccp_fine)")
    p.add_argument("--teacher", default="models/ccp")
    p.add_argument("--labels", type=int, default=50)
    p.add_argument("--label-seed", type=int, default=None, help="label draw (default: the global seed, 0)")
    p.add_argument("--samples", type=int, default=2000, help="synth-sampled: number of samples")
    p.add_argument("--sample-steps", type=int, default=10, help="synth-sampled: DDIM steps")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--preset", default="cpu")
    p.add_argument("--out", default="runs/ccp")
    p.add_argument("overrides", nargs="*", help="key=value for every stage")
    args = p.parse_args(argv)

    out, n = Path(args.out), args.labels
    data = [f"data={args.data}", f"data.root={args.data_root}"]
    draw_h = [f"head.label_seed={args.label_seed}"] if args.label_seed is not None else []
    draw_s = [f"student.label_seed={args.label_seed}"] if args.label_seed is not None else []
    draw = f"-s{args.label_seed}" if args.label_seed else ""
    folder = {s: out / f"{s}-{n}{draw}" for s in STAGES}
    unlabeled = Path(args.data_root) / "unlabeled" / "images"

    def head() -> Path:
        heads = [folder[h] for h in ("head-int", "head-mlp") if done(folder[h])]
        if not heads:
            raise SystemExit("synthesize stages need a finished head-int or head-mlp stage")
        return max(heads, key=_val_miou)

    def size() -> str:
        from dtlabel.config import compose
        from dtlabel.data import data_size

        h, w = data_size(compose("train-student", data + list(args.overrides)).data)
        return f"synth.size=[{h},{w}]"

    commands = {
        "scratch": lambda: ["train-student", "--labels", str(n), *draw_s],
        "head-int": lambda: ["train-head", "--labels", str(n), "--teacher", args.teacher, *draw_h],
        "head-mlp": lambda: ["train-head", "--labels", str(n), "--teacher", args.teacher, "head.kind=mlp-ensemble",
                             *draw_h],
        "synth-img": lambda: ["synthesize", "--images", str(unlabeled), "--teacher", args.teacher, "--head", str(head()),
                              size()],
        "student-pr": lambda: ["train-student", "--synth", str(folder["synth-img"]), "--labels", str(n), *draw_s,
                               "student.stage2_epochs=0"],
        "student-2s": lambda: ["train-student", "--init", str(folder["student-pr"]), "--labels", str(n), *draw_s],
        "student-p": lambda: ["train-student", "--synth", str(folder["synth-img"]), *draw_s],
        "synth-sampled": lambda: ["synthesize", "--n", str(args.samples), "--teacher", args.teacher, "--head",
                                  str(head()), f"synth.sample_steps={args.sample_steps}"],
        "student-s": lambda: ["train-student", "--synth", str(folder["synth-sampled"]), "--labels", str(n), *draw_s],
        "unimatch": lambda: ["train-student", "--labels", str(n), *draw_s, "student.unlabeled=unimatch"],
    }
    for stage, (labelers, student) in LABELED_BY.items():
        def relabel(labelers: tuple[str, ...] = labelers) -> list[str]:
            runs = [str(head() if x == "head" else folder[x]) for x in labelers]
            who = ["--ensemble", *runs] if len(runs) > 1 else ["--labeler", *runs]
            return ["synthesize", "--images", str(unlabeled), *(["--teacher", args.teacher] if "head" in labelers else []),
                    *who, size()]

        commands[stage] = relabel
        commands[student] = lambda stage=stage: ["train-student", "--synth", str(folder[stage]), "--labels", str(n),
                                                 *draw_s]
    for stage in STAGES:
        if stage not in args.stages or done(folder[stage]):
            continue
        if rc := run_stage(folder[stage], [*commands[stage](), "--preset", args.preset, *data, *args.overrides]):
            return rc

    from results_table import metrics_table, synth_table

    rows = [(LABELS[s], folder[s]) for s in ("head-int", "head-mlp", "student-pr", "student-2s", "student-p", "student-s",
                                                 "student-self", "student-iter", "student-comb", "student-comb-iter",
                                                 "unimatch", "scratch")
            if done(folder[s])]
    text = []
    if rows:
        table, _, _ = metrics_table(rows)
        text.append(f"CCP ({args.data}), N = {n}, label draw {args.label_seed if args.label_seed is not None else 0}, "
                    f"test split, IoU in %\n\n{table}")
    synths = [(s, folder[s]) for s in ("synth-img", "synth-sampled", *LABELED_BY) if done(folder[s])]
    if synths:
        text.append(synth_table(synths, data))
    if text:
        body = "\n\n".join(text) + "\n"
        print("\n" + body)
        (out / f"results-{n}{draw}.md").write_text(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
