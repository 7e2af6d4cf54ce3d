"""Training settings: :class:`TrainConfig` (validated once, with each family's defaults), the
:class:`~napari_metalseg.models.spec.ModelSpec` a run of it writes, and the settings derived from it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from napari_metalseg.data.samples import Sample
from napari_metalseg.errors import MetalsegError
from napari_metalseg.models.options import (
    check_finetune,
    check_finite_number,
    check_positive_number,
    check_training_guidance,
)
from napari_metalseg.models.registry import (
    DEFAULT_BUDGET_S,
    DEFAULT_IMG_SIZE,
    DEFAULT_MODEL,
    EMA_DECAY,
    FAMILIES,
    MODEL_LABELS,
    PHYSICAL_SCALE_FAMILIES,
    POOL_MARGIN,
    POOL_WEIGHT,
    POOLED_FAMILIES,
    PSEUDO_WEIGHT,
    TRAIN_DEFAULTS,
    check_model_options,
    family_of,
)
from napari_metalseg.models.sam import check_img_size
from napari_metalseg.models.spec import ModelSpec
from napari_metalseg.phases import PhaseSet
from napari_metalseg.precision import native_bf16


@dataclass
class TrainConfig:
    """Training arguments (the CLI flags and the training widget's fields map one-to-one onto these).

    ``None`` fields take the model family's defaults (:mod:`napari_metalseg.models.registry`) when the config is
    made; a setting the family cannot honour, or an invalid value, raises one
    :class:`~napari_metalseg.errors.MetalsegError` naming the field and the value
    (:mod:`napari_metalseg.models.options`).

    ``init_from`` names a run directory whose trained weights initialise the model before the first step: retraining
    continues from that model (it must be the model this config builds: :meth:`from_spec` makes such a config;
    checked when the run is planned). It does not go with resuming a run (``train(resume=True)``).

    ``pool_classical`` fits the classical pixel classifier beside a CNN; the run keeps the pool only when the
    classifier validates within ``pool_margin`` points of mean Dice of the network
    (:func:`~napari_metalseg.models.pooled.pool_weight`; a margin of 100 always pools, one of -100 never does).

    ``ema`` is the decay of the moving average of the weights that a gradient run validates and keeps
    (:class:`~napari_metalseg.training.averaging.WeightAverage`; 0: the last weights, no average). ``pseudo`` weighs
    the pseudo-labels that average gives the pixels left unlabelled (:mod:`napari_metalseg.training.pseudo`; 0: none;
    full masks leave none).

    ``physical_scale`` resamples every micrograph to one pixel size, the run's working scale, when all the training
    (and validation) micrographs state theirs (:mod:`napari_metalseg.data.scale`); prediction then resamples each
    micrograph of known pixel size to it. Off: every micrograph is used at its own pixel size. Default: on for the
    CNNs (measured on ELU-Net: +3 to +4 points of mean Dice at other magnifications, docs/quality.md); off for the
    classical pixel classifier alone (its filter features lost up to 9 points on resampled micrographs) and for SAM
    (not measured here: no pretrained weights, no GPU; the study fed SAM each micrograph as it is). A run continued
    from another (``init_from``) works at that run's scale unless told otherwise.
    """

    model: str | None = None
    checkpoint: str | None = None
    img_size: int | None = None
    width: int | None = None
    depth: int | None = None
    budget_s: float | None = None
    finetune: str | None = None
    lora_rank: int = 8
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    lora_mlp: bool = False
    guidance: str = "none"
    steps: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float = 1e-2
    warmup: float = 0.05
    val_every: int | None = None
    device: str = "auto"
    seed: int = 0
    augment: bool = True
    holdout: float = 0.1
    bf16: bool | None = None
    ratio_noise: float = 0.05
    ratio_dropout: float = 0.25
    box_probability: float = 0.5
    pool_classical: bool | None = None
    pool_margin: float = POOL_MARGIN
    ema: float = EMA_DECAY
    pseudo: float = PSEUDO_WEIGHT
    physical_scale: bool | None = None
    init_from: str | None = None

    def __post_init__(self) -> None:
        if self.init_from is not None:
            from napari_metalseg.runs import CONFIG, is_run

            self.init_from = str(self.init_from)
            if not is_run(self.init_from):
                raise MetalsegError(f"init_from {self.init_from}: not a trained run ({CONFIG} is missing)")
        needs_base = self.finetune in ("lora", "decoder") and not self.checkpoint
        if needs_base and (self.model is None or family_of(self.model).name == "sam"):
            raise MetalsegError(
                f"finetune {self.finetune!r} needs a pretrained checkpoint (the base it adapts); "
                "without one use finetune 'full'"
            )
        if self.model is None:  # the measured CPU default, or the SAM kind of the checkpoint
            self.model = checkpoint_kind(self.checkpoint) if self.checkpoint else DEFAULT_MODEL
        family = family_of(self.model)
        check_training_guidance(self.guidance)
        check_model_options(
            self.model,
            guidance=self.encoder_guidance,
            finetune=self.finetune,
            checkpoint=self.checkpoint,
            boxes=self.uses_boxes,
        )
        if family.name != "sam":
            self.finetune = "full"
        if self.physical_scale is None and self.init_from is not None:  # the scale of the run continued
            from napari_metalseg.runs import read_run_config

            self.physical_scale = read_run_config(self.init_from).spec.pixel_size_um is not None
        if self.physical_scale is None:
            self.physical_scale = family.name in PHYSICAL_SCALE_FAMILIES
        self.physical_scale = bool(self.physical_scale)
        if self.pool_classical is None:
            self.pool_classical = family.name in POOLED_FAMILIES
        elif self.pool_classical and family.name not in POOLED_FAMILIES:
            raise MetalsegError(
                f"pool_classical: the {MODEL_LABELS[self.model]} is not pooled with the classical classifier "
                f"(only the CNNs: {'/'.join(FAMILIES['cnn'].kinds)})"
            )
        self.pool_margin = check_finite_number("pool_margin", self.pool_margin, "Dice points")
        self.ema = check_finite_number("ema", self.ema)
        if not 0.0 <= self.ema < 1.0:
            raise MetalsegError(f"ema {self.ema:g}: the decay of the weight average must lie in [0, 1) (0: none)")
        self.pseudo = check_finite_number("pseudo", self.pseudo)
        if self.pseudo < 0:
            raise MetalsegError(f"pseudo {self.pseudo:g}: the weight of the pseudo-labels must be >= 0 (0: none)")
        if family.name == "cnn" and self.steps is None and self.epochs is None and self.budget_s is None:
            self.budget_s = DEFAULT_BUDGET_S
        self.batch_size = TRAIN_DEFAULTS[family.name]["batch_size"] if self.batch_size is None else self.batch_size
        self.lr = TRAIN_DEFAULTS[family.name]["lr"] if self.lr is None else self.lr
        if self.finetune is None:
            self.finetune = "lora" if self.checkpoint else "full"
        check_finetune(self.finetune)
        if self.img_size is None:
            self.img_size = DEFAULT_IMG_SIZE[self.model]
        check_img_size(self.img_size)
        if self.budget_s is not None:
            check_positive_number("budget_s", self.budget_s, "seconds")
        cnns = "/".join(FAMILIES["cnn"].kinds)
        for name in ("width", "depth"):
            value = getattr(self, name)
            if value is not None and (family.name != "cnn" or value < 1):
                raise MetalsegError(f"{name} {value}: applies to {cnns} only, as a positive number")
        for name in ("steps", "epochs", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise MetalsegError(f"{name} {value}: must be at least 1")
        check_positive_number("lr", self.lr)

    @classmethod
    def from_spec(cls, spec: ModelSpec, **settings) -> TrainConfig:
        """The config that trains the model of ``spec`` again (its kind, size, guidance, CNN width and depth, SAM
        fine-tuning, LoRA and base checkpoint, the pool with the classical classifier); ``settings`` give the other
        fields (steps, lr, ``init_from`` ...) and may repeat architecture fields (``guidance="ratio+box"`` for a
        ``ratio`` model adds box prompts); a run checks that what it builds is ``spec``
        (``init_from``: :meth:`ModelSpec.differences <napari_metalseg.models.spec.ModelSpec.differences>`)."""
        family = spec.family
        architecture: dict = {"model": spec.kind, "img_size": spec.img_size, "guidance": spec.guidance}
        if family == "cnn":
            architecture |= {"width": spec.width, "depth": spec.depth}
        if family == "sam":
            architecture |= {
                "checkpoint": spec.checkpoint,
                "finetune": spec.finetune,
                "lora_rank": spec.lora_rank,
                "lora_alpha": spec.lora_alpha,
                "lora_dropout": spec.lora_dropout,
                "lora_mlp": spec.lora_mlp,
            }
        if family in POOLED_FAMILIES:
            architecture["pool_classical"] = bool(spec.pooled)
        return cls(**(architecture | settings))

    @property
    def encoder_guidance(self) -> str:
        """The guidance module: ``"none"``, ``"ratio"`` or ``"spatial"``."""
        return self.guidance.split("+")[0] if self.guidance != "box" else "none"

    @property
    def uses_boxes(self) -> bool:
        """Whether training prompts with boxes derived from the ground truth."""
        return "box" in self.guidance

    def total_steps(self, samples: list[Sample]) -> int:
        """Optimizer steps of the run: ``steps``, else ``epochs`` (10 by default) over the training pixels; with a
        time budget and neither given, as many as the budget allows (the schedule follows the clock)."""
        if self.steps is not None:
            return self.steps
        if self.budget_s is not None and self.epochs is None:
            return UNTIL_BUDGET
        pixels = sum(s.image.size for s in samples)
        per_epoch = max(1, math.ceil(pixels / (self.img_size**2) / self.batch_size))
        return per_epoch * (self.epochs or 10)


def model_spec(config: TrainConfig, phases: PhaseSet) -> ModelSpec:
    """The :class:`~napari_metalseg.models.spec.ModelSpec` a run of ``config`` writes (the base checkpoint by path
    and sha256)."""
    from napari_metalseg.runs import sha256_file

    return ModelSpec(
        kind=config.model,
        img_size=config.img_size,
        phases=phases.to_json(),
        finetune=config.finetune,
        guidance=config.encoder_guidance,
        lora_rank=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        lora_mlp=config.lora_mlp,
        checkpoint=str(Path(config.checkpoint).resolve()) if config.checkpoint else None,
        checkpoint_sha256=sha256_file(config.checkpoint) if config.checkpoint else None,
        width=config.width,
        depth=config.depth,
        pooled=POOL_WEIGHT if config.pool_classical else 0.0,
    )


UNTIL_BUDGET = 10**9
""":meth:`TrainConfig.total_steps` of a run that ends when its time budget is spent (no step count)."""


def use_bf16(config: TrainConfig, device: str) -> bool:
    """bfloat16 autocast in training: on CUDA always; on a CPU with native bf16 (AVX512-BF16 / AMX) for the CNNs
    (1.4-1.5x faster steps measured here; :func:`napari_metalseg.precision.native_bf16`); ``config.bf16`` overrides.
    SAM models train in fp32 on a CPU."""
    if config.bf16 is not None:
        return bool(config.bf16)
    if device.startswith("cuda"):
        return True
    if family_of(config.model).name != "cnn":
        return False
    return native_bf16(device)


def checkpoint_kind(checkpoint: str) -> str:
    """The SAM kind (``vit_b``, ...) of a checkpoint file, from its tensor shapes."""
    from napari_metalseg.models.checkpoint import detect_kind, read_sam_state_dict

    if not Path(checkpoint).is_file():
        raise MetalsegError(f"checkpoint {checkpoint}: no such file")
    return detect_kind(read_sam_state_dict(checkpoint))
