"""Known phase fractions given to a prediction: one bias per phase, the labels get the fractions, only the least sure
pixels change, a biased model gets better masks."""

import numpy as np
import pytest
import torch

import napari_metalseg.predict as predict_module
from napari_metalseg.errors import MetalsegError
from napari_metalseg.models.phase_sam import build_phase_sam
from napari_metalseg.phases import PhaseSet, phase_fractions
from napari_metalseg.predict import Predictor
from napari_metalseg.priors import MAX_PIXELS, fraction_biases

PHASES = PhaseSet.from_names(["ferrite", "martensite", "bainite"])


def fractions_of(logits: torch.Tensor, biases: torch.Tensor) -> np.ndarray:
    labels = torch.argmax(logits + biases[:, None, None], 0)
    return np.bincount(labels.flatten().numpy(), minlength=logits.shape[0]) / labels.numel()


@pytest.mark.parametrize("target", [[0.5, 0.3, 0.2], [0.05, 0.05, 0.9], [0.0, 0.4, 0.6], [1 / 3] * 3])
@pytest.mark.parametrize("scale", [0.01, 1.0, 50.0])
def test_the_biases_give_the_labels_the_fractions_whatever_the_logit_scale(target, scale):
    logits = torch.randn(3, 96, 80, generator=torch.Generator().manual_seed(1)) * scale
    logits[0] += 2 * scale  # a model biased towards phase 0
    biases = fraction_biases(logits, np.array(target))
    np.testing.assert_allclose(fractions_of(logits, biases), target, atol=0.003)
    assert abs(float(biases.sum())) < 1e-4 * max(1.0, scale)


def test_a_phase_the_model_never_predicts_is_pushed_in_and_one_given_zero_is_pushed_out():
    logits = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(2))
    logits[2] -= 20  # phase 2 never wins
    pushed_in = fractions_of(logits, fraction_biases(logits, np.array([0.4, 0.3, 0.3])))
    np.testing.assert_allclose(pushed_in, [0.4, 0.3, 0.3], atol=0.003)
    assert fractions_of(logits, fraction_biases(logits, np.array([0.5, 0.5, 0.0])))[2] == 0


def test_only_the_pixels_the_model_was_least_sure_of_change_phase():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 128, 128, generator=g)
    before = torch.argmax(logits, 0)
    target = np.array([0.7, 0.3])
    after = torch.argmax(logits + fraction_biases(logits, target)[:, None, None], 0)
    changed = before != after
    assert changed.any()
    margin = (logits[0] - logits[1]).abs()
    assert float(margin[changed].max()) <= float(margin[~changed & (before != 0)].min())  # a threshold, not noise


def test_a_large_map_is_fitted_on_a_strided_sample():
    logits = torch.randn(3, 700, 700, generator=torch.Generator().manual_seed(4))
    assert logits[0].numel() > MAX_PIXELS
    got = fractions_of(logits, fraction_biases(logits, np.array([0.6, 0.3, 0.1])))
    np.testing.assert_allclose(got, [0.6, 0.3, 0.1], atol=0.005)


def unguided_tiny(seed: int = 0):
    m, _ = build_phase_sam("tiny", img_size=64, num_phases=3, guidance="none", seed=seed)
    return m.eval()


def test_whole_micrographs_get_the_given_fractions_from_the_upsampled_map_with_and_without_tta():
    """SAM's maps are 4x coarser than the pixels: the fractions are those of the labels at full resolution."""
    image = np.random.default_rng(0).random((150, 170), dtype=np.float32)
    predictor = Predictor(unguided_tiny(), PHASES, bf16=False)
    for tta in (False, True):
        result = predictor.predict(image, ratios=[0.2, 0.3, 0.5], tta=tta)
        np.testing.assert_allclose(result.fractions(), [0.2, 0.3, 0.5], atol=0.005)
        assert (result.probs.argmax(0) == result.labels).mean() > 0.999  # the probabilities carry the same prior


def test_an_unguided_model_refuses_fractions_it_cannot_use_and_a_stream_refuses_matching(monkeypatch):
    image = np.random.default_rng(0).random((150, 170), dtype=np.float32)
    predictor = Predictor(unguided_tiny(), PHASES, bf16=False)
    with pytest.raises(MetalsegError, match="not inside a box"):
        predictor.predict(image, ratios=[0.2, 0.3, 0.5], box=(10, 10, 60, 60))
    with pytest.raises(MetalsegError, match="not without matching the fractions"):
        predictor.predict(image, ratios=[0.2, 0.3, 0.5], match_fractions=False)
    monkeypatch.setattr(predict_module, "STREAM_PIXELS", image.size - 1)
    with pytest.raises(MetalsegError, match="matching the given phase fractions needs the probability maps"):
        predictor.predict(image, ratios=[0.2, 0.3, 0.5])
    assert predictor.predict(image).labels.shape == image.shape  # streamed without fractions


def test_the_true_fractions_improve_a_biased_classifier():
    """A model that over-predicts one phase: given the true fractions, its Dice rises."""
    from napari_metalseg.metrics import Evaluation

    rng = np.random.default_rng(5)
    truth = np.zeros((120, 120), np.uint8)
    truth[:, 60:] = 1
    truth[80:, :30] = 2
    noisy = np.stack([(truth == k).astype(np.float32) for k in range(3)]) + rng.normal(0, 0.6, (3, 120, 120))
    noisy[1] += 0.5  # biased towards phase 1
    logits = torch.from_numpy(noisy.astype(np.float32))
    plain = torch.argmax(logits, 0).numpy().astype(np.uint8)
    biases = fraction_biases(logits, phase_fractions(truth, 3))
    matched = torch.argmax(logits + biases[:, None, None], 0).numpy().astype(np.uint8)
    scores = []
    for labels in (plain, matched):
        evaluation = Evaluation(PHASES.names)
        evaluation.add("x", labels, truth)
        scores.append(evaluation.average)
    assert scores[1] > scores[0] + 2
