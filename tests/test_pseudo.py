"""Pseudo-labels from the weight average on the pixels nobody labelled."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_metalseg.data.samples import Sample
from napari_metalseg.errors import MetalsegError
from napari_metalseg.models.lora import trainable_state_dict
from napari_metalseg.phases import UNLABELED
from napari_metalseg.runs import load_run
from napari_metalseg.training import TrainConfig, train
from napari_metalseg.training.averaging import WeightAverage
from napari_metalseg.training.pseudo import OPEN, mark_open, pseudo_label_loss, split_target, teacher_labels

QUICK = {"model": "elunet", "device": "cpu", "img_size": 64, "width": 4, "depth": 3, "batch_size": 2}


def test_only_the_pixels_the_user_left_unlabelled_are_open():
    mask = np.array([[0, 1, UNLABELED, UNLABELED], [UNLABELED, UNLABELED, 2, UNLABELED]], np.uint8)
    held = np.full_like(mask, UNLABELED)
    held[1, 0] = 1  # a labelled pixel set aside for validation: unlabelled in the training mask, never open
    image = np.zeros(mask.shape, np.float32)
    samples = [Sample("a", image, mask), Sample("b", image, mask.copy())]
    marked = mark_open(samples, [Sample("a", image, held)])
    expected_a = np.array([[0, 1, OPEN, OPEN], [UNLABELED, OPEN, 2, OPEN]], np.uint8)
    np.testing.assert_array_equal(marked[0].mask, expected_a)
    np.testing.assert_array_equal(marked[1].mask, np.where(mask == UNLABELED, OPEN, mask))  # nothing held out of b
    np.testing.assert_array_equal(samples[0].mask, mask)  # the user's masks are not changed
    target, open_ = split_target(torch.from_numpy(expected_a).long()[None])
    np.testing.assert_array_equal(target[0].numpy(), mask)  # the supervised loss sees the user's labels only
    np.testing.assert_array_equal(open_[0].numpy(), expected_a == OPEN)


class _Sign(torch.nn.Module):
    """Two-phase logits ``w * (x, -x)``: phase 0 where ``w * x > 0``, sure where ``|x|`` is large."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(1.0))
        self.modes: list[bool] = []

    def trainable_state_keys(self) -> list[str]:
        return ["w"]

    def forward(self, x, ratios=None, boxes=None):
        self.modes.append(self.training)
        return torch.cat([self.w * x, -self.w * x], 1)


def test_the_teacher_is_the_average_shown_the_mirrored_crop_and_labels_only_sure_open_pixels():
    model = _Sign()
    average = WeightAverage(model, decay=0.5)  # the average keeps w = 1 while the model's own weight turns to -1
    with torch.no_grad():
        model.w.fill_(-1.0)
    model.train()
    x = torch.tensor([[[[5.0, -5.0, 0.01, 5.0, 3.0, -4.0]]]])  # left and right differ: a wrong mirror would show
    open_ = torch.tensor([[[True, True, True, False, True, True]]])
    labels = teacher_labels(model, average, x, open_)
    assert labels.tolist() == [[[0, 1, UNLABELED, UNLABELED, 0, 1]]]  # unsure (x near 0) and labelled: none
    assert model.modes == [False] and model.training  # evaluated as validation does, training mode after
    assert float(model.w.detach()) == -1.0  # the model's own weights are back


def test_the_pseudo_label_loss_counts_every_open_pixel():
    logits = torch.zeros(1, 2, 1, 4)
    labels = torch.tensor([[[0, UNLABELED, UNLABELED, UNLABELED]]])
    loss = pseudo_label_loss(logits, labels, torch.tensor(4))
    torch.testing.assert_close(loss, torch.tensor(np.log(2.0) / 4, dtype=torch.float32))  # one pixel of four


def test_pseudo_is_checked():
    for bad in (-0.5, float("nan")):
        with pytest.raises(MetalsegError, match="pseudo"):
            TrainConfig(model="elunet", pseudo=bad)


def _weights(samples, phases, out, **settings):
    config = TrainConfig(steps=12, val_every=12, lr=5e-2, pool_classical=False, **QUICK, **settings)
    list(train(samples, phases, out, config))
    model, _ = load_run(out)
    return trainable_state_dict(model)


def test_pseudo_labels_train_on_scribbles_and_leave_full_masks_alone(split_samples, synth_dataset, tmp_path):
    """Full masks leave no pixel open (the held-out ones are not): the run is the same with or without; scribbles
    leave most pixels open, and the pseudo-labels change what is learned."""
    phases = synth_dataset.phases
    full = split_samples["train"][:1]
    with_, without = (_weights(full, phases, tmp_path / f"full{p}", pseudo=p) for p in (1.0, 0.0))
    assert all(torch.equal(with_[k], without[k]) for k in with_)
    rng = np.random.default_rng(0)
    s = full[0]
    scribbled = [Sample(s.name, s.image, np.where(rng.random(s.mask.shape) < 0.1, s.mask, UNLABELED).astype(np.uint8))]
    with_, without = (_weights(scribbled, phases, tmp_path / f"scribbles{p}", pseudo=p) for p in (1.0, 0.0))
    assert not all(torch.equal(with_[k], without[k]) for k in with_)


def test_a_share_of_the_crops_comes_from_the_unlabelled_micrographs_without_guidance():
    from napari_metalseg.data.samples import CropSampler
    from napari_metalseg.training.batches import make_batch

    rng = np.random.default_rng(0)
    labelled = Sample("a", rng.random((96, 96), np.float32), np.zeros((96, 96), np.uint8))
    blank = Sample("u", np.zeros((96, 96), np.float32), np.full((96, 96), OPEN, np.uint8))
    plain = CropSampler([labelled], 32, 2, augment=False)
    same = CropSampler([labelled], 32, 2, augment=False, extra=[])
    for seed in range(5):  # without unlabelled micrographs the crops are those drawn before
        a, b = plain.sample(np.random.default_rng(seed)), same.sample(np.random.default_rng(seed))
        assert np.array_equal(a.image, b.image)
    mixed = CropSampler([labelled], 32, 2, augment=False, extra=[blank], extra_share=0.5)
    config = TrainConfig(model="elunet", guidance="ratio", batch_size=32, ratio_noise=0.0, ratio_dropout=0.0)
    images, masks, ratios, _ = make_batch(mixed, config, 2, step=0)
    from_blank = (masks == OPEN).any(axis=(1, 2))
    assert 8 <= from_blank.sum() <= 24  # about half
    assert np.all(images[from_blank] == 0) and not (masks[from_blank] == 0).any()
    assert set(np.unique(masks[~from_blank])) <= {0, UNLABELED}  # the labelled crops as before (and padding)
    assert np.isnan(ratios[from_blank]).all()  # their fractions are unknown: no guidance learns from them
    np.testing.assert_allclose(ratios[~from_blank], [[1.0, 0.0]] * int((~from_blank).sum()))


def test_unlabelled_micrographs_change_the_run_only_with_pseudo_labels(split_samples, synth_dataset, tmp_path):
    phases = synth_dataset.phases
    full, others = split_samples["train"][:1], split_samples["test"][:1]
    settings = dict(steps=12, val_every=12, lr=5e-2, pool_classical=False, **QUICK)

    def weights(name, pseudo, unlabelled):
        out = tmp_path / name
        list(train(full, phases, out, TrainConfig(pseudo=pseudo, **settings), unlabelled=unlabelled))
        model, config = load_run(out)
        return trainable_state_dict(model), config.training

    alone, _ = weights("alone", 1.0, None)
    ignored, recorded = weights("off", 0.0, others)
    assert "unlabelled_images" not in recorded
    used, recorded = weights("used", 1.0, others)
    assert recorded["unlabelled_images"] == [others[0].name]
    assert not all(torch.equal(alone[k], used[k]) for k in alone)
    assert all(torch.equal(alone[k], ignored[k]) for k in alone)  # full masks: pseudo 1 and 0 train alike
