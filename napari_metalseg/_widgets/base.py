"""The base of the plugin's dock widgets: the viewer, its shared session, and the one worker a dock runs at a time."""

from __future__ import annotations

from qtpy.QtWidgets import QHBoxLayout, QLineEdit, QPushButton, QWidget

from napari_metalseg._widgets.session import get_session


class DockWidget(QWidget):
    """A dock widget bound to one viewer.

    Attributes
    ----------
    viewer : napari.Viewer
        The viewer (plugin widgets receive a proxy of it).
    session : Session
        State shared by every dock of this viewer (model, predictor, phases, ratios).
    worker : WorkerBase or None
        The background worker this dock is running, if any.
    last_error : BaseException or None
        The last error shown to the user (kept for tests and the status line).
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = get_session(napari_viewer)
        self.worker = None
        self.last_error: BaseException | None = None

    @property
    def busy(self) -> bool:
        """True while this dock's worker runs."""
        return self.worker is not None


def browse_row(edit: QLineEdit, browse) -> QWidget:
    """A path field with a "…" button that calls ``browse`` (a file or folder picker)."""
    row = QWidget()
    box = QHBoxLayout(row)
    box.setContentsMargins(0, 0, 0, 0)
    box.addWidget(edit, 1)
    button = QPushButton("…")
    button.setFixedWidth(28)
    button.setToolTip("Browse")
    button.clicked.connect(browse)
    box.addWidget(button)
    return row
