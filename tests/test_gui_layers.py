"""Phase layers: a new prediction never destroys corrections the user painted."""

import numpy as np
import pytest

from napari_metalseg._widgets.layers import show_phase_map
from napari_metalseg.phases import PhaseSet

pytestmark = pytest.mark.gui

PHASES = PhaseSet.from_names(["ferrite", "martensite"])


def test_new_prediction_keeps_painted_corrections(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy()
    first = np.zeros((20, 30), np.uint8)
    layer = show_phase_map(viewer, first, PHASES)
    show_phase_map(viewer, np.ones((20, 30), np.uint8), PHASES)  # untouched: replaced, no copy
    assert [lyr.name for lyr in viewer.layers] == ["phases"]
    layer.data[2:5, 3:9] = 1  # the user paints phase 0 (label 1) over the prediction
    edited = np.array(layer.data, copy=True)
    show_phase_map(viewer, first, PHASES)
    assert np.array_equal(viewer.layers["phases"].data, first + 1)
    kept = viewer.layers["phases (your edits)"]
    assert np.array_equal(kept.data, edited) and not kept.visible


def test_users_own_layer_of_that_name_is_kept(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy()
    own = np.zeros((10, 10), np.uint8)
    own[:3] = 2
    viewer.add_labels(own, name="phases")
    show_phase_map(viewer, np.zeros((12, 12), np.uint8), PHASES)  # another size: the old layer is replaced
    assert viewer.layers["phases"].data.shape == (12, 12)
    assert np.array_equal(viewer.layers["phases (your edits)"].data, own)
