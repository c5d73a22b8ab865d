"""A disk cache of teacher features: fp16 ``.npy`` files, memory-mapped on read.

Peers hold all pixel features of the labeled set in RAM (docs/METHOD.md §8: ~210 GB for 50 images at
256 px). dtlabel keeps native-resolution maps per image on disk in float16 and maps them back
lazily, so a head trains on many images with a small resident set.

Layout: one folder per entry, ``root/<d[:2]>/<d>/`` with ``meta.json`` and one ``<i>.npy`` per
feature map, where ``d`` is the digest of a :class:`CacheKey` (image content hash, teacher hash,
feature settings, seed, noise-draw index). An entry is written into a hidden temporary folder and
renamed into place (``os.replace``), so readers never see a partial entry; an entry folder without
``meta.json`` is ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from dtlabel.io import ordinary_mode
from dtlabel.teachers.base import Teacher

logger = logging.getLogger(__name__)

__all__ = ["CacheKey", "FeatureCache", "feature_settings", "image_hash"]

_FP16_MAX = float(np.finfo(np.float16).max)
# Teacher options that change the features (others, like the sampler, do not).
_FEATURE_OPTIONS = ("blocks", "concat_timesteps", "prompt", "allow_any_size")


def image_hash(image: torch.Tensor | np.ndarray) -> str:
    """sha256 (32 hex chars) of an image's dtype, shape and bytes: same pixels, same hash."""
    arr = image.detach().cpu().contiguous().numpy() if isinstance(image, torch.Tensor) else np.ascontiguousarray(image)
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()[:32]


def _options(timesteps: Sequence[int] | None, noise_draws: int | None) -> dict[str, object]:
    """The reading options that were given (families without options get none)."""
    given = {"timesteps": timesteps, "noise_draws": noise_draws}
    return {k: v for k, v in given.items() if v is not None}


def feature_settings(teacher: Teacher, timesteps: Sequence[int] | None = None, noise_draws: int | None = None) -> str:
    """Canonical JSON of everything besides weights, image and seed that shapes the features.

    Includes the family, the feature names of ``spec_for(timesteps)`` (blocks + timesteps), the
    number of noise draws (1 for families without) and the feature-relevant options (e.g. the SD
    prompt). ``timesteps`` and ``noise_draws`` are diffusion reading options; leave them None for
    other families.
    """
    spec = teacher.spec_for(**_options(timesteps, noise_draws))
    settings = {
        "family": teacher.family,
        "names": list(spec.names),
        "noise_draws": int(noise_draws if noise_draws is not None else getattr(teacher, "noise_draws", 1)),
        "options": {k: teacher.kwargs.get(k) for k in _FEATURE_OPTIONS if k in teacher.kwargs},
    }
    reading = getattr(teacher, "reading_key", None)  # a GAN reading stored latents, not its encoder
    if reading:
        settings["reading"] = reading
    return json.dumps(settings, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class CacheKey:
    """What identifies one cached entry (one image's feature maps).

    ``settings`` is :func:`feature_settings` (feature names, timesteps, noise draws, options);
    ``draw`` distinguishes repeated stochastic encodings of the same image with the same seed
    (e.g. epoch-wise augmentation draws).
    """

    image_hash: str
    teacher_hash: str
    settings: str
    seed: int
    draw: int = 0

    def digest(self) -> str:
        """32-hex-char sha256 of all fields."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:32]


class FeatureCache:
    """Per-image teacher features on disk (fp16, memory-mapped), keyed by :class:`CacheKey`.

    Usage::

        cache = FeatureCache(run_dir / "feature_cache")
        feats = cache.features(teacher, images, seeds=[base_seed + i for i in ids])  # hits or computes
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ keys and paths
    def key(
        self,
        teacher: Teacher,
        image: torch.Tensor | np.ndarray | str,
        seed: int,
        timesteps: Sequence[int] | None = None,
        noise_draws: int | None = None,
        draw: int = 0,
    ) -> CacheKey:
        """Key of ``image`` (a tensor/array, or an already computed :func:`image_hash`)."""
        ih = image if isinstance(image, str) else image_hash(image)
        return CacheKey(ih, teacher.teacher_hash(), feature_settings(teacher, timesteps, noise_draws), int(seed), draw)

    def path(self, key: CacheKey) -> Path:
        """Folder of the entry for ``key`` (it may not exist)."""
        d = key.digest()
        return self.root / d[:2] / d

    def __contains__(self, key: CacheKey) -> bool:
        return (self.path(key) / "meta.json").is_file()

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("??/*/meta.json"))

    # ------------------------------------------------------------------ read / write
    def get(self, key: CacheKey, dtype: torch.dtype | None = torch.float32) -> dict[str, torch.Tensor] | None:
        """The cached maps for ``key`` or None on a miss.

        With ``dtype`` (default float32) the maps are copied out of the memory map and converted;
        with ``dtype=None`` they are zero-copy read-only float16 views of the mapped files (do not
        write into them).
        """
        folder = self.path(key)
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        if meta.get("key") != asdict(key):  # a digest collision or a foreign folder: treat as a miss
            return None
        out: dict[str, torch.Tensor] = {}
        for i, name in enumerate(meta["names"]):
            try:
                arr = np.load(folder / f"{i}.npy", mmap_mode="r")
            except (OSError, ValueError):
                logger.warning("unreadable cache entry %s; ignoring it", folder)
                return None
            if dtype is None:
                with warnings.catch_warnings():  # read-only memmap: torch warns about non-writable arrays
                    warnings.simplefilter("ignore", UserWarning)
                    out[name] = torch.from_numpy(arr)
            else:
                out[name] = torch.from_numpy(np.array(arr, dtype=np.float32)).to(dtype)
        return out

    def put(self, key: CacheKey, feats: Mapping[str, torch.Tensor]) -> Path:
        """Store ``feats`` (any shapes; saved as float16) for ``key``; returns the entry folder.

        Written to a hidden temporary folder in the same directory, then renamed into place: an
        entry is either complete or absent. If another writer got there first, its entry is kept.
        Values beyond the float16 range are clamped (and logged) rather than stored as inf.
        """
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
        try:
            names = list(feats)
            for i, name in enumerate(names):
                arr = feats[name].detach().float().cpu().numpy()
                if np.abs(arr).max(initial=0.0) > _FP16_MAX:
                    logger.warning("feature %s exceeds the float16 range; clamping it in the cache", name)
                    arr = np.clip(arr, -_FP16_MAX, _FP16_MAX)
                np.save(tmp / f"{i}.npy", arr.astype(np.float16))
            meta = {"key": asdict(key), "names": names, "shapes": [list(feats[n].shape) for n in names]}
            (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
            ordinary_mode(tmp, folder=True)  # a shared cache: readable as the umask allows
            try:
                os.replace(tmp, final)
            except OSError:
                if not (final / "meta.json").is_file():
                    # a stale incomplete folder (should not happen): replace it
                    shutil.rmtree(final, ignore_errors=True)
                    os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    # ------------------------------------------------------------------ batched convenience
    def features(
        self,
        teacher: Teacher,
        images: torch.Tensor,
        seeds: Sequence[int],
        image_hashes: Sequence[str] | None = None,
        timesteps: Sequence[int] | None = None,
        noise_draws: int | None = None,
        draw: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Teacher features of a batch, read from the cache where present, computed and stored otherwise.

        Args:
            images: ``(B, 3, H, W)`` in [-1, 1]. seeds: one seed per image (noise of image ``b`` is
                drawn from its own generator, so hits and fresh computations agree).
            image_hashes: precomputed :func:`image_hash` values (e.g. of the uint8 file pixels);
                default: hashes of ``images``.

        Returns:
            ``{name: (B, C, h, w) float32}`` on the teacher's device (cached values are fp16-rounded).
        """
        n = images.shape[0]
        if len(seeds) != n:
            raise ValueError(f"got {len(seeds)} seeds for {n} images")
        opts = _options(timesteps, noise_draws)
        hashes = list(image_hashes) if image_hashes is not None else [image_hash(img) for img in images]
        keys = [self.key(teacher, h, s, timesteps, noise_draws, draw) for h, s in zip(hashes, seeds)]
        got: list[dict[str, torch.Tensor] | None] = [self.get(k) for k in keys]
        miss = [i for i, g in enumerate(got) if g is None]
        if miss:
            fresh = teacher.features(images[miss], seed=[int(seeds[i]) for i in miss], **opts)
            for j, i in enumerate(miss):
                one = {k: v[j] for k, v in fresh.items()}
                self.put(keys[i], one)
                # return what a later hit would return, so results do not depend on the cache state
                got[i] = {k: v.half().float() for k, v in one.items()}
        names = list(teacher.spec_for(**opts).names)
        return {k: torch.stack([g[k].to(teacher.device) for g in got]) for k in names}  # type: ignore[index]

    def clear(self) -> None:
        """Delete every entry (keeps ``root``)."""
        for child in self.root.iterdir():
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)

    def __repr__(self) -> str:
        return f"FeatureCache(root={str(self.root)!r})"

