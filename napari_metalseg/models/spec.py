"""The one description of a model's architecture: :class:`ModelSpec`.

A run directory stores its model as a :class:`ModelSpec` (:mod:`napari_metalseg.runs`); a built model reports what
it is in the same vocabulary (``model.spec_fields()``, a dict of :class:`ModelSpec` field names), and
:func:`builder_arguments` is the one mapping from those fields to the family builder's keyword arguments
(``model.config`` of :class:`~.phase_sam.PhaseSAM` and :class:`~.cnn.PhaseCNN` is derived through it).

Importing this module is cheap (no torch).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from napari_metalseg.errors import MetalsegError
from napari_metalseg.models.registry import CNN_DEFAULTS, family_of
from napari_metalseg.phases import PhaseSet


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model before its trained weights are loaded.

    ``kind`` is a model name of :data:`~napari_metalseg.models.registry.MODEL_KINDS`; ``width`` and ``depth`` apply to
    the CNNs (their defaults are filled in), ``options`` holds further family settings (e.g. ``deep_supervision``,
    ``cgm`` for U-Net3+); ``finetune`` and the ``lora_*`` settings apply to SAM. ``pooled`` is the weight of the
    classical pixel classifier trained with a CNN on the same labels (:mod:`.pooled`; 0: the CNN alone).
    ``pixel_size_um`` is the model's working scale (:mod:`napari_metalseg.data.scale`): the pixel size (um) every
    micrograph was resampled to for training, and is resampled to for prediction (``None``: as they are).
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
    pooled: float = 0.0
    pixel_size_um: float | None = None

    def __post_init__(self) -> None:
        if self.pixel_size_um is not None:
            size = self.pixel_size_um
            if isinstance(size, bool) or not isinstance(size, (int, float)) or not 0 < size < float("inf"):
                raise MetalsegError(f"pixel_size_um {size!r}: the working scale must be a positive number of um")
            object.__setattr__(self, "pixel_size_um", float(size))
        if family_of(self.kind).name == "cnn":
            object.__setattr__(self, "width", self.width or CNN_DEFAULTS[self.kind]["width"])
            object.__setattr__(self, "depth", self.depth or CNN_DEFAULTS[self.kind]["depth"])

    @property
    def family(self) -> str:
        """The family name (``sam``, ``cnn`` or ``classical``) of :attr:`kind`."""
        return family_of(self.kind).name

    @property
    def phase_set(self) -> PhaseSet:
        """The phases (validated)."""
        return PhaseSet.from_json(self.phases)

    def differences(self, other: ModelSpec) -> list[str]:
        """What differs between this spec and ``other``, one ``"<field> <mine> vs <other's>"`` per field (empty: the
        same model, so the weights of one fit the other).

        Every field is compared; the phases by their names (colours are for display), the base checkpoint by its
        sha256 when both specs have one (the same file may have moved), the pool with the classical classifier by
        whether there is one (its weight is decided anew at the end of each run, the network's weights are the
        same). The working scale (``pixel_size_um``) is not compared: the weights fit whatever scale, and a run
        continued from another keeps that one's.
        """
        found = []
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if f.name == "phases":
                mine, theirs = [p.get("name") for p in mine], [p.get("name") for p in theirs]
            elif f.name == "checkpoint" and self.checkpoint_sha256 and other.checkpoint_sha256:
                continue
            elif f.name == "checkpoint_sha256" and not (self.checkpoint_sha256 and other.checkpoint_sha256):
                continue
            elif f.name == "pooled":
                mine, theirs = bool(mine), bool(theirs)
            elif f.name == "pixel_size_um":
                continue
            if mine != theirs:
                found.append(f"{f.name} {mine!r} vs {theirs!r}")
        return found

    def builder_arguments(self) -> dict[str, Any]:
        """The family builder's keyword arguments for this spec (without the base checkpoint and the seed)."""
        described = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_ARCHITECTURE}
        return builder_arguments(described, len(self.phases))

    def build(self, device: str = "cpu", seed: int = 0):
        """Build the (untrained) model of this spec, loading the base checkpoint when there is one.

        Parameters
        ----------
        device : str
            Where the model is moved.
        seed : int
            Seed of the random initialisation of a CNN (a SAM model is always built with seed 0).

        Returns
        -------
        tuple
            ``(model, report)``; ``report`` is the checkpoint :class:`~.checkpoint.LoadReport` or ``None``.

        Raises
        ------
        MetalsegError
            For the classical pixel classifier, which has no untrained form: it is fitted
            (:func:`napari_metalseg.models.classical.fit_classifier`); or when the base checkpoint is missing.
        """
        family = self.family
        if family == "classical":
            raise MetalsegError("the classical pixel classifier is fitted, not built: train it first")
        arguments = self.builder_arguments()
        if family == "cnn":
            from napari_metalseg.models.elunet import build_elunet
            from napari_metalseg.models.unet import build_unet
            from napari_metalseg.models.unet3plus import build_unet3plus

            builder = {"unet": build_unet, "unet3plus": build_unet3plus, "elunet": build_elunet}[self.kind]
            return builder(**arguments, seed=seed).to(device), None
        from napari_metalseg.models.phase_sam import build_phase_sam

        checkpoint = self.checkpoint
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise MetalsegError(f"base checkpoint {checkpoint} of this run is missing; the adapter needs it")
        model, report = build_phase_sam(**arguments, checkpoint=checkpoint)
        return model.to(device), report


_NOT_ARCHITECTURE = ("phases", "checkpoint", "checkpoint_sha256", "pooled", "pixel_size_um")
""":class:`ModelSpec` fields that are not reported by a built model (``spec_fields()``)."""


def builder_arguments(described: Mapping[str, Any], num_phases: int) -> dict[str, Any]:
    """The keyword arguments of a family builder for an architecture described in :class:`ModelSpec` field names.

    The one mapping from a spec to a builder: :meth:`ModelSpec.build` uses it, and so does ``config`` of the built
    models (from their ``spec_fields()``).

    Parameters
    ----------
    described : mapping
        :class:`ModelSpec` fields (``kind`` required; the others take the :class:`ModelSpec` defaults), without
        ``phases`` and the checkpoint.
    num_phases : int
        Number of phases ``K``.

    Returns
    -------
    dict
        For SAM the arguments of :func:`~.phase_sam.build_phase_sam`, for a CNN those of its family builder
        (``num_phases``, ``img_size``, ``width``, ``depth``, ``guidance`` and the ``options``); no checkpoint, no seed.

    Raises
    ------
    MetalsegError
        For a name that is not an architecture field of :class:`ModelSpec`, or a classical classifier (no builder).
    """
    unknown = sorted(set(described) - set(_DEFAULTS))
    if unknown:
        raise MetalsegError(f"model description {dict(described)!r}: unknown field(s) {', '.join(unknown)}")
    if "kind" not in described:
        raise MetalsegError(f"model description {dict(described)!r}: the model 'kind' is missing")
    spec = {**_DEFAULTS, **described}
    kind = spec["kind"]
    family = family_of(kind).name
    if family == "cnn":
        return {
            "num_phases": num_phases,
            "img_size": spec["img_size"],
            "width": spec["width"] or CNN_DEFAULTS[kind]["width"],
            "depth": spec["depth"] or CNN_DEFAULTS[kind]["depth"],
            "guidance": spec["guidance"],
            **spec["options"],
        }
    if family == "sam":
        return {
            "kind": kind,
            "img_size": spec["img_size"],
            "num_phases": num_phases,
            "guidance": spec["guidance"],
            "finetune": spec["finetune"],
            "lora_rank": spec["lora_rank"],
            "lora_alpha": spec["lora_alpha"],
            "lora_dropout": spec["lora_dropout"],
            "lora_mlp": spec["lora_mlp"],
        }
    raise MetalsegError("the classical pixel classifier is fitted, not built: train it first")


_DEFAULTS: dict[str, Any] = {
    f.name: f.default if f.default_factory is MISSING else f.default_factory()
    for f in fields(ModelSpec)
    if f.name not in _NOT_ARCHITECTURE
}
"""The architecture fields of :class:`ModelSpec` with their defaults."""
