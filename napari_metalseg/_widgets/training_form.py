"""The "Model and hyper-parameters" group of the Training dock: the fields of a training run and its run folder.

One model per viewer: when the session holds a model (the Model dock's, or the last one trained), training continues
from it (same kind, phases, guidance and size; from its run's weights when it has a run) unless "start fresh" is
ticked.

:meth:`HyperParameterBox.config` turns the fields into a validated :class:`~napari_metalseg.training.TrainConfig`,
:meth:`HyperParameterBox.run_dir` chooses the run folder (a new one in ``~/metalseg-runs``, or next to the dataset,
unless the user names one).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QSpinBox,
)

from napari_metalseg.errors import MetalsegError
from napari_metalseg.models import FINETUNE_MODES, TRAINING_GUIDANCE
from napari_metalseg.models.registry import (
    DEFAULT_BUDGET_S,
    DEFAULT_IMG_SIZE,
    DEFAULT_MODEL,
    MODEL_KINDS,
    MODEL_LABELS,
    PHYSICAL_SCALE_FAMILIES,
    POOL_MARGIN,
    POOLED_FAMILIES,
    TRAIN_DEFAULTS,
    family_of,
)
from napari_metalseg.models.spec import ModelSpec
from napari_metalseg.phases import PhaseSet

from .base import browse_row, while_alive

if TYPE_CHECKING:  # pragma: no cover
    from napari_metalseg.training import TrainConfig

RUNS_ENV = "METALSEG_RUNS_DIR"
"""Environment variable overriding the default parent of new run folders (``~/metalseg-runs``)."""


def runs_parent() -> Path:
    """Where new run folders go when there is no dataset: :data:`RUNS_ENV`, else ``~/metalseg-runs``."""
    return Path(os.environ.get(RUNS_ENV) or Path.home() / "metalseg-runs").expanduser()


def new_run_dir(dataset: Path | None) -> Path:
    """A new, not yet existing run folder: ``<dataset parent>/metalseg-runs/<dataset>-<time>``, else
    ``<runs parent>/<time>`` (``-2``, ``-3`` ... appended when taken)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if dataset is not None:
        parent, name = dataset.parent / "metalseg-runs", f"{dataset.name}-{stamp}"
    else:
        parent, name = runs_parent(), stamp
    out = parent / name
    n = 2
    while out.exists():
        out, n = parent / f"{name}-{n}", n + 1
    return out


def training_guidances(kind: str, encoder: str | None = None) -> list[str]:
    """The training guidances (:data:`~napari_metalseg.models.options.TRAINING_GUIDANCE`) a model ``kind`` accepts;
    with ``encoder``, only those of that guidance module (``"ratio"``: ``ratio`` and ``ratio+box``)."""
    family = family_of(kind)
    allowed = [
        g
        for g in TRAINING_GUIDANCE
        if ("box" not in g or family.boxes) and g.split("+")[0] in (*family.guidance, "box")
    ]
    if encoder is not None:
        allowed = [g for g in allowed if (g.split("+")[0] if g != "box" else "none") == encoder]
    return allowed


def describe_spec(spec: ModelSpec) -> str:
    """``"tiny at 64 px, guidance ratio, phases ferrite, martensite"`` (the CNN's width and depth, the SAM fine-tuning
    and the pool with the classical classifier when they apply)."""
    parts = [f"{spec.kind} at {spec.img_size} px"]
    if spec.family == "cnn":
        parts.append(f"width {spec.width}, depth {spec.depth}")
    if spec.family == "sam" and spec.checkpoint:
        parts.append(f"{spec.finetune} fine-tuning of {Path(spec.checkpoint).name}")
    parts.append(f"guidance {spec.guidance}")
    if spec.pooled:
        parts.append("pooled with the classical pixel classifier")
    parts.append(f"phases {', '.join(p['name'] for p in spec.phases)}")
    return ", ".join(parts)


class HyperParameterBox(QGroupBox):
    """The model, its hyper-parameters, the device and the run folder of a training run.

    With a ``session`` that holds a model (the Model dock's, or the last one trained), training continues from that
    model: its kind, size, guidance, width and depth, fine-tuning and checkpoint are shown read-only with a note,
    and :meth:`config` trains that model (initialised from its run, or the same architecture from scratch when it
    was built and never trained). "start fresh" unlocks the fields and trains a new model.

    Parameters
    ----------
    session : Session, optional
        The viewer's session (:mod:`.session`).
    """

    def __init__(self, parent=None, *, session=None) -> None:
        super().__init__("Model and hyper-parameters", parent)
        self.session = session
        form = QFormLayout(self)
        self.continue_note = QLabel()
        self.continue_note.setWordWrap(True)
        self.continue_note.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        form.addRow(self.continue_note)
        self.fresh_check = QCheckBox("start fresh (train a new model, not the one in the Model dock)")
        self.fresh_check.setToolTip(
            "Off: training continues from the model in the Model dock (its weights when it was trained; the same "
            "model, phases and guidance). On: the fields below choose a new model, trained from scratch."
        )
        form.addRow(self.fresh_check)
        self.model_combo = QComboBox()
        for kind in MODEL_KINDS:
            self.model_combo.addItem(kind)
            self.model_combo.setItemData(self.model_combo.count() - 1, MODEL_LABELS[kind], Qt.ToolTipRole)
        self.model_combo.setToolTip(
            "elunet (the CPU default) / unet3plus: the study's CNNs, unet: a plain U-Net; each is pooled with the "
            "classical pixel classifier fitted on the same strokes when that validates close to it; "
            "classical: features + boosted trees (seconds); "
            "tiny: compact SAM; vit_*: SAM from a checkpoint"
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
        self.pool_check = QCheckBox("pool with the classical pixel classifier")
        self.pool_check.setChecked(True)
        self.pool_check.setToolTip(
            "Also fit the classical pixel classifier on the same strokes and average (geometrically) its phase "
            f"probabilities with the network's when it validates within {POOL_MARGIN:g} points of the network "
            "(leading the pool when it validates as well): better boundaries "
            "from strokes drawn inside the phases; further behind, the run keeps the network alone "
            "(docs/training.md). Only for the CNNs."
        )
        form.addRow("", self.pool_check)
        self.scale_check = QCheckBox("one physical scale (resample to one pixel size)")
        self.scale_check.setToolTip(
            "Resample every micrograph to one pixel size, the run's working scale, for training and prediction, "
            "when every micrograph's layer states its pixel size (the calibration widget, SEM metadata): a grain "
            "then looks the same to the model at every magnification. Default: on for the CNNs (measured: +3 to +4 "
            "points at new magnifications), off for SAM and the classical classifier (docs/training.md). A model "
            "trained further keeps the scale of its run."
        )
        form.addRow("", self.scale_check)
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

        self.model_combo.currentTextChanged.connect(self._model_changed)
        self.model_combo.setCurrentText(DEFAULT_MODEL)
        self._model_changed(DEFAULT_MODEL)
        self.fresh_check.toggled.connect(self._fresh_toggled)
        if session is not None:
            session.model_changed.connect(self.follow_session)
        self.follow_session()

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

    def _model_changed(self, kind: str) -> None:
        """Defaults and enabled fields of the chosen model's family; the guidance modes it accepts."""
        family = family_of(kind)
        self.img_size.setValue(DEFAULT_IMG_SIZE[kind])
        self.pool_check.setChecked(family.name in POOLED_FAMILIES)
        self.scale_check.setChecked(family.name in PHYSICAL_SCALE_FAMILIES)
        self.batch_size.setValue(TRAIN_DEFAULTS[family.name]["batch_size"])
        self.lr.setValue(TRAIN_DEFAULTS[family.name]["lr"])
        self._update_fields()

    def _update_fields(self) -> None:
        """Which fields are editable (the family's; none of the model's while training continues from the session's
        model) and the guidances offered (while continuing: those of the model's guidance module)."""
        kind = self.model_combo.currentText()
        family = family_of(kind)
        spec = self.continued_spec
        locked = spec is not None
        sam = family.name == "sam"
        for widget in (self.checkpoint_edit, self.finetune_combo, self.lora_rank):
            widget.setEnabled(sam and not locked)
        for widget in (self.steps, self.batch_size, self.lr, self.budget):
            widget.setEnabled(family.gradient)
        self.pool_check.setEnabled(family.name in POOLED_FAMILIES and not locked)
        self.scale_check.setEnabled(not (locked and self._continued_run() is not None))
        self.model_combo.setEnabled(not locked)
        self.img_size.setEnabled(not locked)
        current = self.guidance_combo.currentText()
        allowed = training_guidances(kind, spec.guidance if spec is not None else None) or ["none"]
        self.guidance_combo.blockSignals(True)
        self.guidance_combo.clear()
        self.guidance_combo.addItems(allowed)
        self.guidance_combo.setCurrentText(current if current in allowed else allowed[0])
        self.guidance_combo.blockSignals(False)
        self.guidance_combo.setEnabled(len(allowed) > 1)

    # -- the session's model -------------------------------------------------------------------------------
    def _continued_run(self) -> Path | None:
        """The run whose weights training continues from (its working scale is kept), or None."""
        return getattr(self.session, "run_dir", None) if self.continued_spec is not None else None

    @property
    def continued_spec(self) -> ModelSpec | None:
        """The session's model spec when training continues from it (a model exists, "start fresh" is off)."""
        spec = getattr(self.session, "spec", None)
        return None if spec is None or self.fresh_check.isChecked() else spec

    @while_alive
    def follow_session(self) -> None:
        """A new model in the session (the Model dock's, or the last one trained): continue from it ("start fresh"
        off), showing it in the fields."""
        spec = getattr(self.session, "spec", None)
        self.fresh_check.setVisible(spec is not None)
        self.fresh_check.blockSignals(True)
        self.fresh_check.setChecked(False)
        self.fresh_check.blockSignals(False)
        self._fresh_toggled(False)

    def _fresh_toggled(self, fresh: bool) -> None:
        spec = self.continued_spec
        if spec is not None:
            self._show_spec(spec)
        self.continue_note.setVisible(spec is not None)
        self.continue_note.setText(self._note(spec) if spec is not None else "")
        self._update_fields()

    def _show_spec(self, spec: ModelSpec) -> None:
        """The fields say the model ``spec`` (its guidance kept when the model accepts the one chosen)."""
        guidance = self.guidance_combo.currentText()
        self.model_combo.setCurrentText(spec.kind)
        self.img_size.setValue(spec.img_size)
        self.checkpoint_edit.setText(spec.checkpoint or "")
        if spec.family == "sam":
            self.finetune_combo.setCurrentText(spec.finetune)
            self.lora_rank.setValue(spec.lora_rank)
        self.pool_check.setChecked(bool(spec.pooled))
        if self._continued_run() is not None:  # the run's working scale, kept (a model never trained: the default)
            self.scale_check.setChecked(spec.pixel_size_um is not None)
        else:
            self.scale_check.setChecked(spec.family in PHYSICAL_SCALE_FAMILIES)
        self.guidance_combo.setCurrentText(guidance)

    def _note(self, spec: ModelSpec) -> str:
        run = getattr(self.session, "run_dir", None)
        origin = (
            f"its weights, from run {run}"
            if run is not None
            else "built and never trained: this model is trained from scratch"
        )
        return (
            f"training continues from the model in the Model dock: {describe_spec(spec)} ({origin}). "
            "Tick 'start fresh' for another model."
        )

    def config(self) -> TrainConfig:
        """The :class:`~napari_metalseg.training.TrainConfig` of the fields (validated).

        Raises
        ------
        MetalsegError
            Neither a time budget nor a number of steps, or what ``TrainConfig`` refuses.
        """
        from napari_metalseg.training import TrainConfig

        kind = self.model_combo.currentText()
        sam = family_of(kind).name == "sam"
        finetune = self.finetune_combo.currentText() if sam else "auto"
        steps, budget = self.steps.value() or None, float(self.budget.value()) or None
        if steps is None and budget is None:
            raise MetalsegError("set a time budget or a number of steps")
        run_settings = {  # how long and how to train: the fields', whichever model is trained
            "guidance": self.guidance_combo.currentText(),
            "steps": steps,
            "budget_s": budget,
            "batch_size": self.batch_size.value(),
            "lr": self.lr.value(),
            "device": self.device_combo.currentText(),
            "physical_scale": self.scale_check.isChecked(),  # a continued run's own scale (:meth:`_show_spec`)
        }
        spec = self.continued_spec
        if spec is not None:  # the session's model: from its run's weights (unless resuming the run folder's run)
            run = getattr(self.session, "run_dir", None)
            init_from = str(run) if run is not None and not self.resume_check.isChecked() else None
            return TrainConfig.from_spec(spec, init_from=init_from, **run_settings)
        return TrainConfig(
            model=kind,
            checkpoint=(self.checkpoint_edit.text().strip() or None) if sam else None,
            img_size=self.img_size.value(),
            finetune=None if finetune == "auto" else finetune,
            lora_rank=self.lora_rank.value(),
            **run_settings,
            pool_classical=self.pool_check.isChecked() if family_of(kind).name in POOLED_FAMILIES else None,
        )

    def run_phases(self, phases: PhaseSet | None, what: str = "the annotations") -> PhaseSet | None:
        """The phases of the run: the session model's while training continues from it (``phases``, those of the
        training data, must name the same phases), else ``phases``.

        Raises
        ------
        MetalsegError
            ``phases`` name other phases than the session's model.
        """
        if self.continued_spec is None or self.session.phases is None:
            return phases
        model = self.session.phases
        if phases is not None and phases.names != model.names:
            raise MetalsegError(
                f"{what} name the phases {', '.join(phases.names)} but the model in the Model dock has "
                f"{', '.join(model.names)}: name the same phases, or tick 'start fresh' to train a new model"
            )
        return model

    def run_dir(self, dataset: Path | None) -> Path:
        """The run folder of the next run: the one named in the field, else a new one (:func:`new_run_dir`).

        Raises
        ------
        MetalsegError
            The named folder already holds a run and "resume" is not ticked.
        """
        from napari_metalseg.runs import is_run

        text = self.out_edit.text().strip()
        if not text:
            return new_run_dir(dataset)
        out = Path(text).expanduser()
        if is_run(out) and not self.resume_check.isChecked():
            raise MetalsegError(
                f"{out} already holds a trained run: tick 'resume' to continue it, or clear the run "
                "folder field to start a new one"
            )
        return out
