"""The "MetalSeg" dock: the seven docks of the plugin as short-named tabs of one dock, for a laptop screen.

Opened one by one from the Plugins menu, the seven docks stack in one column; ``metalseg gui`` and the Plugins menu's
"MetalSeg" entry open this dock instead, which holds every dock as a tab (:data:`SECTIONS`). Tab titles are short and
never elided: the dock is at least as wide as the tab bar. Each tab is the dock itself (a
:class:`~napari_metalseg._widgets.base.DockWidget`), whose form scrolls, so the dock is a few lines high at least.
"""

from __future__ import annotations

import logging

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QTabWidget, QVBoxLayout, QWidget

from napari_metalseg._widgets.boxes import BoxPromptWidget
from napari_metalseg._widgets.features import FeaturesWidget
from napari_metalseg._widgets.model import ModelWidget
from napari_metalseg._widgets.predict import PredictWidget
from napari_metalseg._widgets.quantify import QuantifyWidget
from napari_metalseg._widgets.ratios import RatioWidget
from napari_metalseg._widgets.training import TrainingWidget

log = logging.getLogger(__name__)

MAIN_WIDGET = "MetalSeg"
"""The display name of this dock in ``napari.yaml`` (the Plugins menu entry)."""

SECTIONS = (
    ("Model", "Model", ModelWidget),
    ("Predict", "Predict", PredictWidget),
    ("Box prompts", "Boxes", BoxPromptWidget),
    ("Phase ratios", "Ratios", RatioWidget),
    ("Encoder features", "Features", FeaturesWidget),
    ("Training", "Train", TrainingWidget),
    ("Quantify", "Quantify", QuantifyWidget),
)
"""Each section: the dock's name (as in ``napari.yaml``), its tab title and its class, in tab order."""


class MetalsegWidget(QWidget):
    """Dock widget: every dock of the plugin as a tab (see the module docstring).

    Parameters
    ----------
    napari_viewer : napari.Viewer

    Attributes
    ----------
    sections : dict of str to DockWidget
        The docks by their name in ``napari.yaml`` (``"Model"``, ``"Box prompts"``, ...).
    failed : dict of str to str
        The sections that could not be built, with the error (their tab shows it).
    tabs : QTabWidget
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.sections: dict[str, QWidget] = {}
        self.failed: dict[str, str] = {}
        self.tabs = QTabWidget()
        self.tabs.setObjectName("metalseg_sections")
        bar = self.tabs.tabBar()
        bar.setElideMode(Qt.TextElideMode.ElideNone)
        self.tabs.setUsesScrollButtons(False)  # the dock is as wide as every title: none scrolls out of sight
        for name, title, widget_class in SECTIONS:
            try:
                widget = widget_class(napari_viewer)
            except Exception as exc:  # noqa: BLE001 - one broken section must not keep the others from opening
                log.exception("metalseg: the %r section could not be built", name)
                self.failed[name] = f"{type(exc).__name__}: {exc}"
                widget = QLabel(f"{name} could not be opened: {self.failed[name]}")
                widget.setWordWrap(True)
            else:
                self.sections[name] = widget
            index = self.tabs.addTab(widget, title)
            self.tabs.setTabToolTip(index, name)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)

    def show_section(self, name: str) -> QWidget:
        """Bring the section ``name`` (its name in ``napari.yaml``) to the front and return its dock.

        Raises
        ------
        KeyError
            No section of that name was built.
        """
        widget = self.sections[name]
        self.tabs.setCurrentWidget(widget)
        return widget
