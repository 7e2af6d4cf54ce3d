"""The "Training data" group of the Training dock: which layers (or dataset folder) to train on, and the phases.

* The **source** combo picks the open layers, a dataset folder, or both.
* The **image** combo picks one image layer, or "all images with labels" (every 2-D image layer paired with its
  annotations by the pairing rule of :mod:`.pairing`; images without a match are left out).
* For one image, the **labels** combo picks its annotation layer; it is pre-selected by the pairing rule.
* The **phases** field names the phases in label order (label 1 = first phase; label 0 is unlabeled, ignored by the
  loss; see :func:`~napari_metalseg.phases.labels_to_mask`).

:func:`layer_samples` and :func:`dataset_samples` turn the choice into training samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QFileDialog, QFormLayout, QGroupBox, QLineEdit

from napari_metalseg.data.training_set import training_mask
from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import UNLABELED, PhaseSet

from .base import browse_row, while_alive
from .calibration import layer_calibration
from .layers import image_of_layer, phases_of_layer
from .pairing import find_labels_layer, image_hw, is_2d_image, is_preview_layer, training_pairs

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from napari.layers import Image, Labels

    from napari_metalseg.data.samples import Sample

ALL_IMAGES = "all images with labels"
SOURCES = ("open layers", "dataset folder", "open layers + dataset folder")


def layer_samples(pairs: list[tuple[Image, Labels]], phases: PhaseSet) -> list[Sample]:
    """Training samples of (image, labels) layer pairs (copies: the user may paint on); unlabelled pairs are left out.

    Raises
    ------
    MetalsegError
        Labels of another size than their image, label values beyond the phases, or nothing labelled at all.
    """
    from napari_metalseg.data.samples import Sample

    samples = []
    for image_layer, labels_layer in pairs:
        image = np.array(image_of_layer(image_layer), dtype=np.float32)
        mask = training_mask(labels_layer.data, phases, labels_layer.name)
        if mask.shape != image.shape:
            raise MetalsegError(
                f"labels layer {labels_layer.name!r} has shape {mask.shape}, image "
                f"{image_layer.name!r} has {image.shape}"
            )
        if not (mask != UNLABELED).any():
            continue
        magnification, pixel_size = layer_calibration(image_layer)
        samples.append(Sample(image_layer.name, image, mask, magnification, pixel_size))
    if not samples:
        raise MetalsegError(
            "the Labels layers hold no annotation yet: paint some pixels of each phase "
            "(label 1 = first phase) and train again"
        )
    return samples


def dataset_samples(root: Path, phases: PhaseSet | None) -> tuple[list[Sample], list[Sample], PhaseSet]:
    """The labelled ``train`` and ``val`` samples of a dataset folder and its phases.

    Raises
    ------
    MetalsegError
        An unreadable dataset, or other phases than ``phases`` (when given).
    """
    from napari_metalseg.data.dataset import load_dataset
    from napari_metalseg.data.samples import load_samples

    dataset = load_dataset(root)
    if phases is not None and dataset.phases.names != phases.names:
        raise MetalsegError(
            f"{root}: the dataset's phases {dataset.phases.names} differ from the phases "
            f"named in the widget {phases.names}"
        )
    train = load_samples(dataset.labelled_split("train"))
    val = load_samples(dataset.labelled_split("val"))
    return train, val, dataset.phases


class TrainingDataBox(QGroupBox):
    """The training data of the Training dock (see the module docstring).

    Parameters
    ----------
    viewer : napari.Viewer
    session : Session
        The viewer's session (its phases and dataset folder pre-fill the fields).

    Signals
    -------
    pair_changed
        The chosen image or labels layer changed (the live preview follows it).
    """

    pair_changed = Signal()

    def __init__(self, viewer: napari.Viewer, session, parent=None) -> None:
        super().__init__("Training data", parent)
        self.viewer = viewer
        self.session = session
        form = QFormLayout(self)
        self.source = QComboBox()
        self.source.addItems(SOURCES)
        self.source.setToolTip("Train on the open image + Labels layers, on a dataset folder, or on both.")
        form.addRow("source", self.source)
        self.image_combo = QComboBox()
        self.image_combo.setToolTip(
            "The image to train on, or every image that has a Labels layer ('<image> labels', '<image> phases', ...)."
        )
        form.addRow("image", self.image_combo)
        self.labels_combo = QComboBox()
        self.labels_combo.setToolTip("Annotations of the image: label 0 = unlabeled, label k = phase k.")
        form.addRow("labels", self.labels_combo)
        self.dataset_edit = QLineEdit()
        self.dataset_edit.setPlaceholderText("dataset folder (chosen on first use)")
        form.addRow("dataset", browse_row(self.dataset_edit, self._browse_dataset))
        self.phases_edit = QLineEdit()
        self.phases_edit.setPlaceholderText("e.g. ferrite, martensite (label 1, label 2, ...)")
        self.phases_edit.setToolTip("Phase names in label order: label 1 = first phase, label 2 = second, ...")
        form.addRow("phases", self.phases_edit)

        self.image_combo.currentIndexChanged.connect(self._image_changed)
        self.labels_combo.currentIndexChanged.connect(lambda _: (self.fill_phases(), self.pair_changed.emit()))
        self.source.currentIndexChanged.connect(self._source_changed)
        self.dataset_edit.editingFinished.connect(self._dataset_edited)
        if session.dataset_dir is not None:
            self.dataset_edit.setText(str(session.dataset_dir))
        self._source_changed()
        events = viewer.layers.events
        for name in ("inserted", "removed", "moved", "reordered"):
            emitter = getattr(events, name, None)
            if emitter is not None:
                emitter.connect(self._on_layers_changed)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh_layers)
        session.model_changed.connect(self._on_model_changed)

    # -- what the source uses --------------------------------------------------------------------------
    @property
    def uses_layers(self) -> bool:
        return self.source.currentIndex() != 1

    @property
    def uses_dataset(self) -> bool:
        return self.source.currentIndex() != 0

    def _source_changed(self, *_: Any) -> None:
        self.image_combo.setEnabled(self.uses_layers)
        self.labels_combo.setEnabled(self.uses_layers and self.selected_image() is not None)

    # -- layer combos ----------------------------------------------------------------------------------
    def _on_layers_changed(self, event: Any = None) -> None:
        layer = getattr(event, "value", None)
        if event is not None and getattr(event, "type", "") == "inserted" and layer is not None:
            layer.events.name.connect(self.refresh_layers)
        self.refresh_layers()

    @while_alive
    def _on_model_changed(self) -> None:
        if not self.phases_edit.text().strip() and self.session.phases is not None:
            self.phases_edit.setText(", ".join(self.session.phases.names))

    @while_alive
    def refresh_layers(self, event: Any = None) -> None:
        """Re-list the image and labels layers, keeping the choices that still exist."""
        from napari.layers import Labels

        current = self.image_combo.currentText()
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItem(ALL_IMAGES)
        names = [lay.name for lay in self.viewer.layers if is_2d_image(lay)]
        self.image_combo.addItems(names)
        if current in names or current == ALL_IMAGES:
            self.image_combo.setCurrentText(current)
        elif len(names) == 1:
            self.image_combo.setCurrentText(names[0])
        self.image_combo.blockSignals(False)
        current_labels = self.labels_combo.currentText()
        self.labels_combo.blockSignals(True)
        self.labels_combo.clear()
        self.labels_combo.addItems(
            [lay.name for lay in self.viewer.layers if isinstance(lay, Labels) and not is_preview_layer(lay)]
        )
        self.labels_combo.blockSignals(False)
        if current_labels and self.labels_combo.findText(current_labels) >= 0:
            self.labels_combo.setCurrentText(current_labels)
        self._image_changed(keep_labels=bool(current_labels) and self.labels_combo.findText(current_labels) >= 0)

    def _image_changed(self, *_: Any, keep_labels: bool = False) -> None:
        image = self.selected_image()
        self.labels_combo.setEnabled(image is not None and self.source.currentIndex() != 1)
        if image is not None and not keep_labels:
            match = find_labels_layer(self.viewer, image)
            if match is not None:
                self.labels_combo.setCurrentText(match.name)
        self.fill_phases()
        self.pair_changed.emit()

    def selected_image(self) -> Image | None:
        """The image layer chosen in the image combo (None for "all images" or none)."""
        name = self.image_combo.currentText()
        if not name or name == ALL_IMAGES or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]

    def selected_labels(self) -> Labels | None:
        """The chosen labels layer when it fits the chosen image (2-D, same size), else None."""
        from napari.layers import Labels

        image = self.selected_image()
        name = self.labels_combo.currentText()
        labels = self.viewer.layers[name] if name and name in self.viewer.layers else None
        ok = (
            image is not None
            and isinstance(labels, Labels)
            and np.ndim(labels.data) == 2
            and tuple(np.shape(labels.data)) == image_hw(image)
        )
        return labels if ok else None

    def select_pair(self, image: str, labels: str | None = None) -> None:
        """Choose the training image layer (or :data:`ALL_IMAGES`) and, optionally, its Labels layer by name."""
        self.image_combo.setCurrentText(image)
        if labels is not None:
            self.labels_combo.setCurrentText(labels)

    def pairs(self) -> list[tuple[Image, Labels]]:
        """The (image, labels) layer pairs used as training data (see :mod:`.pairing`).

        Raises
        ------
        MetalsegError
            No pair at all, no labels layer chosen, or one of another size than the image.
        """
        from napari.layers import Labels

        image = self.selected_image()
        if self.image_combo.currentText() == ALL_IMAGES or image is None:
            pairs = training_pairs(self.viewer)
            if not pairs:
                raise MetalsegError(
                    "no image layer with a Labels layer: add a Labels layer named '<image> labels' "
                    "and paint some phases (label 1 = first phase, 0 = unlabeled)"
                )
            return pairs
        name = self.labels_combo.currentText()
        if not name or name not in self.viewer.layers or not isinstance(self.viewer.layers[name], Labels):
            raise MetalsegError(f"choose the Labels layer that holds the annotations of {image.name!r}")
        labels = self.viewer.layers[name]
        if tuple(np.shape(labels.data)) != image_hw(image):
            raise MetalsegError(
                f"labels layer {name!r} has shape {np.shape(labels.data)}, image {image.name!r} has {image_hw(image)}"
            )
        return [(image, labels)]

    def current_image(self, pairs: list[tuple[Image, Labels]]) -> Image | None:
        """The image to predict after training: the active layer, else the first trained on, else the first open."""
        active = self.viewer.layers.selection.active
        if is_2d_image(active):
            return active
        if pairs:
            return pairs[0][0]
        images = [lay for lay in self.viewer.layers if is_2d_image(lay)]
        return images[0] if images else None

    # -- phases and dataset ----------------------------------------------------------------------------
    def fill_phases(self) -> None:
        """Pre-fill the phase names (never overwriting what the user typed)."""
        if self.phases_edit.text().strip():
            return
        names = None
        label_name = self.labels_combo.currentText()
        if label_name and label_name in self.viewer.layers:
            found = phases_of_layer(self.viewer.layers[label_name])
            names = found.names if found is not None else None
        if names is None and self.session.phases is not None:
            names = self.session.phases.names
        if names is None and self.session.dataset_dir is not None:
            path = Path(self.session.dataset_dir) / "phases.json"
            if path.is_file():
                try:
                    names = PhaseSet.load(path).names
                except MetalsegError:
                    names = None
        if names:
            self.phases_edit.setText(", ".join(names))

    def phase_set(self) -> PhaseSet:
        """The phases typed in the widget (label k = k-th name), with the colours of a known phase set if equal.

        Raises
        ------
        MetalsegError
            No phase named.
        """
        names = [n.strip() for n in self.phases_edit.text().split(",") if n.strip()]
        if not names:
            raise MetalsegError("name the phases (comma-separated, in label order: label 1 = first phase)")
        candidates = [self.session.phases]
        label_name = self.labels_combo.currentText()
        if label_name and label_name in self.viewer.layers:
            candidates.insert(0, phases_of_layer(self.viewer.layers[label_name]))
        for known in candidates:
            if known is not None and known.names == names:
                return known
        return PhaseSet.from_names(names)

    def _dataset_edited(self) -> None:
        text = self.dataset_edit.text().strip()
        self.session.dataset_dir = Path(text).expanduser() if text else None
        self.fill_phases()

    def _browse_dataset(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Dataset folder (images/, masks/, phases.json)", self.dataset_edit.text() or str(Path.home())
        )
        if folder:
            self.dataset_edit.setText(folder)
            self._dataset_edited()

    def dataset_dir(self, ask: bool = True) -> Path | None:
        """The dataset folder (the session's); asks for one with a folder picker when none is set and ``ask``."""
        text = self.dataset_edit.text().strip()
        if text:
            self.session.dataset_dir = Path(text).expanduser()
        elif self.session.dataset_dir is not None:
            self.dataset_edit.setText(str(self.session.dataset_dir))
        elif ask:
            self._browse_dataset()
        return self.session.dataset_dir
