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
    events = list(train(_samples(), PHASES, out, TrainConfig(model="elunet", pool_margin=1000.0, **QUICK)))
    return out, events


def test_a_cnn_run_is_pooled_with_a_classifier_fitted_on_the_same_labels(pooled_run):
    from napari_metalseg.models.cnn import PhaseCNN
    from napari_metalseg.models.pooled import PooledModel

    out, events = pooled_run
    assert (out / CLASSIFIER).is_file() and (out / "adapter.safetensors").is_file()
    assert any("classical pixel classifier fitted" in e.message for e in events)
    model, config = load_run(out)
    assert isinstance(model, PooledModel) and isinstance(model.network, PhaseCNN)
    choice = config.training["pool_choice"]  # POOL_WEIGHT, or more where the classifier validates as well
    assert config.spec.pooled == model.weight == choice["weight"] and choice["weight"] >= POOL_WEIGHT
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


def test_pool_weight_keeps_the_classifier_only_close_to_the_network():
    from napari_metalseg.models.pooled import pool_weight

    lead = (1 + 0.5) / 2  # the classifier validates as well or better: it leads the pool
    assert pool_weight(network_dice=100.0, classical_dice=100.0, margin=3.0, weight=0.5) == lead  # a tie
    assert pool_weight(network_dice=80.0, classical_dice=95.0, margin=3.0, weight=0.5) == lead
    assert pool_weight(network_dice=90.0, classical_dice=89.99, margin=3.0, weight=0.5) == 0.5
    assert pool_weight(network_dice=90.0, classical_dice=87.5, margin=3.0, weight=0.5) == 0.5
    assert pool_weight(network_dice=91.4, classical_dice=71.2, margin=3.0, weight=0.5) == 0.0
    assert pool_weight(network_dice=90.0, classical_dice=86.9, margin=3.0, weight=0.5) == 0.0
    assert pool_weight(network_dice=90.0, classical_dice=95.0, margin=-100.0, weight=0.5) == 0.0  # never pools
    with pytest.raises(MetalsegError, match="classical_dice nan"):
        pool_weight(network_dice=90.0, classical_dice=float("nan"), margin=3.0, weight=0.5)
    with pytest.raises(MetalsegError, match="pool_margin"):
        TrainConfig(model="elunet", pool_margin=float("inf"))


def test_the_pooled_run_records_what_both_members_validate(pooled_run):
    from napari_metalseg.models.pooled import pool_weight
    from napari_metalseg.runs import read_run_config
    from napari_metalseg.training import validate

    out, events = pooled_run
    config = read_run_config(out)
    choice = config.training["pool_choice"]
    network = [e.metrics["mean_dice"] for e in events if e.kind == "validate"][:-1]  # the network alone, then the pool
    assert choice["network_mean_dice"] == max(network)
    assert choice["weight"] == pool_weight(
        network_dice=choice["network_mean_dice"],
        classical_dice=choice["classical_mean_dice"],
        margin=1000.0,
        weight=POOL_WEIGHT,
    )
    model, _ = load_run(out)
    held = [Sample(s.name, normalize_contrast(s.image), s.mask, s.magnification) for s in _held_out_pixels()]
    assert choice["classical_mean_dice"] == pytest.approx(validate(model.classifier, held, PHASES, "cpu").average)
    assert config.metrics["classical_mean_dice"] == choice["classical_mean_dice"]
    assert f"pooled (classical weight {choice['weight']:g}), mean Dice" in events[-2].message


def _held_out_pixels() -> list[Sample]:
    """The validation pixels of :func:`pooled_run` (10 % of the labelled pixels, the run's seed)."""
    from napari_metalseg.data.samples import holdout_pixels

    return holdout_pixels(_samples(), len(PHASES), 0.1, seed=0)[1]


def test_a_classifier_behind_the_network_by_more_than_the_margin_is_dropped(tmp_path):
    from napari_metalseg.models.cnn import PhaseCNN
    from napari_metalseg.runs import read_run_config

    out = tmp_path / "dropped"
    events = list(train(_samples(1), PHASES, out, TrainConfig(model="elunet", pool_margin=-1000.0, **QUICK)))
    model, config = load_run(out)
    assert isinstance(model, PhaseCNN) and config.spec.pooled == 0.0  # the network alone predicts
    assert (out / CLASSIFIER).is_file()  # nothing fitted is deleted
    choice = read_run_config(out).training["pool_choice"]
    assert choice["weight"] == 0.0
    assert config.metrics["mean_dice"] == pytest.approx(choice["network_mean_dice"])
    assert "the run's model is the network alone" in events[-2].message


def test_a_two_phase_image_keeps_the_pool_with_the_default_margin(tmp_path):
    """Intensity-separated phases, every sixth row labelled: the classifier validates close to the network."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:128, :128]
    truth = ((np.sin(yy / 9.0) + np.cos(xx / 7.0)) > 0.3).astype(np.uint8)
    image = (0.3 + 0.4 * truth + rng.normal(0, 0.05, truth.shape)).astype(np.float32)
    scribbles = np.full(truth.shape, 255, np.uint8)
    scribbles[::6] = truth[::6]
    phases = PhaseSet.from_names(["gold", "pore"])
    out = tmp_path / "two"
    list(train([Sample("two", image, scribbles, 3000.0)], phases, out, TrainConfig(model="elunet", **QUICK)))
    model, config = load_run(out)
    choice = config.training["pool_choice"]
    assert choice["classical_mean_dice"] >= choice["network_mean_dice"] - TrainConfig().pool_margin
    assert config.spec.pooled == model.weight == choice["weight"] >= POOL_WEIGHT


def test_a_run_stopped_early_decides_from_the_validations_it_has(tmp_path):
    from napari_metalseg.models.cnn import PhaseCNN
    from napari_metalseg.runs import read_run_config

    calls = iter(range(100))
    out = tmp_path / "stopped"
    config = TrainConfig(model="elunet", pool_margin=-1000.0, val_every=1, **(QUICK | {"steps": 50}))
    events = list(train(_samples(1), PHASES, out, config, stop=lambda: next(calls) >= 2))
    assert events[-1].kind == "stopped" and events[-1].step == 2
    model, run = load_run(out)
    assert isinstance(model, PhaseCNN) and run.spec.pooled == 0.0
    assert read_run_config(out).training["pool_choice"]["weight"] == 0.0
