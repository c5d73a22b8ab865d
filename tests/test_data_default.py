"""Tests of the generated default data set (dtlabel.data.default)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dtlabel.data.default import CLASS_NAMES, render_scene

NUM_CLASSES = len(CLASS_NAMES)


@pytest.fixture(scope="module")
def scenes() -> list[tuple[np.ndarray, np.ndarray]]:
    """100 scenes at the default size, shared by the statistical tests."""
    return [render_scene(seed) for seed in range(100)]


def test_class_names() -> None:
    assert CLASS_NAMES[0] == "background"
    assert 6 <= NUM_CLASSES <= 7
    assert len(set(CLASS_NAMES)) == NUM_CLASSES


def test_same_seed_same_arrays() -> None:
    for seed in (0, 1, 12345):
        img_a, mask_a = render_scene(seed)
        img_b, mask_b = render_scene(seed)
        np.testing.assert_array_equal(img_a, img_b)
        np.testing.assert_array_equal(mask_a, mask_b)


def test_different_seeds_differ() -> None:
    img_a, mask_a = render_scene(1)
    img_b, mask_b = render_scene(2)
    assert not np.array_equal(img_a, img_b)
    assert not np.array_equal(mask_a, mask_b)


def test_no_global_rng_use() -> None:
    np.random.seed(0)
    before = np.random.random()
    np.random.seed(0)
    render_scene(5)
    assert np.random.random() == before


@pytest.mark.parametrize("size", [(64, 64), (32, 32), (48, 64), (64, 48), (37, 21)])
def test_shapes_and_dtypes(size: tuple[int, int]) -> None:
    for seed in range(3):
        img, mask = render_scene(seed, size)
        assert img.shape == (*size, 3) and img.dtype == np.uint8
        assert mask.shape == size and mask.dtype == np.uint8
        assert img.flags.c_contiguous and mask.flags.c_contiguous
        assert int(mask.max()) < NUM_CLASSES


def test_too_small_size_rejected() -> None:
    with pytest.raises(ValueError):
        render_scene(0, (4, 64))


def test_flat_style_same_classes_plainer_backgrounds() -> None:
    """``flat``: deterministic, every class still drawn, backgrounds smoother (no noise or textures)."""
    counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    rough = {"photo": [], "flat": []}
    for seed in range(60):
        for style in rough:
            img, mask = render_scene(seed, (64, 64), style)
            bg = img.astype(np.float32)
            # high-frequency energy of the background: the mean absolute horizontal difference
            diff = np.abs(np.diff(bg, axis=1)).sum(axis=2)
            keep = (mask[:, 1:] == 0) & (mask[:, :-1] == 0)
            rough[style].append(diff[keep].mean() if keep.any() else 0.0)
            if style == "flat":
                counts += np.bincount(mask.ravel(), minlength=NUM_CLASSES)
    a, b = render_scene(3, (64, 64), "flat"), render_scene(3, (64, 64), "flat")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert (counts[1:] > 0).all()
    assert np.mean(rough["flat"]) < 0.6 * np.mean(rough["photo"]), (np.mean(rough["flat"]), np.mean(rough["photo"]))
    with pytest.raises(ValueError):
        render_scene(0, (64, 64), "cartoon")


def test_images_not_constant(scenes: list[tuple[np.ndarray, np.ndarray]]) -> None:
    for img, _ in scenes:
        assert img.reshape(-1, 3).std(axis=0).max() > 3.0
        # the background itself varies too (gradients, noise, clutter)
    bg_stds = [img[mask == 0].std() for img, mask in scenes if (mask == 0).sum() > 100]
    assert np.median(bg_stds) > 5.0


def test_every_class_appears(scenes: list[tuple[np.ndarray, np.ndarray]]) -> None:
    counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    for _, mask in scenes:
        counts += np.bincount(mask.ravel(), minlength=NUM_CLASSES)
    assert (counts > 0).all(), dict(zip(CLASS_NAMES, counts.tolist()))
    # no object class is starved: each has at least a third of the average object share
    obj = counts[1:] / counts[1:].sum()
    assert obj.min() > 1.0 / (3 * (NUM_CLASSES - 1)), obj


def test_background_share(scenes: list[tuple[np.ndarray, np.ndarray]]) -> None:
    share = np.mean([(mask == 0).mean() for _, mask in scenes])
    assert 0.35 <= share <= 0.85, share


def test_several_objects_and_occlusion(scenes: list[tuple[np.ndarray, np.ndarray]]) -> None:
    classes_per_image = [len(np.unique(mask)) - 1 for _, mask in scenes]
    assert max(classes_per_image) >= 3
    assert np.mean(classes_per_image) >= 1.5


def test_colour_alone_does_not_separate_classes(
    scenes: list[tuple[np.ndarray, np.ndarray]],
) -> None:
    """A per-pixel colour lookup table (the best any colour-only classifier can do with 8 levels
    per channel), fitted on 100 scenes and evaluated on 50 others, barely beats always predicting
    the most frequent object class."""

    def bins(pixels: np.ndarray) -> np.ndarray:
        q = pixels.astype(np.int64) // 32
        return q[:, 0] * 64 + q[:, 1] * 8 + q[:, 2]

    table = np.zeros((512, NUM_CLASSES), dtype=np.int64)
    for img, mask in scenes:
        fg = mask > 0
        np.add.at(table, (bins(img[fg]), mask[fg].astype(np.int64)), 1)
    predict = table.argmax(axis=1)

    correct = total = 0
    per_class = np.zeros(NUM_CLASSES, dtype=np.int64)
    for seed in range(10_000, 10_050):
        img, mask = render_scene(seed)
        fg = mask > 0
        correct += int((predict[bins(img[fg])] == mask[fg]).sum())
        total += int(fg.sum())
        per_class += np.bincount(mask[fg], minlength=NUM_CLASSES)
    accuracy = correct / total
    majority = per_class.max() / total
    assert accuracy < majority + 0.12, (accuracy, majority)


def test_each_class_spans_many_hues(scenes: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Each object class shows up in at least half of twelve 30-degree hue sectors."""
    hues: list[list[np.ndarray]] = [[] for _ in range(NUM_CLASSES)]
    for img, mask in scenes:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)  # hue in [0, 180)
        for c in np.unique(mask):
            hues[c].append(hsv[..., 0][mask == c])
    for c in range(1, NUM_CLASSES):
        h = np.concatenate(hues[c])
        sectors = np.bincount(h // 15, minlength=12)[:12] / h.size
        assert (sectors >= 0.02).sum() >= 6, (CLASS_NAMES[c], sectors.round(3))


@pytest.mark.parametrize("size", [(64, 64), (48, 64)])
def test_mask_aligned_with_image_edges(size: tuple[int, int]) -> None:
    """The image changes most across mask boundaries when the mask is not shifted at all."""

    def boundary_contrast(shift: int) -> float:
        total = count = 0.0
        for seed in range(20):
            img, mask = render_scene(seed, size)
            img = img.astype(np.float32)
            for axis in (0, 1):
                m = np.roll(mask, shift, axis=axis)
                boundary = np.diff(m.astype(np.int16), axis=axis) != 0
                step = np.abs(np.diff(img, axis=axis)).sum(axis=-1)
                total += float(step[boundary].sum())
                count += float(boundary.sum())
        return total / count

    aligned = boundary_contrast(0)
    assert aligned > 1.5 * max(boundary_contrast(-1), boundary_contrast(1))
