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


def test_ranks_sharing_a_batch_get_the_pseudo_label_loss_and_gradient_of_the_whole_batch():
    """Two 'ranks' with half a batch each, unequal open pixels: each sees the whole batch's term, and the mean of their
    gradients (what DistributedDataParallel applies) is the whole batch's gradient."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 6, 6, generator=generator)
    labels = torch.randint(0, 3, (4, 6, 6), generator=generator)
    labels[1, :3] = UNLABELED  # open but unsure
    counts = torch.tensor([60, 72])  # the open pixels of each half, sure or not
    whole = logits.clone().requires_grad_(True)
    expected = pseudo_label_loss(whole, labels, counts.sum())
    expected.backward()
    halves = [logits[:2].clone().requires_grad_(True), logits[2:].clone().requires_grad_(True)]
    local = [
        torch.stack(
            [
                torch.nn.functional.cross_entropy(
                    h.detach(), labels[2 * r : 2 * r + 2], ignore_index=UNLABELED, reduction="sum"
                ),
                counts[r].float(),
            ]
        )
        for r, h in enumerate(halves)
    ]
    for r in (0, 1):
        loss = pseudo_label_loss(
            halves[r], labels[2 * r : 2 * r + 2], counts[r], reduce=lambda t, r=r: (t + local[1 - r], 2)
        )
        assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
        loss.backward()
    torch.testing.assert_close(torch.cat([h.grad for h in halves]) / 2, whole.grad, rtol=1e-5, atol=1e-7)


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
