"""The independent held-out generator in benchmarks/heldout.py: determinism, format, fractions, scribbles."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.heldout import PHASE_NAMES, generate, main, pixel_size_um, scribble_mask, write_heldout

UNLABELED = 255


def test_deterministic_for_a_seed():
    a_img, a_mask = generate(size=96, seed=3, magnification=3500)
    b_img, b_mask = generate(size=96, seed=3, magnification=3500)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    c_img, _ = generate(size=96, seed=4, magnification=3500)
    assert not np.array_equal(a_img, c_img)


@pytest.mark.parametrize("size", [32, (64, 96)])
@pytest.mark.parametrize("magnification", [2000, 6000])
def test_shapes_dtypes_and_ranges(size, magnification):
    img, mask = generate(size=size, seed=1, magnification=magnification)
    shape = (size, size) if isinstance(size, int) else size
    assert img.shape == shape and mask.shape == shape
    assert img.dtype == np.float32 and mask.dtype == np.uint8
    assert np.isfinite(img).all() and img.min() >= 0.0 and img.max() <= 1.0
    assert set(np.unique(mask)) <= {0, 1, 2}
    # 8-bit quantised by default; float otherwise
    np.testing.assert_allclose(img * 255, np.round(img * 255), atol=1e-3)


def test_intensity_uses_the_range_and_is_not_quantised_when_asked():
    img, _ = generate(size=128, seed=5, magnification=3500, quantize=False)
    assert img.std() > 0.05 and img.max() - img.min() > 0.5
    assert np.abs(img * 255 - np.round(img * 255)).max() > 0.01


@pytest.mark.parametrize("magnification", [2000, 3500, 6000])
def test_fractions_honoured_and_all_phases_present(magnification):
    target = np.array([0.55, 0.25, 0.2])
    img, mask, info = generate(size=160, seed=7, magnification=magnification, fractions=target, return_info=True)
    got = np.bincount(mask.ravel(), minlength=3) / mask.size
    assert set(np.unique(mask)) == {0, 1, 2}
    assert np.abs(got - target).max() < 0.1, got
    assert info["pixel_size_um"] == pytest.approx(pixel_size_um(magnification))
    assert list(info["fractions"]) == list(PHASE_NAMES)


def test_random_fractions_vary_and_phase_contrast_is_not_a_threshold():
    fr, accs = [], []
    for seed in range(4):
        img, mask = generate(size=128, seed=seed, magnification=3500)
        fr.append(np.bincount(mask.ravel(), minlength=3) / mask.size)
        f, m = img[mask == 0], img[mask == 1]
        if f.size and m.size:
            assert m.mean() > f.mean()  # martensite stands proud: brighter on average
            thr = np.linspace(0, 1, 101)
            acc = [0.5 * ((f < t).mean() + (m >= t).mean()) for t in thr]
            accs.append(max(acc))
    assert np.ptp(np.array(fr)[:, 1]) > 0.03  # martensite fraction differs between images
    assert max(accs) < 0.97  # a brightness threshold alone does not segment the image


def test_higher_magnification_gives_bigger_features():
    def boundary_density(mag):
        vals = []
        for seed in range(3):
            _, mask = generate(size=128, seed=seed, magnification=mag, fractions=(0.6, 0.25, 0.15))
            vals.append((mask[:, 1:] != mask[:, :-1]).mean() + (mask[1:] != mask[:-1]).mean())
        return np.mean(vals)

    assert boundary_density(6000) < boundary_density(2000)


def test_two_phase_mode():
    img, mask = generate(size=96, seed=2, phases=2, fractions=(0.7, 0.3), magnification=3500)
    assert set(np.unique(mask)) == {0, 1}
    assert abs((mask == 1).mean() - 0.3) < 0.1
    with pytest.raises(ValueError):
        generate(size=64, seed=0, phases=4)


@pytest.mark.parametrize("fraction,width", [(0.1, 3), (0.05, 5), (0.2, 1)])
def test_scribbles_cover_the_fraction_and_only_the_right_phase(fraction, width):
    _, mask = generate(size=160, seed=11, magnification=3500, fractions=(0.6, 0.25, 0.15))
    s = scribble_mask(mask, fraction=fraction, seed=0, width=width)
    assert s.dtype == np.uint8 and s.shape == mask.shape
    labelled = s != UNLABELED
    assert abs(labelled.mean() - fraction) < 0.25 * fraction + 0.005
    np.testing.assert_array_equal(s[labelled], mask[labelled])
    for p in np.unique(mask):
        assert (s == p).sum() > 0, f"phase {p} got no strokes"
    # strokes, not a salt-and-pepper sample: most labelled pixels have labelled neighbours
    neighbours = np.zeros_like(labelled)
    neighbours[1:] |= labelled[:-1]
    neighbours[:-1] |= labelled[1:]
    neighbours[:, 1:] |= labelled[:, :-1]
    neighbours[:, :-1] |= labelled[:, 1:]
    assert (neighbours & labelled).sum() > 0.95 * labelled.sum()
    np.testing.assert_array_equal(s, scribble_mask(mask, fraction=fraction, seed=0, width=width))


def test_scribbles_stay_away_from_phase_boundaries_and_reach_tiny_phases():
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 32:] = 1
    mask[30:32, 5:8] = 2  # a 2 x 3 speck, thinner than the brush
    s = scribble_mask(mask, fraction=0.1, seed=1, width=5)
    assert (s == 2).sum() > 0
    np.testing.assert_array_equal(s[s != UNLABELED], mask[s != UNLABELED])
    # strokes keep a pixel clear of the ferrite/martensite boundary (columns 31 | 32) and of the speck
    assert np.all(s[:, 31:33] == UNLABELED)
    assert np.all(s[29:33, 4:9][mask[29:33, 4:9] != 2] == UNLABELED)


def test_write_heldout_dataset(tmp_path):
    from napari_metalseg.data.dataset import load_dataset

    root = write_heldout(tmp_path / "held", n=4, size=64, seed=100, magnifications=(2000, 6000))
    ds = load_dataset(root, require_masks=True)
    assert ds.phases.names == ["ferrite", "martensite", "bainite"]
    assert len(ds) == 4 and len(ds.split("test")) == 4
    assert sorted(item.magnification for item in ds) == [2000, 2000, 6000, 6000]
    for item in ds:
        assert item.pixel_size_um == pytest.approx(pixel_size_um(item.magnification), rel=1e-4)
        mask = item.read_mask()
        assert mask.shape == item.read_image().shape == (64, 64)
    # same seed -> same files
    again = write_heldout(tmp_path / "again", n=4, size=64, seed=100, magnifications=(2000, 6000))
    for a, b in zip(sorted((root / "masks").iterdir()), sorted((again / "masks").iterdir())):
        assert a.read_bytes() == b.read_bytes()


def test_cli_two_phase(tmp_path, capsys):
    from napari_metalseg.data.dataset import load_dataset

    assert (
        main(
            [
                "--out",
                str(tmp_path / "dp"),
                "--n",
                "2",
                "--size",
                "48",
                "--seed",
                "1",
                "--phases",
                "2",
                "--split",
                "val",
            ]
        )
        == 0
    )
    ds = load_dataset(tmp_path / "dp", require_masks=True)
    assert ds.phases.names == ["ferrite", "martensite"]
    assert len(ds.split("val")) == 2
    assert "wrote 2 images" in capsys.readouterr().out
