"""The self-supervised peer of ``dtlabel pretrain``: lightly's SimCLR on the same images, backbone and engine.

DreamTeacher's claim (issue 15, item 7) is that distilling a generative teacher's features beats the
self-supervised pretraining a user would pick instead. This script pretrains the same timm backbone
(``pretrain.backbone``, ResNet-18) on the same label-free pool ``dtlabel pretrain`` reads
(``label_free_pool`` of the data config, at ``data.size``) with SimCLR as the ``lightly`` package
defines it: its ``SimCLRTransform`` (random resized crop, flip, colour jitter, grey, blur), its
``SimCLRProjectionHead`` and its ``NTXentLoss``. The training loop is dtlabel's engine, so the
run has the same precision (``amp``), time budget, checkpoints, ``--resume`` and torchrun/DDP
(NT-Xent gathers the other processes' embeddings as negatives) as a pretrain run.

The output is a run folder that ``dtlabel train-student --backbone OUT`` fine-tunes exactly as it
fine-tunes a pretrain run: ``OUT/backbone/`` (timm ``features_only`` weights + ``backbone.json``),
``run.json`` last, ``metrics.jsonl``, ``loss.png``, ``views.png`` (the two views of a few images).

    .venv/bin/pip install -c constraints.txt -e '.[ssl]'   # lightly, for this script only
    OMP_NUM_THREADS=1 python benchmarks/ssl_peer.py data=ccp data.root=PATH/ccp --steps 2500 \
        --out runs/ccp-simclr                       # --max-minutes M: stop (checkpoint); --resume continues

Equal CPU time with a pretrain run is the comparison the issue asks for: read that run's
``metrics.jsonl`` wall time and give this one ``--max-minutes`` of it with ``--schedule budget``
(the cosine then ends with the budget; not byte-reproducible, it follows the clock), or time a few
steps and pass ``--steps``. Each view's augmentation is seeded by its stream position
(``seeds.sample``), so a resumed ``--schedule steps`` run gives the same backbone.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dtlabel import dist, seeds  # noqa: E402
from dtlabel.data.streams import IndexStream  # noqa: E402
from dtlabel.engine import LoopConfig, Task  # noqa: E402

log = logging.getLogger("ssl_peer")
COMMAND = "ssl-peer"


class TwoViews(Dataset):
    """Item ``(position, index)`` -> ``(position, index, view0, view1)``: two SimCLR views ``(3, H, W)``
    (ImageNet-normalised, as lightly's transform gives them) of image ``index`` at ``size``, drawn with
    the random generators of torch, numpy and ``random`` seeded by ``seeds.sample(seed, position)``
    (lightly's blur draws from numpy) and restored afterwards, so nothing leaks into the engine's
    per-step seeding."""

    def __init__(self, source: Any, size: tuple[int, int], seed: int, transform: Any) -> None:
        from dtlabel.data.transforms import build_transform

        self.source, self.seed, self.transform = source, int(seed), transform
        self.resize = build_transform(size, train=False)  # the resize pretrain reads the pool with
        self.ids = list(source.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, item: tuple[int, int]) -> tuple[int, int, torch.Tensor, torch.Tensor]:
        from PIL import Image

        position, index = item
        image = Image.fromarray(self.resize(image=self.source.image(self.ids[index]))["image"])
        s = seeds.sample(self.seed, position)
        np_state, py_state = np.random.get_state(), random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            np.random.seed(s % 2**32)
            random.seed(s)
            view0, view1 = self.transform(image)
        np.random.set_state(np_state)
        random.setstate(py_state)
        return position, index, view0, view1


class SimCLRNet(nn.Module):
    """timm ``features_only`` backbone -> global average pool of its last stage -> lightly's projection head."""

    def __init__(self, backbone: nn.Module, hidden: int = 512, out: int = 128) -> None:
        from lightly.models.modules import SimCLRProjectionHead

        super().__init__()
        self.backbone = backbone
        self.head = SimCLRProjectionHead(int(backbone.feature_info.channels()[-1]), hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> embeddings ``(B, out)``."""
        return self.head(self.backbone(x)[-1].mean(dim=(2, 3)))


class SimCLRTask(Task):
    """Both views of a batch in one forward (one DDP call, BatchNorm over both), NT-Xent between them."""

    name = "simclr"
    config_prefix = "ssl"

    def __init__(self, net: SimCLRNet, views: TwoViews, batch_size: int, total: int, temperature: float,
                 seed: int, device: torch.device) -> None:
        from lightly.loss import NTXentLoss

        from dtlabel.errors import ConfigError

        self.model, self.views, self.total, self.seed, self.device = net, views, int(total), int(seed), device
        self.rank, self.world = dist.rank(), dist.world_size()
        self.batch = int(batch_size)
        if self.batch % self.world or self.batch // self.world < 2:
            raise ConfigError(f"--batch-size {self.batch} must be a multiple of the {self.world} process(es), "
                             "with at least 2 images per process")
        self.images_per_step = self.batch
        self.criterion = NTXentLoss(temperature=float(temperature), gather_distributed=self.world > 1)

    def batches(self, start_step: int) -> Iterator[Any]:
        sampler = IndexStream(len(self.views), self.batch, self.seed, start_step, self.total, self.rank, self.world)
        return iter(DataLoader(self.views, batch_sampler=sampler))

    def training_step(self, model: nn.Module, batch: Any, step: int) -> dict[str, torch.Tensor]:
        _, _, view0, view1 = batch
        z = model(torch.cat([view0, view1]).to(self.device)).float()
        z0, z1 = z.chunk(2)
        return {"loss": self.criterion(z0, z1)}


def _views_picture(path: Path, views: TwoViews, n: int) -> None:
    """``n`` images' two views side by side (what the contrastive task sees)."""
    from PIL import Image

    from dtlabel.io import atomic_path

    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    tiles = []
    for k in range(n):
        _, _, a, b = views[(k, k)]
        pair = torch.cat([a, b], dim=2) * std + mean
        tiles.append((pair.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    with atomic_path(path) as tmp:
        Image.fromarray(np.concatenate(tiles, axis=0)).save(tmp, format="PNG")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="run folder")
    ap.add_argument("--resume", action="store_true", help="continue the unfinished run in --out")
    ap.add_argument("--preset", default="cpu", help="dtlabel preset whose data size, backbone and amp are used")
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--batch-size", type=int, default=32, help="images per step (two views each)")
    ap.add_argument("--lr", type=float, default=1e-3, help="AdamW lr (the engine's optimiser)")
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--warmup-steps", type=int, default=100)
    ap.add_argument("--temperature", type=float, default=0.5, help="NT-Xent temperature (lightly's default)")
    ap.add_argument("--min-scale", type=float, default=0.08, help="random resized crop (lightly's default)")
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--schedule", choices=("steps", "budget"), default="steps")
    ap.add_argument("--checkpoint-every", type=int, default=100)
    args, overrides = ap.parse_known_args(argv)
    try:
        from lightly.transforms import SimCLRTransform
    except ImportError:
        print("ssl_peer: needs the lightly package (pip install -c constraints.txt -e '.[ssl]')", file=sys.stderr)
        return 2
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from dtlabel.errors import DTLabelError

    try:
        return _run(args, overrides, SimCLRTransform)
    except DTLabelError as exc:  # bad input: one line, exit 2, as the dtlabel commands do
        print(f"ssl_peer: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, overrides: list[str], SimCLRTransform: Any) -> int:
    from dtlabel.config import compose
    from dtlabel.data import build_data, data_size, label_free_pool
    from dtlabel.device import select_device
    from dtlabel.engine import train
    from dtlabel.errors import DataError
    from dtlabel.pretrain.export import BACKBONE, save_backbone
    from dtlabel.pretrain.model import STRIDES, create_backbone
    from dtlabel.report import save_training_curves
    from dtlabel.runs import Run

    cfg = compose("pretrain", [f"preset={args.preset}", *overrides])
    run = Run.open(COMMAND, cfg, args.out, resume=args.resume)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]  # stderr: the one-line error
    if run.log_file is not None:  # rank 0 logs for everyone (the folder is its own under torchrun)
        handlers.append(logging.FileHandler(run.log_file))
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=handlers)
    device = dist.init_from_env(select_device(cfg.device))
    try:
        seed, size = int(cfg.seed), data_size(cfg.data)
        bundle = build_data(cfg.data)
        source = label_free_pool(bundle, bool(cfg.pretrain.include_labeled))
        if source is None:
            raise DataError(f"data set {bundle.name} has no label-free images")
        transform = SimCLRTransform(input_size=size, min_scale=args.min_scale)
        views = TwoViews(source, size, seed, transform)
        torch.manual_seed(seed)
        net = SimCLRNet(create_backbone(str(cfg.pretrain.backbone))).to(device)
        task = SimCLRTask(net, views, args.batch_size, args.steps, args.temperature, seed, device)
        log.info("simclr %s on %d images at %dx%d: %d steps x batch %d (2 views), lr %.1e, temperature %.2f",
                 cfg.pretrain.backbone, len(views), *size, args.steps, args.batch_size, args.lr, args.temperature)
        loop = LoopConfig(steps=args.steps, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.999),
                          warmup_steps=args.warmup_steps, min_lr_ratio=0.0, grad_clip=0.0, amp=str(cfg.amp),
                          seed=seed, log_every=10, checkpoint_every=args.checkpoint_every,
                          max_minutes=args.max_minutes, schedule=args.schedule)
        result = train(task, loop, run.path, device)
        desc = {"timm_name": str(cfg.pretrain.backbone), "features_only": True, "out_strides": list(STRIDES),
                "method": "SimCLR (lightly)", "steps": result.steps, "steps_planned": result.total,
                "stopped_early": result.stopped, "images_seen": result.steps * task.batch, "pool_size": len(views),
                "data": bundle.name, "data_size": list(size), "batch_size": args.batch_size, "lr": args.lr,
                "temperature": args.temperature, "schedule": args.schedule}
        if dist.is_main():
            save_backbone(run.path / BACKBONE, net.backbone, **desc)
            save_training_curves(run.path, f"SimCLR {cfg.pretrain.backbone}", "NT-Xent")
            _views_picture(run.path / "views.png", views, min(4, len(views)))
            run.finish(backbone=BACKBONE, final_loss=round(result.loss_ema, 6), world_size=dist.world_size(), **desc)
        dist.barrier()
        log.info("simclr: %d steps, final loss %.4f; backbone in %s", result.steps, result.loss_ema,
                 run.path / BACKBONE)
    finally:
        dist.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
