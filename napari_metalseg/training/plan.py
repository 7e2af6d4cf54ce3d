"""Setting up a training run: rank, device, seeds, the validation images, the run it starts from and the provenance the
run records."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from napari_metalseg.data.samples import HELD_OUT, Sample, holdout_pixels
from napari_metalseg.data.scale import to_working_scale, working_pixel_size
from napari_metalseg.errors import MetalsegError
from napari_metalseg.io.sem import positive_number
from napari_metalseg.models.spec import ModelSpec
from napari_metalseg.phases import PhaseSet
from napari_metalseg.runs import INIT_FROM
from napari_metalseg.training.config import TrainConfig, model_spec


@dataclass(kw_only=True)
class RunPlan:
    """Everything a family's fit needs to know about one run, decided before any model is built.

    Attributes
    ----------
    out : Path
        The run directory.
    config : TrainConfig
    phases : PhaseSet
    samples : list of Sample
        The training images (their held-out pixels unlabelled when those validate).
    val_set : list of Sample or None
        The validation images (given, or the held-out pixels); ``None``: validate on ``samples``.
    source : str
        What validates: ``"val"``, ``"held-out pixels"`` or ``"train"``.
    training : dict
        The training settings and provenance the run's configuration records.
    spec : ModelSpec
        The model the run trains.
    device : str
        The resolved torch device.
    rank, world : int
        This process's rank and the number of processes (``torch.distributed``; 0 and 1 without it).
    scale_note : str
        The run's working scale in words, for the user (:func:`working_scale`).
    """

    out: Path
    config: TrainConfig
    phases: PhaseSet
    samples: list[Sample]
    val_set: list[Sample] | None
    source: str
    training: dict
    spec: ModelSpec
    device: str
    rank: int
    world: int
    scale_note: str = ""


def plan_run(
    samples: list[Sample],
    phases: PhaseSet,
    out: str | Path,
    config: TrainConfig,
    val_samples: list[Sample] | None = None,
    *,
    device: str,
) -> RunPlan:
    """Plan a run of ``config`` on ``device`` (resolved by :func:`~napari_metalseg.distributed.process_group`: the
    local rank's GPU under torchrun): seed torch, choose what validates.

    With ``config.physical_scale``, the training and validation images are resampled to the run's working scale
    (:func:`working_scale`). Without ``val_samples``, ``config.holdout`` of the labelled pixels (whole 32 px squares)
    are then set aside for validation (:func:`~napari_metalseg.data.samples.holdout_pixels`); with ``holdout=0``
    the training images validate.

    Raises
    ------
    MetalsegError
        When there is nothing to train on.
    """
    import torch

    if not samples:
        raise MetalsegError("no labelled images to train on")
    rank, world = _rank()
    torch.manual_seed(config.seed)
    spec = model_spec(config, phases)
    val_set = val_samples if val_samples else None
    source = "val"
    training = dict(asdict(config)) | {
        "train_images": [s.name for s in samples],
        "val_images": [s.name for s in val_set or []],
    }
    if config.init_from is not None:
        training[INIT_FROM] = init_source(config.init_from, spec, Path(out))
    working, scale_note = working_scale(samples, val_set, config)
    if working is not None:
        spec = replace(spec, pixel_size_um=working)
        samples = to_working_scale(samples, working)
        val_set = to_working_scale(val_set, working) if val_set else None
    if val_set is None and config.holdout > 0:
        samples, held = holdout_pixels(samples, len(phases), config.holdout, seed=config.seed)
        if held:
            val_set, source = held, HELD_OUT
            training["val_images"] = f"{config.holdout:.0%} of the labelled pixels of the training images"
    return RunPlan(
        out=Path(out),
        config=config,
        phases=phases,
        samples=samples,
        val_set=val_set,
        source=source if val_set else "train",
        training=training,
        spec=spec,
        device=device,
        rank=rank,
        world=world,
        scale_note=scale_note,
    )


def working_scale(samples: list[Sample], val_set: list[Sample] | None, config: TrainConfig) -> tuple[float | None, str]:
    """The working scale of a run (um per pixel, or ``None``: the micrographs are used as they are) and a sentence
    saying which, and why.

    The geometric mean of the training images' pixel sizes when ``config.physical_scale`` is on and every training
    and validation image states one (:func:`~napari_metalseg.data.scale.working_pixel_size`); a run continued from
    another (``init_from``) keeps that run's.
    """
    if not config.physical_scale:
        return None, "each micrograph is used at its own pixel size (physical scale off)"
    images = list(samples) + list(val_set or [])
    unknown = [s.name for s in images if positive_number(s.pixel_size_um) is None]
    if unknown:
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        return None, f"each micrograph is used at its own pixel size: {unknown[0]}{more} states no pixel size"
    if config.init_from is not None:
        from napari_metalseg.runs import read_run_config

        working = read_run_config(config.init_from).spec.pixel_size_um
        if working is None:
            return None, f"each micrograph is used at its own pixel size, as in {config.init_from}"
        source = f", that of {config.init_from}"
    else:
        working, source = working_pixel_size(samples), ""
    return working, f"every micrograph is resampled to {working * 1000:.3g} nm per pixel (the working scale{source})"


def init_source(run: str | Path, spec: ModelSpec, out: Path) -> dict:
    """Check that the run ``run`` can initialise a run of ``spec`` written to ``out``; return the provenance the new
    run records: ``{"run": path, "weights_sha256": ...}`` (the source's weights file,
    :func:`~napari_metalseg.runs.weights_file`).

    Raises
    ------
    MetalsegError
        ``run`` is not a run, is ``out`` itself (its weights would be overwritten), holds another model than
        ``spec`` (:meth:`~napari_metalseg.models.spec.ModelSpec.differences`), or has no weights file.
    """
    from napari_metalseg.runs import read_run_config, sha256_file, weights_file

    run = Path(run)
    source = read_run_config(run)
    if run.resolve() == out.resolve():
        raise MetalsegError(f"init_from {run}: is the run directory to write; write the new run to another folder")
    differences = source.spec.differences(spec)
    if differences:
        raise MetalsegError(
            f"init_from {run}: its model differs from the one to train (the run's vs this one's: "
            f"{'; '.join(differences)}); train that model or start fresh"
        )
    weights = weights_file(run, source.spec)
    if not weights.is_file():
        raise MetalsegError(f"init_from {run}: {weights.name} is missing")
    return {"run": str(run.resolve()), "weights_sha256": sha256_file(weights)}


def _rank() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
