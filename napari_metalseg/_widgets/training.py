"""The Training dock widget: train (or LoRA-adapt) a model on the open annotations or a dataset folder, in a
background worker, with a live loss / Dice plot, a Stop button and an "Add to training set" button.

Which layers are training data (the *pairing rule*, see :func:`find_labels_layer`):

* The **Image** combo picks one image layer, or "all images with labels".
* For one image, the **Labels** combo picks its annotation layer; it is pre-selected by the rule below.
* For "all images with labels", every 2-D image layer is paired by the rule below; images without a match are left
  out.
* The rule, among the Labels layers of the image's height and width: the one named ``"<image> labels"``, else
  ``"<image> annotations"``, else ``"<image> mask"`` (a dataset opened with the plugin's reader), else
  ``"<image> phases"``, else one whose ``metadata["metalseg_image"]`` names the image (a phase map the plugin made
  for it, e.g. a corrected prediction); when only one image is open, also one named ``"labels"``, ``"annotations"``
  or ``"phases"``, or the only Labels layer of that size.

Labels are partial annotations: label 0 is unlabeled (ignored by the loss), label ``k + 1`` is phase ``k``
(:func:`~napari_metalseg.phases.labels_to_mask`).

Nothing drawn is lost: before every training run (and again when a run fails) every Labels layer used as training
data is written to ``<run folder>/autosave/<layer name>.png`` (dataset mask format, atomically, with the
``phases.json`` beside it).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_metalseg.errors import MetalsegError
from napari_metalseg.models import FINETUNE_MODES, TRAINING_GUIDANCE
from napari_metalseg.models.registry import (
    DEFAULT_BUDGET_S,
    DEFAULT_IMG_SIZE,
    DEFAULT_MODEL,
    MODEL_KINDS,
    MODEL_LABELS,
    TRAIN_DEFAULTS,
    family_of,
)
from napari_metalseg.phases import UNLABELED, PhaseSet, labels_to_mask
from napari_metalseg.progress import ProgressEvent

from .base import browse_row
from .layers import (
    IMAGE_KEY,
    PHASE_LAYER,
    image_of_layer,
    image_transform,
    is_micrograph_layer,
    phases_of_layer,
    report_error,
    session_of,
    show_phase_map,
)
from .plots import LivePlot
from .preview import PREVIEW_KEY, PREVIEW_SUFFIX, LivePreviewController

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from napari.layers import Image, Labels

    from napari_metalseg.data.samples import Sample
    from napari_metalseg.predict import PhaseMap
    from napari_metalseg.training import TrainConfig

log = logging.getLogger(__name__)

ALL_IMAGES = "all images with labels"
SOURCES = ("open layers", "dataset folder", "open layers + dataset folder")
LABEL_SUFFIXES = (" labels", " annotations", " mask", " phases")
GENERIC_LABEL_NAMES = ("labels", "annotations", "phases")
THREADS_ENV = "METALSEG_TRAIN_THREADS"
"""Environment variable: torch CPU threads of a training run started from napari (default: CPU cores - 1)."""
RUNS_ENV = "METALSEG_RUNS_DIR"
"""Environment variable overriding the default parent of new run folders (``~/metalseg-runs``)."""
AUTOSAVE = "autosave"


# ----------------------------------------------------------------------------------------------------
# pairing images with their annotations
# ----------------------------------------------------------------------------------------------------


def image_hw(layer: Any) -> tuple[int, int]:
    """Height and width of an image layer (RGB images: the first two axes)."""
    shape = tuple(np.shape(layer.data))
    if getattr(layer, "rgb", False):
        return int(shape[0]), int(shape[1])
    return int(shape[-2]), int(shape[-1])


def _is_2d_image(layer: Any) -> bool:
    """A 2-D micrograph layer (not an image the plugin computed, such as probabilities or feature maps)."""
    if layer is None or not is_micrograph_layer(layer) or getattr(layer, "multiscale", False):
        return False
    return np.ndim(layer.data) - (1 if layer.rgb else 0) == 2


def find_labels_layer(viewer: napari.Viewer, image: Image) -> Labels | None:
    """The Labels layer holding the annotations of ``image``, by the pairing rule of this module (None: none)."""
    from napari.layers import Labels

    hw = image_hw(image)
    labels = [
        lay
        for lay in viewer.layers
        if isinstance(lay, Labels)
        and np.ndim(lay.data) == 2
        and tuple(np.shape(lay.data)) == hw
        and not is_preview_layer(lay)
    ]
    by_name = {lay.name: lay for lay in labels}
    for suffix in LABEL_SUFFIXES:
        if image.name + suffix in by_name:
            return by_name[image.name + suffix]
    linked = [lay for lay in labels if (lay.metadata or {}).get(IMAGE_KEY) == image.name]
    if linked:  # e.g. the prediction of this image, corrected
        return linked[-1]
    images = [lay for lay in viewer.layers if _is_2d_image(lay)]
    if len(images) == 1:
        for name in GENERIC_LABEL_NAMES:
            if name in by_name:
                return by_name[name]
        if len(labels) == 1:
            return labels[0]
    return None


def is_preview_layer(layer: Any) -> bool:
    """A live-preview layer (never training data)."""
    return bool((getattr(layer, "metadata", None) or {}).get(PREVIEW_KEY))


def training_pairs(viewer: napari.Viewer) -> list[tuple[Image, Labels]]:
    """Every (image, labels) pair of the viewer by the pairing rule."""
    pairs = []
    for layer in viewer.layers:
        if _is_2d_image(layer):
            labels = find_labels_layer(viewer, layer)
            if labels is not None:
                pairs.append((layer, labels))
    return pairs


def safe_name(name: str) -> str:
    """A layer name turned into a plain file name (no folders, no leading dot)."""
    cleaned = re.sub(r"[^\w.\- ()+=,]+", "_", name).strip().lstrip(".")
    return cleaned or "layer"


def _labels_array(layer: Any) -> np.ndarray:
    labels = np.array(layer.data)  # a copy: the user may paint while training reads it
    if labels.ndim != 2:
        raise MetalsegError(f"labels layer {layer.name!r} is {labels.ndim}-D; training needs 2-D labels")
    return labels


def _mask_of(layer: Any, phases: PhaseSet) -> np.ndarray:
    """The dataset mask of a Labels layer; refuses label values that are not phases."""
    labels = _labels_array(layer)
    top = int(labels.max(initial=0))
    if top > len(phases):
        raise MetalsegError(
            f"labels layer {layer.name!r} uses label {top}, but only {len(phases)} phases are named "
            f"({', '.join(phases.names)}; label k is phase k): name more phases or erase those labels"
        )
    return labels_to_mask(labels, len(phases))


def autosave_labels(layers: list[Any], folder: str | Path, phases: PhaseSet | None = None) -> list[Path]:
    """Write every Labels layer to ``folder/autosave/<layer name>.png`` (dataset mask format), atomically.

    Every label value the user drew is kept (label ``v`` is written as ``v - 1``, 0 as 255), even values beyond the
    named phases. ``phases.json`` is written beside the masks when ``phases`` is given.

    Returns
    -------
    list of Path
        The mask files written.
    """
    from napari_metalseg.data.dataset import write_mask

    target = Path(folder) / AUTOSAVE
    written = []
    for layer in layers:
        labels = np.asarray(layer.data)
        if labels.ndim != 2:
            continue
        path = target / f"{safe_name(layer.name)}.png"
        write_mask(path, labels_to_mask(labels))
        written.append(path)
    if phases is not None and written:
        phases.save(target / "phases.json")
    return written


def layer_calibration(layer: Any) -> tuple[float | None, float | None]:
    """(magnification, pixel size in um) of an image layer; see :func:`.quantify.layer_calibration`."""
    from .quantify import layer_calibration as _calibration

    return _calibration(layer)


# ----------------------------------------------------------------------------------------------------
# the worker
# ----------------------------------------------------------------------------------------------------


def training_threads() -> int:
    """CPU threads for torch while training from napari: :data:`THREADS_ENV`, else the usable cores minus one.

    One core stays free for the GUI thread: with every core busy, torch's OpenMP workers spin-wait on one another
    whenever the GUI thread runs, and a training step on 2 cores took 10-20x longer than with 1 thread.
    """
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            log.warning("%s=%r is not a whole number; ignored", THREADS_ENV, env)
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


@dataclass
class TrainingResult:
    """What the worker hands back to the GUI thread when a run ends (done or stopped)."""

    run_dir: Path
    model: Any
    phases: PhaseSet
    device: str
    last: ProgressEvent
    phase_map: PhaseMap | None
    metrics: dict | None = None


def training_job(
    samples: list[Sample],
    phases: PhaseSet,
    out: Path,
    config: TrainConfig,
    val_samples: list[Sample] | None,
    stop: Any,
    resume: bool = False,
    image: np.ndarray | None = None,
):
    """Generator run in the worker thread: yields training events, then loads the run and predicts ``image``.

    Returns
    -------
    TrainingResult or None
        None when training produced no final event (nothing to load).
    """
    import torch

    from napari_metalseg.training import train

    last = None
    previous = torch.get_num_threads()
    torch.set_num_threads(min(previous, training_threads()))
    try:
        for event in train(samples, phases, out, config, val_samples=val_samples, stop=stop, resume=resume):
            last = event
            yield event
    finally:
        torch.set_num_threads(previous)
    if last is None or last.kind not in ("done", "stopped"):
        return None
    from napari_metalseg.predict import Predictor, resolve_device
    from napari_metalseg.runs import load_run

    yield ProgressEvent("info", last.step, last.total, message="loading the trained model")
    device = resolve_device(config.device)
    model, run_config = load_run(out, device=device)
    run_phases = run_config["model"].phase_set
    phase_map = None
    if image is not None:
        yield ProgressEvent("info", last.step, last.total, message="predicting the current image")
        phase_map = Predictor(model, run_phases, device=device).predict(image)
    return TrainingResult(Path(out), model, run_phases, device, last, phase_map, run_config.get("metrics") or {})


# ----------------------------------------------------------------------------------------------------
# the widget
# ----------------------------------------------------------------------------------------------------


def _while_alive(method: Callable) -> Callable:
    """A slot that does nothing once its Qt widget is deleted (a run can outlive a closed viewer)."""

    @functools.wraps(method)
    def slot(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except RuntimeError as exc:
            if "deleted" in str(exc):
                return None
            raise

    return slot


class TrainingWidget(QWidget):
    """Train a phase-segmentation model from napari annotations or a dataset folder, and grow the training set.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (injected by napari).

    Attributes
    ----------
    plot : LivePlot
        The live loss / validation-Dice curve.
    events : list of ProgressEvent
        The events of the current (or last) run.
    last_run : Path or None
        Run folder of the last run started.
    autosaved_to : Path or None
        Folder of the last autosave of the training annotations.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_of(napari_viewer)
        self._worker = None
        self._pbar = None
        self._stop_requested = False
        self._autosave_layers: list[Any] = []
        self._autosave_dir: Path | None = None
        self._autosave_phases: PhaseSet | None = None
        self._protected: set[str] = set()
        self._predict_layer: Any = None
        self.events: list[ProgressEvent] = []
        self.last_run: Path | None = None
        self.last_error: BaseException | None = None
        self.autosaved_to: Path | None = None
        self._compare_strokes: str | None = None
        self.preview = LivePreviewController(self.viewer, self.phase_set, lambda text: self.status.setText(text))
        self._build()
        self._connect_viewer()
        self._refresh_layers()
        self._fill_phases()

    # -- layout ----------------------------------------------------------------------------------------
    def _build(self) -> None:
        layout = QVBoxLayout(self)

        data = QGroupBox("Training data")
        form = QFormLayout(data)
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
        layout.addWidget(data)

        hyper = QGroupBox("Model and hyper-parameters")
        form = QFormLayout(hyper)
        self.model_combo = QComboBox()
        for kind in MODEL_KINDS:
            self.model_combo.addItem(kind)
            self.model_combo.setItemData(self.model_combo.count() - 1, MODEL_LABELS[kind], Qt.ToolTipRole)
        self.model_combo.setToolTip(
            "elunet (the CPU default) / unet3plus: the study's CNNs; classical: features + "
            "boosted trees (seconds); tiny: compact SAM; vit_*: SAM from a checkpoint"
        )
        form.addRow("model", self.model_combo)
        self.checkpoint_edit = QLineEdit()
        self.checkpoint_edit.setPlaceholderText("none: train from scratch")
        form.addRow("checkpoint", browse_row(self.checkpoint_edit, self._browse_checkpoint))
        self.img_size = QSpinBox()
        self.img_size.setRange(64, 2048)
        self.img_size.setSingleStep(16)
        self.img_size.setValue(256)
        form.addRow("img size", self.img_size)
        self.finetune_combo = QComboBox()
        self.finetune_combo.addItems(["auto", *FINETUNE_MODES])
        self.finetune_combo.setToolTip("auto: LoRA with a checkpoint, full training without one")
        form.addRow("fine-tune", self.finetune_combo)
        self.lora_rank = QSpinBox()
        self.lora_rank.setRange(1, 256)
        self.lora_rank.setValue(8)
        form.addRow("LoRA rank", self.lora_rank)
        self.guidance_combo = QComboBox()
        self.guidance_combo.addItems(TRAINING_GUIDANCE)
        form.addRow("guidance", self.guidance_combo)
        self.budget = QSpinBox()
        self.budget.setRange(0, 7 * 24 * 3600)
        self.budget.setSingleStep(30)
        self.budget.setValue(int(DEFAULT_BUDGET_S))
        self.budget.setSuffix(" s")
        self.budget.setSpecialValueText("no limit (steps)")
        self.budget.setToolTip(
            "Train for this long (wall clock); the learning-rate schedule follows the clock. "
            "0: train for the number of steps instead."
        )
        form.addRow("time budget", self.budget)
        self.steps = QSpinBox()
        self.steps.setRange(0, 10_000_000)
        self.steps.setValue(0)
        self.steps.setSpecialValueText("until the budget")
        self.steps.setToolTip("Optimizer steps; 0 = as many as the time budget allows.")
        form.addRow("steps", self.steps)
        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 256)
        self.batch_size.setValue(4)
        form.addRow("batch size", self.batch_size)
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(6)
        self.lr.setRange(1e-6, 1.0)
        self.lr.setSingleStep(1e-4)
        self.lr.setValue(1e-3)
        form.addRow("learning rate", self.lr)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda"])
        form.addRow("device", self.device_combo)
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("new folder in ~/metalseg-runs (or next to the dataset)")
        form.addRow("run folder", browse_row(self.out_edit, self._browse_out))
        self.resume_check = QCheckBox("resume the run in this folder")
        form.addRow("", self.resume_check)
        layout.addWidget(hyper)

        row = QHBoxLayout()
        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(self.start_training)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.setToolTip("Stop after the current step; the model so far is saved and loaded.")
        self.stop_button.clicked.connect(self.request_stop)
        row.addWidget(self.train_button)
        row.addWidget(self.stop_button)
        layout.addLayout(row)
        self.status = QLabel("ready")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        layout.addWidget(self.status)
        self.plot = LivePlot()
        layout.addWidget(self.plot)
        self.preview_check = QCheckBox("live preview while painting (classical pixel classifier)")
        self.preview_check.setChecked(True)
        self.preview_check.setToolTip(
            "After each stroke, refit the classical pixel classifier on the strokes so far "
            "and show '<image> preview' and '<image> uncertainty' (where to paint next)."
        )
        layout.addWidget(self.preview_check)
        self.add_button = QPushButton("Add to training set")
        self.add_button.setToolTip(
            "Save the image(s) and their (corrected) labels into the dataset folder "
            "(split 'train'); train on the dataset folder to use them."
        )
        self.add_button.clicked.connect(self._add_clicked)
        layout.addWidget(self.add_button)
        layout.addStretch(1)

        self.model_combo.currentTextChanged.connect(self._model_changed)
        self.model_combo.setCurrentText(DEFAULT_MODEL)
        self._model_changed(DEFAULT_MODEL)
        self.image_combo.currentIndexChanged.connect(self._image_changed)
        self.labels_combo.currentIndexChanged.connect(lambda _: (self._fill_phases(), self._watch_preview()))
        self.preview_check.toggled.connect(self.preview.set_enabled)
        self.source.currentIndexChanged.connect(self._source_changed)
        self.dataset_edit.editingFinished.connect(self._dataset_edited)
        if self.session.dataset_dir is not None:
            self.dataset_edit.setText(str(self.session.dataset_dir))
        self._source_changed()

    def _connect_viewer(self) -> None:
        events = self.viewer.layers.events
        for name in ("inserted", "removed", "moved", "reordered"):
            emitter = getattr(events, name, None)
            if emitter is not None:
                emitter.connect(self._on_layers_changed)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._refresh_layers)
        self.session.model_changed.connect(self._on_model_changed)

    def _on_layers_changed(self, event: Any = None) -> None:
        layer = getattr(event, "value", None)
        if event is not None and getattr(event, "type", "") == "inserted" and layer is not None:
            layer.events.name.connect(self._refresh_layers)
        self._refresh_layers()

    @_while_alive
    def _on_model_changed(self) -> None:
        if not self.phases_edit.text().strip() and self.session.phases is not None:
            self.phases_edit.setText(", ".join(self.session.phases.names))

    # -- layer combos ----------------------------------------------------------------------------------
    @_while_alive
    def _refresh_layers(self, event: Any = None) -> None:
        from napari.layers import Labels

        current = self.image_combo.currentText()
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItem(ALL_IMAGES)
        names = [lay.name for lay in self.viewer.layers if _is_2d_image(lay)]
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
        image = self._selected_image()
        self.labels_combo.setEnabled(image is not None and self.source.currentIndex() != 1)
        if image is not None and not keep_labels:
            match = find_labels_layer(self.viewer, image)
            if match is not None:
                self.labels_combo.setCurrentText(match.name)
        self._fill_phases()
        self._watch_preview()

    def _watch_preview(self) -> None:
        """Point the live preview at the selected image and its annotation layer."""
        from napari.layers import Labels

        image = self._selected_image()
        name = self.labels_combo.currentText()
        labels = self.viewer.layers[name] if name and name in self.viewer.layers else None
        ok = (
            image is not None
            and isinstance(labels, Labels)
            and np.ndim(labels.data) == 2
            and tuple(np.shape(labels.data)) == image_hw(image)
        )
        self.preview.watch(image if ok else None, labels if ok else None)

    def _selected_image(self) -> Image | None:
        name = self.image_combo.currentText()
        if not name or name == ALL_IMAGES or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]

    def select_pair(self, image: str, labels: str | None = None) -> None:
        """Choose the training image layer (or :data:`ALL_IMAGES`) and, optionally, its Labels layer by name."""
        self.image_combo.setCurrentText(image)
        if labels is not None:
            self.labels_combo.setCurrentText(labels)

    def pairs(self) -> list[tuple[Image, Labels]]:
        """The (image, labels) layer pairs used as training data (see the module's pairing rule)."""
        from napari.layers import Labels

        image = self._selected_image()
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

    # -- phases and dataset ----------------------------------------------------------------------------
    def _fill_phases(self) -> None:
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
        """The phases typed in the widget (label k = k-th name), with the colours of a known phase set if equal."""
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

    def _source_changed(self, *_: Any) -> None:
        uses_layers = self.source.currentIndex() != 1
        self.image_combo.setEnabled(uses_layers)
        self.labels_combo.setEnabled(uses_layers and self._selected_image() is not None)

    def _dataset_edited(self) -> None:
        text = self.dataset_edit.text().strip()
        self.session.dataset_dir = Path(text).expanduser() if text else None
        self._fill_phases()

    def _browse_dataset(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Dataset folder (images/, masks/, phases.json)", self.dataset_edit.text() or str(Path.home())
        )
        if folder:
            self.dataset_edit.setText(folder)
            self._dataset_edited()

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "SAM checkpoint", str(Path.home()), "Checkpoints (*.pth *.pt *.safetensors);;All files (*)"
        )
        if path:
            self.checkpoint_edit.setText(path)

    def _browse_out(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Run folder", str(Path.home()))
        if folder:
            self.out_edit.setText(folder)

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

    def _model_changed(self, kind: str) -> None:
        family = family_of(kind)
        self.img_size.setValue(DEFAULT_IMG_SIZE[kind])
        sam = family.name == "sam"
        for widget in (self.checkpoint_edit, self.finetune_combo, self.lora_rank):
            widget.setEnabled(sam)
        for widget in (self.steps, self.batch_size, self.lr, self.budget):
            widget.setEnabled(family.gradient)
        self.batch_size.setValue(TRAIN_DEFAULTS[family.name]["batch_size"])
        self.lr.setValue(TRAIN_DEFAULTS[family.name]["lr"])
        current = self.guidance_combo.currentText()
        allowed = [
            g
            for g in TRAINING_GUIDANCE
            if ("box" not in g or family.boxes) and g.split("+")[0] in (*family.guidance, "box")
        ]
        self.guidance_combo.blockSignals(True)
        self.guidance_combo.clear()
        self.guidance_combo.addItems(allowed)
        self.guidance_combo.setCurrentText(current if current in allowed else "none")
        self.guidance_combo.blockSignals(False)

    # -- configuration ---------------------------------------------------------------------------------
    def config(self) -> TrainConfig:
        """The :class:`~napari_metalseg.training.TrainConfig` of the fields (validated)."""
        from napari_metalseg.training import TrainConfig

        kind = self.model_combo.currentText()
        sam = family_of(kind).name == "sam"
        finetune = self.finetune_combo.currentText() if sam else "auto"
        steps, budget = self.steps.value() or None, float(self.budget.value()) or None
        if steps is None and budget is None:
            raise MetalsegError("set a time budget or a number of steps")
        return TrainConfig(
            model=kind,
            checkpoint=(self.checkpoint_edit.text().strip() or None) if sam else None,
            img_size=self.img_size.value(),
            finetune=None if finetune == "auto" else finetune,
            lora_rank=self.lora_rank.value(),
            guidance=self.guidance_combo.currentText(),
            steps=steps,
            budget_s=budget,
            batch_size=self.batch_size.value(),
            lr=self.lr.value(),
            device=self.device_combo.currentText(),
        )

    def _new_run_dir(self, dataset: Path | None) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        if dataset is not None:
            parent, name = dataset.parent / "metalseg-runs", f"{dataset.name}-{stamp}"
        else:
            parent, name = Path(os.environ.get(RUNS_ENV) or Path.home() / "metalseg-runs").expanduser(), stamp
        out = parent / name
        n = 2
        while out.exists():
            out, n = parent / f"{name}-{n}", n + 1
        return out

    def _run_dir(self, dataset: Path | None) -> Path:
        text = self.out_edit.text().strip()
        if not text:
            return self._new_run_dir(dataset)
        out = Path(text).expanduser()
        if (out / "config.json").is_file() and not self.resume_check.isChecked():
            raise MetalsegError(
                f"{out} already holds a trained run: tick 'resume' to continue it, or clear the run "
                "folder field to start a new one"
            )
        return out

    def _samples(self, phases: PhaseSet, pairs: list[tuple[Image, Labels]]) -> list[Sample]:
        from napari_metalseg.data.samples import Sample

        samples = []
        for image_layer, labels_layer in pairs:
            image = np.array(image_of_layer(image_layer), dtype=np.float32)
            mask = _mask_of(labels_layer, phases)
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

    @staticmethod
    def _dataset_samples(root: Path, phases: PhaseSet | None) -> tuple[list[Sample], list[Sample], PhaseSet]:
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

    def _current_image(self, pairs: list[tuple[Image, Labels]]) -> Image | None:
        active = self.viewer.layers.selection.active
        if _is_2d_image(active):
            return active
        if pairs:
            return pairs[0][0]
        images = [lay for lay in self.viewer.layers if _is_2d_image(lay)]
        return images[0] if images else None

    # -- training --------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._worker is not None

    def start_training(self) -> None:
        """Start a run in a background worker (errors are shown as notifications; nothing is lost)."""
        from napari.utils.notifications import show_error

        if self._worker is not None:
            return
        try:
            self._start()
        except Exception as exc:  # noqa: BLE001 - shown to the user, never a traceback dialog for bad input
            self.last_error = exc
            self.status.setText(f"error: {exc}")
            if isinstance(exc, (MetalsegError, OSError)):
                show_error(str(exc))
            else:
                report_error(exc)

    def _start(self) -> None:
        from napari.qt.threading import create_worker
        from napari.utils import progress

        source = self.source.currentIndex()
        use_layers, use_dataset = source in (0, 2), source in (1, 2)
        pairs = self.pairs() if use_layers else []
        dataset = self.dataset_dir(ask=True) if use_dataset else None
        if use_dataset and dataset is None:
            raise MetalsegError("choose the dataset folder to train on")
        phases = self.phase_set() if use_layers else None
        config = self.config()
        out = self._run_dir(dataset)
        # nothing drawn is lost: the annotations go to disk before anything can fail
        self._autosave_layers = [labels for _, labels in pairs]
        self._autosave_dir = out
        self._autosave_phases = phases
        if self._autosave_layers:
            self._autosave()
        samples, val_samples = [], []
        if use_layers:
            samples = self._samples(phases, pairs)
        if use_dataset:
            train, val_samples, dataset_phases = self._dataset_samples(dataset, phases)
            samples += train
            phases = dataset_phases if phases is None else phases
            if not self.phases_edit.text().strip():
                self.phases_edit.setText(", ".join(phases.names))
        if not samples:
            raise MetalsegError("no labelled images to train on")
        current = self._current_image(pairs)
        image = None
        if current is not None:
            image = np.array(image_of_layer(current), dtype=np.float32)
        self._protected = {labels.name for _, labels in pairs}
        self._predict_layer = current
        self._stop_requested = False
        self.events = []
        self.last_error = None
        self.last_run = out
        from napari_metalseg.predict import image_key
        from napari_metalseg.training import UNTIL_BUDGET

        # the live preview and this run can be compared only on the same held-out squares: one micrograph, the same
        # strokes, the trainer's default held-out split, no validation images
        same_split = len(samples) == 1 and not val_samples and config.seed == 0 and config.holdout == 0.1
        self._compare_strokes = image_key(samples[0].mask) if same_split else None
        total = config.total_steps(samples)
        total = 0 if total == UNTIL_BUDGET else total  # a time budget: the number of steps is learnt on the way
        self.plot.reset(total, title=f"{config.model} · {out.name}")
        self._pbar = progress(total=total, desc="MetalSeg training")
        self.status.setText(f"training on {len(samples)} image(s) → {out}")
        worker = create_worker(
            training_job,
            samples,
            phases,
            out,
            config,
            val_samples or None,
            lambda: self._stop_requested,
            self.resume_check.isChecked(),
            image,
            _start_thread=False,
            _ignore_errors=True,
        )
        worker.yielded.connect(self._on_event)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.train_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        worker.start()

    def request_stop(self) -> None:
        """Cooperative stop: the trainer saves at the next step and the partial model is loaded."""
        if self._worker is None:
            return
        self._stop_requested = True
        self.stop_button.setEnabled(False)
        self.status.setText("stopping after the current step …")

    def _autosave(self) -> Path | None:
        """Write the training Labels layers to ``<run folder>/autosave`` (else ``~/metalseg-runs/autosave``)."""
        if not self._autosave_layers or self._autosave_dir is None:
            return None
        try:
            autosave_labels(self._autosave_layers, self._autosave_dir, self._autosave_phases)
            self.autosaved_to = self._autosave_dir / AUTOSAVE
        except (OSError, MetalsegError) as exc:
            fallback = Path(os.environ.get(RUNS_ENV) or Path.home() / "metalseg-runs").expanduser()
            log.warning("autosave into %s failed (%s); saving into %s", self._autosave_dir, exc, fallback)
            autosave_labels(self._autosave_layers, fallback, self._autosave_phases)
            self.autosaved_to = fallback / AUTOSAVE
        return self.autosaved_to

    @_while_alive
    def _on_event(self, event: ProgressEvent) -> None:
        self.events.append(event)
        if event.kind == "train" and event.loss is not None:
            self.plot.add_loss(event.step, event.loss)
            self.status.setText(f"step {event.step}/{event.total} · loss {event.loss:.4f}")
        elif event.kind == "validate":
            dice = event.metrics.get("mean_dice")
            if dice is not None and math.isfinite(dice):
                self.plot.add_dice(event.step, dice)
            self.status.setText(f"step {event.step}/{event.total} · {event.message}")
        elif event.message:
            self.status.setText(event.message)
        if self._pbar is not None and event.total:
            if self._pbar.total != event.total:
                self._pbar.total = event.total
            delta = event.step - self._pbar.n
            if delta > 0:
                self._pbar.update(delta)

    @_while_alive
    def _on_returned(self, result: TrainingResult | None) -> None:
        from napari.utils.notifications import show_info

        if result is None:
            return
        self.session.set_model(result.model, result.phases, result.run_dir, result.device)
        layer = self._predict_layer
        if result.phase_map is not None and layer is not None and layer in self.viewer.layers:
            name = PHASE_LAYER
            if name in self._protected:  # never overwrite annotations that were training data
                name = f"{PHASE_LAYER} ({result.run_dir.name})"
            show_phase_map(
                self.viewer,
                result.phase_map,
                result.phases,
                name=name,
                **image_transform(layer),
                metadata={IMAGE_KEY: layer.name},
            )
        what = "stopped" if result.last.kind == "stopped" else "finished"
        dice = result.last.metrics.get("mean_dice") if result.last.metrics else None
        score = f", mean Dice {dice:.1f} %" if isinstance(dice, float) and math.isfinite(dice) else ""
        message = f"training {what} at step {result.last.step}{score}; model loaded from {result.run_dir}"
        message += self._compare_with_preview(result, layer)
        self.plot.set_title(f"{what}: {result.run_dir.name}")
        self.status.setText(message)
        show_info(message)

    def _compare_with_preview(self, result: TrainingResult, image: Any) -> str:
        """The trained model replaces the live preview of ``image`` when it scores at least as well on the same
        held-out strokes; else the preview stays in front. Without a like-for-like comparison (several micrographs,
        validation images, strokes changed since the preview) nothing is compared or hidden."""
        preview = self.preview.last
        name = f"{getattr(image, 'name', '')}{PREVIEW_SUFFIX}"
        if preview is None or image is None or name not in self.viewer.layers:
            return ""
        metrics = result.metrics or {}
        best = metrics.get("mean_dice")
        comparable = (
            self._compare_strokes is not None
            and preview.strokes == self._compare_strokes
            and metrics.get("source") == "held-out pixels"
            and preview.score is not None
        )
        if not comparable or not isinstance(best, float) or not math.isfinite(best):
            return "; not compared with the live preview (other strokes or other validation data)"
        if best >= preview.score:
            self.viewer.layers[name].visible = False
            return f"; it replaces the live preview ({best:.1f} % vs {preview.score:.1f} % on held-out strokes)"
        return (
            f"; the live preview is still better on held-out strokes ({preview.score:.1f} % vs {best:.1f} %): "
            "paint more or train longer"
        )

    @_while_alive
    def _on_error(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error, show_info

        self.last_error = exc
        try:
            folder = self._autosave()  # the user may have kept painting during the run
        except (OSError, MetalsegError) as save_exc:
            folder = None
            show_error(f"could not autosave the annotations: {save_exc}")
        saved = f" (annotations saved in {folder})" if folder is not None else ""
        if isinstance(exc, MetalsegError):
            message = str(exc)
            show_error(message + saved)
        else:
            message = f"training failed: {type(exc).__name__}: {exc}"
            report_error(exc)
            if saved:
                show_info(saved.strip(" ()"))
        self.status.setText(f"error: {message}{saved}")

    @_while_alive
    def _on_finished(self) -> None:
        self._worker = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self.plot.flush()
        self.train_button.setEnabled(True)
        self.stop_button.setEnabled(False)

    # -- growing the training set ----------------------------------------------------------------------
    def _add_clicked(self) -> None:
        from napari.utils.notifications import show_error, show_info

        try:
            names = self.add_to_training_set()
        except MetalsegError as exc:
            self.status.setText(f"error: {exc}")
            show_error(str(exc))
            return
        if names:
            message = f"added {', '.join(names)} to {self.session.dataset_dir}"
            self.status.setText(message)
            show_info(message)

    def add_to_training_set(self) -> list[str]:
        """Save the image(s) and their labels into the dataset folder (split ``train``); returns the names written.

        Partial labels are fine (0 = unlabeled). An image already in the dataset under the same name keeps its
        file and gets the new mask; other images of the dataset are untouched.
        """
        from napari_metalseg.data.dataset import new_dataset, read_metadata, update_metadata, write_item

        pairs = self.pairs()
        root = self.dataset_dir(ask=True)
        if root is None:
            return []
        phases = self.phase_set()
        new_dataset(root, phases)
        meta = read_metadata(root)
        written = []
        for image_layer, labels_layer in pairs:
            name = safe_name(image_layer.name)
            mask = _mask_of(labels_layer, phases)
            if not (mask != UNLABELED).any():
                from napari.utils.notifications import show_warning

                show_warning(f"{labels_layer.name!r} has no labels yet; {image_layer.name!r} not added")
                continue
            existing = _existing_image(root, name)
            if existing is not None:
                from napari_metalseg.io import read_micrograph

                shape = read_micrograph(existing).shape
                if shape != mask.shape:
                    raise MetalsegError(
                        f"{existing}: the dataset already has a different image named {name!r} "
                        f"({shape[1]}x{shape[0]}); rename the image layer"
                    )
                write_item(root, name, None, mask)
            else:
                data, suffix = _image_for_dataset(image_layer)
                write_item(root, name, data, mask, image_suffix=suffix)
            magnification, pixel_size = layer_calibration(image_layer)
            split = meta.get(name, {}).get("split") or "train"
            update_metadata(root, name, magnification=magnification, pixel_size_um=pixel_size, split=split)
            written.append(name)
        return written


def _existing_image(root: Path, name: str) -> Path | None:
    folder = Path(root) / "images"
    if not folder.is_dir():
        return None
    for path in folder.iterdir():
        if path.stem == name and path.suffix.lower() in (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp"):
            return path
    return None


def _image_for_dataset(layer: Any) -> tuple[np.ndarray, str]:
    """The pixels to store: 8/16-bit grayscale data as they are, anything else as the plugin's 0..1 float image."""
    data = np.asarray(layer.data)
    if data.ndim == 2 and data.dtype == np.uint8:
        return data, ".png"
    if data.ndim == 2 and data.dtype == np.uint16:
        return data, ".tif"
    return np.asarray(image_of_layer(layer), dtype=np.float32), ".png"
