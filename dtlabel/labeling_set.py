"""DatasetGAN's workflow: samples a person labels, whose features stay exact (no inversion).

``synthesize --teacher GAN --n K --for-labeling --out RUN`` writes a *labeling set*:

- ``RUN/images/<key>.png`` (``key = f"{index:08d}"``, the names ``export`` uses): sample ``index``
  drawn from seed ``base_seed + index``, to upload to CVAT or Label Studio as a task's images;
- ``RUN/latents.safetensors``: ``z (K, z_dim)`` float32, row ``index`` the latent of that image;
- ``RUN/labeling.json`` (last: the set is complete): format, keys, seeds, size, the teacher's
  family, hash and description.

``dtlabel import-labels RUN --from FILE`` (:mod:`dtlabel.annotations`) writes the labels a person
made into ``RUN/masks/<key>.png`` + ``RUN/classes.json``, so the set is a ``data=folder`` data set
(``data.root=RUN``). ``train-head`` on it (the same teacher) then reads each image's features at its
stored latent (:meth:`dtlabel.teachers.gan.GanTeacher.use_latents`), exact as DatasetGAN's, instead
of at the encoder's approximate inversion.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from dtlabel.data.folder import read_image
from dtlabel.data.transforms import to_uint8
from dtlabel.errors import ConfigError, DataError, ModelError
from dtlabel.io import atomic_dir, atomic_path, read_json, save_tensors, write_json
from dtlabel.seeds import synth_sample

log = logging.getLogger(__name__)

LABELING_FILE = "labeling.json"
LATENTS_FILE = "latents.safetensors"
LABELING_FORMAT = "dtlabel-labeling/1"


def key_of(index: int) -> str:
    return f"{int(index):08d}"


def check_stores_latents(teacher: Any) -> None:
    """One line unless ``teacher``'s samples come from one latent each (a GAN)."""
    if not hasattr(teacher, "latents"):
        raise ConfigError(f"--for-labeling stores each sample's latent so that a labelled sample's features are exact; "
                          f"the {teacher.family} teacher has none (a diffusion sample is a 50-step trajectory, not "
                          "one latent): use a GAN teacher, or label real images and train-head on them")


def write_labeling_set(folder: str | Path, teacher: Any, n: int, base_seed: int, batch_size: int = 64,
                       progress: Any = None) -> dict[str, Any]:
    """Draw ``n`` samples of ``teacher`` (a family that stores latents) into the labeling set ``folder``
    (``images/`` and the latents each written atomically, ``labeling.json`` last: a rerun redoes an
    interrupted set to the same bytes); returns ``labeling.json``'s record."""
    check_stores_latents(teacher)
    folder = Path(folder)
    (folder / LABELING_FILE).unlink(missing_ok=True)  # an earlier, other set in this folder is no longer complete
    z = teacher.latents(n, base_seed, teacher.z_dim)
    with atomic_dir(folder / "images") as tmp:
        for start in range(0, n, batch_size):
            images, _ = teacher.features_at(z[start:start + batch_size])
            for offset, image in enumerate(to_uint8(images.cpu())):
                _write_png(tmp / f"{key_of(start + offset)}.png", image)
            if progress is not None:
                progress.update(len(images))
    with atomic_path(folder / LATENTS_FILE) as tmp_file:
        save_tensors({"z": z.float().contiguous()}, tmp_file, metadata={"teacher_hash": teacher.teacher_hash()})
    record = {"format": LABELING_FORMAT, "count": n, "keys": [key_of(i) for i in range(n)],
              "seeds": [synth_sample(base_seed, i) for i in range(n)], "base_seed": int(base_seed),
              "size": list(teacher.image_size), "z_dim": int(teacher.z_dim), "teacher_hash": teacher.teacher_hash(),
              "teacher": teacher.describe(),
              "next": "label images/ in CVAT or Label Studio, then dtlabel import-labels RUN --from EXPORT"}
    write_json(folder / LABELING_FILE, record)  # last: the set is complete
    return record


def _write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(image).save(path, format="PNG")


def is_labeling_set(root: str | Path | None) -> bool:
    return root is not None and (Path(str(root)) / LABELING_FILE).is_file()


def read_labeling_set(root: str | Path) -> dict[str, Any]:
    """``labeling.json`` of the set in ``root``, checked (one ``DataError`` line when it is not one)."""
    path = Path(root) / LABELING_FILE
    if not path.is_file():
        raise DataError(f"{root} is not a labeling set (no {LABELING_FILE}); make one with synthesize --n K "
                        "--for-labeling --teacher GAN")
    record = read_json(path, DataError)
    if not isinstance(record, dict) or record.get("format") != LABELING_FORMAT:
        raise DataError(f"{path} is not a dtlabel labeling set (format {LABELING_FORMAT} expected)")
    return record


def attach_latents(root: str | Path, teacher: Any, data_size: Any) -> int:
    """Give ``teacher`` the stored latents of the labeling set in ``root`` (its images as the keys):
    its features of those images are then exact. Returns how many; one line when the set belongs to
    another teacher, its latents are missing, or ``data_size`` would resize its images (a resized
    image is no longer the sample its latent drew)."""
    record = read_labeling_set(root)
    h, w = (int(v) for v in record["size"])
    if (int(data_size[0]), int(data_size[1])) != (h, w):
        raise ConfigError(f"the labelled samples in {root} are {h}x{w} but data.size is {data_size[0]}x{data_size[1]}: "
                          f"a resized sample loses its stored latent; set 'data.size=[{h},{w}]'")
    if record.get("teacher_hash") != teacher.teacher_hash():
        raise ModelError(f"the labelled samples in {root} were drawn by teacher {record.get('teacher_hash')} but "
                         f"--teacher {teacher.path} is {teacher.teacher_hash()}; pass the teacher that drew them")
    if not hasattr(teacher, "use_latents"):
        raise ModelError(f"the labelled samples in {root} carry GAN latents; the {teacher.family} teacher cannot use them")
    latents_file = Path(root) / LATENTS_FILE
    if not latents_file.is_file():
        raise DataError(f"the labelled samples in {root} have lost their latents ({LATENTS_FILE} is missing); "
                        "their features would be the encoder's approximation: restore the file or draw a new set")
    try:
        z = load_file(str(latents_file))["z"]
    except (OSError, SafetensorError, KeyError) as exc:
        raise DataError(f"cannot read the latents {latents_file}: {' '.join(str(exc).split())[:160]}") from None
    keys = list(record["keys"])
    if z.shape[0] != len(keys):
        raise DataError(f"{latents_file} holds {z.shape[0]} latents for {len(keys)} samples; the set is damaged")
    images = np.stack([read_image(Path(root) / "images" / f"{k}.png") for k in keys])
    teacher.use_latents(images, z)
    log.info("train-head: %d labelled samples of %s read at their stored latents (exact features)", len(keys), root)
    return len(keys)
