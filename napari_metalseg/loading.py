"""Loading the model the napari docks work with: a trained run, or a model built from a SAM checkpoint or from scratch.

GUI-free: the Model dock (:mod:`napari_metalseg._widgets.model`) fills a :class:`ModelRequest` from its form (checked
when it is made, in the GUI thread) and runs :func:`load_model_job` in a worker (torch, segment_anything and peft are
imported there, never at plugin start-up); the :class:`ModelResult` says what it got.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from napari_metalseg.errors import MetalsegError
from napari_metalseg.models.spec import ModelSpec
from napari_metalseg.phases import PhaseSet
from napari_metalseg.progress import Job, ProgressEvent, run_job

SOURCE_RUN = "run"
"""A trained run directory (:mod:`napari_metalseg.runs`)."""
SOURCE_CHECKPOINT = "checkpoint"
"""A SAM checkpoint file: image encoder from the checkpoint (LoRA-ready), untrained phase decoder."""
SOURCE_SCRATCH = "scratch"
"""The compact ``tiny`` SAM built from scratch (untrained)."""
MODEL_SOURCES = (SOURCE_RUN, SOURCE_CHECKPOINT, SOURCE_SCRATCH)


def parse_phase_names(text: str) -> PhaseSet:
    """``"ferrite, martensite,bainite"`` -> a phase set with the default colours.

    Raises
    ------
    MetalsegError
        No name in ``text``.
    """
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise MetalsegError("phases: enter the phase names separated by commas, e.g. ferrite,martensite,bainite")
    return PhaseSet.from_names(names)


@dataclass(kw_only=True)
class ModelRequest:
    """What the user asked for, checked when made (a missing run or checkpoint, a bad size or phase list).

    Parameters
    ----------
    source : {"run", "checkpoint", "scratch"}
        See :data:`MODEL_SOURCES`.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    run_dir : Path, optional
        The run directory (source ``"run"``).
    checkpoint : Path, optional
        The SAM checkpoint file (source ``"checkpoint"``).
    kind : str
        SAM kind of the checkpoint; ``"tiny"`` for a model from scratch.
    img_size : int
        Model input size (not for a run: the run says).
    phases : PhaseSet, optional
        Phases of a new model (not for a run).
    guidance : str
        Guidance of a new model (not for a run).

    Raises
    ------
    MetalsegError
        An unknown source, a missing or invalid run directory / checkpoint file, a bad input size, no phases.
    """

    source: str
    device: str = "auto"
    run_dir: Path | None = None
    checkpoint: Path | None = None
    kind: str = "tiny"
    img_size: int = 256
    phases: PhaseSet | None = None
    guidance: str = "none"

    def __post_init__(self) -> None:
        from napari_metalseg.models import check_img_size
        from napari_metalseg.runs import CONFIG, require_run

        if self.source not in MODEL_SOURCES:
            raise MetalsegError(f"model source {self.source!r} is not one of {', '.join(MODEL_SOURCES)}")
        if self.source == SOURCE_RUN:
            if self.run_dir is None:
                raise MetalsegError(f"choose a trained run directory (the folder with {CONFIG})")
            self.run_dir = require_run(Path(self.run_dir).expanduser())
            return
        self.img_size = check_img_size(int(self.img_size))
        if self.phases is None:
            raise MetalsegError("phases: enter the phase names separated by commas, e.g. ferrite,martensite,bainite")
        if self.source == SOURCE_SCRATCH:
            self.kind, self.checkpoint = "tiny", None
            return
        if self.checkpoint is None:
            raise MetalsegError("choose a SAM checkpoint file, e.g. sam_vit_b_01ec64.pth")
        self.checkpoint = Path(self.checkpoint).expanduser()
        if not self.checkpoint.is_file():
            raise MetalsegError(f"{self.checkpoint}: checkpoint file not found")

    @property
    def description(self) -> str:
        """What loading it does, for a progress bar (``"loading run"``, ``"building vit_b model"``)."""
        return "loading run" if self.source == SOURCE_RUN else f"building {self.kind} model"


@dataclass(kw_only=True)
class ModelResult:
    """A built or loaded model and what the Model dock shows about it.

    Attributes
    ----------
    model
        The model (eval mode, on ``device``).
    phases : PhaseSet
    device : str
        The device it is on (``"auto"`` resolved).
    run_dir : Path or None
        Its run directory (None for an untrained model).
    report : str
        What the checkpoint loader did with each tensor (empty without a checkpoint).
    notes : list of str
        One-line facts worth showing (validation Dice, base checkpoint, "untrained"); how a run was trained is its
        configuration's :meth:`~napari_metalseg.runs.RunConfig.training_summary`.
    spec : ModelSpec or None
        What the model is (the run's spec; for a built model, its architecture, phases and base checkpoint).
    """

    model: object
    phases: PhaseSet
    device: str
    run_dir: Path | None = None
    report: str = ""
    notes: list[str] = field(default_factory=list)
    spec: ModelSpec | None = None


def load_model_job(request: ModelRequest) -> Job[ModelResult]:
    """Job: load the requested run, or build the requested model (imports torch and friends).

    Yields
    ------
    ProgressEvent
        One ``"info"`` event saying what it loads or builds.

    Returns
    -------
    ModelResult

    Raises
    ------
    MetalsegError
        An unreadable run or checkpoint, an unknown device.
    """
    from napari_metalseg.predict import resolve_device

    yield ProgressEvent("info", 0, 1, message=request.description)
    device = resolve_device(request.device)
    if request.source == SOURCE_RUN:
        from napari_metalseg.runs import load_run

        model, config = load_run(request.run_dir, device=device)
        spec = config.spec
        notes = []
        metrics = dict(config.metrics)
        if "mean_dice" in metrics:
            notes.append(f"validation mean Dice {float(metrics['mean_dice']):.1f}%")
        if spec.checkpoint:
            notes.append(f"base checkpoint {spec.checkpoint}")
        return ModelResult(
            model=model, phases=spec.phase_set, device=device, run_dir=request.run_dir, notes=notes, spec=spec
        )
    from napari_metalseg.models.phase_sam import build_phase_sam

    model, report = build_phase_sam(
        kind=request.kind,
        img_size=request.img_size,
        num_phases=len(request.phases),
        checkpoint=str(request.checkpoint) if request.checkpoint is not None else None,
        guidance=request.guidance,
    )
    model = model.to(device).eval()
    notes = ["untrained decoder: train it (Training widget or `metalseg train`) before trusting predictions"]
    checkpoint = str(request.checkpoint.resolve()) if request.checkpoint is not None else None
    spec = ModelSpec(**model.spec_fields(), phases=request.phases.to_json(), checkpoint=checkpoint)
    return ModelResult(
        model=model,
        phases=request.phases,
        device=device,
        report=report.summary() if report else "",
        notes=notes,
        spec=spec,
    )


def load_model(request: ModelRequest) -> ModelResult:
    """:func:`load_model_job` run to its end."""
    return run_job(load_model_job(request))
