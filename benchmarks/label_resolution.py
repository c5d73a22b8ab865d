"""The mIoU ceiling that a working resolution puts on a data set: masks down- and upsampled again.

A head that predicts from features at a coarse resolution cannot draw structures thinner than a
feature pixel. This measures that ceiling without any model: each test mask is resized (nearest) to
the coarse size and back to the evaluation size and scored against itself, per class, with the same
confusion-matrix mIoU as the commands. Example (CCP at the evaluation size 192x128 against the CCP
teacher's 96x64 and its coarser decoder strides)::

    python benchmarks/label_resolution.py data=ccp data.root=PATH/ccp --sizes 96x64 48x32 24x16
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def main(argv: list[str] | None = None) -> int:
    import torch
    import torch.nn.functional as F

    from dtlabel.config import compose
    from dtlabel.data import build_data, data_size
    from dtlabel.metrics import ConfusionMatrix

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--split", default="test")
    p.add_argument("--sizes", nargs="+", default=["96x64", "48x32", "24x16"], help="coarse sizes HxW")
    p.add_argument("overrides", nargs="*", help="data=... data.root=... (data.size = the evaluation size)")
    args = p.parse_args(argv)
    cfg = compose("data-check", args.overrides)
    bundle = build_data(cfg.data)
    source, ids = bundle.labeled, bundle.splits[args.split]
    size = data_size(cfg.data)
    names = list(source.class_names)
    coarse = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    cms = {c: ConfusionMatrix(len(names), source.ignore_index) for c in coarse}
    for id_ in ids:
        mask = torch.from_numpy(np.asarray(source.mask(id_), dtype=np.int64))[None, None].float()
        ref = F.interpolate(mask, size=size, mode="nearest")
        for c in coarse:
            back = F.interpolate(F.interpolate(ref, size=c, mode="nearest"), size=size, mode="nearest")
            cms[c].update(back[:, 0].long(), ref[:, 0].long())
    print(f"{bundle.name} {args.split} ({len(ids)} masks) at {size[0]}x{size[1]}: mIoU of masks resized to the "
          "coarse size and back (nearest), IoU in %\n")
    print("| coarse size | mIoU | " + " | ".join(names) + " |")
    print("|---" * (2 + len(names)) + "|")
    for c, cm in cms.items():
        s = cm.summary(names)
        print(f"| {c[0]}x{c[1]} | {s['miou']:.1f} | " + " | ".join(f"{s['per_class_iou'][n]:.1f}" for n in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
