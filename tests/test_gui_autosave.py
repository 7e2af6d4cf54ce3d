"""Crash-safe annotation: strokes painted with napari's brush (real mouse events on the canvas) are autosaved within
the delays and restored when the micrograph is opened again, in another viewer or after the process was killed.

Run under a virtual X display (xvfb-run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import napari_metalseg._widgets  # noqa: F401  (blocks triton before any viewer exists)
from napari_metalseg._widgets import roles
from napari_metalseg._widgets.layers import phases_of_layer
from napari_metalseg._widgets.session import get_session
from napari_metalseg.data.autosave import ANNOTATIONS_FILE, AnnotationStore, micrograph_key
from napari_metalseg.phases import PhaseSet
from tests.brush import brush_stroke, line

pytestmark = pytest.mark.gui

PLUGIN = "napari-metalseg"
PHASES = PhaseSet.from_names(["ferrite", "bainite", "martensite"])
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def autosave_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "autosave"
    monkeypatch.setenv("METALSEG_AUTOSAVE_DIR", str(folder))
    return folder


def _micrograph(seed: int = 0, shape=(96, 128)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _viewer(make_napari_viewer, quiet_ms: int = 300, max_delay_ms: int = 3000):
    viewer = make_napari_viewer(show=True)
    saver = get_session(viewer).autosaver
    saver.quiet_ms, saver.max_delay_ms = quiet_ms, max_delay_ms
    return viewer, saver


def _paint(viewer, layer) -> None:
    """Two strokes of two phases, as a user paints them."""
    brush_stroke(viewer, layer, line(20, 10, 20, 100), label=1)
    brush_stroke(viewer, layer, line(60, 100, 80, 15), label=3, size=7)


def _saved(folder: Path, image: np.ndarray):
    return AnnotationStore(folder).load(micrograph_key(image))


def _wait_saved(qtbot, folder: Path, image: np.ndarray, labels: np.ndarray) -> None:
    """Wait until the autosave of ``image`` holds ``labels``."""

    def done() -> bool:
        saved = _saved(folder, image)
        return saved is not None and np.array_equal(saved.labels, labels)

    qtbot.waitUntil(done, timeout=5000)


def _annotations_with(viewer, image, labels: np.ndarray):
    """An annotations layer that arrives with its content (as a dataset's mask does)."""
    from napari_metalseg._widgets.layers import labels_layer_kwargs

    meta = roles.role_metadata(image.name, roles.ANNOTATIONS)
    name = roles.layer_name(image.name, roles.ANNOTATIONS)
    return viewer.add_labels(labels, **labels_layer_kwargs(PHASES, name, metadata=meta))


# -- saving -----------------------------------------------------------------------------------------------------


def test_strokes_are_autosaved_after_the_quiet_delay(make_napari_viewer, qtbot, autosave_dir):
    viewer, saver = _viewer(make_napari_viewer, quiet_ms=800)
    data = _micrograph()
    image = viewer.add_image(data, name="steel 3000x")
    layer = roles.annotations_layer(viewer, image, PHASES, create=True)
    signals, threads = [], []
    saver.saved.connect(lambda name, folder: signals.append((name, folder)))
    save = saver.store.save
    saver.store.save = lambda *a, **kw: threads.append(threading.current_thread()) or save(*a, **kw)

    qtbot.wait(1200)  # napari's first slicing of the new layer (``set_data``) may start a timer: let it pass
    assert not autosave_dir.exists()  # an empty new layer is not saved
    brush_stroke(viewer, layer, line(20, 10, 20, 100), label=1)
    assert np.count_nonzero(layer.data == 1) > 300  # the brush painted
    assert not autosave_dir.exists()  # not at once: the user may go on painting
    brush_stroke(viewer, layer, line(60, 100, 80, 15), label=3, size=7)
    painted = np.array(layer.data)
    assert set(np.unique(painted)) == {0, 1, 3}
    _wait_saved(qtbot, autosave_dir, data, painted)
    qtbot.waitUntil(lambda: bool(signals), timeout=5000)  # the worker wrote it; the GUI thread hears it next

    folder = autosave_dir / micrograph_key(data)
    assert set(signals) == {("steel 3000x", str(folder))}
    assert saver.last_saved == {"steel 3000x": folder}
    assert str(folder) in viewer.status and "steel 3000x" in viewer.status
    saved = _saved(autosave_dir, data)
    assert saved.phases == PHASES and saved.info["image_name"] == "steel 3000x"
    assert threads and threading.main_thread() not in threads  # written in a worker, not the GUI thread

    count = len(signals)
    layer.undo()  # an undo changes the annotations too (napari emits no paint event for it)
    qtbot.waitUntil(lambda: len(signals) > count, timeout=5000)
    assert np.array_equal(_saved(autosave_dir, data).labels, layer.data)
    assert not np.array_equal(layer.data, painted)


def test_painting_on_is_saved_at_the_latest_after_the_maximum_delay(make_napari_viewer, qtbot, autosave_dir):
    viewer, saver = _viewer(make_napari_viewer, quiet_ms=60_000, max_delay_ms=800)
    data = _micrograph(1)
    image = viewer.add_image(data, name="steel")
    layer = roles.annotations_layer(viewer, image, PHASES, create=True)
    signals = []
    saver.saved.connect(lambda *args: signals.append(time.monotonic()))
    start = time.monotonic()
    y = 5
    while not signals and time.monotonic() - start < 10:  # the user never pauses for the quiet delay
        brush_stroke(viewer, layer, line(y, 5, y, 60, n=4), label=2, size=3)
        y = 5 + (y + 4) % 80
        qtbot.wait(100)
    assert signals, "nothing saved while painting on"
    assert signals[0] - start < 5  # ~0.8 s; the quiet delay (60 s) never passed
    saved = _saved(autosave_dir, data)
    assert np.count_nonzero(saved.labels == 2) > 0


def test_a_layer_adopted_as_annotations_is_autosaved(make_napari_viewer, qtbot, autosave_dir):
    viewer, saver = _viewer(make_napari_viewer)
    data = _micrograph(2)
    image = viewer.add_image(data, name="steel")
    own = viewer.add_labels(np.zeros(data.shape, np.uint8), name="Labels")
    brush_stroke(viewer, own, line(30, 10, 30, 90), label=2)
    qtbot.wait(800)
    assert not autosave_dir.exists()  # not annotations (yet): nothing saved
    roles.adopt_annotations(viewer, image, own, PHASES)
    _wait_saved(qtbot, autosave_dir, data, np.array(own.data))
    qtbot.waitUntil(lambda: "steel" in saver.last_saved, timeout=5000)  # the GUI thread hears of it next


@pytest.mark.parametrize("how", ["viewer.close", "window button", "layer deleted", "micrograph deleted"])
def test_closing_the_window_or_the_layer_saves_pending_strokes(make_napari_viewer, autosave_dir, how):
    viewer, _ = _viewer(make_napari_viewer, quiet_ms=60_000, max_delay_ms=60_000)
    data = _micrograph(3)
    image = viewer.add_image(data, name="steel")
    layer = roles.annotations_layer(viewer, image, PHASES, create=True)
    _paint(viewer, layer)
    painted = np.array(layer.data)
    assert not autosave_dir.exists()
    if how == "viewer.close":
        viewer.close()  # napari removes every layer, then closes the window
    elif how == "window button":
        viewer.window.close()  # closes the Qt window (as its close button does), the layers stay
    elif how == "layer deleted":
        viewer.layers.remove(layer)
    else:
        viewer.layers.remove(image)
        viewer.layers.remove(layer)
    saved = _saved(autosave_dir, data)
    assert saved is not None and np.array_equal(saved.labels, painted)


# -- restoring --------------------------------------------------------------------------------------------------


def test_another_viewer_opening_the_same_micrograph_restores_the_strokes(
    make_napari_viewer, qtbot, autosave_dir, monkeypatch
):
    import napari.utils.notifications as notifications

    first, saver = _viewer(make_napari_viewer)
    data = _micrograph(4)
    image = first.add_image(data, name="steel from disk")
    layer = roles.annotations_layer(first, image, PHASES, create=True)
    _paint(first, layer)
    painted = np.array(layer.data)
    _wait_saved(qtbot, autosave_dir, data, painted)

    told = []
    monkeypatch.setattr(notifications, "show_info", told.append)
    second, _ = _viewer(make_napari_viewer)
    second.add_image(_micrograph(5), name="another micrograph")  # other pixels: nothing to restore
    other = second.add_image(data.copy(), name="same pixels, other name")
    qtbot.waitUntil(lambda: roles.find_layer(second, other, roles.ANNOTATIONS) is not None, timeout=5000)
    restored = roles.find_layer(second, other, roles.ANNOTATIONS)
    assert restored.name == "same pixels, other name annotations"
    assert np.array_equal(restored.data, painted)
    assert phases_of_layer(restored) == PHASES
    qtbot.wait(300)
    assert roles.find_layer(second, "another micrograph", roles.ANNOTATIONS) is None
    assert len(told) == 1
    folder = autosave_dir / micrograph_key(data)
    assert str(folder) in told[0] and str(np.count_nonzero(painted)) in told[0]


def test_a_differing_annotations_layer_is_never_replaced(make_napari_viewer, qtbot, autosave_dir):
    data = _micrograph(6)
    key = micrograph_key(data)
    autosaved = np.zeros(data.shape, np.uint8)
    autosaved[10:20, 10:50] = 2
    AnnotationStore(autosave_dir).save(key, autosaved, PHASES, image_name="steel")

    viewer, saver = _viewer(make_napari_viewer)
    image = viewer.add_image(data, name="steel")
    # e.g. a dataset's mask, added right after its image (same event-loop turn)
    mask = np.zeros(data.shape, np.uint8)
    mask[50:70, :] = 1
    existing = _annotations_with(viewer, image, mask)
    qtbot.waitUntil(lambda: len(viewer.layers) == 3, timeout=5000)

    assert roles.find_layer(viewer, image, roles.ANNOTATIONS) is existing
    assert np.array_equal(existing.data, mask)
    added = viewer.layers[-1]
    assert added.name.startswith("steel annotations (autosaved ") and roles.role_of(added) is None
    assert np.array_equal(added.data, autosaved)
    # the autosave is kept aside: painting on in the existing layer does not overwrite it
    store = AnnotationStore(autosave_dir)
    earlier = list((autosave_dir / key / "earlier").iterdir())
    assert len(earlier) == 1 and (earlier[0] / ANNOTATIONS_FILE).is_file()
    assert store.load(key) is None
    qtbot.wait(600)
    assert store.load(key) is None  # the existing layer was not changed by the user: not saved


def test_an_equal_or_empty_annotations_layer(make_napari_viewer, qtbot, autosave_dir):
    data = _micrograph(7)
    autosaved = np.zeros(data.shape, np.uint8)
    autosaved[5:9, 5:90] = 3
    AnnotationStore(autosave_dir).save(micrograph_key(data), autosaved, PHASES, image_name="steel")

    viewer, saver = _viewer(make_napari_viewer)
    equal_image = viewer.add_image(data, name="equal")
    equal = _annotations_with(viewer, equal_image, autosaved.copy())
    empty_image = viewer.add_image(data.copy(), name="empty")
    empty = roles.annotations_layer(viewer, empty_image, PHASES, create=True)  # e.g. a dock made it at once
    qtbot.waitUntil(lambda: np.any(empty.data), timeout=5000)
    assert np.array_equal(empty.data, autosaved)  # nothing painted there yet: filled, nothing replaced
    qtbot.wait(300)
    assert [layer.name for layer in viewer.layers] == ["equal", "equal annotations", "empty", "empty annotations"]
    assert np.array_equal(equal.data, autosaved)


def test_a_damaged_autosave_is_one_error_and_nothing_else(make_napari_viewer, qtbot, autosave_dir, monkeypatch):
    from napari_metalseg._widgets import base
    from napari_metalseg.errors import MetalsegError

    data = _micrograph(9)
    folder = AnnotationStore(autosave_dir).save(
        micrograph_key(data), np.ones(data.shape, np.uint8), PHASES, image_name="x"
    )
    (folder / ANNOTATIONS_FILE).write_bytes(b"\x89PNG cut short")
    shown = []
    monkeypatch.setattr(base, "report_error", shown.append)
    monkeypatch.setattr("napari_metalseg._widgets.autosave.report_error", shown.append)
    viewer, saver = _viewer(make_napari_viewer)
    viewer.add_image(data, name="steel")
    qtbot.waitUntil(lambda: bool(shown), timeout=5000)
    assert len(shown) == 1 and isinstance(shown[0], MetalsegError)
    assert str(folder / ANNOTATIONS_FILE) in str(shown[0]) and "damaged autosave" in str(shown[0])
    assert [layer.name for layer in viewer.layers] == ["steel"]


# -- the crash test ---------------------------------------------------------------------------------------------

CRASH_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    import numpy as np
    import napari
    import napari_metalseg._widgets  # the triton guard, as napari's plugin loading does
    from qtpy.QtWidgets import QApplication
    from napari_metalseg._widgets import roles
    from napari_metalseg._widgets.session import get_session
    from napari_metalseg.data.autosave import AnnotationStore, micrograph_key
    from napari_metalseg.phases import PhaseSet
    from tests.brush import brush_stroke, line

    path, out = sys.argv[1], sys.argv[2]
    viewer = napari.Viewer(show=True)
    saver = get_session(viewer).autosaver
    saver.quiet_ms = 300
    (image,) = viewer.open(path, plugin="napari-metalseg")
    layer = roles.annotations_layer(viewer, image, PhaseSet.from_names(["ferrite", "bainite", "martensite"]),
                                    create=True)
    brush_stroke(viewer, layer, line(20, 10, 20, 100), label=1)
    brush_stroke(viewer, layer, line(60, 100, 80, 15), label=3, size=7)
    painted = np.array(layer.data)
    np.save(out, painted)
    store, key = AnnotationStore(), micrograph_key(image.data)

    def saved():
        autosave = store.load(key)
        return autosave is not None and np.array_equal(autosave.labels, painted)

    start = time.monotonic()
    while not saved() and time.monotonic() - start < 20:  # the autosave of the last stroke
        QApplication.processEvents()
        time.sleep(0.02)
    print("saved:", saved(), saver.last_saved, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_killing_napari_after_painting_loses_nothing_saved(make_napari_viewer, qtbot, autosave_dir, tmp_path):
    import tifffile

    data = (np.random.default_rng(8).random((96, 128)) * 255).astype(np.uint8)
    path = tmp_path / "steel 3000x.tif"
    tifffile.imwrite(path, data)
    painted_file = tmp_path / "painted.npy"
    env = {**os.environ, "METALSEG_AUTOSAVE_DIR": str(autosave_dir), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(path), str(painted_file)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert "saved: True" in proc.stdout, proc.stdout + proc.stderr  # killed after the autosave of the strokes
    painted = np.load(painted_file)
    assert np.count_nonzero(painted) > 300

    viewer = make_napari_viewer(show=True)
    (image,) = viewer.open(path, plugin=PLUGIN)  # opened before any dock: restored when the plugin starts
    saver = get_session(viewer).autosaver
    qtbot.waitUntil(lambda: roles.find_layer(viewer, image, roles.ANNOTATIONS) is not None, timeout=10_000)
    restored = roles.find_layer(viewer, image, roles.ANNOTATIONS)
    assert restored.name == "steel 3000x annotations"
    assert np.array_equal(restored.data, painted)
    assert saver.last_saved["steel 3000x"] == autosave_dir / micrograph_key(image.data)
