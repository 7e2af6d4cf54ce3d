"""The run format: one place that writes and reads a trained model's run directory.

::

    RUN/config.json            model spec (kind, img size, phases, fine-tune mode, LoRA, guidance, base checkpoint
                               path + sha256), training arguments, final metrics
    RUN/adapter.safetensors    only what was trained (LoRA, decoder, guidance encoders), never the frozen base
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
from napari_metalseg.phases import PhaseSet

CONFIG = "config.json"
ADAPTER = "adapter.safetensors"
METRICS = "metrics.json"
RESUME = "resume.pt"
FORMAT_VERSION = 1


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model before its trained weights are loaded."""

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

    @property
    def phase_set(self) -> PhaseSet:
        return PhaseSet.from_json(self.phases)

    def build(self, device: str = "cpu"):
        """Build the (untrained) model of this spec, loading the base checkpoint when there is one."""
        from napari_metalseg.models.phase_sam import build_phase_sam

        checkpoint = self.checkpoint
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise MetalsegError(f"base checkpoint {checkpoint} of this run is missing; the adapter needs it")
        model, report = build_phase_sam(
            kind=self.kind, img_size=self.img_size, num_phases=len(self.phases), checkpoint=checkpoint,
            guidance=self.guidance, finetune=self.finetune, lora_rank=self.lora_rank, lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout, lora_mlp=self.lora_mlp,
        )
        return model.to(device), report


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_run(run_dir: str | Path, spec: ModelSpec, state: dict, training: dict | None = None,
             metrics: dict | None = None, history: list | None = None) -> Path:
    """Write config.json + adapter.safetensors (+ metrics.json), each atomically; the adapter first."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    with atomic_path(run_dir / ADAPTER) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "napari-metalseg", "version": str(FORMAT_VERSION)})
    config = {"format_version": FORMAT_VERSION, "model": asdict(spec), "training": training or {},
              "metrics": metrics or {}}
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
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MetalsegError(f"{path}: unreadable run configuration ({exc})") from None
    config["model"] = spec
    return config


def load_run(run_dir: str | Path, device: str = "cpu"):
    """Rebuild a trained model from its run directory.

    Returns
    -------
    model : PhaseSAM
        In eval mode, on ``device``.
    config : dict
        The run's config.json, with ``config["model"]`` as a :class:`ModelSpec`.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from napari_metalseg.models.lora import load_trainable_state_dict

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    adapter = run_dir / ADAPTER
    if not adapter.is_file():
        raise MetalsegError(f"{run_dir}: adapter.safetensors is missing")
    try:
        state = load_file(str(adapter))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MetalsegError(f"{adapter}: corrupt adapter file ({exc})") from None
    model, _ = config["model"].build("cpu")
    try:
        load_trainable_state_dict(model, state)
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
