"""The "Training data" group of the Training dock: which micrographs (or dataset folder) to train on, and the phases.

* The **source** combo picks the open micrographs, a dataset folder, or both.
* The **micrograph** combo picks one micrograph, or "all micrographs with annotations".
* A micrograph's training labels are its ``<image> annotations`` layer (:mod:`.roles`) and, when "my corrections"
  is ticked, the pixels the user corrected in its ``<image> phases`` layer (:mod:`.edits`); the strokes win where
  both label a pixel. Never a layer found by its name or size: a Labels layer the user made is used only once it is
  adopted ("Use as annotations"), and "New annotations layer" makes an empty one to paint in.
* The **phases** field names the phases in label order (label 1 = first phase; label 0 is unlabeled, ignored by the
  loss; see :func:`~napari_metalseg.phases.labels_to_mask`).
* The **summary** line says, before anything starts, what a run would train on: micrographs, labelled pixels per
  phase (:func:`describe`), or why there is nothing.

:func:`layer_samples` and :func:`dataset_samples` turn the choice into training samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

from napari_metalseg.data.training_set import training_mask
from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import UNLABELED, PhaseSet, phase_pixel_counts

from .base import browse_row, while_alive
from .calibration import layer_calibration
from .edits import edited_pixels
from .layers import image_of_layer, phases_of_layer
from .roles import (
    ANNOTATIONS,
    PHASES,
    adopt_annotations,
    annotations_layer,
    find_layer,
    image_hw,
    is_2d_image,
    micrographs,
    role_of,
    unlinked_labels,
)

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from napari.layers import Image, Labels

    from napari_metalseg.data.samples import Sample

ALL_IMAGES = "all micrographs with annotations"
SOURCES = ("open micrographs", "dataset folder", "open micrographs + dataset folder")
SUMMARY_DEBOUNCE_MS = 300


@dataclass
class TrainingInput:
    """The labels of one micrograph: its annotations layer and/or its phases layer whose corrections count."""

    image: Image
    annotations: Labels | None
    phases: Labels | None

    def mask(self, phases: PhaseSet) -> np.ndarray:
        """The training mask (phase index, 255 unlabeled): the annotations, plus the corrections where unlabeled.

        Raises
        ------
        MetalsegError
            A layer of another size than the micrograph, or label values beyond the phases.
        """
        hw = image_hw(self.image)
        mask = np.full(hw, UNLABELED, np.uint8)
        if self.phases is not None:
            _check_size(self.phases, self.image)
            corrected = edited_pixels(self.phases)
            if corrected.any():
                values = training_mask(self.phases.data, phases, self.phases.name)
                mask[corrected] = values[corrected]
        if self.annotations is not None:
            _check_size(self.annotations, self.image)
            strokes = training_mask(self.annotations.data, phases, self.annotations.name)
            painted = strokes != UNLABELED
            mask[painted] = strokes[painted]
        return mask

    def layer_names(self) -> str:
        parts = [f"'{self.annotations.name}'"] if self.annotations is not None else []
        if self.phases is not None:
            parts.append(f"'{self.phases.name}' (your corrections)")
        return " + ".join(parts)


def _check_size(labels: Labels, image: Image) -> None:
    if tuple(np.shape(labels.data)) != image_hw(image):
        raise MetalsegError(
            f"labels layer {labels.name!r} has shape {tuple(np.shape(labels.data))}, micrograph {image.name!r} "
            f"has {image_hw(image)}"
        )


def has_corrections(layer: Labels | None) -> bool:
    """Whether the user corrected some pixels of a phases layer."""
    return layer is not None and bool(edited_pixels(layer).any())


def training_inputs(viewer: napari.Viewer, images: list[Image], corrections: bool = True) -> list[TrainingInput]:
    """The labels of each micrograph: its annotations and (``corrections``) its corrected phases layer; micrographs
    with neither are left out."""
    inputs = []
    for image in images:
        annotations = find_layer(viewer, image, ANNOTATIONS)
        phases = find_layer(viewer, image, PHASES) if corrections else None
        phases = phases if has_corrections(phases) else None
        if annotations is not None or phases is not None:
            inputs.append(TrainingInput(image, annotations, phases))
    return inputs


def layer_samples(inputs: list[TrainingInput], phases: PhaseSet) -> list[Sample]:
    """Training samples of the micrographs' labels (copies: the user may paint on); unlabelled ones are left out.

    Raises
    ------
    MetalsegError
        Labels of another size than their micrograph, label values beyond the phases, or nothing labelled at all.
    """
    from napari_metalseg.data.samples import Sample

    samples = []
    for item in inputs:
        mask = item.mask(phases)
        if not (mask != UNLABELED).any():
            continue
        image = np.array(image_of_layer(item.image), dtype=np.float32)
        magnification, pixel_size = layer_calibration(item.image)
        samples.append(Sample(item.image.name, image, mask, magnification, pixel_size))
    if not samples:
        raise MetalsegError(nothing_to_train(inputs))
    return samples


def nothing_to_train(inputs: list[TrainingInput]) -> str:
    """The one line that says why there is nothing to train on."""
    if not inputs:
        return (
            "nothing to train on: no micrograph has annotations yet; click 'New annotations layer' (or adopt a "
            "Labels layer you made) and paint some pixels of each phase"
        )
    names = ", ".join(item.layer_names() for item in inputs)
    return f"nothing to train on: {names} hold no labelled pixel yet; paint some pixels of each phase"


def describe(inputs: list[TrainingInput], phases: PhaseSet) -> str:
    """What a run would train on: ``2 micrographs, 12,345 labelled px (ferrite 10,000, martensite 2,345): ...``."""
    if not inputs:
        return nothing_to_train(inputs)
    total = np.zeros(len(phases), np.int64)
    parts = []
    for item in inputs:
        counts = phase_pixel_counts(item.mask(phases), len(phases))
        total += counts
        parts.append(f"{item.layer_names()}: {int(counts.sum()):,} px")
    if not total.any():
        return nothing_to_train(inputs)
    per_phase = ", ".join(f"{name} {int(n):,}" for name, n in zip(phases.names, total))
    missing = [name for name, n in zip(phases.names, total) if n == 0]
    warn = f"; no pixel of {', '.join(missing)} yet" if missing else ""
    return (
        f"will train on {len(inputs)} micrograph(s), {int(total.sum()):,} labelled px ({per_phase}){warn}: "
        + "; ".join(parts)
    )


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
        The chosen micrograph or its annotations changed (the live preview follows it).
    """

    pair_changed = Signal()

    def __init__(self, viewer: napari.Viewer, session, parent=None) -> None:
        super().__init__("Training data", parent)
        self.viewer = viewer
        self.session = session
        self._watched: set[int] = set()
        form = QFormLayout(self)
        self.source = QComboBox()
        self.source.addItems(SOURCES)
        self.source.setToolTip("Train on the open micrographs' annotations, on a dataset folder, or on both.")
        form.addRow("source", self.source)
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The micrograph to train on, or every micrograph that has annotations.")
        form.addRow("micrograph", self.image_combo)
        self.annotations_label = QLabel()
        self.annotations_label.setWordWrap(True)
        form.addRow("annotations", self.annotations_label)
        self.new_button = QPushButton("New annotations layer")
        self.new_button.setToolTip("Make '<micrograph> annotations' (phase colours and names) and start painting.")
        self.adopt_combo = QComboBox()
        self.adopt_combo.setToolTip("A Labels layer you made, of the micrograph's size, to use as its annotations.")
        self.adopt_button = QPushButton("Use as annotations")
        form.addRow("", self.new_button)
        row = QWidget()  # on its own line: the dock stays narrow enough for a laptop screen
        box = QHBoxLayout(row)
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(self.adopt_combo, 1)
        box.addWidget(self.adopt_button)
        form.addRow("", row)
        self.corrections_check = QCheckBox("also my corrections in '<micrograph> phases'")
        self.corrections_check.setChecked(True)
        self.corrections_check.setToolTip(
            "Pixels you corrected in a predicted phases layer (brush, fill, box prompts) train as labels too."
        )
        form.addRow("", self.corrections_check)
        self.dataset_edit = QLineEdit()
        self.dataset_edit.setPlaceholderText("dataset folder (chosen on first use)")
        form.addRow("dataset", browse_row(self.dataset_edit, self._browse_dataset))
        self.phases_edit = QLineEdit()
        self.phases_edit.setPlaceholderText("e.g. ferrite, martensite (label 1, label 2, ...)")
        self.phases_edit.setToolTip("Phase names in label order: label 1 = first phase, label 2 = second, ...")
        form.addRow("phases", self.phases_edit)
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        form.addRow(self.summary)
        self.autosave_label = QLabel("annotations are autosaved a few seconds after each stroke")
        self.autosave_label.setWordWrap(True)
        self.autosave_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        form.addRow(self.autosave_label)
        self._summary_timer = QTimer(self)
        self._summary_timer.setSingleShot(True)
        self._summary_timer.setInterval(SUMMARY_DEBOUNCE_MS)
        self._summary_timer.timeout.connect(self.update_summary)

        self.image_combo.currentIndexChanged.connect(self._image_changed)
        self.source.currentIndexChanged.connect(self._source_changed)
        self.dataset_edit.editingFinished.connect(self._dataset_edited)
        self.phases_edit.editingFinished.connect(self.schedule_summary)
        self.corrections_check.toggled.connect(lambda _: self.schedule_summary())
        self.new_button.clicked.connect(self._new_clicked)
        self.adopt_button.clicked.connect(self._adopt_clicked)
        if session.dataset_dir is not None:
            self.dataset_edit.setText(str(session.dataset_dir))
        self._source_changed()
        events = viewer.layers.events
        for name in ("inserted", "removed", "moved", "reordered"):
            emitter = getattr(events, name, None)
            if emitter is not None:
                emitter.connect(self._on_layers_changed)
        for layer in viewer.layers:
            self._watch(layer)
        session.model_changed.connect(self._on_model_changed)
        autosaver = getattr(session, "autosaver", None)
        if autosaver is not None:
            autosaver.saved.connect(self._on_autosaved)

    @while_alive
    def _on_autosaved(self, image_name: str, folder: str) -> None:
        """Say where the annotations were autosaved (crash-safe annotation, :mod:`.autosave`)."""
        import time

        self.autosave_label.setText(f"'{image_name}' annotations autosaved {time.strftime('%H:%M:%S')} to {folder}")

    # -- what the source uses --------------------------------------------------------------------------
    @property
    def uses_layers(self) -> bool:
        return self.source.currentIndex() != 1

    @property
    def uses_dataset(self) -> bool:
        return self.source.currentIndex() != 0

    def _source_changed(self, *_: Any) -> None:
        for widget in (self.image_combo, self.new_button, self.adopt_combo, self.adopt_button, self.corrections_check):
            widget.setEnabled(self.uses_layers)
        self.schedule_summary()

    # -- following the layers --------------------------------------------------------------------------
    def _watch(self, layer: Any) -> None:
        key = id(getattr(layer, "__wrapped__", layer))
        if key in self._watched:
            return
        self._watched.add(key)
        layer.events.name.connect(self.refresh_layers)
        paint = getattr(layer.events, "paint", None)
        if paint is not None:
            paint.connect(self.schedule_summary)
            layer.events.data.connect(self.schedule_summary)

    def _on_layers_changed(self, event: Any = None) -> None:
        layer = getattr(event, "value", None)
        if event is not None and getattr(event, "type", "") == "inserted" and layer is not None:
            self._watch(layer)
        self.refresh_layers()

    @while_alive
    def _on_model_changed(self) -> None:
        if not self.phases_edit.text().strip() and self.session.phases is not None:
            self.phases_edit.setText(", ".join(self.session.phases.names))
        self.schedule_summary()

    @while_alive
    def refresh_layers(self, event: Any = None) -> None:
        """Re-list the micrographs (keeping the choice) and the chosen one's annotations."""
        current = self.image_combo.currentText()
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItem(ALL_IMAGES)
        names = [lay.name for lay in micrographs(self.viewer)]
        self.image_combo.addItems(names)
        if current in names or current == ALL_IMAGES:
            self.image_combo.setCurrentText(current)
        elif len(names) == 1:
            self.image_combo.setCurrentText(names[0])
        self.image_combo.blockSignals(False)
        self._image_changed()

    def _image_changed(self, *_: Any) -> None:
        image = self.selected_image()
        labels = self.selected_labels()
        if image is None:
            count = len(self.inputs(corrections=False))
            self.annotations_label.setText(f"{count} micrograph(s) with annotations")
        elif labels is None:
            self.annotations_label.setText(f"none yet for '{image.name}'")
        else:
            self.annotations_label.setText(f"'{labels.name}'")
        self.adopt_combo.clear()
        if image is not None:
            self.adopt_combo.addItems([lay.name for lay in unlinked_labels(self.viewer, image)])
        self.new_button.setEnabled(self.uses_layers and image is not None and labels is None)
        self.adopt_button.setEnabled(self.uses_layers and image is not None and self.adopt_combo.count() > 0)
        self.fill_phases()
        self.schedule_summary()
        self.pair_changed.emit()

    def selected_image(self) -> Image | None:
        """The micrograph chosen in the combo (None for "all micrographs" or none)."""
        name = self.image_combo.currentText()
        if not name or name == ALL_IMAGES or name not in self.viewer.layers:
            return None
        layer = self.viewer.layers[name]
        return layer if is_2d_image(layer) else None

    def selected_labels(self) -> Labels | None:
        """The annotations layer of the chosen micrograph (None: none, or "all micrographs")."""
        image = self.selected_image()
        return None if image is None else find_layer(self.viewer, image, ANNOTATIONS)

    def select_image(self, name: str) -> None:
        """Choose the micrograph to train on by name (or :data:`ALL_IMAGES`)."""
        self.refresh_layers()
        self.image_combo.setCurrentText(name)

    # -- annotations -----------------------------------------------------------------------------------
    def new_annotations(self) -> Labels:
        """Make the chosen micrograph's empty annotations layer and select it in paint mode (label 1).

        Raises
        ------
        MetalsegError
            No micrograph chosen, or no phases named.
        """
        image = self.selected_image()
        if image is None:
            raise MetalsegError("choose one micrograph to annotate")
        layer = annotations_layer(self.viewer, image, self.phase_set(), create=True)
        self.viewer.layers.selection.active = layer
        layer.selected_label = 1
        layer.mode = "paint"
        self._image_changed()
        return layer

    def adopt(self, name: str | None = None) -> Labels:
        """Use the Labels layer ``name`` (default: the one in the combo) as the chosen micrograph's annotations.

        Raises
        ------
        MetalsegError
            No micrograph or layer chosen, or a layer that does not fit the micrograph or the phases.
        """
        image = self.selected_image()
        name = name or self.adopt_combo.currentText()
        if image is None or not name or name not in self.viewer.layers:
            raise MetalsegError("choose one micrograph and the Labels layer to use as its annotations")
        layer = adopt_annotations(self.viewer, image, self.viewer.layers[name], self.phase_set())
        self._image_changed()
        return layer

    def _new_clicked(self) -> None:
        self._run(self.new_annotations)

    def _adopt_clicked(self) -> None:
        self._run(self.adopt)

    def _run(self, action: Any) -> None:
        from napari.utils.notifications import show_error

        try:
            action()
        except MetalsegError as exc:
            self.summary.setText(f"error: {exc}")
            show_error(str(exc))

    # -- what is used ----------------------------------------------------------------------------------
    def inputs(self, corrections: bool | None = None) -> list[TrainingInput]:
        """The labels of the chosen micrograph(s) (see :func:`training_inputs`)."""
        if corrections is None:
            corrections = self.corrections_check.isChecked()
        image = self.selected_image()
        images = [image] if image is not None else micrographs(self.viewer)
        return training_inputs(self.viewer, images, corrections)

    def pairs(self) -> list[tuple[Image, Labels]]:
        """(micrograph, annotations layer) of the chosen micrograph(s) that have annotations."""
        return [(item.image, item.annotations) for item in self.inputs(False) if item.annotations is not None]

    def schedule_summary(self, *_: Any) -> None:
        try:
            self._summary_timer.start()
        except RuntimeError:  # the widget is being deleted
            pass

    @while_alive
    def update_summary(self) -> str:
        """Say what a run would train on now (the summary line); returns the text."""
        parts = []
        try:
            if self.uses_layers:
                parts.append(describe(self.inputs(), self.phase_set()))
        except MetalsegError as exc:
            parts.append(str(exc))
        if self.uses_dataset:
            folder = self.dataset_edit.text().strip() or "(a dataset folder, chosen when you train)"
            parts.append(f"dataset {folder}: its 'train' images, validated on its 'val' images")
        text = " | ".join(parts)
        self.summary.setText(text)
        return text

    # -- phases and dataset ----------------------------------------------------------------------------
    def fill_phases(self) -> None:
        """Pre-fill the phase names (never overwriting what the user typed)."""
        if self.phases_edit.text().strip():
            return
        names = None
        labels = self.selected_labels()
        found = phases_of_layer(labels)
        if found is not None:
            names = found.names
        if names is None and self.session.phases is not None:
            names = self.session.phases.names
        if names is None and self.session.dataset_dir is not None:
            path = Path(self.session.dataset_dir) / "phases.json"
            if path.is_file():
                try:
                    names = PhaseSet.load(path).names
                except MetalsegError:
                    names = None
        if names is None:
            for layer in self.viewer.layers:
                if role_of(layer) is not None and phases_of_layer(layer) is not None:
                    names = phases_of_layer(layer).names
                    break
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
        candidates = [self.session.phases, phases_of_layer(self.selected_labels())]
        candidates += [phases_of_layer(layer) for layer in self.viewer.layers if role_of(layer) is not None]
        for known in candidates:
            if known is not None and known.names == names:
                return known
        return PhaseSet.from_names(names)

    def _dataset_edited(self) -> None:
        text = self.dataset_edit.text().strip()
        self.session.dataset_dir = Path(text).expanduser() if text else None
        self.fill_phases()
        self.schedule_summary()

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

    def current_image(self, inputs: list[TrainingInput]) -> Image | None:
        """The micrograph to predict after training: the active layer's, else the first trained on, else the first."""
        active = self.viewer.layers.selection.active
        if is_2d_image(active):
            return active
        if inputs:
            return inputs[0].image
        images = micrographs(self.viewer)
        return images[0] if images else None
