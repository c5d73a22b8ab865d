"""Which images to label next (``dtlabel suggest``): representative, or uncertain and unlike the labels.

Each candidate ``i`` gets a descriptor ``f_i``: every teacher feature map the head reads, averaged
over its pixels, each map's vector L2-normalised so that no block dominates, concatenated and
normalised again; and the head's uncertainty score ``u_i`` (mean of the top 10% of its per-pixel
uncertainty, as synthesize scores images). Deterministic: the features use the evaluation noise of
each candidate's index. Three strategies; docs/RESULTS.md measures them on CCP (10 -> 25 labels,
3 label draws x 3 random seeds), and the default is the one that measured best there.

``strategy=typical`` (the default) follows the low-budget finding that with few labels the
representative images help more than the uncertain ones (Hacohen et al., "Active learning on a
budget", 2022, TypiClust): k-means on the descriptors of the labeled images and the candidates
together, with as many clusters as labeled images plus ``K``; the clusters with the fewest labeled
images, largest first, each give their most typical candidate (typicality: the inverse mean
distance to its 20 nearest neighbours in the pool). It never picks two near-duplicates (one per
cluster) nor an outlier (lowest typicality).

``strategy=k-center`` is k-center greedy weighted by uncertainty: starting from the labeled images
as centres, take

    argmax_i  d_i * (u_i + eps) ** uncertainty_weight,   d_i = min over centres c of |f_i - f_c|,

add it to the centres, and repeat ``K`` times (ties: the lowest index). ``uncertainty_weight = 0``
is pure k-center (coreset) selection; a large weight approaches uncertainty ranking. On CCP at 10
labels it picks the unusual scenes (loud backgrounds, odd poses) and loses to random.

``strategy=random`` is the baseline a user measures the ranking against (docs/RESULTS.md does so
on CCP): ``K`` candidates drawn with ``random_seed``, described and scored the same way, so its
files read like a ranking's and its ``label_ids.txt`` trains the same next head.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dtlabel import seeds
from dtlabel.heads import image_score

EPS = 1e-3


@dataclass
class Candidates:
    """Descriptors ``(N, D)`` float64, uncertainty scores ``(N,)`` and the hard pseudo-labels of the
    candidates at ``size`` (uint8, for the contact sheet), in the order of their names."""

    names: list[str]
    features: np.ndarray
    uncertainty: np.ndarray
    labels: list[np.ndarray]


def describe(feats: dict[str, torch.Tensor]) -> torch.Tensor:
    """``{name: (B, C, h, w)}`` -> ``(B, D)``: per-map channel means, each map L2-normalised, concatenated,
    normalised again (every map the head reads counts the same, whatever its channel count)."""
    parts = [F.normalize(f.float().mean(dim=(2, 3)), dim=1) for _, f in sorted(feats.items())]
    return F.normalize(torch.cat(parts, dim=1), dim=1)


@torch.no_grad()
def read_candidates(names: Sequence[str], read: Callable[[int], torch.Tensor], head: object, features: Callable,
                    seed: int, size: tuple[int, int], batch_size: int, progress: bool = True) -> Candidates:
    """Teacher descriptors, head uncertainty scores and pseudo-labels of every image ``read(i)``
    (``(3, H, W)`` in [-1, 1] at ``size``); ``features(images, seeds) -> {name: map}``."""
    descs, scores, labels = [], [], []
    with tqdm(total=len(names), desc="suggest: reading", unit="img", disable=not progress) as bar:
        for start in range(0, len(names), batch_size):
            idx = list(range(start, min(len(names), start + batch_size)))
            images = torch.stack([read(i) for i in idx])
            f = features(images, [seeds.noise(seed, seeds.EVAL_STREAM, i) for i in idx])
            probs, unc = head.predict(f, size)  # type: ignore[attr-defined]
            descs.append(describe(f).double().cpu())
            c = probs.shape[1]
            scores.append(image_score(unc.float().cpu() / float(np.log(max(2, c)))).double())
            labels += list(probs.argmax(1).to(torch.uint8).cpu().numpy())
            bar.update(len(idx))
    return Candidates(list(names), torch.cat(descs).numpy(), torch.cat(scores).numpy(), labels)


@dataclass
class Pick:
    rank: int
    index: int        # into the candidates
    score: float      # distance x uncertainty weight at the time it was picked
    distance: float   # to the nearest labeled or already picked image
    uncertainty: float


def weighted_k_center(features: np.ndarray, uncertainty: np.ndarray, centres: np.ndarray, k: int,
                      uncertainty_weight: float = 1.0) -> list[Pick]:
    """Greedy selection of ``k`` rows of ``features`` (module docstring); ``centres (M, D)`` are the
    labeled images (``M`` may be 0: then the first pick is the most uncertain image)."""
    n = len(features)
    weight = (uncertainty + EPS) ** float(uncertainty_weight)
    if len(centres):
        dist = np.min(np.linalg.norm(features[:, None, :] - centres[None, :, :], axis=2), axis=1)
    else:
        dist = np.full(n, 1.0)
    taken = np.zeros(n, dtype=bool)
    picks: list[Pick] = []
    for rank in range(1, k + 1):
        value = np.where(taken, -np.inf, dist * weight)
        i = int(np.argmax(value))  # first maximum: the lowest index on ties
        picks.append(Pick(rank, i, float(value[i]), float(dist[i]), float(uncertainty[i])))
        taken[i] = True
        dist = np.minimum(dist, np.linalg.norm(features - features[i], axis=1))
    return picks


def random_order(n: int, k: int, seed: int) -> list[int]:
    """``k`` distinct indices of ``range(n)``, in draw order, from ``seed`` alone (same bytes on any machine)."""
    return random.Random(int(seed)).sample(range(n), k)


def in_order(features: np.ndarray, uncertainty: np.ndarray, centres: np.ndarray,
             uncertainty_weight: float = 1.0) -> list[Pick]:
    """The rows of ``features`` taken in the order given (a random draw), with the distance and score
    each would have had under :func:`weighted_k_center` at its turn: comparable numbers, no choice."""
    picks: list[Pick] = []
    seen = centres
    for i in range(len(features)):
        d = float(np.min(np.linalg.norm(seen - features[i], axis=1))) if len(seen) else 1.0
        u = float(uncertainty[i])
        picks.append(Pick(i + 1, i, d * (u + EPS) ** float(uncertainty_weight), d, u))
        seen = np.concatenate([seen.reshape(-1, features.shape[1]), features[i:i + 1]])
    return picks


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 50) -> np.ndarray:
    """Cluster of each row of ``x (N, D)`` into ``k`` clusters: scipy's k-means (k-means++ seeding from
    ``seed``, ``iters`` Lloyd iterations). ``(N,)`` int."""
    import warnings

    from scipy.cluster.vq import kmeans2

    with warnings.catch_warnings():  # an emptied cluster stays empty: fewer clusters, not an error
        warnings.simplefilter("ignore")
        _, assign = kmeans2(np.asarray(x, np.float64), int(k), iter=int(iters), minit="++",
                            rng=np.random.default_rng(int(seed)))
    return assign


def knn_typicality(x: np.ndarray, neighbours: int = 20) -> np.ndarray:
    """``(N,)``: 1 / mean distance of each row of ``x`` to its ``neighbours`` nearest other rows
    (scipy's KD-tree: memory linear in the pool size)."""
    from scipy.spatial import cKDTree

    nn = min(neighbours, len(x) - 1)
    if nn < 1:
        return np.ones(len(x))
    d, _ = cKDTree(np.asarray(x, np.float64)).query(x, k=nn + 1)  # the first neighbour is the row itself
    return 1.0 / (d[:, 1:].mean(1) + 1e-12)


def typical_picks(features: np.ndarray, uncertainty: np.ndarray, centres: np.ndarray, k: int, seed: int = 0,
                  neighbours: int = 20) -> tuple[list[Pick], list[str]]:
    """``k`` representative candidates (module docstring) and a line per pick saying why. Each
    :class:`Pick` has ``score`` = typicality and ``distance`` to the nearest labeled or earlier pick."""
    x = np.concatenate([centres.reshape(-1, features.shape[1]), features])
    m = len(x) - len(features)
    assign = kmeans(x, min(len(x), m + k), seed)
    typicality = knn_typicality(x, neighbours)
    labeled = np.bincount(assign[:m], minlength=assign.max() + 1)
    size = np.bincount(assign, minlength=assign.max() + 1)
    order = sorted(range(len(size)), key=lambda j: (labeled[j], -size[j], j))
    taken = np.zeros(len(features), dtype=bool)
    chosen: list[int] = []
    notes: list[str] = []
    while len(chosen) < k:
        for j in order:
            members = np.flatnonzero((assign[m:] == j) & ~taken)
            if len(chosen) == k or not len(members):
                continue
            i = int(members[np.argmax(typicality[m + members])])
            chosen.append(i)
            notes.append(f"most typical image of a cluster of {size[j]} ({labeled[j]} labeled; typicality "
                         f"{typicality[m + i]:.2f}), uncertainty {uncertainty[i]:.3f}")
            taken[i] = True
    # distances as a draw in this order would have them; the score is the typicality
    steps = in_order(features[chosen], uncertainty[chosen], centres)
    picks = [Pick(p.rank, chosen[p.index], float(typicality[m + chosen[p.index]]), p.distance, p.uncertainty)
             for p in steps]
    return picks, notes


def why(pick: Pick, distances: np.ndarray, uncertainty: np.ndarray) -> str:
    """One line a person reads: how far from what is labeled, how uncertain, against the pool."""
    d_pct = 100.0 * float((distances <= pick.distance).mean())
    u_pct = 100.0 * float((uncertainty <= pick.uncertainty).mean())
    return (f"distance {pick.distance:.3f} to the nearest labeled/picked image (pool percentile {d_pct:.0f}), "
            f"uncertainty {pick.uncertainty:.3f} (percentile {u_pct:.0f})")


def rank_candidates(strategy: str, features: np.ndarray, uncertainty: np.ndarray, centres: np.ndarray, k: int,
                    weight: float, seed: int) -> tuple[list[Pick], list[str]]:
    """``k`` picks of a strategy (``random``: the candidates as drawn, already ``k`` of them; ``typical``;
    ``k-center``) over ``features (N, D)`` with the head's ``uncertainty (N,)`` and the labeled images'
    ``centres (M, D)``, and one line per pick saying why."""
    if strategy == "random":
        picks = in_order(features, uncertainty, centres, weight)
        return picks, [f"random draw {p.rank} of {k} (random_seed {seed}): the baseline, no ranking" for p in picks]
    if strategy == "typical":
        return typical_picks(features, uncertainty, centres, k, seed)
    picks = weighted_k_center(features, uncertainty, centres, k, weight)
    first = (np.min(np.linalg.norm(features[:, None] - centres[None], axis=2), axis=1) if len(centres)
             else np.ones(len(features)))
    return picks, [why(p, first, uncertainty) for p in picks]
