"""A combo box of the viewer's layers of one type that follows insertions, removals and renames."""

from __future__ import annotations

from collections.abc import Callable

from napari.layers import Layer
from qtpy.QtWidgets import QComboBox


class LayerPicker(QComboBox):
    """A combo box listing the viewer's layers of one type; follows insertions, removals and renames.

    Parameters
    ----------
    viewer : napari.Viewer
    layer_type : type
        ``napari.layers.Image``, ``Labels``, ...
    accept : callable, optional
        Extra filter ``accept(layer) -> bool``.
    prefer : str, optional
        Name picked when it appears (e.g. ``"phases"``).
    """

    def __init__(
        self,
        viewer,
        layer_type: type,
        accept: Callable[[Layer], bool] | None = None,
        prefer: str | None = None,
        parent=None,
    ) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._type = layer_type
        self._accept = accept
        self._prefer = prefer
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self.refresh)
        viewer.layers.events.moved.connect(self.refresh)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        self.refresh()

    def _on_inserted(self, event=None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None:
            layer.events.name.connect(self.refresh)
        self.refresh()
        if layer is not None and self._matches(layer) and (self.currentIndex() < 0 or layer.name == self._prefer):
            self.setCurrentText(layer.name)

    def _matches(self, layer: Layer) -> bool:
        return isinstance(layer, self._type) and (self._accept is None or self._accept(layer))

    def refresh(self, event=None) -> None:
        """Re-list the layers, keeping the current choice when it still exists."""
        current = self.currentText()
        names = [layer.name for layer in reversed(list(self._viewer.layers)) if self._matches(layer)]
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        if current in names:
            self.setCurrentText(current)
        elif self._prefer in names:
            self.setCurrentText(self._prefer)
        self.blockSignals(False)
        if current != self.currentText():
            self.currentIndexChanged.emit(self.currentIndex())

    def layer(self) -> Layer | None:
        """The chosen layer, or None."""
        name = self.currentText()
        if name and name in self._viewer.layers:
            layer = self._viewer.layers[name]
            return layer if self._matches(layer) else None
        return None

    def set_layer(self, name: str) -> None:
        self.refresh()
        self.setCurrentText(name)
