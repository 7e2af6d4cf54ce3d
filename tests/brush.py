"""Paint into a napari Labels layer as a user does: real Qt mouse events (press, moves with the button held, release)
sent to the viewer's canvas, so napari's own brush (``draw`` in napari's labels mouse bindings) paints and commits the
stroke (one ``paint`` event on release). Used by the GUI tests and by the crash test's subprocess."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def canvas_point(viewer, layer, yx: Sequence[float]):
    """The canvas position (a ``QPoint``) of pixel ``(y, x)`` of ``layer``."""
    from qtpy.QtCore import QPoint

    world = layer.data_to_world(np.asarray(yx, dtype=float))
    canvas = viewer.window._qt_viewer.canvas
    x, y = canvas.view.scene.transform.map([world[-1], world[-2]])[:2]
    return QPoint(int(round(x)), int(round(y)))


def brush_stroke(viewer, layer, points: Sequence[Sequence[float]], label: int, size: int = 5) -> None:
    """Paint ``label`` along ``points`` (pixel ``(y, x)`` of ``layer``) with napari's brush, by mouse events."""
    from qtpy.QtCore import QEvent, QPointF, Qt
    from qtpy.QtGui import QMouseEvent
    from qtpy.QtWidgets import QApplication

    viewer.layers.selection.active = layer
    layer.mode = "paint"
    layer.selected_label = label
    layer.brush_size = size
    QApplication.processEvents()
    native = viewer.window._qt_viewer.canvas.native
    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton

    def send(kind, yx, button, buttons) -> None:
        pos = canvas_point(viewer, layer, yx)
        event = QMouseEvent(
            kind, QPointF(pos), QPointF(native.mapToGlobal(pos)), button, buttons, Qt.KeyboardModifier.NoModifier
        )
        QApplication.sendEvent(native, event)
        QApplication.processEvents()  # napari handles each move before the next, as with a real mouse

    send(QEvent.Type.MouseButtonPress, points[0], left, left)
    for yx in points[1:]:
        send(QEvent.Type.MouseMove, yx, none, left)
    send(QEvent.Type.MouseButtonRelease, points[-1], left, none)


def line(y0: float, x0: float, y1: float, x1: float, n: int = 12) -> list[tuple[float, float]]:
    """``n`` points from ``(y0, x0)`` to ``(y1, x1)``."""
    return [(y0 + (y1 - y0) * t, x0 + (x1 - x0) * t) for t in np.linspace(0, 1, n)]
