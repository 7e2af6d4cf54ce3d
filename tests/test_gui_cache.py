"""The embedding cache on disk in the Predict tab: its size and the Clear cache button (napari needs a display: run
under xvfb-run)."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

import napari_metalseg._widgets  # noqa: F401  (blocks triton before any viewer exists)
from napari_metalseg.io.embedding_store import ENV_DIR, ENV_MAX_BYTES, default_store, format_bytes

pytestmark = pytest.mark.gui

PLUGIN = "napari-metalseg"


def test_predict_tab_shows_the_disk_cache_and_clears_it(make_napari_viewer_proxy, qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "cache"))
    monkeypatch.setenv(ENV_MAX_BYTES, str(1 << 30))
    store = default_store()
    for i in range(3):
        store.save(f"image{i}-tiny-128-enc-0", {"embeddings": np.full((64, 256), i, np.float32)})
    (tmp_path / "cache" / "notes.txt").write_text("not the cache's")
    size = store.size_bytes()

    viewer = make_napari_viewer_proxy()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict")
    assert widget.cache_label.text() == f"Embedding cache: 3 embeddings, {format_bytes(size)} of 1.0 GiB"
    assert widget.cache_label.toolTip() == str(tmp_path / "cache")

    qtbot.mouseClick(widget.clear_cache_button, Qt.MouseButton.LeftButton)
    assert widget.cache_label.text() == "Embedding cache: 0 embeddings, 0 B of 1.0 GiB"
    assert store.count() == 0
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["notes.txt"]
    assert widget.last_error is None

    store.save("later-tiny-128-enc-0", {"embeddings": np.zeros((64, 256), np.float32)})  # e.g. by another dock
    later = store.size_bytes()
    assert widget.show_cache() == f"Embedding cache: 1 embedding, {format_bytes(later)} of 1.0 GiB"
    assert widget.clear_cache() == later
    assert widget.cache_label.text() == "Embedding cache: 0 embeddings, 0 B of 1.0 GiB"


def test_a_bad_cache_limit_is_said_in_the_cache_line(make_napari_viewer_proxy, monkeypatch):
    monkeypatch.setenv(ENV_MAX_BYTES, "lots")
    viewer = make_napari_viewer_proxy()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict")
    assert ENV_MAX_BYTES in widget.cache_label.text() and "'lots'" in widget.cache_label.text()
    assert widget.clear_cache() == 0
    assert widget.last_error is not None and ENV_MAX_BYTES in str(widget.last_error)


def test_the_cache_row_fits_the_predict_tab_on_a_laptop_screen(make_napari_viewer):
    from qtpy.QtCore import QPoint, QRect
    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer(show=True)
    _, main = viewer.window.add_plugin_dock_widget(PLUGIN, "MetalSeg")
    window = viewer.window._qt_window
    window.move(0, 0)
    for _ in range(3):
        window.resize(1366, 768)
        QApplication.processEvents()
    predict = main.show_section("Predict")
    QApplication.processEvents()
    predict.scroll.ensureWidgetVisible(predict.clear_cache_button)
    QApplication.processEvents()
    assert predict.scroll.horizontalScrollBar().maximum() == 0  # no sideways scrolling
    for widget in (predict.cache_label, predict.clear_cache_button):
        assert widget.isVisible() and widget.visibleRegion().boundingRect() == widget.rect(), widget
        rect = QRect(widget.mapToGlobal(QPoint(0, 0)), widget.size())
        assert QRect(0, 0, 1366, 768).contains(rect), rect
