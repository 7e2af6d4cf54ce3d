"""The "Model and hyper-parameters" group of the Training dock: the fields of a training run and its run folder.

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
    POOLED_FAMILIES,
    TRAIN_DEFAULTS,
    family_of,
)

from .base import browse_row

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


class HyperParameterBox(QGroupBox):
    """The model, its hyper-parameters, the device and the run folder of a training run."""

    def __init__(self, parent=None) -> None:
        super().__init__("Model and hyper-parameters", parent)
        form = QFormLayout(self)
        self.model_combo = QComboBox()
        for kind in MODEL_KINDS:
            self.model_combo.addItem(kind)
            self.model_combo.setItemData(self.model_combo.count() - 1, MODEL_LABELS[kind], Qt.ToolTipRole)
        self.model_combo.setToolTip(
            "elunet (the CPU default) / unet3plus: the study's CNNs, unet: a plain U-Net; each is pooled with the "
            "classical pixel classifier fitted on the same strokes; classical: features + boosted trees (seconds); "
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
            "probabilities with the network's: better boundaries from strokes drawn inside the phases "
            "(docs/quality.md). Only for the CNNs."
        )
        form.addRow("", self.pool_check)
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
        sam = family.name == "sam"
        for widget in (self.checkpoint_edit, self.finetune_combo, self.lora_rank):
            widget.setEnabled(sam)
        for widget in (self.steps, self.batch_size, self.lr, self.budget):
            widget.setEnabled(family.gradient)
        pooled = family.name in POOLED_FAMILIES
        self.pool_check.setEnabled(pooled)
        self.pool_check.setChecked(pooled)
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
            pool_classical=self.pool_check.isChecked() if family_of(kind).name in POOLED_FAMILIES else None,
        )

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
