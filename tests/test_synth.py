"""Synthetic micrographs: format, determinism, fractions, magnification, texture vs brightness, datasets."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy import ndimage

from napari_metalseg.data import synth
from napari_metalseg.data.synth import (
    DEFAULT_PHASES,
    assign_splits,
    pixel_size_for,
    synthesize_micrograph,
    write_synthetic_dataset,
    write_synthetic_dataset_job,
)
from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import UNLABELED, PhaseSet
from napari_metalseg.progress import run_job


def _fractions(mask: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(mask.ravel(), minlength=k)[:k] / mask.size


def test_shapes_dtypes_and_ranges():
    image, mask = synthesize_micrograph((96, 160), (0.5, 0.3, 0.2), 3000, seed=1)
    assert image.shape == mask.shape == (96, 160)
    assert image.dtype == np.float32 and mask.dtype == np.uint8
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert image.std() > 0.05, "image is nearly flat"
    assert set(np.unique(mask)) <= {0, 1, 2}
    assert not (mask == UNLABELED).any()
    square, _ = synthesize_micrograph(64)
    assert square.shape == (64, 64)


def test_deterministic_for_a_seed_and_different_across_seeds():
    a_img, a_mask = synthesize_micrograph(128, seed=7)
    b_img, b_mask = synthesize_micrograph(128, seed=7)
    assert a_img.tobytes() == b_img.tobytes() and a_mask.tobytes() == b_mask.tobytes()
    g_img, g_mask = synthesize_micrograph(128, seed=np.random.default_rng(7))
    h_img, _ = synthesize_micrograph(128, seed=np.random.default_rng(7))
    assert g_img.tobytes() == h_img.tobytes()
    c_img, c_mask = synthesize_micrograph(128, seed=8)
    assert not np.array_equal(a_img, c_img) and not np.array_equal(a_mask, c_mask)


@pytest.mark.parametrize(
    "fractions",
    [
        (0.5, 0.3, 0.2),
        (0.1, 0.7, 0.2),
        (0.7, 0.3),
        (0.9, 0.1),
        (0.4, 0.3, 0.2, 0.1),
        (0.3, 0.25, 0.2, 0.15, 0.1),
    ],
)
@pytest.mark.parametrize("magnification", [2700, 5000])
def test_fractions_are_honoured(fractions, magnification):
    for seed in range(2):
        _, mask = synthesize_micrograph(192, fractions, magnification, seed)
        measured = _fractions(mask, len(fractions))
        assert np.abs(measured - np.array(fractions)).max() <= 0.04, (fractions, measured)
        assert mask.max() == len(fractions) - 1


def test_zero_fraction_phase_is_absent():
    _, mask = synthesize_micrograph(128, (0.6, 0.0, 0.4), 3000, 3)
    assert not (mask == 1).any()
    assert abs(_fractions(mask, 3)[2] - 0.4) <= 0.04


def test_magnification_scales_features():
    def boundary_density(mask):
        return ((mask[:, 1:] != mask[:, :-1]).mean() + (mask[1:] != mask[:-1]).mean()) / 2

    ratios = []
    for seed in range(4):
        _, low = synthesize_micrograph(256, (0.5, 0.3, 0.2), 2700, seed)
        _, high = synthesize_micrograph(256, (0.5, 0.3, 0.2), 5000, seed)
        ratios.append(boundary_density(low) / boundary_density(high))
    # features are 5000 / 2700 = 1.85x larger at 5000x, so there is 1.85x less boundary per pixel
    assert 1.4 < np.mean(ratios) < 2.5, ratios


def _best_threshold_accuracy(values: np.ndarray, truth: np.ndarray) -> float:
    """Balanced accuracy of the best single intensity threshold (either polarity)."""
    best = 0.5
    for t in np.quantile(values, np.linspace(0.02, 0.98, 49)):
        pred = values > t
        acc = ((pred & truth).sum() / truth.sum() + (~pred & ~truth).sum() / (~truth).sum()) / 2
        best = max(best, acc, 1 - acc)
    return best


def _interior_gradient_energy(image: np.ndarray, region: np.ndarray) -> float:
    gy, gx = np.gradient(ndimage.gaussian_filter(image.astype(np.float64), 1.0))
    inner = ndimage.binary_erosion(region, iterations=4)
    return float((gx**2 + gy**2)[inner].mean())


def test_phases_not_separable_by_brightness_but_by_texture():
    accuracies = []
    for seed in range(4):
        image, mask = synthesize_micrograph(320, (0.6, 0.4), 3000, seed)
        ferrite, martensite = mask == 0, mask == 1
        accuracies.append(_best_threshold_accuracy(image.ravel(), martensite.ravel()))
        assert _interior_gradient_energy(image, martensite) > 1.8 * _interior_gradient_energy(image, ferrite)
        image3, mask3 = synthesize_micrograph(320, (0.6, 0.2, 0.2), 3000, seed)
        bainite_energy = _interior_gradient_energy(image3, mask3 == 2)
        assert bainite_energy > 1.8 * _interior_gradient_energy(image3, mask3 == 0)
    # a per-pixel brightness threshold is far from a perfect ferrite/martensite classifier
    assert np.mean(accuracies) < 0.85, accuracies


def test_pixel_size_for():
    assert pixel_size_for(3000, 1024) == pytest.approx(127_000 / 3000 / 1024)
    assert pixel_size_for(2700, 512) / pixel_size_for(5000, 512) == pytest.approx(5000 / 2700)
    assert pixel_size_for(3000, 512) == pytest.approx(2 * pixel_size_for(3000, 1024))


def test_assign_splits():
    for n in (3, 4, 5, 10, 17):
        labels = assign_splits(n, (0.6, 0.2, 0.2), seed=1)
        assert len(labels) == n and set(labels) == {"train", "val", "test"}
        assert labels == assign_splits(n, (0.6, 0.2, 0.2), seed=1)
    assert sorted(assign_splits(10)).count("train") == 6
    assert assign_splits(1) == ["train"]
    assert set(assign_splits(6, (1.0, 0.0, 0.0))) == {"train"}


def test_write_synthetic_dataset(tmp_path):
    from napari_metalseg.data.dataset import load_dataset, read_mask

    calls, kinds = [], set()

    def on_event(event):
        calls.append((event.step, event.total))
        kinds.add(event.kind)

    root = run_job(write_synthetic_dataset_job(tmp_path / "ds", n=5, size=96, seed=3), on_event)
    assert calls == [(i, 5) for i in range(1, 6)]
    assert kinds == {"synth"}
    assert PhaseSet.load(root / "phases.json").names == DEFAULT_PHASES.names
    with open(root / "metadata.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == [f"synth_{i:04d}" for i in range(5)]
    assert list(rows[0]) == [
        "name",
        "magnification",
        "pixel_size_um",
        "split",
        "sample",
        "true_fraction_ferrite",
        "true_fraction_martensite",
        "true_fraction_bainite",
    ]
    assert [float(r["magnification"]) for r in rows] == [2700, 3000, 5000, 2700, 3000]
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    drawn = []
    for row in rows:
        mask = read_mask(root / "masks" / f"{row['name']}.png")
        true = [float(row[f"true_fraction_{p}"]) for p in DEFAULT_PHASES.names]
        np.testing.assert_allclose(true, _fractions(mask, 3), atol=1e-5)
        expected_px = pixel_size_for(float(row["magnification"]), 96)
        assert float(row["pixel_size_um"]) == pytest.approx(expected_px, rel=1e-5)
        drawn.append(true)
    assert len({tuple(np.round(t, 3)) for t in drawn}) == 5, "fractions should be drawn per image"

    dataset = load_dataset(root, require_masks=True)
    assert len(dataset) == 5 and dataset.phases.names == DEFAULT_PHASES.names
    assert all(dataset.split(s) for s in ("train", "val", "test"))
    assert dataset.items[2].magnification == 5000

    again = write_synthetic_dataset(tmp_path / "again", n=5, size=96, seed=3)
    for name in ("images/synth_0004.png", "masks/synth_0004.png", "metadata.csv"):
        assert (root / name).read_bytes() == (again / name).read_bytes()
    with pytest.raises(MetalsegError, match="already contains a dataset"):
        write_synthetic_dataset(root, n=1, size=64)


def test_overwrite_replaces_only_a_synthetic_dataset(tmp_path):
    root = write_synthetic_dataset(tmp_path / "ds", n=4, size=64, seed=1)
    write_synthetic_dataset(root, n=2, size=64, seed=2, overwrite=True)
    assert sorted(p.name for p in (root / "images").iterdir()) == ["synth_0000.png", "synth_0001.png"]
    assert sorted(p.name for p in (root / "masks").iterdir()) == ["synth_0000.png", "synth_0001.png"]
    (root / "images" / "real_steel.tif").write_bytes(b"not ours")
    with pytest.raises(MetalsegError, match="not synthetic"):
        write_synthetic_dataset(root, n=2, size=64, overwrite=True)
    assert (root / "images" / "real_steel.tif").exists() and (root / "images" / "synth_0001.png").exists()


def test_write_dataset_fixed_fractions_and_two_phases(tmp_path):
    phases = PhaseSet.from_names(["ferrite", "martensite"])
    root = write_synthetic_dataset(
        tmp_path / "dp", n=3, size=128, fractions=(0.75, 0.25), phases=phases, magnifications=(3000,)
    )
    with open(root / "metadata.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    for row in rows:
        assert abs(float(row["true_fraction_martensite"]) - 0.25) <= 0.04


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: synthesize_micrograph(128, (0.5, -0.2, 0.7)), "non-negative"),
        (lambda: synthesize_micrograph(128, (0.5, 0.3, 0.3)), "sum to 1"),
        (lambda: synthesize_micrograph(128, (1.0,)), "2..5"),
        (lambda: synthesize_micrograph(128, (0.2,) * 5 + (0.0,)), "2..5"),
        (lambda: synthesize_micrograph(32), "64"),
        (lambda: synthesize_micrograph((128, 40)), "64"),
        (lambda: synthesize_micrograph(128.5), "integer"),
        (lambda: synthesize_micrograph(128, magnification=0), "magnification"),
        (lambda: synthesize_micrograph(128, magnification=10), "too low"),
        (lambda: synthesize_micrograph(128, seed=-1), "seed"),
        (lambda: write_synthetic_dataset("unused", n=0, size=128), "number of images"),
        (lambda: write_synthetic_dataset("unused", n=2, size=32), "64"),
        (lambda: write_synthetic_dataset("unused", n=2, size=128, fractions=(0.5, 0.5)), "2 fractions given"),
        (lambda: write_synthetic_dataset("unused", n=2, size=128, phases=PhaseSet.from_names(["a"])), "2..5"),
        (lambda: write_synthetic_dataset("unused", n=2, size=128, magnifications=()), "at least one"),
        (lambda: write_synthetic_dataset("unused", n=2, size=128, splits=(0.5, 0.5)), "splits"),
    ],
)
def test_bad_arguments_raise_one_line_errors(call, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MetalsegError, match=message) as info:
        call()
    assert "\n" not in str(info.value)
    assert not (tmp_path / "unused").exists(), "nothing is written when the arguments are bad"


def test_extra_phases_get_their_own_textures():
    image, mask = synthesize_micrograph(256, (0.3, 0.2, 0.2, 0.15, 0.15), 5000, 2)
    energies = [_interior_gradient_energy(image, mask == p) for p in range(5)]
    assert min(energies[1:]) > 1.3 * energies[0], energies
    assert synth.default_fraction_means(4) == pytest.approx((0.5, 0.25, 0.15, 0.1))
