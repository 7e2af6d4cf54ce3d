"""The Training dock widget: train (or LoRA-adapt) a model on the open annotations or a dataset folder, in a
background job, with a live loss / Dice plot, a Stop button and an "Add to training set" button.

Which layers are training data: the "Training data" group (:mod:`.training_data`): each micrograph's
``<image> annotations`` layer and the corrections in its ``<image> phases`` layer (:mod:`.roles`), stated before a run
starts; the model and hyper-parameters: :mod:`.training_form`; the job: :mod:`.training_job`; what is
shown when a run ends: :mod:`.training_result`; writing the training set: :mod:`napari_metalseg.data.training_set`.

Labels are partial annotations: label 0 is unlabeled (ignored by the loss), label ``k + 1`` is phase ``k``
(:func:`~napari_metalseg.phases.labels_to_mask`).

Nothing drawn is lost: before every training run (and again when a run fails) every Labels layer used as training
data is written to ``<run folder>/autosave/<layer name>.png`` (dataset mask format, atomically, with the
``phases.json`` beside it).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from napari_metalseg.data.training_set import AUTOSAVE, TrainingItem, autosave_labels, safe_name, training_mask
from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import PhaseSet
from napari_metalseg.progress import ProgressEvent

from .base import DockWidget, report_error
from .calibration import layer_calibration
from .layers import image_of_layer
from .plots import LivePlot
from .preview import LivePreviewController
from .roles import ANNOTATIONS, PHASES, find_layer, micrographs
from .training_data import (
    ALL_IMAGES,
    SOURCES,
    TrainingDataBox,
    dataset_samples,
    describe,
    layer_samples,
    nothing_to_train,
)
from .training_form import RUNS_ENV, HyperParameterBox, runs_parent
from .training_job import TrainingResult, training_job
from .training_result import compare_with_preview, result_message, show_trained_prediction

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from napari.layers import Image, Labels

__all__ = ["ALL_IMAGES", "RUNS_ENV", "SOURCES", "TrainingWidget"]

log = logging.getLogger(__name__)


class TrainingWidget(DockWidget):
    """Train a phase-segmentation model from napari annotations or a dataset folder, and grow the training set.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (injected by napari).

    Attributes
    ----------
    data : TrainingDataBox
        The training data fields (their widgets are also attributes of the dock: ``source``, ``image_combo``,
        ``dataset_edit``, ``phases_edit``).
    hyper : HyperParameterBox
        The model and hyper-parameter fields (also attributes of the dock: ``model_combo``, ``steps``, ...).
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
        super().__init__(napari_viewer)
        self._stop_requested = False
        self._autosave_layers: list[Any] = []
        self._autosave_dir: Path | None = None
        self._autosave_phases: PhaseSet | None = None
        self._predict_layer: Any = None
        self._compare_strokes: str | None = None
        self.events: list[ProgressEvent] = []
        self.last_run: Path | None = None
        self.autosaved_to: Path | None = None
        self.preview = LivePreviewController(self.viewer, self.phase_set, lambda text: self.status.setText(text))
        self._build()
        self.data.refresh_layers()
        self.data.fill_phases()

    # -- layout ----------------------------------------------------------------------------------------
    def _build(self) -> None:
        layout = QVBoxLayout(self)
        self.data = TrainingDataBox(self.viewer, self.session)
        self.hyper = HyperParameterBox(session=self.session)
        layout.addWidget(self.data)
        layout.addWidget(self.hyper)
        # the fields, as attributes of the dock (scripts and tests set them)
        data, hyper = self.data, self.hyper
        self.source, self.image_combo = data.source, data.image_combo
        self.dataset_edit, self.phases_edit = data.dataset_edit, data.phases_edit
        self.model_combo, self.checkpoint_edit, self.img_size = hyper.model_combo, hyper.checkpoint_edit, hyper.img_size
        self.finetune_combo, self.lora_rank, self.guidance_combo = (
            hyper.finetune_combo,
            hyper.lora_rank,
            hyper.guidance_combo,
        )
        self.budget, self.steps, self.batch_size, self.lr = hyper.budget, hyper.steps, hyper.batch_size, hyper.lr
        self.device_combo, self.out_edit, self.resume_check = hyper.device_combo, hyper.out_edit, hyper.resume_check
        self.pool_check = hyper.pool_check

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
        self.preview_check.toggled.connect(self.preview.set_enabled)
        self.data.pair_changed.connect(self._watch_preview)

    def _watch_preview(self) -> None:
        """Point the live preview at the selected micrograph and its annotations layer."""
        labels = self.data.selected_labels()
        self.preview.watch(self.data.selected_image() if labels is not None else None, labels)

    # -- the training data (see TrainingDataBox) ---------------------------------------------------------
    def select_image(self, image: str) -> None:
        """Choose the micrograph to train on by name (or :data:`ALL_IMAGES`)."""
        self.data.select_image(image)

    def pairs(self) -> list[tuple[Image, Labels]]:
        """(micrograph, annotations layer) of the chosen micrograph(s) (see :mod:`.roles`)."""
        return self.data.pairs()

    def phase_set(self) -> PhaseSet:
        """The phases typed in the widget (label k = k-th name)."""
        return self.data.phase_set()

    def dataset_dir(self, ask: bool = True) -> Path | None:
        """The dataset folder (the session's); asks for one when none is set and ``ask``."""
        return self.data.dataset_dir(ask)

    def config(self):
        """The :class:`~napari_metalseg.training.TrainConfig` of the fields (validated)."""
        return self.hyper.config()

    # -- training --------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while a run goes on."""
        return self.busy

    @property
    def _worker(self):
        """The worker of the running training job (:attr:`worker`)."""
        return self.worker

    def start_training(self) -> None:
        """Start a run in a background job (errors are shown as notifications; nothing is lost)."""
        from napari.utils.notifications import show_error

        if self.busy:
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
        from napari_metalseg.predict import image_key
        from napari_metalseg.training import UNTIL_BUDGET

        data = self.data
        use_layers, use_dataset = data.uses_layers, data.uses_dataset
        inputs = data.inputs() if use_layers else []
        if use_layers and not use_dataset and not inputs:
            raise MetalsegError(nothing_to_train(inputs))
        dataset = data.dataset_dir(ask=True) if use_dataset else None
        if use_dataset and dataset is None:
            raise MetalsegError("choose the dataset folder to train on")
        config = self.hyper.config()  # the session's model unless "start fresh" (then the fields')
        phases = self.hyper.run_phases(data.phase_set()) if use_layers else self.hyper.run_phases(None)
        out = self.hyper.run_dir(dataset)
        # nothing drawn is lost: the annotations go to disk before anything can fail
        self._autosave_layers = [item.annotations for item in inputs if item.annotations is not None]
        self._autosave_dir = out
        self._autosave_phases = phases
        if self._autosave_layers:
            self._autosave()
        samples, val_samples = [], []
        if use_layers:
            samples = layer_samples(inputs, phases)
            self.status.setText(describe(inputs, phases))
        if use_dataset:
            train, val_samples, dataset_phases = dataset_samples(dataset, phases)
            samples += train
            phases = dataset_phases if phases is None else phases
            if not self.phases_edit.text().strip():
                self.phases_edit.setText(", ".join(phases.names))
        if not samples:
            raise MetalsegError("no labelled images to train on")
        current = data.current_image(inputs)
        image = None if current is None else np.array(image_of_layer(current), dtype=np.float32)
        self._predict_layer = current
        self._stop_requested = False
        self.events = []
        self.last_error = None
        self.last_run = out
        # the live preview and this run can be compared only on the same held-out squares: one micrograph, the same
        # strokes, the trainer's default held-out split, no validation images
        same_split = len(samples) == 1 and not val_samples and config.seed == 0 and config.holdout == 0.1
        self._compare_strokes = image_key(samples[0].mask) if same_split else None
        total = config.total_steps(samples)
        total = 0 if total == UNTIL_BUDGET else total  # a time budget: the number of steps is learnt on the way
        self.plot.reset(total, title=f"{config.model} · {out.name}")
        used = data.update_summary() if use_layers else f"{len(samples)} dataset image(s)"
        self.status.setText(f"training → {out}; {used}")
        job = training_job(
            samples,
            phases,
            out,
            config,
            val_samples or None,
            lambda: self._stop_requested,
            self.resume_check.isChecked(),
            image,
            None if current is None else layer_calibration(current)[1],
        )
        self.train_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.start_job(
            job,
            "MetalSeg training",
            self._on_returned,
            on_error=self._on_error,
            on_finish=self._on_finished,
            on_event=self._on_event,
            total=total,
        )

    def request_stop(self) -> None:
        """Cooperative stop: the trainer saves at the next step and the partial model is loaded."""
        if not self.busy:
            return
        self._stop_requested = True
        self.stop_button.setEnabled(False)
        self.status.setText("stopping after the current step …")

    def _autosave(self) -> Path | None:
        """Write the training Labels layers to ``<run folder>/autosave`` (else ``~/metalseg-runs/autosave``)."""
        if not self._autosave_layers or self._autosave_dir is None:
            return None
        labels = [(layer.name, layer.data) for layer in self._autosave_layers]
        try:
            autosave_labels(labels, self._autosave_dir, self._autosave_phases)
            self.autosaved_to = self._autosave_dir / AUTOSAVE
        except (OSError, MetalsegError) as exc:
            fallback = runs_parent()
            log.warning("autosave into %s failed (%s); saving into %s", self._autosave_dir, exc, fallback)
            autosave_labels(labels, fallback, self._autosave_phases)
            self.autosaved_to = fallback / AUTOSAVE
        return self.autosaved_to

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

    def _on_returned(self, result: TrainingResult | None) -> None:
        from napari.utils.notifications import show_info

        if result is None:
            return
        self.session.set_model(result.model, result.phases, result.run_dir, result.device)
        layer = self._predict_layer
        show_trained_prediction(self.viewer, result, layer)
        message = result_message(result)
        message += compare_with_preview(self.viewer, result, layer, self.preview.last, self._compare_strokes)
        what = "stopped" if result.last.kind == "stopped" else "finished"
        self.plot.set_title(f"{what}: {result.run_dir.name}")
        self.status.setText(message)
        show_info(message)

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

    def _on_finished(self) -> None:
        self.plot.flush()
        self.train_button.setEnabled(True)
        self.stop_button.setEnabled(False)

    # -- growing the training set ----------------------------------------------------------------------
    def _add_clicked(self) -> None:
        from napari.utils.notifications import show_error, show_info

        try:
            lines = self.add_to_training_set()
        except MetalsegError as exc:
            self.status.setText(f"error: {exc}")
            show_error(str(exc))
            return
        if lines:
            message = f"added to {self.session.dataset_dir}: " + "; ".join(lines)
            self.status.setText(message)
            show_info(message)

    def add_to_training_set(self) -> list[str]:
        """Save the chosen micrograph(s) and their labels into the dataset folder (split ``train``).

        The mask written is what the user sees: the micrograph's ``<image> phases`` layer (the prediction with the
        user's corrections) with the ``<image> annotations`` strokes over it; without a phases layer, the
        annotations alone (partial labels are fine, 0 = unlabeled). An image already in the dataset under the same
        name keeps its file and gets the new mask; other images of the dataset are untouched
        (:func:`napari_metalseg.data.training_set.add_to_training_set`).

        Returns
        -------
        list of str
            One line per micrograph written: which layers, how many labelled pixels.
        """
        from napari.utils.notifications import show_warning

        from napari_metalseg.data.training_set import add_to_training_set
        from napari_metalseg.phases import UNLABELED

        image = self.data.selected_image()
        images = [image] if image is not None else micrographs(self.viewer)
        sources = []
        for im in images:
            layers = [find_layer(self.viewer, im, role) for role in (PHASES, ANNOTATIONS)]
            layers = [layer for layer in layers if layer is not None]
            if layers:
                sources.append((im, layers))
        if not sources:
            raise MetalsegError(
                "nothing to add: the micrograph has no '<image> phases' or '<image> annotations' layer yet"
            )
        root = self.data.dataset_dir(ask=True)
        if root is None:
            return []
        phases = self.data.phase_set()
        items, described = [], {}
        for im, layers in sources:
            mask = np.full(np.shape(layers[0].data), UNLABELED, np.uint8)
            for layer in layers:  # the phases layer first, the strokes over it
                values = training_mask(layer.data, phases, layer.name)
                labelled = values != UNLABELED
                mask[labelled] = values[labelled]
            magnification, pixel_size = layer_calibration(im)
            items.append(
                TrainingItem(
                    name=im.name,
                    image=np.asarray(im.data),
                    mask=mask,
                    magnification=magnification,
                    pixel_size_um=pixel_size,
                )
            )
            what = " + ".join(f"'{layer.name}'" for layer in layers)
            described[im.name] = f"'{im.name}' from {what} ({int((mask != UNLABELED).sum()):,} labelled px)"
        update = add_to_training_set(root, phases, items)
        for item in update.unlabelled:
            show_warning(f"{described[item.name]}: nothing labelled yet; not added")
        return [described[item.name] for item in items if safe_name(item.name) in update.written]
