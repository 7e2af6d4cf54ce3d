"""Growing a training set without a GUI: images and partial masks into a dataset folder, and the autosave."""

from __future__ import annotations

import numpy as np
import pytest

from napari_metalseg.data.dataset import load_dataset, read_mask, read_metadata
from napari_metalseg.data.training_set import (
    TrainingItem,
    add_to_training_set,
    autosave_labels,
    safe_name,
    stored_image,
    training_mask,
)
from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import PhaseSet, labels_to_mask, mask_to_labels

PHASES = PhaseSet.from_names(["ferrite", "martensite"])


def _annotated(size: int = 96, seed: int = 0, uint8: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A micrograph and partial napari labels of it (the right third unlabeled), as the GUI tests draw them."""
    from napari_metalseg.data.synth import synthesize_micrograph

    image, mask = synthesize_micrograph(size, fractions=(0.6, 0.4), magnification=3000, seed=seed)
    data = (image * 255 + 0.5).astype(np.uint8) if uint8 else image
    labels = mask_to_labels(mask)
    labels[:, 2 * size // 3 :] = 0
    return data, labels


def _item(name: str, image: np.ndarray, labels: np.ndarray) -> TrainingItem:
    return TrainingItem(
        name=name,
        image=image,
        mask=training_mask(labels, PHASES, f"{name} labels"),
        magnification=3000.0,
        pixel_size_um=0.05,
    )


def test_add_to_training_set_writes_image_mask_and_metadata(tmp_path):
    root = tmp_path / "dataset"
    image_a, labels_a = _annotated(uint8=True)
    assert add_to_training_set(root, PHASES, [_item("field A", image_a, labels_a)]).written == ["field A"]
    image_b, labels_b = _annotated(seed=3)
    assert add_to_training_set(root, PHASES, [_item("field B", image_b, labels_b)]).written == ["field B"]

    dataset = load_dataset(root, require_masks=True)
    assert dataset.phases.names == PHASES.names
    assert sorted(i.name for i in dataset.items) == ["field A", "field B"]
    for name, labels in (("field A", labels_a), ("field B", labels_b)):
        item = dataset.item(name)
        np.testing.assert_array_equal(item.read_mask(), labels_to_mask(labels, 2))
        assert item.split == "train" and item.magnification == 3000 and item.pixel_size_um == 0.05
    np.testing.assert_array_equal(dataset.item("field A").read_image().image, image_a.astype(np.float32) / 255)
    assert set(read_metadata(root)) == {"field A", "field B"}

    # a correction re-added replaces only that mask
    labels_a[:5, :5] = 2
    add_to_training_set(root, PHASES, [_item("field A", image_a, labels_a)])
    dataset = load_dataset(root, require_masks=True)
    assert (dataset.item("field A").read_mask()[:5, :5] == 1).all()
    np.testing.assert_array_equal(dataset.item("field B").read_mask(), labels_to_mask(labels_b, 2))


def test_unlabelled_images_are_left_out_and_a_resized_namesake_is_refused(tmp_path):
    root = tmp_path / "dataset"
    image, labels = _annotated(size=64)
    update = add_to_training_set(root, PHASES, [_item("empty", image, np.zeros_like(labels))])
    assert update.written == [] and [i.name for i in update.unlabelled] == ["empty"]
    add_to_training_set(root, PHASES, [_item("field", image, labels)])
    bigger, bigger_labels = _annotated(size=80)
    with pytest.raises(MetalsegError, match="already has a different image named 'field'"):
        add_to_training_set(root, PHASES, [_item("field", bigger, bigger_labels)])


def test_training_mask_refuses_labels_beyond_the_phases():
    labels = np.array([[0, 1], [2, 3]], np.uint8)
    with pytest.raises(MetalsegError, match="uses label 3, but only 2 phases"):
        training_mask(labels, PHASES, "steel labels")
    with pytest.raises(MetalsegError, match="is 3-D"):
        training_mask(np.zeros((2, 2, 2), np.uint8), PHASES, "stack")
    np.testing.assert_array_equal(training_mask(labels[:1], PHASES, "ok"), [[255, 0]])


def test_autosave_keeps_every_label_value(tmp_path):
    labels = np.array([[0, 1], [2, 7]], np.uint8)
    written = autosave_labels([("../steel labels", labels), ("stack", np.zeros((2, 2, 2)))], tmp_path, PHASES)
    assert [p.name for p in written] == ["_steel labels.png"]
    np.testing.assert_array_equal(read_mask(written[0]), [[255, 0], [1, 6]])
    assert PhaseSet.load(tmp_path / "autosave" / "phases.json").names == PHASES.names
    assert safe_name("..") == "layer"


def test_stored_image_keeps_8_and_16_bit_data():
    u8 = np.zeros((4, 4), np.uint8)
    assert stored_image(u8, "a")[1] == ".png" and stored_image(u8, "a")[0] is u8
    assert stored_image(np.zeros((4, 4), np.uint16), "b")[1] == ".tif"
    data, suffix = stored_image(np.arange(100.0).reshape(10, 10), "c")
    assert suffix == ".png" and data.dtype == np.float32 and data.min() == 0 and data.max() == 1
