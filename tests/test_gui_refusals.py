"""What the user sees when the plugin refuses input: a file the reader cannot open, a box outside the micrograph.

Each refusal is one line naming the file or value and what is wrong, and changes nothing else (napari needs a
display: run under xvfb-run). The reader's decision by names alone is tested without a viewer in test_reader.py.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import tifffile
from napari.layers import Labels

import napari_metalseg._widgets  # noqa: F401  (blocks triton before any viewer exists)
from napari_metalseg._widgets.layers import session_of, show_phase_map
from napari_metalseg._widgets.roles import PHASES as PHASES_ROLE
from napari_metalseg._widgets.roles import layer_name, role_metadata
from napari_metalseg.errors import MetalsegError

pytestmark = pytest.mark.gui

PLUGIN = "napari-metalseg"
IMAGE = "synthetic steel 3000x"
WAIT_MS = 120_000
PHASES = json.dumps([{"name": "ferrite", "color": "#4477aa"}, {"name": "martensite", "color": "#ee6677"}])


@pytest.fixture(scope="module")
def sample_layers():
    from napari_metalseg._widgets.sample_data import synthetic_micrograph

    return synthetic_micrograph()


@pytest.fixture
def viewer(make_napari_viewer_proxy, sample_layers):
    viewer = make_napari_viewer_proxy()
    for data, kwargs, kind in sample_layers:
        getattr(viewer, f"add_{kind}")(data, **copy.deepcopy(kwargs))
    return viewer


def dock(viewer, name: str):
    return viewer.window.add_plugin_dock_widget(PLUGIN, name)[1]


def wait(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert widget.last_error is None, widget.last_error


@pytest.fixture
def loaded(viewer, qtbot, trained_run):
    widget = dock(viewer, "Model")
    assert widget.load_run(trained_run[0], device="cpu") is not None
    wait(qtbot, widget)
    return viewer


# -- files the reader refuses ------------------------------------------------------------------------------------


def _stack(folder):
    path = folder / "stack.tif"
    tifffile.imwrite(path, np.zeros((5, 64, 64), np.uint8))
    return path, "stack.tif: is a stack of 5 images; metalseg needs a single 2-D micrograph"


def _text_as_png(folder):
    path = folder / "notes.png"
    path.write_text("minutes of the meeting, not an image")
    return path, "notes.png: not a readable image (content is not a known image format)"


def _cmyk_tiff(folder):
    path = folder / "print.tif"
    tifffile.imwrite(path, np.zeros((32, 32, 4), np.uint8), photometric="separated")
    return path, "print.tif: unsupported TIFF colour model SEPARATED"


def _damaged_tiff(folder):
    path = folder / "broken.tif"
    path.write_bytes(b"II*\x00" + b"\x00" * 60)
    return path, "broken.tif: not a readable TIFF image, the file may be damaged"


def _empty_folder(folder):
    path = folder / "empty"
    path.mkdir()
    return path, "empty: the folder is empty; metalseg opens a micrograph file or a dataset folder"


def _dataset_without_images(folder):
    path = folder / "ds"
    path.mkdir()
    (path / "phases.json").write_text(PHASES)
    return path, "ds: dataset folder without images/"


def _dataset_with_empty_images(folder):
    path = folder / "ds"
    (path / "images").mkdir(parents=True)
    (path / "phases.json").write_text(PHASES)
    return path, "images: no images"


def _dataset_without_phases(folder):
    path = folder / "ds"
    (path / "images").mkdir(parents=True)
    return path, "ds: dataset folder without phases.json"


def _folder_of_micrographs(folder):
    path = folder / "shots"
    path.mkdir()
    for name in ("a.tif", "b.tif"):
        tifffile.imwrite(path / name, np.zeros((16, 16), np.uint8))
    return path, "shots: a folder of 2 micrograph file(s), not a metalseg dataset"


REFUSALS = {
    "3-D stack": _stack,
    "text saved as .png": _text_as_png,
    "CMYK TIFF": _cmyk_tiff,
    "damaged TIFF": _damaged_tiff,
    "empty folder": _empty_folder,
    "dataset without images/": _dataset_without_images,
    "dataset with an empty images/": _dataset_with_empty_images,
    "dataset without phases.json": _dataset_without_phases,
    "folder of micrographs": _folder_of_micrographs,
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refused_file_says_in_one_line_which_file_and_why(make_napari_viewer_proxy, tmp_path, case):
    viewer = make_napari_viewer_proxy()
    path, reason = REFUSALS[case](tmp_path)
    with pytest.raises(MetalsegError) as refused:
        viewer.open(str(path), plugin=PLUGIN)
    message = str(refused.value)
    assert reason in message and str(path) in message, message
    assert "\n" not in message and "refused the file" not in message
    assert len(viewer.layers) == 0


def test_a_refused_stack_changes_nothing(loaded, qtbot, tmp_path):
    predict = dock(loaded, "Predict")
    predict.image.set_layer(IMAGE)
    assert predict.predict() is not None
    wait(qtbot, predict)
    fractions = predict.result.text()
    assert fractions.startswith(f"<b>{IMAGE}</b>") and "ferrite" in fractions
    layers = {layer.name: np.asarray(layer.data).copy() for layer in loaded.layers}
    active = loaded.layers.selection.active.name
    model = session_of(loaded).model
    path, reason = _stack(tmp_path)
    with pytest.raises(MetalsegError, match=reason):
        loaded.open(str(path), plugin=PLUGIN)
    assert [layer.name for layer in loaded.layers] == list(layers)
    for layer in loaded.layers:
        assert np.array_equal(np.asarray(layer.data), layers[layer.name]), layer.name
    assert loaded.layers.selection.active.name == active
    assert session_of(loaded).model is model and predict.result.text() == fractions


# -- a box outside the micrograph ------------------------------------------------------------------------------------


def test_a_box_outside_the_image_is_refused_and_its_rectangle_removed(loaded, qtbot):
    image = loaded.layers[IMAGE]
    session = session_of(loaded)
    target = show_phase_map(
        loaded,
        np.zeros(image.data.shape, np.uint8),
        session.phases,
        layer_name(IMAGE, PHASES_ROLE),
        scale=image.scale,
        translate=image.translate,
        metadata=role_metadata(IMAGE, PHASES_ROLE),
    )
    assert isinstance(target, Labels)
    widget = dock(loaded, "Box prompts")
    widget.image.set_layer(IMAGE)
    shapes = widget.activate()
    good = np.array([[100, 120], [100, 260], [220, 260], [220, 120]], float)
    shapes.add(good, shape_type="rectangle")
    qtbot.waitUntil(lambda: widget.last_box is not None, timeout=WAIT_MS)
    wait(qtbot, widget)
    assert "px changed" in widget.status.text()
    before = np.asarray(target.data).copy()
    h, w = image.data.shape
    shapes.add(
        np.array([[h + 50, w + 50], [h + 50, w + 150], [h + 150, w + 150], [h + 150, w + 50]]), shape_type="rectangle"
    )
    qtbot.waitUntil(lambda: widget.last_error is not None, timeout=WAIT_MS)
    message = str(widget.last_error)
    assert "the box is outside the micrograph" in message and "\n" not in message
    assert widget.error_line.text() == f"error: {message}"
    assert widget.status.text() == ""  # the last box's result is not shown as if it were this one's
    qtbot.waitUntil(lambda: len(shapes.data) == 1, timeout=5000)  # the stray rectangle is gone
    assert np.allclose(shapes.data[0], good)
    assert np.array_equal(np.asarray(target.data), before)
