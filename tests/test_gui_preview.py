"""GUI test of the live preview: strokes painted into the annotation layer refit the classical pixel classifier and
show '<image> preview' and '<image> uncertainty' (run under a virtual X display)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui

PLUGIN = "napari-metalseg"


@pytest.fixture
def viewer(make_napari_viewer_proxy):
    return make_napari_viewer_proxy()


def _strokes(layer, mask, phase: int, rows, step: int = 3) -> None:
    """Paint horizontal strokes (label phase + 1) through the pixels of ``phase`` on the given rows, as the brush
    does (Labels.paint emits the layer's paint event)."""
    layer.brush_size = 3
    for y in rows:
        xs = np.nonzero(mask[y] == phase)[0][::step]
        for x in xs:
            layer.paint((y, x), phase + 1)


def test_painting_shows_a_preview_that_follows_the_strokes(viewer, qtbot):
    from napari_metalseg._widgets.roles import ANNOTATIONS, find_layer
    from napari_metalseg._widgets.training import TrainingWidget
    from napari_metalseg.data.synth import synthesize_micrograph

    image, mask = synthesize_micrograph(192, fractions=(0.6, 0.4), magnification=3000, seed=2)
    image_layer = viewer.add_image(image, name="steel")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Training")
    assert isinstance(widget, TrainingWidget) and widget.preview_check.isChecked()
    widget.phases_edit.setText("ferrite, martensite")
    widget.select_image("steel")
    labels = widget.data.new_annotations()  # the dock's "New annotations layer" button
    assert widget.preview.labels.name == "steel annotations"

    _strokes(labels, mask, 0, rows=range(10, 180, 40))
    qtbot.waitUntil(lambda: "paint at least two phases" in widget.status.text(), timeout=10_000)
    assert "martensite" in widget.status.text() and "steel preview" not in viewer.layers

    _strokes(labels, mask, 1, rows=range(12, 180, 20))
    qtbot.waitUntil(lambda: widget.preview.updates >= 1 and widget.preview.worker is None, timeout=60_000)
    preview = viewer.layers["steel preview"]
    uncertainty = viewer.layers["steel uncertainty"]
    assert preview.data.shape == image.shape and set(np.unique(preview.data)) <= {1, 2}
    assert uncertainty.data.shape == image.shape
    assert tuple(preview.scale) == tuple(image_layer.scale)
    first = np.array(preview.data)
    accuracy = (first - 1 == mask).mean()
    assert accuracy > 0.75, accuracy
    assert "live preview" in widget.status.text() and "held-out" in widget.status.text()
    # the preview is never taken for the annotations
    assert find_layer(viewer, image_layer, ANNOTATIONS).name == "steel annotations"
    assert viewer.layers.selection.active.name == "steel annotations"

    updates = widget.preview.updates
    _strokes(labels, mask, 1, rows=range(4, 190, 8), step=2)
    _strokes(labels, mask, 0, rows=range(30, 190, 25), step=2)
    qtbot.waitUntil(
        lambda: (
            widget.preview.updates > updates and widget.preview.worker is None and not widget.preview.timer.isActive()
        ),
        timeout=60_000,
    )
    assert not np.array_equal(first, preview.data)
    assert (np.asarray(preview.data) - 1 == mask).mean() >= accuracy - 0.05


def test_preview_can_be_switched_off(viewer, qtbot):
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    viewer.add_image(image, name="a")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Training")
    widget.phases_edit.setText("ferrite, martensite")
    widget.select_image("a")
    labels = widget.data.new_annotations()
    widget.preview_check.setChecked(False)
    labels.brush_size = 5
    for y in range(5, 60, 10):
        labels.paint((y, 10), 1)
        labels.paint((y, 50), 2)
    qtbot.wait(1000)
    assert widget.preview.updates == 0 and "a preview" not in viewer.layers


def test_a_trained_model_is_compared_with_the_preview(viewer, qtbot, tmp_path):
    from napari_metalseg.data.synth import synthesize_micrograph

    image, mask = synthesize_micrograph(160, fractions=(0.6, 0.4), magnification=3000, seed=4)
    viewer.add_image(image, name="steel")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Training")
    widget.phases_edit.setText("ferrite, martensite")
    widget.select_image("steel")
    labels = widget.data.new_annotations()
    _strokes(labels, mask, 0, rows=range(5, 160, 12))
    _strokes(labels, mask, 1, rows=range(8, 160, 6))
    qtbot.waitUntil(lambda: widget.preview.updates >= 1 and widget.preview.worker is None, timeout=60_000)
    widget.model_combo.setCurrentText("elunet")
    widget.img_size.setValue(64)
    widget.budget.setValue(0)
    widget.steps.setValue(4)
    widget.device_combo.setCurrentText("cpu")
    widget.out_edit.setText(str(tmp_path / "run"))
    widget.start_training()
    qtbot.waitUntil(lambda: not widget.running and "training" in widget.status.text(), timeout=120_000)
    text = widget.status.text()
    assert "finished" in text, text
    if "replaces the live preview" in text:
        assert not viewer.layers["steel preview"].visible
    else:
        assert "live preview is still better" in text and viewer.layers["steel preview"].visible
