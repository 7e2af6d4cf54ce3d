"""The window on a laptop screen (1366 x 768), under Qt6, with errors readable in full (napari needs a display: run
under xvfb-run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from qtpy.QtCore import QPoint, QRect, Qt
from qtpy.QtWidgets import QApplication

import napari_metalseg
import napari_metalseg._widgets  # noqa: F401  (blocks triton before any viewer exists)
from napari_metalseg._widgets.base import DockWidget
from napari_metalseg.errors import MetalsegError

pytestmark = pytest.mark.gui

PLUGIN = "napari-metalseg"
MAIN_WIDGET = "MetalSeg"
LAPTOP = QRect(0, 0, 1366, 768)
MANIFEST = yaml.safe_load((Path(napari_metalseg.__file__).parent / "napari.yaml").read_text())
DOCKS = [w["display_name"] for w in MANIFEST["contributions"]["widgets"] if w["display_name"] != MAIN_WIDGET]


def _on_laptop_screen(viewer):
    """Show the window at the top left of the screen and ask for 1366 x 768 (Qt keeps the minimum size it needs)."""
    window = viewer.window._qt_window
    window.show()
    window.move(0, 0)
    for _ in range(3):
        window.resize(LAPTOP.size())
        QApplication.processEvents()
    return window


def _global_rect(widget) -> QRect:
    return QRect(widget.mapToGlobal(QPoint(0, 0)), widget.size())


def _fully_shown(widget) -> bool:
    """The whole widget is drawn: shown, not clipped by a parent (a scroll area's viewport, a dock, the window)."""
    return widget.isVisible() and widget.visibleRegion().boundingRect() == widget.rect()


def test_every_dock_opened_from_the_plugins_menu_fits_a_laptop_screen(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    assert len(DOCKS) == 7
    widgets = {name: viewer.window.add_plugin_dock_widget(PLUGIN, name)[1] for name in DOCKS}
    window = _on_laptop_screen(viewer)
    frame = window.frameGeometry()
    assert frame.width() <= LAPTOP.width() and frame.height() <= LAPTOP.height(), frame
    status = window.statusBar()
    assert status.isVisible() and LAPTOP.contains(_global_rect(status)), _global_rect(status)
    training = widgets["Training"]
    button = training.train_button

    def reachable() -> bool:  # through the dock's scroll area, once the layout has settled (slow on a busy machine)
        training.scroll.ensureWidgetVisible(button)
        QApplication.processEvents()
        return _fully_shown(button)

    qtbot.waitUntil(reachable, timeout=5000)
    assert LAPTOP.contains(_global_rect(button)), _global_rect(button)
    for name, widget in widgets.items():
        assert isinstance(widget, DockWidget) and widget.scroll is not None, name
        assert widget.isVisible() and LAPTOP.contains(_global_rect(widget)), (name, _global_rect(widget))


def test_the_metalseg_dock_holds_every_dock_with_titles_in_full(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    _, main = viewer.window.add_plugin_dock_widget(PLUGIN, MAIN_WIDGET)
    window = _on_laptop_screen(viewer)
    frame = window.frameGeometry()
    assert frame.width() <= LAPTOP.width() and frame.height() <= LAPTOP.height(), frame
    from napari_metalseg._widgets.main import SECTIONS

    assert sorted(main.sections) == sorted(DOCKS) and not main.failed
    for name, _, widget_class in SECTIONS:
        assert type(main.sections[name]) is widget_class
    bar = main.tabs.tabBar()
    titles = [bar.tabText(i) for i in range(bar.count())]
    assert titles == ["Model", "Predict", "Boxes", "Ratios", "Features", "Train", "Quantify"]
    assert bar.elideMode() == Qt.TextElideMode.ElideNone
    metrics = bar.fontMetrics()
    for i, title in enumerate(titles):
        rect = bar.tabRect(i)
        assert rect.width() >= metrics.horizontalAdvance(title), (title, rect)
        assert bar.rect().contains(rect), (title, rect, bar.rect())  # no tab scrolled out of sight
    assert _fully_shown(bar) and LAPTOP.contains(_global_rect(bar))
    training = main.show_section("Training")
    QApplication.processEvents()
    training.scroll.ensureWidgetVisible(training.train_button)
    QApplication.processEvents()
    assert _fully_shown(training.train_button) and LAPTOP.contains(_global_rect(training.train_button))


def test_a_long_error_is_shown_whole_in_the_dock_and_as_a_notification(make_napari_viewer, tmp_path):
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Model")
    _on_laptop_screen(viewer)
    run = tmp_path / ("a_run_folder_with_a_very_long_name_" * 7)
    assert widget.load_run(run) is None
    QApplication.processEvents()
    message = str(widget.last_error)
    assert isinstance(widget.last_error, MetalsegError) and len(message) >= 300 and str(run) in message
    line = widget.error_line
    assert line.text() == f"error: {message}"  # whole, not elided
    assert line.wordWrap() and line.textInteractionFlags() & Qt.TextInteractionFlag.TextSelectableByMouse
    assert _fully_shown(line)
    assert line.width() <= widget.width() and line.height() >= line.heightForWidth(line.width())  # no line cut off
    assert line.heightForWidth(line.width()) > 2 * line.fontMetrics().height()  # it wraps
    assert any(message in n.message for n in notification_manager.records)
    widget.last_error = None  # the next action starts: the old error goes
    assert not line.isVisible() and line.text() == ""


def test_napari_starts_under_qt6_without_the_pyqt5_deprecation_warning():
    """As a user starts it (qtpy picks the binding): the environment holds PyQt6, not PyQt5."""
    code = (
        "import napari_metalseg._widgets, napari, qtpy\n"
        "from qtpy.QtWidgets import QApplication\n"
        "from napari.utils.notifications import notification_manager\n"
        "viewer = napari.Viewer()\n"
        "QApplication.processEvents()\n"
        "print('API', qtpy.API_NAME)\n"
        "print('NOTES', [n.message for n in notification_manager.records])\n"
        "viewer.close()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "QT_API"}  # qtpy sets it to the binding pytest-qt took
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "API PyQt6" in out.stdout, out.stdout
    assert "NOTES []" in out.stdout, out.stdout
    assert "backend is deprecated" not in out.stdout + out.stderr, out.stderr[-2000:]
