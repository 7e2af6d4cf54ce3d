"""The moving average of the weights: what a gradient run validates and keeps."""

from __future__ import annotations

import pytest
import torch

from napari_metalseg.errors import MetalsegError
from napari_metalseg.runs import RESUME, load_run
from napari_metalseg.training import TrainConfig, train
from napari_metalseg.training.averaging import WeightAverage

QUICK = {"model": "elunet", "device": "cpu", "img_size": 64, "width": 4, "depth": 3, "batch_size": 2}


def _model():
    """A convolution and a batch norm whose trained state is every weight and statistic, as the CNNs'."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    model.trainable_state_keys = lambda: list(model.state_dict())
    return model


def test_the_average_follows_the_weights_by_the_decay_and_applies_only_inside_the_block():
    model = _model()
    weight, statistic = model[0].weight, model[1].running_mean
    average = WeightAverage(model, decay=0.9)
    expected, expected_statistic = weight.detach().clone(), statistic.clone()
    for t in range(30):
        with torch.no_grad():
            weight.add_(1.0)
            statistic.add_(2.0)
        average.update()
        d = min(0.9, (1 + t) / (10 + t))  # the warm-up of the decay
        expected = d * expected + (1 - d) * weight.detach()
        expected_statistic = d * expected_statistic + (1 - d) * statistic
    own = weight.detach().clone()
    with average.applied():
        torch.testing.assert_close(model[0].weight.detach(), expected)
        assert not torch.equal(model[0].weight, own)
        torch.testing.assert_close(model[1].running_mean, expected_statistic)  # batch-norm statistics too
    assert torch.equal(model[0].weight, own)  # training goes on from its own weights
    assert torch.equal(model[1].running_mean, torch.full((2,), 60.0))
    assert average.updates == 30


def test_decay_zero_keeps_the_last_weights_and_the_state_round_trips():
    model = _model()
    none = WeightAverage(model, decay=0.0)
    with torch.no_grad():
        model[0].weight.mul_(3.0)
    none.update()
    own = model[0].weight.detach().clone()
    with none.applied():
        assert torch.equal(model[0].weight, own)
    average = WeightAverage(model, decay=0.99)
    with torch.no_grad():
        model[0].weight.add_(5.0)
    average.update()
    copy = WeightAverage(_model(), decay=0.99)
    copy.load_state_dict(average.state_dict())
    assert copy.updates == 1
    torch.testing.assert_close(copy.state_dict()["average"]["0.weight"], average.state_dict()["average"]["0.weight"])
    with pytest.raises(MetalsegError, match="does not match the model"):
        WeightAverage(torch.nn.Conv2d(1, 2, 3), decay=0.99).load_state_dict(average.state_dict())


def test_ema_is_checked():
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(MetalsegError, match="ema"):
            TrainConfig(model="elunet", ema=bad)
    assert TrainConfig(model="elunet").ema == 0.995


def test_a_run_keeps_the_average_and_resumes_it(split_samples, synth_dataset, tmp_path):
    """The kept model is the average, not the last weights; the resume state carries the average on."""
    from napari_metalseg.models.lora import trainable_state_dict

    samples, phases = split_samples["train"][:1], synth_dataset.phases
    config = TrainConfig(steps=12, val_every=12, ema=0.9, lr=5e-2, pool_classical=False, **QUICK)
    calls = iter(range(100))
    out = tmp_path / "run"
    stopped = list(train(samples, phases, out, config, stop=lambda: next(calls) >= 6))
    assert stopped[-1].kind == "stopped"
    state = torch.load(out / RESUME, weights_only=True)
    kept, _ = load_run(out)
    kept_state = trainable_state_dict(kept)
    raw = state["model"]
    assert state["average"]["updates"] == 6
    key = next(k for k, v in raw.items() if v.is_floating_point() and v.ndim == 4)
    torch.testing.assert_close(kept_state[key], state["average"]["average"][key])  # the stopped run keeps the average
    assert not torch.allclose(kept_state[key], raw[key])  # which is not the last weights
    resumed = list(train(samples, phases, out, config, resume=True))
    assert resumed[-1].kind == "done"
    final = torch.load(out / RESUME, weights_only=True)
    assert final["average"]["updates"] == 12  # continued, not restarted
    model, _ = load_run(out)
    torch.testing.assert_close(trainable_state_dict(model)[key], final["average"]["average"][key])
