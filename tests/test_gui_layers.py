"""Phase layers: a new prediction never destroys corrections the user painted, and no hidden copy is made."""

import numpy as np
import pytest

from napari_metalseg._widgets.edits import edited_pixels, forget_edits
from napari_metalseg._widgets.layers import show_phase_map
from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import PhaseSet

pytestmark = pytest.mark.gui

PHASES = PhaseSet.from_names(["ferrite", "martensite"])
NAME = "steel phases"


def test_new_prediction_keeps_painted_corrections_in_the_same_layer(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy()
    first = np.zeros((20, 30), np.uint8)
    layer = show_phase_map(viewer, first, PHASES, NAME)
    show_phase_map(viewer, np.ones((20, 30), np.uint8), PHASES, NAME)  # untouched: replaced entirely
    assert [lyr.name for lyr in viewer.layers] == [NAME]
    assert (np.asarray(layer.data) == 2).all() and not edited_pixels(layer).any()
    layer.data[2:5, 3:9] = 1  # the user paints phase 0 (label 1) over the prediction
    layer.data[10, 10] = 0  # and erases one pixel
    edited = np.zeros((20, 30), bool)
    edited[2:5, 3:9] = True
    edited[10, 10] = True
    np.testing.assert_array_equal(edited_pixels(layer), edited)
    show_phase_map(viewer, np.ones((20, 30), np.uint8), PHASES, NAME)  # e.g. a ratio change
    data = np.asarray(layer.data)
    assert (data[2:5, 3:9] == 1).all() and data[10, 10] == 0  # the corrections survive
    assert (data[~edited] == 2).all()  # the rest is the new prediction
    assert [lyr.name for lyr in viewer.layers] == [NAME]  # no hidden copy
    assert forget_edits(layer) == edited.sum()
    show_phase_map(viewer, np.ones((20, 30), np.uint8), PHASES, NAME)
    assert (np.asarray(layer.data) == 2).all()  # handed back to the model


def test_a_layer_of_that_name_and_another_size_is_kept_and_the_write_refused(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy()
    own = np.zeros((10, 10), np.uint8)
    own[:3] = 2
    viewer.add_labels(own, name=NAME)
    with pytest.raises(MetalsegError, match="has shape"):
        show_phase_map(viewer, np.zeros((12, 12), np.uint8), PHASES, NAME)
    np.testing.assert_array_equal(viewer.layers[NAME].data, own)
    assert len(viewer.layers) == 1


def test_the_live_plot_keeps_steps_in_order_whatever_order_they_arrive_in(qtbot):
    from napari_metalseg._widgets.plots import LivePlot

    plot = LivePlot()
    qtbot.addWidget(plot)
    for step in (1, 3, 2, 4):
        plot.add_loss(step, 1.0 / step)
    plot.add_dice(20, 50.0)
    plot.add_dice(10, 40.0)
    assert plot.steps == [1, 2, 3, 4] and plot.losses == [1.0, 0.5, 1 / 3, 0.25]
    assert plot.val_steps == [10, 20] and plot.dice == [40.0, 50.0]
