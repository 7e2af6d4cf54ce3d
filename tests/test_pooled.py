"""A CNN pooled with the classical pixel classifier (the default for the CNNs): training, the run, the contract."""

from __future__ import annotations

import numpy as np
import pytest

from napari_metalseg.data.samples import Sample, normalize_contrast
from napari_metalseg.data.synth import synthesize_micrograph
from napari_metalseg.errors import MetalsegError
from napari_metalseg.models.registry import CLASSIFIER, POOL_WEIGHT
from napari_metalseg.phases import PhaseSet
from napari_metalseg.predict import Predictor
from napari_metalseg.runs import load_run
from napari_metalseg.training import TrainConfig, train

PHASES = PhaseSet.from_names(["ferrite", "martensite", "bainite"])
QUICK = {"device": "cpu", "steps": 4, "img_size": 64, "width": 4, "depth": 3, "batch_size": 2}


def _samples(n: int = 2, size: int = 128) -> list[Sample]:
    out = []
    for i in range(n):
        image, mask = synthesize_micrograph(size, seed=10 + i)
        out.append(Sample(f"s{i}", image.astype(np.float32), mask, 3000.0))
    return out


@pytest.fixture(scope="module")
def pooled_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pooled") / "run"
    events = list(train(_samples(), PHASES, out, TrainConfig(model="elunet", **QUICK)))
    return out, events


def test_a_cnn_run_is_pooled_with_a_classifier_fitted_on_the_same_labels(pooled_run):
    from napari_metalseg.models.cnn import PhaseCNN
    from napari_metalseg.models.pooled import PooledModel

    out, events = pooled_run
    assert (out / CLASSIFIER).is_file() and (out / "adapter.safetensors").is_file()
    assert any("classical pixel classifier fitted" in e.message for e in events)
    model, config = load_run(out)
    assert isinstance(model, PooledModel) and isinstance(model.network, PhaseCNN)
    assert config.spec.pooled == POOL_WEIGHT and model.weight == POOL_WEIGHT
    assert model.classifier.num_phases == len(PHASES)
    assert model.kind == "elunet" and model.predict_size == model.network.predict_size


def test_pooled_probabilities_are_the_weighted_geometric_mean_of_the_members(pooled_run):
    out, _ = pooled_run
    model, _ = load_run(out)
    image = _samples(1, 96)[0].image
    pooled = Predictor(model, PHASES).predict(image).probs
    network = Predictor(model.network, PHASES).predict(image).probs  # stretches the contrast itself
    classical = Predictor(model.classifier, PHASES).predict(normalize_contrast(image)).probs
    w = model.weight
    expected = network ** (1 - w) * np.maximum(classical, 1e-30) ** w
    expected /= expected.sum(0, keepdims=True)
    np.testing.assert_allclose(pooled, expected, atol=2e-3)
    np.testing.assert_allclose(pooled.sum(0), 1.0, atol=1e-4)
    assert not np.allclose(pooled, network, atol=1e-3)  # the classifier does change the result


def test_pool_classical_off_trains_the_network_alone(tmp_path):
    from napari_metalseg.models.cnn import PhaseCNN

    out = tmp_path / "alone"
    list(train(_samples(1), PHASES, out, TrainConfig(model="unet", pool_classical=False, **QUICK)))
    model, config = load_run(out)
    assert isinstance(model, PhaseCNN) and config.spec.pooled == 0.0
    assert not (out / CLASSIFIER).exists()


def test_only_the_cnns_are_pooled():
    assert TrainConfig(model="elunet").pool_classical is True
    assert TrainConfig(model="classical").pool_classical is False
    assert TrainConfig(model="tiny", steps=1).pool_classical is False
    with pytest.raises(MetalsegError, match="pool_classical: the compact SAM"):
        TrainConfig(model="tiny", steps=1, pool_classical=True)


def test_a_pooled_run_without_its_classifier_is_refused(pooled_run, tmp_path):
    import shutil

    out, _ = pooled_run
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / CLASSIFIER).unlink()
    with pytest.raises(MetalsegError, match=f"{CLASSIFIER} is missing"):
        load_run(broken)


def test_the_pooled_model_refuses_members_that_do_not_fit(pooled_run):
    from napari_metalseg.models.pooled import PooledModel

    model, _ = load_run(pooled_run[0])
    with pytest.raises(MetalsegError, match="pool weight"):
        PooledModel(network=model.network, classifier=model.classifier, weight=1.0)
    model.classifier.num_phases = 2
    with pytest.raises(MetalsegError, match="not trained on the same labels"):
        PooledModel(network=model.network, classifier=model.classifier, weight=0.25)
    import torch

    with pytest.raises(MetalsegError, match="box prompts need a SAM model"):
        model.decode(model.embed(torch.zeros(1, 1, 64, 64)), boxes=torch.zeros(1, 4))
