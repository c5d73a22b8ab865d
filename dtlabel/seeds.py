"""Every seed derivation of dtlabel in one place.

Randomness is always drawn from generators seeded by a pure function of the run's seed and a
position (a step, an epoch, a sample), never from state carried between steps: that is what makes
a run resumed from any checkpoint end with the same bytes as an uninterrupted one, and what makes
a sample the same whatever the batch size, the number of processes or the data-loader workers.
The formulas are the ones the commands have always used, so earlier runs keep their meaning.
"""

from __future__ import annotations

_MOD = 2**63


def permutation(seed: int, epoch: int) -> int:
    """Seed of the ``epoch``-th shuffled pass over a training set (:class:`dtlabel.data.IndexStream`)."""
    return (int(seed) * 100_003 + int(epoch)) % _MOD


def step(seed: int, step: int, rank: int = 0) -> int:
    """Seed of everything random inside optimisation step ``step`` on process ``rank``: the teacher's
    noise and timesteps, flips, pixel sampling, dropout (the engine seeds torch with it)."""
    return ((int(seed) * 1_000_003 + int(step)) * 131 + int(rank)) % _MOD


def torch_step(seed: int, step_: int, rank: int = 0) -> int:
    """Seed the engine gives torch's global generator before step ``step_`` (dropout and any module
    that draws from it), distinct from :func:`step` so the two streams are not the same numbers."""
    return (step(seed, step_, rank) * 31 + 1) % _MOD


def sample(seed: int, position: int) -> int:
    """Seed of the augmentation of the sample at ``position`` of a training stream (albumentations)."""
    return ((int(seed) * 7919 + int(position)) * 104_729 + 7) % _MOD


def noise(seed: int, stream: int, index: int) -> int:
    """Teacher noise seed of image ``index`` (its position in its split list) in noise ``stream``.

    Training uses stream ``e + 1`` in its ``e``-th pass over the labeled images (fresh noise every
    pass, the paper's feature-space augmentation); evaluation uses stream 0 (the same noise every
    time, so validation passes compare).
    """
    return ((int(seed) * 1_000_003 + int(stream)) * 1_000_033 + int(index)) % _MOD


EVAL_STREAM = 0


def validation(seed: int) -> int:
    """Seed of the choice of the validation slice drawn from the training pool."""
    return int(seed) * 7919 + 17


def synth_sample(base_seed: int, index: int) -> int:
    """Seed of synth sample ``index`` (sampling noise and feature noise): ``base_seed + index``."""
    return int(base_seed) + int(index)


def scene(seed: int, offset: int, number: int) -> int:
    """Seed of scene ``number`` of a split (``offset`` per split) of the embedded default data set."""
    return int(seed) * 10_000_000 + int(offset) + int(number)


def epoch(seed: int, epoch_: int) -> int:
    """Seed of pass ``epoch_`` of a synth stream's shuffle (``SynthIterableDataset.set_epoch``)."""
    return int(seed) + int(epoch_)


def shard_order(seed: int, rank: int) -> int:
    """Seed of the shuffle buffer of a synth stream on process ``rank``."""
    return int(seed) * 1_000_003 + int(rank)


def preview(seed: int) -> int:
    """Seed of the images drawn for a data preview."""
    return int(seed)
