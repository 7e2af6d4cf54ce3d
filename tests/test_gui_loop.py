"""GUI tests of the annotate -> predict -> correct -> retrain loop on explicit per-micrograph layers (issue 11's
findings 2, 3, 4, 5 and 9), with a trained ratio-guided model, under a virtual X display."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
from napari.layers import Labels

import napari_metalseg._widgets  # noqa: F401  (blocks triton before any viewer exists)
from napari_metalseg._widgets.edits import edited_pixels
from napari_metalseg._widgets.layers import session_of
from napari_metalseg._widgets.roles import ANNOTATIONS, EDITS, PHASES, annotations_layer, find_layer
from napari_metalseg.phases import labels_to_mask

pytestmark = pytest.mark.gui

PLUGIN = "napari-metalseg"
IMAGE = "synthetic steel 3000x"
WAIT_MS = 120_000


@pytest.fixture(scope="module")
def sample_layers():
    from napari_metalseg._widgets.sample_data import synthetic_micrograph

    return synthetic_micrograph()


@pytest.fixture
def loaded(make_napari_viewer_proxy, sample_layers, qtbot, trained_run, monkeypatch, tmp_path):
    """The synthetic sample (micrograph + hidden ground truth) and the trained ratio model from the Model dock."""
    monkeypatch.setenv("METALSEG_RUNS_DIR", str(tmp_path / "runs"))
    viewer = make_napari_viewer_proxy()
    for data, kwargs, kind in sample_layers:
        getattr(viewer, f"add_{kind}")(data, **copy.deepcopy(kwargs))
    model = dock(viewer, "Model")
    assert model.load_run(trained_run[0], device="cpu") is not None
    wait(qtbot, model)
    return viewer


def dock(viewer, name: str):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def wait(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert widget.last_error is None, widget.last_error


def predict(viewer, qtbot, image: str = IMAGE) -> Labels:
    widget = dock(viewer, "Predict")
    widget.image.set_layer(image)
    assert widget.predict() is not None
    wait(qtbot, widget)
    return find_layer(viewer, image, PHASES)


def brush(layer: Labels, centres, label: int, size: int = 9) -> np.ndarray:
    """Paint round strokes as the brush does (Labels.paint: one undo step each, the paint event); returns the
    pixels whose value the strokes set."""
    layer.brush_size = size
    before = np.array(layer.data)
    for centre in centres:
        layer.paint(centre, label)
    after = np.asarray(layer.data)
    return (after == label) & ((before != label) | (after == label))


def set_ratios(viewer, qtbot, ratios) -> None:
    widget = dock(viewer, "Phase ratios")
    widget.image.set_layer(IMAGE)
    widget.set_ratios(ratios)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert widget.last_error is None, widget.last_error


def test_a_ratio_change_keeps_the_users_corrections_visible_and_editable(loaded, qtbot):
    """Finding 3: no hidden '(your edits)' layer, no selection change, no unit warning; the corrections stay in the
    layer the user paints in, outlined in '<image> edits'."""
    layer = predict(loaded, qtbot)
    assert layer.name == f"{IMAGE} phases"
    predicted = np.array(layer.data)
    loaded.layers.selection.active = layer
    centres = [(60, 60), (60, 80), (200, 300)]
    brush(layer, centres, 3)
    corrected = np.array(layer.data)
    edited = corrected != predicted
    assert edited.any()
    names_before = [lay.name for lay in loaded.layers]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        set_ratios(loaded, qtbot, [0.05, 0.05, 0.9])
    assert not [w for w in caught if "Inconsistent units" in str(w.message)]
    after = np.asarray(layer.data)
    np.testing.assert_array_equal(after[edited], corrected[edited])  # the corrections survived the new prediction
    assert not np.array_equal(after[~edited], predicted[~edited])  # the rest follows the new ratios
    assert not any("your edits" in name for name in (lay.name for lay in loaded.layers))
    assert all(lay.visible for lay in loaded.layers if lay.name not in names_before)
    assert loaded.layers.selection.active is layer or loaded.layers.selection.active.name == layer.name
    outline = find_layer(loaded, IMAGE, EDITS)
    assert outline is not None and outline.visible
    np.testing.assert_array_equal(np.asarray(outline.data) > 0, edited)
    # painting again changes the visible layer, and the next ratio change keeps that too
    more = brush(layer, [(400, 400)], 1)
    assert more.any() and (np.asarray(layer.data)[more] == 1).all()
    set_ratios(loaded, qtbot, [0.9, 0.05, 0.05])
    assert (np.asarray(layer.data)[more] == 1).all()
    np.testing.assert_array_equal(np.asarray(layer.data)[edited], corrected[edited])
    # "Forget my corrections" hands them back to the model
    predict_dock = dock(loaded, "Predict")
    predict_dock.image.set_layer(IMAGE)
    assert predict_dock.forget_corrections() > 0
    assert not edited_pixels(layer).any()


def test_add_to_training_set_writes_the_visible_corrected_phases(loaded, qtbot, tmp_path):
    """Finding 2: the mask written is the visible corrected phases layer (plus the strokes), and the message says
    which layers and how many pixels."""
    from napari_metalseg.data.dataset import load_dataset

    layer = predict(loaded, qtbot)
    brush(layer, [(100, 100), (120, 140)], 2)
    set_ratios(loaded, qtbot, [0.2, 0.3, 0.5])
    visible = np.array(layer.data)
    training = dock(loaded, "Training")
    training.dataset_edit.setText(str(tmp_path / "dataset"))
    training.data._dataset_edited()
    training.select_image(IMAGE)
    (line,) = training.add_to_training_set()
    assert line == f"'{IMAGE}' from '{IMAGE} phases' ({visible.size:,} labelled px)"
    written = load_dataset(tmp_path / "dataset", require_masks=True).item(IMAGE).read_mask()
    np.testing.assert_array_equal(written, labels_to_mask(visible, 3))


def test_quantify_counts_one_field_per_micrograph(loaded, qtbot):
    """Finding 4: the hidden ground truth, the annotations and the edits outline are not extra fields."""
    layer = predict(loaded, qtbot)
    brush(layer, [(50, 50)], 1)  # an edits outline now exists too
    image = loaded.layers[IMAGE]
    strokes = annotations_layer(loaded, image, session_of(loaded).phases, create=True)
    strokes.data_setitem((np.arange(10), np.arange(10)), np.ones(10, np.uint8))
    widget = dock(loaded, "Quantify")
    widget.select_layer("all micrographs")
    qtbot.waitUntil(lambda: widget.report is not None, timeout=20_000)
    assert [field.image for field in widget.report.fields] == [IMAGE]
    assert widget.cell(0, "95 % CI") == "—"


def test_one_colour_and_name_per_phase_everywhere(loaded, qtbot):
    """Finding 5: the annotations layer, the sample's reference, the model's phases and the prediction share the
    phase colours, and hovering shows the phase name."""
    session = session_of(loaded)
    image = loaded.layers[IMAGE]
    strokes = annotations_layer(loaded, image, session.phases, create=True)
    layer = predict(loaded, qtbot)
    reference = loaded.layers[f"{IMAGE} ground truth"]
    colours = dict(zip(session.phases.names, session.phases.colors))
    assert colours["bainite"] == "#ccbb44"
    for lay in (strokes, layer, reference):
        for k, name in enumerate(session.phases.names):
            expected = [int(colours[name][i : i + 2], 16) / 255 for i in (1, 3, 5)]
            assert np.allclose(lay.colormap.color_dict[k + 1][:3], expected, atol=1e-6), (lay.name, name)
    strokes.data_setitem((np.array([5]), np.array([7])), np.array([3], np.uint8))
    status = strokes.get_status((5, 7), world=False)
    text = status["coordinates"] if isinstance(status, dict) else str(status)
    assert "bainite" in text, text


def test_each_micrograph_keeps_its_own_phases_layer(loaded, qtbot):
    """Finding 9: predicting a second micrograph leaves the first one's result alone; the dock names the micrograph
    and shows no stale fractions after a refused input."""
    first = predict(loaded, qtbot)
    kept = np.array(first.data)
    image = loaded.layers[IMAGE]
    loaded.add_image(np.flipud(np.asarray(image.data)), name="second field", scale=image.scale, units=image.units)
    second = predict(loaded, qtbot, "second field")
    assert second is not first and second.name == "second field phases"
    np.testing.assert_array_equal(first.data, kept)
    widget = dock(loaded, "Predict")
    widget.image.set_layer("second field")
    widget._show_fractions()
    assert widget.result.text().startswith("<b>second field</b>")
    loaded.add_image(np.zeros((3, 32, 32), np.float32), name="stack")
    widget.image.set_layer("stack")
    assert widget.predict() is None
    assert "stack" in str(widget.last_error) and widget.result.text() == ""
    assert find_layer(loaded, "stack", PHASES) is None and find_layer(loaded, IMAGE, ANNOTATIONS) is None


def test_renaming_a_micrograph_renames_its_layers_and_the_dock_says_where_strokes_are_saved(loaded, qtbot):
    layer = predict(loaded, qtbot)
    image = loaded.layers[IMAGE]
    strokes = annotations_layer(loaded, image, session_of(loaded).phases, create=True)
    image.name = "field 7"
    assert layer.name == "field 7 phases" and strokes.name == "field 7 annotations"
    assert find_layer(loaded, "field 7", PHASES) is layer and find_layer(loaded, IMAGE, PHASES) is None
    training = dock(loaded, "Training")
    session_of(loaded).autosaver.saved.emit("field 7", "/data/autosave/abc")
    assert "/data/autosave/abc" in training.data.autosave_label.text()
