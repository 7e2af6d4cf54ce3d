"""The run format: one place that writes and reads a trained model's run directory.

::

    RUN/config.json            model spec (kind, img size, phases, fine-tune mode, LoRA, guidance, base checkpoint
                               path + sha256), training arguments, final metrics
    RUN/adapter.safetensors    torch families: only what was trained (LoRA, decoder, guidance encoders; the whole
                               network for U-Net3+ / ELU-Net), never a frozen SAM base
    RUN/classifier.txt         the classical pixel classifier instead: our JSON header + LightGBM's text model
    RUN/metrics.json           history of validation metrics (optional)
    RUN/resume.pt              optimizer + step for ``--resume`` (our own file, read with weights_only=True)

Every file is written atomically, so a crash mid-save leaves the previous good run intact.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from napari_metalseg.errors import MetalsegError
from napari_metalseg.io.atomic import atomic_path, atomic_write_text
from napari_metalseg.models.registry import ADAPTER, CLASSIFIER, CNN_DEFAULTS, family_of
from napari_metalseg.phases import PhaseSet

CONFIG = "config.json"
METRICS = "metrics.json"
RESUME = "resume.pt"
FORMAT_VERSION = 1


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model before its trained weights are loaded.

    ``kind`` is a model name of :data:`~napari_metalseg.models.registry.MODEL_KINDS`; ``width`` and ``depth`` apply to
    the CNNs, ``options`` holds further family settings (e.g. ``deep_supervision``, ``cgm`` for U-Net3+).
    """

    kind: str = "tiny"
    img_size: int = 256
    phases: list[dict] = field(default_factory=list)
    finetune: str = "full"
    guidance: str = "none"
    lora_rank: int = 8
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    lora_mlp: bool = False
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    width: int | None = None
    depth: int | None = None
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        family = family_of(self.kind)
        if family.name == "cnn":
            self.width = self.width or CNN_DEFAULTS[self.kind]["width"]
            self.depth = self.depth or CNN_DEFAULTS[self.kind]["depth"]

    @property
    def family(self) -> str:
        return family_of(self.kind).name

    @property
    def phase_set(self) -> PhaseSet:
        return PhaseSet.from_json(self.phases)

    def build(self, device: str = "cpu", seed: int = 0):
        """Build the (untrained) model of this spec, loading the base checkpoint when there is one.

        Returns ``(model, report)``; ``report`` is the checkpoint :class:`LoadReport` or ``None``. The classical pixel
        classifier has no untrained form: it is fitted (:func:`napari_metalseg.models.classical.fit_classifier`).
        """
        family = self.family
        if family == "classical":
            raise MetalsegError("the classical pixel classifier is fitted, not built: train it first")
        if family == "cnn":
            from napari_metalseg.models.elunet import build_elunet
            from napari_metalseg.models.unet import build_unet
            from napari_metalseg.models.unet3plus import build_unet3plus

            builder = {"unet": build_unet, "unet3plus": build_unet3plus, "elunet": build_elunet}[self.kind]
            model = builder(
                num_phases=len(self.phases),
                img_size=self.img_size,
                width=self.width,
                depth=self.depth,
                guidance=self.guidance,
                seed=seed,
                **self.options,
            )
            return model.to(device), None
        from napari_metalseg.models.phase_sam import build_phase_sam

        checkpoint = self.checkpoint
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise MetalsegError(f"base checkpoint {checkpoint} of this run is missing; the adapter needs it")
        model, report = build_phase_sam(
            kind=self.kind,
            img_size=self.img_size,
            num_phases=len(self.phases),
            checkpoint=checkpoint,
            guidance=self.guidance,
            finetune=self.finetune,
            lora_rank=self.lora_rank,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            lora_mlp=self.lora_mlp,
        )
        return model.to(device), report


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


def save_run(
    run_dir: str | Path,
    spec: ModelSpec,
    state,
    training: dict | None = None,
    metrics: dict | None = None,
    history: list | None = None,
) -> Path:
    """Write the weights, then config.json (+ metrics.json), each atomically.

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
    config = {
        "format_version": FORMAT_VERSION,
        "model": asdict(spec),
        "training": training or {},
        "metrics": metrics or {},
    }
    atomic_write_text(run_dir / CONFIG, json.dumps(config, indent=2, default=_json_default) + "\n")
    if history is not None:
        atomic_write_text(run_dir / METRICS, json.dumps(history, indent=1, default=_json_default) + "\n")
    return run_dir


def _json_default(value: object) -> object:
    try:
        return float(value)  # numpy scalars
    except (TypeError, ValueError):
        return str(value)


def read_run_config(run_dir: str | Path) -> dict:
    """The parsed config.json of a run, validated."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MetalsegError(f"{run_dir}: run directory does not exist")
    path = run_dir / CONFIG
    if not path.is_file():
        raise MetalsegError(f"{run_dir}: not a trained run (config.json is missing)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        spec = ModelSpec(**config["model"])
        spec.phase_set  # noqa: B018  (validates the phases)
    except (OSError, ValueError, KeyError, TypeError, MetalsegError) as exc:
        raise MetalsegError(f"{path}: unreadable run configuration ({exc})") from None
    config["model"] = spec
    return config


def load_run(run_dir: str | Path, device: str = "cpu"):
    """Rebuild a trained model from its run directory.

    Returns
    -------
    model
        A model of the run's family (:class:`PhaseSAM`, :class:`PhaseCNN` or :class:`PixelClassifier`), in eval mode,
        on ``device``.
    config : dict
        The run's config.json, with ``config["model"]`` as a :class:`ModelSpec`.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from napari_metalseg.models.lora import load_trainable_state_dict

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    if config["model"].family == "classical":
        from napari_metalseg.models.classical import load_classifier

        path = run_dir / CLASSIFIER
        if not path.is_file():
            raise MetalsegError(f"{run_dir}: {CLASSIFIER} is missing")
        return load_classifier(path), config
    adapter = run_dir / ADAPTER
    if not adapter.is_file():
        raise MetalsegError(f"{run_dir}: adapter.safetensors is missing")
    try:
        state = load_file(str(adapter))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MetalsegError(f"{adapter}: corrupt adapter file ({exc})") from None
    model, _ = config["model"].build("cpu")
    try:
        load_trainable_state_dict(model, state, source=str(adapter))
    except (RuntimeError, KeyError, ValueError) as exc:
        raise MetalsegError(f"{adapter}: does not fit the model in config.json ({exc})") from None
    return model.to(device).eval(), config


FULL_MODEL = "model_full.safetensors"


def export_full_model(run_dir: str | Path, state: dict) -> Path:
    """Write ``model_full.safetensors``: every weight of the model with LoRA merged in (stand-alone)."""
    from safetensors.torch import save_file

    path = Path(run_dir) / FULL_MODEL
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "napari-metalseg-full", "version": str(FORMAT_VERSION)})
    return path
