"""The Model dock widget: open a trained run, or build a model from a SAM checkpoint or from scratch.

The model is built in a worker (torch, segment_anything and peft are imported there, never at plugin start-up)
and installed with :meth:`~napari_metalseg._widgets.session.Session.set_model`, which every other widget
listens to. The widget shows the phases (coloured), the parameter counts (total / trainable), the guidance mode,
the run directory, how the run was trained (the optimizer steps it actually did) and, for a checkpoint, what the
loader did with each tensor. Its form follows the session's model, also one the Training dock installed, so that the
form never says another model than the summary.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from napari_metalseg import loading
from napari_metalseg._widgets.base import DockWidget, browse_row
from napari_metalseg._widgets.layers import phase_legend_html
from napari_metalseg.errors import MetalsegError
from napari_metalseg.loading import ModelRequest, ModelResult, load_model_job, parse_phase_names
from napari_metalseg.models import GUIDANCE_MODES, SAM_KINDS
from napari_metalseg.models.registry import ADAPTER
from napari_metalseg.runs import CONFIG

SOURCE_RUN = "Trained run directory"
SOURCE_CHECKPOINT = "SAM checkpoint (LoRA-ready)"
SOURCE_TINY = "Compact model from scratch (tiny)"
SOURCES = (SOURCE_RUN, SOURCE_CHECKPOINT, SOURCE_TINY)
"""The choices of the Source combo box, labels of :data:`napari_metalseg.loading.MODEL_SOURCES`."""
ENGINE_SOURCES = {
    SOURCE_RUN: loading.SOURCE_RUN,
    SOURCE_CHECKPOINT: loading.SOURCE_CHECKPOINT,
    SOURCE_TINY: loading.SOURCE_SCRATCH,
}
DEFAULT_PHASES_TEXT = "ferrite,martensite,bainite"
DEVICES = ("auto", "cpu", "cuda")
CHECKPOINT_KINDS = tuple(k for k in SAM_KINDS if k != "tiny") + ("tiny",)
DEFAULT_IMG_SIZE = {"tiny": 256}
"""Model input size offered per kind (512 for the SAM kinds, as the CLI)."""


class ModelWidget(DockWidget):
    """Dock widget: choose, build or load the model every other widget uses.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self._report = ""
        self._notes: list[str] = []
        self._built = None  # the model whose report/notes are shown (the Training widget may install another)

        self.source = QComboBox()
        self.source.addItems(SOURCES)
        self.run_dir = QLineEdit()
        self.run_dir.setPlaceholderText(f"folder with {CONFIG} + {ADAPTER}")
        self.checkpoint = QLineEdit()
        self.checkpoint.setPlaceholderText("sam_vit_b_01ec64.pth")
        self.kind = QComboBox()
        self.kind.addItems(CHECKPOINT_KINDS)
        self.img_size = QSpinBox()
        self.img_size.setRange(64, 4096)
        self.img_size.setSingleStep(16)
        self.img_size.setValue(512)
        self.phases = QLineEdit(DEFAULT_PHASES_TEXT)
        self.guidance = QComboBox()
        self.guidance.addItems(GUIDANCE_MODES)
        self.device = QComboBox()
        self.device.addItems(DEVICES)
        self.load_button = QPushButton("Load model")
        self.info = QLabel()
        self.info.setWordWrap(True)
        self.info.setTextFormat(Qt.TextFormat.RichText)
        self.info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.report = QPlainTextEdit()
        self.report.setReadOnly(True)
        self.report.setMaximumHeight(110)
        self.report.setPlaceholderText("checkpoint load report")

        form = QFormLayout()
        form.addRow("Source", self.source)
        self._run_row = browse_row(self.run_dir, self._browse_run)
        self._ckpt_row = browse_row(self.checkpoint, self._browse_checkpoint)
        form.addRow("Run", self._run_row)
        form.addRow("Checkpoint", self._ckpt_row)
        form.addRow("SAM kind", self.kind)
        form.addRow("Input size", self.img_size)
        form.addRow("Phases", self.phases)
        form.addRow("Guidance", self.guidance)
        form.addRow("Device", self.device)
        self._form = form
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.load_button)
        layout.addWidget(self.info)
        layout.addWidget(self.report)
        layout.addStretch(1)

        self.source.currentTextChanged.connect(self._on_source)
        self.kind.currentTextChanged.connect(lambda kind: self.img_size.setValue(DEFAULT_IMG_SIZE.get(kind, 512)))
        self.load_button.clicked.connect(self.start)
        self.session.model_changed.connect(self.refresh)
        self._on_source(self.source.currentText())
        self.refresh()

    # -- form --------------------------------------------------------------------------------------------------
    def _on_source(self, source: str) -> None:
        run = source == SOURCE_RUN
        ckpt = source == SOURCE_CHECKPOINT
        for widget, visible in (
            (self._run_row, run),
            (self._ckpt_row, ckpt),
            (self.kind, ckpt),
            (self.img_size, not run),
            (self.phases, not run),
            (self.guidance, not run),
        ):
            widget.setVisible(visible)
            label = self._form.labelForField(widget)
            if label is not None:
                label.setVisible(visible)
        if source == SOURCE_TINY:
            self.img_size.setValue(DEFAULT_IMG_SIZE["tiny"])
        elif ckpt:
            self.img_size.setValue(DEFAULT_IMG_SIZE.get(self.kind.currentText(), 512))
        self.load_button.setText("Load run" if run else "Build model")

    def _browse_run(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Trained run directory", self.run_dir.text())
        if path:
            self.run_dir.setText(path)

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "SAM checkpoint", self.checkpoint.text(), "Checkpoints (*.pth *.pt *.safetensors);;All files (*)"
        )
        if path:
            self.checkpoint.setText(path)

    def request(self) -> ModelRequest:
        """The form as a checked :class:`~napari_metalseg.loading.ModelRequest`.

        Raises
        ------
        MetalsegError
            A missing run folder / checkpoint file, a bad input size or phase list.
        """
        label = self.source.currentText()
        device = self.device.currentText()
        if label == SOURCE_RUN:
            text = self.run_dir.text().strip()
            return ModelRequest(source=ENGINE_SOURCES[label], device=device, run_dir=Path(text) if text else None)
        phases = parse_phase_names(self.phases.text())
        text = self.checkpoint.text().strip()
        return ModelRequest(
            source=ENGINE_SOURCES[label],
            device=device,
            checkpoint=Path(text) if text and label == SOURCE_CHECKPOINT else None,
            kind=self.kind.currentText(),
            img_size=int(self.img_size.value()),
            phases=phases,
            guidance=self.guidance.currentText(),
        )

    # -- actions -----------------------------------------------------------------------------------------------
    def load_run(self, run_dir: str | Path, device: str = "auto"):
        """Fill the form with a run directory and load it (returns the worker)."""
        self.source.setCurrentText(SOURCE_RUN)
        self.run_dir.setText(str(run_dir))
        self.device.setCurrentText(device)
        return self.start()

    def start(self):
        """Build or load the model of the form in a worker; returns the worker (None on bad input or busy)."""
        if self.busy:
            return None
        self.last_error = None
        try:
            request = self.request()
        except MetalsegError as exc:
            self._failed(exc)
            return None
        self.load_button.setEnabled(False)
        return self.start_job(
            load_model_job(request),
            request.description,
            self._installed,
            on_finish=lambda: self.load_button.setEnabled(True),
        )

    def _installed(self, result: ModelResult) -> None:
        self._report = result.report
        self._notes = result.notes
        self._built = result.model
        self.session.set_model(
            result.model, result.phases, run_dir=result.run_dir, device=result.device, spec=result.spec
        )

    def show_spec(self) -> None:
        """Fill the form with the session's model (its run, or the kind, size, phases and guidance it was built
        with), so that the form never says another model than the summary (the Training dock may have installed
        it)."""
        session, spec = self.session, self.session.spec
        if spec is None:
            return
        if session.run_dir is not None:
            self.source.setCurrentText(SOURCE_RUN)
            self.run_dir.setText(str(session.run_dir))
        elif spec.checkpoint:
            self.source.setCurrentText(SOURCE_CHECKPOINT)
            self.checkpoint.setText(spec.checkpoint)
        elif spec.kind == "tiny":
            self.source.setCurrentText(SOURCE_TINY)
        if spec.kind in CHECKPOINT_KINDS:
            self.kind.setCurrentText(spec.kind)  # resets the input size to the kind's default: set after
        self.img_size.setValue(spec.img_size)
        if spec.guidance in GUIDANCE_MODES:
            self.guidance.setCurrentText(spec.guidance)
        if session.phases is not None:
            self.phases.setText(",".join(session.phases.names))

    def refresh(self) -> None:
        """Show what the session's model is (summary and form)."""
        session = self.session
        self.show_spec()
        if session.model is None:
            self.info.setText(
                "<i>No model yet.</i> Open a trained run, or build one from a SAM checkpoint "
                "or from scratch and train it."
            )
            self.report.setPlainText("")
            return
        from napari_metalseg.models.lora import count_parameters
        from napari_metalseg.precision import precision_label

        model = session.model
        total, trainable = count_parameters(model)
        share = 100.0 * trainable / total if total else 0.0
        lora = getattr(model, "lora", None)
        finetune = getattr(model, "finetune_mode", None) or "?"
        precision = precision_label(getattr(model, "kind", "?"), bool(getattr(session.predictor, "bf16", False)))
        lines = [
            f"<b>Phases</b>: {phase_legend_html(session.phases)}",
            f"<b>Model</b>: {getattr(model, 'kind', '?')} at {getattr(model, 'img_size', '?')} px, "
            f"fine-tuning <i>{finetune}</i>" + (f" (LoRA rank {lora['rank']})" if lora else ""),
            f"<b>Guidance</b>: {getattr(model, 'guidance', 'none')}",
            f"<b>Parameters</b>: {total:,} total / {trainable:,} trainable ({share:.1f}%)",
            f"<b>Run</b>: {session.run_dir if session.run_dir else '<i>not trained / not saved</i>'}",
            f"<b>Trained</b>: {escape(session.run_config.training_summary())}"
            if session.run_config is not None
            else "<b>Trained</b>: <i>not yet</i>",
            f"<b>Device</b>: {session.device}, {precision}",
        ]
        ours = model is self._built
        lines += [f"<small>{note}</small>" for note in (self._notes if ours else [])]
        self.info.setText("<br>".join(lines))
        self.report.setPlainText(self._report if ours and self._report else "(no checkpoint loaded)")
