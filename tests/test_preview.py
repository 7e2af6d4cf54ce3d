"""The live preview engine: refit on strokes, predict the whole micrograph, uncertainty, self-score."""

from __future__ import annotations

import numpy as np
import pytest

from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import UNLABELED
from napari_metalseg.preview import LivePreview, uncertainty_map


def test_uncertainty_margin_and_entropy():
    p = np.zeros((3, 1, 3), np.float32)
    p[:, 0, 0] = (1, 0, 0)  # sure
    p[:, 0, 1] = (0.5, 0.5, 0)  # a tie between two phases
    p[:, 0, 2] = (1 / 3, 1 / 3, 1 / 3)
    margin = uncertainty_map(p, "margin")[0]
    entropy = uncertainty_map(p, "entropy")[0]
    np.testing.assert_allclose(margin, [0, 1, 1], atol=1e-6)
    np.testing.assert_allclose(entropy, [0, np.log(2) / np.log(3), 1], atol=1e-5)
    with pytest.raises(MetalsegError, match="unknown uncertainty"):
        uncertainty_map(p, "variance")
    with pytest.raises(MetalsegError, match="K >= 2"):
        uncertainty_map(p[:1])


def _scribbles(mask, fraction, seed=0):
    from benchmarks.heldout import scribble_mask

    return scribble_mask(mask, fraction=fraction, seed=seed)


def test_preview_learns_from_five_percent_strokes_and_caches_features():
    from napari_metalseg.data.synth import synthesize_micrograph

    image, mask = synthesize_micrograph(256, fractions=(0.6, 0.4), magnification=3000, seed=3)
    strokes = _scribbles(mask, 0.05)
    assert 0.03 < (strokes != UNLABELED).mean() < 0.08
    engine = LivePreview(2)
    first = engine.update(image, strokes)
    assert first.labels.shape == image.shape and first.probs.shape == (2, *image.shape)
    assert first.uncertainty.shape == image.shape and 0 <= first.uncertainty.min() <= first.uncertainty.max() <= 1
    accuracy = (first.labels == mask)[strokes == UNLABELED].mean()
    assert accuracy > 0.8, accuracy
    assert first.score is not None and 0 <= first.score <= 100
    assert first.labelled == int((strokes != UNLABELED).sum())
    # the uncertain pixels are where the preview is wrong more often than elsewhere
    wrong = first.labels != mask
    assert first.uncertainty[wrong].mean() > first.uncertainty[~wrong].mean()
    second = engine.update(image, strokes)
    assert second.seconds["features"] < first.seconds["features"] / 5
    np.testing.assert_array_equal(first.labels, second.labels)


def test_preview_needs_two_phases():
    image = np.random.default_rng(0).random((64, 64), dtype=np.float32)
    strokes = np.full((64, 64), UNLABELED, np.uint8)
    strokes[10:20, 10:20] = 1
    with pytest.raises(MetalsegError, match="phase"):
        LivePreview(2).update(image, strokes)


def test_large_micrographs_are_previewed_on_a_coarse_grid_and_upsampled():
    from napari_metalseg.data.synth import synthesize_micrograph
    from napari_metalseg.preview import COARSE_ABOVE, LivePreview, upsample_probabilities

    coarse = np.random.default_rng(0).dirichlet((1, 1, 1), size=(5, 4)).transpose(2, 0, 1).astype(np.float32)
    up = upsample_probabilities(coarse, (10, 7))
    assert up.shape == (3, 10, 7)
    np.testing.assert_allclose(up[:, ::2, ::2][:, :, :4], coarse[:, :, :4], atol=1e-6)  # exact at the samples
    np.testing.assert_allclose(up[:, 1, 0], (coarse[:, 0, 0] + coarse[:, 1, 0]) / 2, atol=1e-6)  # halfway
    np.testing.assert_allclose(up.sum(0), 1.0, atol=1e-5)

    image, truth = synthesize_micrograph(640, seed=4)
    assert image.size > COARSE_ABOVE
    strokes = np.full(truth.shape, 255, np.uint8)
    strokes[::9, ::9] = truth[::9, ::9]
    preview = LivePreview(3).update(image.astype(np.float32), strokes)
    assert preview.labels.shape == truth.shape and preview.probs.shape == (3, *truth.shape)
    np.testing.assert_allclose(preview.probs.sum(0), 1.0, atol=1e-4)
    unlabelled = strokes == 255
    assert (preview.labels[unlabelled] == truth[unlabelled]).mean() > 0.7
