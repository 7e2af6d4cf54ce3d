"""The run format: one place that writes and reads a trained model's run directory.

::

    RUN/config.json            model spec (kind, img size, phases, fine-tune mode, LoRA, guidance, base checkpoint
                               path + sha256), training arguments and provenance (the steps and seconds actually
                               trained, how the run ended, the run it was initialised from), final metrics
    RUN/adapter.safetensors    torch families: only what was trained (LoRA, decoder, guidance encoders; the whole
                               network for U-Net3+ / ELU-Net), never a frozen SAM base
    RUN/classifier.txt         the classical pixel classifier (our JSON header + LightGBM's text model): the whole
                               model of a classical run, or the companion a CNN is pooled with (spec ``pooled``)
    RUN/metrics.json           history of validation metrics (optional)
    RUN/resume.pt              optimizer + step for ``--resume`` (our own file, read with weights_only=True)

Every file is written atomically, so a crash mid-save leaves the previous good run intact.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from napari_metalseg.errors import MetalsegError
from napari_metalseg.io.atomic import atomic_path, atomic_write_text
from napari_metalseg.models.registry import ADAPTER, CLASSIFIER
from napari_metalseg.models.spec import ModelSpec

CONFIG = "config.json"
METRICS = "metrics.json"
RESUME = "resume.pt"
FORMAT_VERSION = 1

STEPS_DONE = "steps_done"
"""Training provenance key: the optimizer steps the run did (``steps`` is what it planned)."""
TRAIN_SECONDS = "train_seconds"
"""Training provenance key: seconds of training (the resumed part included)."""
KEPT_STEP = "kept_step"
"""Training provenance key: the step after which the kept weights were saved."""
ENDED = "ended"
"""Training provenance key: how the run ended, one of :data:`ENDINGS`."""
ENDINGS = {"steps": "its steps done", "budget": "time budget spent", "stopped": "stopped"}
INIT_FROM = "init_from"
"""Training provenance key: ``{"run": path, "weights_sha256": ...}`` of the run whose weights initialised this one."""


def is_run(path: str | Path) -> bool:
    """Whether ``path`` is a run directory (it holds :data:`CONFIG`)."""
    return (Path(path) / CONFIG).is_file()


def require_run(path: str | Path) -> Path:
    """Return ``path`` as a :class:`~pathlib.Path` if it is a run directory; one clear error otherwise."""
    path = Path(path)
    if not is_run(path):
        raise MetalsegError(f"{path}: not a trained run ({CONFIG} is missing)")
    return path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class RunConfig:
    """What a run's :data:`CONFIG` holds: the model spec, the training settings and provenance, the final metrics.

    Attributes
    ----------
    spec : ModelSpec
        The architecture (and base checkpoint by path and sha256) to rebuild before the weights are loaded.
    training : mapping
        The training arguments (:class:`~napari_metalseg.training.TrainConfig` fields) and provenance
        (``train_images``, ``val_images``, ``fit_seconds``, ``zero_shot``, ...).
    metrics : mapping
        The validation metrics of the kept model (``source``, ``mean_dice``, ``dice_per_phase``, ...).
    format_version : int
        Version of the run format.
    """

    spec: ModelSpec
    training: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def steps_done(self) -> int | None:
        """The optimizer steps the run actually did (its resumed part included; 1 for a one-call fit), whatever it
        planned (``training["steps"]``); None for a run that did not record them (written before they were)."""
        done = self.training.get(STEPS_DONE)
        return None if done is None else int(done)

    def training_summary(self) -> str:
        """How the run was trained, in one line for the user: ``"352 optimizer steps in 41 s (stopped); the kept
        model is from step 300 (best validation); micrographs resampled to 35.7 nm per pixel"``, ``"fitted in 3.1 s"``
        for the classical classifier; the working scale when the run has one (:mod:`napari_metalseg.data.scale`)."""
        training = self.training
        if self.spec.family == "classical":
            seconds = training.get("fit_seconds")
            text = "fitted on the labelled pixels" + (f" in {float(seconds):.1f} s" if seconds is not None else "")
        elif self.steps_done is None:
            text = "steps not recorded (a run written by an older version)"
        else:
            done = self.steps_done
            text = f"{done} optimizer step{'s' if done != 1 else ''}"
            if training.get(TRAIN_SECONDS) is not None:
                seconds = float(training[TRAIN_SECONDS])
                text += f" in {seconds:.1f} s" if seconds < 10 else f" in {seconds:.0f} s"
            ended = training.get(ENDED)
            if ended in ENDINGS and ended != "steps":
                text += f" ({ENDINGS[ended]})"
            kept = training.get(KEPT_STEP)
            if kept is not None and int(kept) != done:
                text += f"; the kept model is from step {int(kept)} (best validation)"
        source = training.get(INIT_FROM)
        if isinstance(source, Mapping) and source.get("run"):
            text += f"; continued from {source['run']}"
        if self.spec.pixel_size_um is not None:
            text += f"; micrographs resampled to {self.spec.pixel_size_um * 1000:.3g} nm per pixel"
        return text


def write_run_config(run_dir: str | Path, config: RunConfig) -> Path:
    """Write ``config`` as the run's :data:`CONFIG`, atomically (the one writer of its layout)."""
    data = {
        "format_version": config.format_version,
        "model": asdict(config.spec),
        "training": dict(config.training),
        "metrics": dict(config.metrics),
    }
    path = Path(run_dir) / CONFIG
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")
    return path


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The run's :data:`CONFIG`, validated (the one reader of its layout).

    Raises
    ------
    MetalsegError
        If ``run_dir`` is not a run directory or its configuration is unreadable.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MetalsegError(f"{run_dir}: run directory does not exist")
    path = require_run(run_dir) / CONFIG
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        spec = ModelSpec(**data["model"])
        spec.phase_set  # noqa: B018  (validates the phases)
        config = RunConfig(
            spec=spec,
            training=data.get("training") or {},
            metrics=data.get("metrics") or {},
            format_version=int(data.get("format_version", FORMAT_VERSION)),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError, MetalsegError) as exc:
        raise MetalsegError(f"{path}: unreadable run configuration ({exc})") from None
    return config


def save_run(
    run_dir: str | Path,
    spec: ModelSpec,
    state,
    training: dict | None = None,
    metrics: dict | None = None,
    history: list | None = None,
) -> Path:
    """Write the weights, then :data:`CONFIG` (+ :data:`METRICS`), each atomically.

    ``state`` is the trainable state dict (tensors) of a torch family, or the fitted
    :class:`~napari_metalseg.models.classical.PixelClassifier` itself.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if spec.family == "classical":
        from napari_metalseg.models.classical import save_classifier

        save_classifier(state, run_dir / CLASSIFIER)
    else:
        from safetensors.torch import save_file

        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        with atomic_path(run_dir / ADAPTER) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "napari-metalseg", "version": str(FORMAT_VERSION)})
    write_run_config(run_dir, RunConfig(spec=spec, training=training or {}, metrics=metrics or {}))
    if history is not None:
        write_history(run_dir, history)
    return run_dir


def _json_default(value: object) -> object:
    try:
        return float(value)  # numpy scalars
    except (TypeError, ValueError):
        return str(value)


def load_run(run_dir: str | Path, device: str = "cpu"):
    """Rebuild a trained model from its run directory.

    Returns
    -------
    model
        A model of the run's family (:class:`PhaseSAM`, :class:`PhaseCNN` or :class:`PixelClassifier`), in eval mode,
        on ``device``; its ``pixel_size_um`` is the run's working scale (:mod:`napari_metalseg.data.scale`), which
        the :class:`~napari_metalseg.predict.Predictor` resamples micrographs to.
    config : RunConfig
        The run's configuration (:func:`read_run_config`).
    """
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    if config.spec.family == "classical":
        from napari_metalseg.models.classical import load_classifier

        path = run_dir / CLASSIFIER
        if not path.is_file():
            raise MetalsegError(f"{run_dir}: {CLASSIFIER} is missing")
        model = load_classifier(path)
    else:
        model, _ = config.spec.build("cpu")
        load_run_weights(model, run_dir)
        if config.spec.pooled:
            model = pool_with_classifier(model, run_dir, config.spec.pooled)
        model = model.to(device).eval()
    model.pixel_size_um = config.spec.pixel_size_um  # the working scale the predictor resamples micrographs to
    return model, config


def weights_file(run_dir: str | Path, spec: ModelSpec) -> Path:
    """The file of a run that holds its trained weights: :data:`ADAPTER`, or :data:`CLASSIFIER` for the classical
    family."""
    return Path(run_dir) / (CLASSIFIER if spec.family == "classical" else ADAPTER)


def load_run_weights(model, run_dir: str | Path) -> None:
    """Load the run's trained weights (:data:`ADAPTER`) into ``model``, a freshly built model of the run's spec (the
    network of a pooled run); :func:`load_run` and a run initialised from another one both load them here.

    Raises
    ------
    MetalsegError
        The file is missing, corrupt, or does not fit ``model``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from napari_metalseg.models.lora import load_trainable_state_dict

    adapter = Path(run_dir) / ADAPTER
    if not adapter.is_file():
        raise MetalsegError(f"{run_dir}: {ADAPTER} is missing")
    try:
        state = load_file(str(adapter))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MetalsegError(f"{adapter}: corrupt adapter file ({exc})") from None
    try:
        load_trainable_state_dict(model, state, source=str(adapter))
    except (RuntimeError, KeyError, ValueError) as exc:
        raise MetalsegError(f"{adapter}: does not fit the model in {CONFIG} ({exc})") from None


def write_history(run_dir: str | Path, history: list) -> None:
    """Write a run's history (one entry per step and per validation) as :data:`METRICS`, atomically."""
    atomic_write_text(Path(run_dir) / METRICS, json.dumps(history, indent=1, default=_json_default) + "\n")


def read_history(run_dir: str | Path) -> list[dict]:
    """A run's history (:data:`METRICS`; empty when it has none or it cannot be read)."""
    try:
        history = json.loads((Path(run_dir) / METRICS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [entry for entry in history if isinstance(entry, dict)] if isinstance(history, list) else []


def update_training(run_dir: str | Path, **provenance: Any) -> RunConfig:
    """Add ``provenance`` to the training record of a run's :data:`CONFIG` (atomically; the weights are kept)."""
    from dataclasses import replace

    config = read_run_config(run_dir)
    config = replace(config, training={**config.training, **provenance})
    write_run_config(run_dir, config)
    return config


def pool_with_classifier(network, run_dir: str | Path, weight: float):
    """The :class:`~napari_metalseg.models.pooled.PooledModel` of ``network`` and the run's :data:`CLASSIFIER`."""
    from napari_metalseg.models.classical import load_classifier
    from napari_metalseg.models.pooled import PooledModel

    path = Path(run_dir) / CLASSIFIER
    if not path.is_file():
        raise MetalsegError(f"{run_dir}: {CLASSIFIER} is missing (the run pools its {network.kind} with it)")
    return PooledModel(network=network, classifier=load_classifier(path), weight=weight)


FULL_MODEL = "model_full.safetensors"


def export_full_model(run_dir: str | Path, state: dict) -> Path:
    """Write ``model_full.safetensors``: every weight of the model with LoRA merged in (stand-alone)."""
    from safetensors.torch import save_file

    path = Path(run_dir) / FULL_MODEL
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "napari-metalseg-full", "version": str(FORMAT_VERSION)})
    return path
