"""The Model dock widget: open a trained run, or build a model from a SAM checkpoint or from scratch.

The model is built in a worker (torch, segment_anything and peft are imported there, never at plugin start-up)
and installed with :meth:`~napari_metalseg._widgets.session.Session.set_model`, which every other widget
listens to. The widget shows the phases (coloured), the parameter counts (total / trainable), the guidance mode,
the run directory and, for a checkpoint, what the loader did with each tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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

from napari_metalseg._widgets.base import DockWidget, browse_row
from napari_metalseg._widgets.layers import phase_legend_html, report_error, run_worker
from napari_metalseg.errors import MetalsegError
from napari_metalseg.models import GUIDANCE_MODES, SAM_KINDS, check_img_size
from napari_metalseg.phases import PhaseSet

SOURCE_RUN = "Trained run directory"
SOURCE_CHECKPOINT = "SAM checkpoint (LoRA-ready)"
SOURCE_TINY = "Compact model from scratch (tiny)"
SOURCES = (SOURCE_RUN, SOURCE_CHECKPOINT, SOURCE_TINY)
DEFAULT_PHASES_TEXT = "ferrite,martensite,bainite"
DEVICES = ("auto", "cpu", "cuda")
CHECKPOINT_KINDS = tuple(k for k in SAM_KINDS if k != "tiny") + ("tiny",)
DEFAULT_IMG_SIZE = {"tiny": 256}
"""Model input size offered per kind (512 for the SAM kinds, as the CLI)."""


@dataclass
class ModelRequest:
    """What the user asked for; validated in the GUI thread, built in the worker."""

    source: str
    device: str = "auto"
    run_dir: Path | None = None
    checkpoint: Path | None = None
    kind: str = "tiny"
    img_size: int = 256
    phases: PhaseSet | None = None
    guidance: str = "none"


@dataclass
class ModelResult:
    """A built or loaded model and what the widget shows about it."""

    model: object
    phases: PhaseSet
    device: str
    run_dir: Path | None = None
    report: str = ""
    notes: list[str] = field(default_factory=list)


def parse_phase_names(text: str) -> PhaseSet:
    """``"ferrite, martensite,bainite"`` -> a phase set with the default colours."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise MetalsegError("phases: enter the phase names separated by commas, e.g. ferrite,martensite,bainite")
    return PhaseSet.from_names(names)


def build_model(request: ModelRequest, progress=None) -> ModelResult:
    """Load or build the requested model (worker thread: imports torch and friends)."""
    from napari_metalseg._widgets.layers import MODEL_LOCK
    from napari_metalseg.predict import resolve_device

    device = resolve_device(request.device)
    with MODEL_LOCK:
        if request.source == SOURCE_RUN:
            from napari_metalseg.runs import load_run

            model, config = load_run(request.run_dir, device=device)
            spec = config["model"]
            notes = [f"trained: {config.get('training', {}).get('steps', '?')} steps"]
            metrics = config.get("metrics") or {}
            if "mean_dice" in metrics:
                notes.append(f"validation mean Dice {float(metrics['mean_dice']):.1f}%")
            if spec.checkpoint:
                notes.append(f"base checkpoint {spec.checkpoint}")
            return ModelResult(model, spec.phase_set, device, Path(request.run_dir), "", notes)
        from napari_metalseg.models.phase_sam import build_phase_sam

        checkpoint = str(request.checkpoint) if request.source == SOURCE_CHECKPOINT else None
        kind = request.kind if request.source == SOURCE_CHECKPOINT else "tiny"
        model, report = build_phase_sam(
            kind=kind,
            img_size=request.img_size,
            num_phases=len(request.phases),
            checkpoint=checkpoint,
            guidance=request.guidance,
        )
        model = model.to(device).eval()
        notes = ["untrained decoder: train it (Training widget or `metalseg train`) before trusting predictions"]
        return ModelResult(model, request.phases, device, None, report.summary() if report else "", notes)


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
        self.run_dir.setPlaceholderText("folder with config.json + adapter.safetensors")
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
        """The form as a validated :class:`ModelRequest`.

        Raises
        ------
        MetalsegError
            A missing run folder / checkpoint file, a bad input size or phase list.
        """
        source = self.source.currentText()
        device = self.device.currentText()
        if source == SOURCE_RUN:
            text = self.run_dir.text().strip()
            if not text:
                raise MetalsegError("choose a trained run directory (the folder with config.json)")
            run = Path(text).expanduser()
            if not (run / "config.json").is_file():
                raise MetalsegError(f"{run}: not a trained run (config.json is missing)")
            return ModelRequest(source, device, run_dir=run)
        size = check_img_size(int(self.img_size.value()))
        phases = parse_phase_names(self.phases.text())
        checkpoint = None
        if source == SOURCE_CHECKPOINT:
            text = self.checkpoint.text().strip()
            if not text:
                raise MetalsegError("choose a SAM checkpoint file, e.g. sam_vit_b_01ec64.pth")
            checkpoint = Path(text).expanduser()
            if not checkpoint.is_file():
                raise MetalsegError(f"{checkpoint}: checkpoint file not found")
        return ModelRequest(
            source,
            device,
            checkpoint=checkpoint,
            kind=self.kind.currentText(),
            img_size=size,
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
        desc = "loading run" if request.source == SOURCE_RUN else f"building {request.kind} model"
        self.worker = run_worker(
            lambda progress: build_model(request, progress),
            desc,
            self._installed,
            on_error=self._failed,
            on_finish=self._finished,
        )
        return self.worker

    def _installed(self, result: ModelResult) -> None:
        self._report = result.report
        self._notes = result.notes
        self._built = result.model
        self.session.set_model(result.model, result.phases, run_dir=result.run_dir, device=result.device)

    def _failed(self, exc: BaseException) -> None:
        self.last_error = exc
        report_error(exc)

    def _finished(self) -> None:
        self.worker = None
        self.load_button.setEnabled(True)

    def refresh(self) -> None:
        """Show what the session's model is."""
        session = self.session
        if session.model is None:
            self.info.setText(
                "<i>No model yet.</i> Open a trained run, or build one from a SAM checkpoint "
                "or from scratch and train it."
            )
            self.report.setPlainText("")
            return
        from napari_metalseg.models.lora import count_parameters

        model = session.model
        total, trainable = count_parameters(model)
        share = 100.0 * trainable / total if total else 0.0
        lora = getattr(model, "lora", None)
        finetune = getattr(model, "finetune_mode", None) or "?"
        lines = [
            f"<b>Phases</b>: {phase_legend_html(session.phases)}",
            f"<b>Model</b>: {getattr(model, 'kind', '?')} at {getattr(model, 'img_size', '?')} px, "
            f"fine-tuning <i>{finetune}</i>" + (f" (LoRA rank {lora['rank']})" if lora else ""),
            f"<b>Guidance</b>: {getattr(model, 'guidance', 'none')}",
            f"<b>Parameters</b>: {total:,} total / {trainable:,} trainable ({share:.1f}%)",
            f"<b>Run</b>: {session.run_dir if session.run_dir else '<i>not trained / not saved</i>'}",
            f"<b>Device</b>: {session.device}",
        ]
        ours = model is self._built
        lines += [f"<small>{note}</small>" for note in (self._notes if ours else [])]
        self.info.setText("<br>".join(lines))
        self.report.setPlainText(self._report if ours and self._report else "(no checkpoint loaded)")
