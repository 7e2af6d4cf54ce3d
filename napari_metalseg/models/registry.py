"""The model registry: every model name maps to its family, and each family to its builder and run-file format.

The trainer, the :class:`~napari_metalseg.predict.Predictor`, ``study`` and the napari docks ask this module
what a model name can do (LoRA, boxes, guidance, input size) instead of branching on names themselves.

Families
--------
``sam``
    Segment Anything (``tiny`` from scratch, ``vit_b`` / ``vit_l`` / ``vit_h`` from a checkpoint), optionally with
    LoRA (:mod:`.phase_sam`). Box prompts, ratio and spatial guidance.
``cnn``
    The study's task-specific networks, Enhanced U-Net3+ (``unet3plus``, :mod:`.unet3plus`) and Enhanced ELU-Net
    (``elunet``, :mod:`.elunet`), trained from scratch. Ratio and spatial guidance at the bottleneck; no boxes.
``classical``
    The classical pixel classifier (``classical``, :mod:`.classical`): multiscale filter features + gradient-boosted
    trees, what ilastik / Trainable Weka users know. Fitted in seconds, no guidance, no boxes; stored as text.

Importing this module is cheap (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass

from napari_metalseg.errors import MetalsegError
from napari_metalseg.models.options import check_choice
from napari_metalseg.models.sam import SAM_KINDS


@dataclass(frozen=True)
class Family:
    """What a model family supports.

    Attributes
    ----------
    name : str
        ``sam``, ``cnn`` or ``classical``.
    kinds : tuple of str
        The model names of the family.
    label : str
        How the family is shown to users.
    weights : str
        File of the run directory holding the trained state.
    gradient : bool
        Trained by the gradient loop of :func:`napari_metalseg.training.train` (else fitted in one call).
    guidance : tuple of str
        Guidance modules the family can carry (``none`` always).
    boxes : bool
        Has a prompt encoder (box prompts in prediction and training).
    """

    name: str
    kinds: tuple[str, ...]
    label: str
    weights: str
    gradient: bool = True
    guidance: tuple[str, ...] = ("none",)
    boxes: bool = False


ADAPTER = "adapter.safetensors"
CLASSIFIER = "classifier.txt"

FAMILIES: dict[str, Family] = {
    "sam": Family(
        "sam", SAM_KINDS, "Segment Anything (+ LoRA)", ADAPTER, guidance=("none", "ratio", "spatial"), boxes=True
    ),
    "cnn": Family(
        "cnn", ("unet", "unet3plus", "elunet"), "task-specific CNN", ADAPTER, guidance=("none", "ratio", "spatial")
    ),
    "classical": Family("classical", ("classical",), "classical pixel classifier", CLASSIFIER, gradient=False),
}

MODEL_KINDS: tuple[str, ...] = tuple(kind for family in FAMILIES.values() for kind in family.kinds)
"""Every name ``--model`` accepts."""

MODEL_LABELS: dict[str, str] = {
    "tiny": "compact SAM from scratch (tiny)",
    "vit_b": "SAM ViT-B (checkpoint)",
    "vit_l": "SAM ViT-L (checkpoint)",
    "vit_h": "SAM ViT-H (checkpoint)",
    "unet": "U-Net",
    "unet3plus": "Enhanced U-Net3+",
    "elunet": "Enhanced ELU-Net",
    "classical": "classical pixel classifier (features + boosted trees)",
}

DEFAULT_IMG_SIZE: dict[str, int] = {
    "tiny": 256,
    "vit_b": 512,
    "vit_l": 512,
    "vit_h": 512,
    "unet": 128,
    "unet3plus": 128,
    "elunet": 128,
    "classical": 1024,
}
"""Training crop (model input) size of each model when none is given."""

DEFAULT_MODEL = "elunet"
"""What ``metalseg train``, the Training dock and the demo train without a SAM checkpoint (docs/quality.md says why);
with a checkpoint the default is LoRA on the checkpoint's SAM kind."""

DEFAULT_BUDGET_S = 300.0
"""Training time (s) of the CNNs when neither steps, epochs nor a budget is given: "train for 5 minutes"
(docs/quality.md: +4.2 points of mean Dice over 3 minutes on held-out micrographs from full masks, 2 CPU cores)."""

EMA_DECAY = 0.995
"""Decay of the moving average of the weights a gradient run validates and keeps (``TrainConfig.ema``;
:mod:`napari_metalseg.training.averaging`): about the last 200 steps. docs/quality.md measures it on the CPU default."""

PSEUDO_WEIGHT = 0.0
"""Weight of the pseudo-labels the weight average gives the unlabelled pixels (``TrainConfig.pseudo``;
:mod:`napari_metalseg.training.pseudo`): off by default. docs/quality.md measured 1.0 from scribbles: +1.1 points at
a fixed step count, nothing in a 5-minute budget on 2 CPU cores (the teacher's forward pass costs a fifth of the
steps)."""

PSEUDO_CONFIDENCE = 0.9
"""Probability at which the weight average's phase of an unlabelled pixel becomes its pseudo-label."""

TRAIN_DEFAULTS: dict[str, dict] = {
    "sam": {"batch_size": 2, "lr": 1e-3},
    "cnn": {"batch_size": 8, "lr": 2e-3},
    "classical": {"batch_size": 1, "lr": 1e-3},
}
"""Batch size and learning rate of each family when none is given."""

POOL_WEIGHT = 0.5
"""Weight of the classical pixel classifier when a CNN is pooled with it (:mod:`.pooled`, the default for the CNNs):
equal trust in both; where the classifier validates as well as the network or better it leads with
``(1 + POOL_WEIGHT) / 2`` (:func:`.pooled.pool_weight`). docs/quality.md measures 0 (the network alone), 0.25, 0.5,
0.75 and 1: 0.5 costs 1 to 3 points of mean Dice on held-out steel micrographs and gains 3 to 6 on the real SEM
image, where 0.75 gains 0.1 to 0.5 more."""

POOL_MARGIN = 3.0
"""A CNN run keeps the classical classifier it was fitted with only when the classifier validates within this many
points of mean Dice of the network on the run's validation pixels (:func:`.pooled.pool_weight`); further behind,
the run's model is the network alone. docs/quality.md: the gap was 0 on the real SEM image (both 100 % on held-out
scribbles, where pooling gains 5.5 points) and 8 to 20 points on steel (where the network alone is 1.6 to 2.2
points better)."""

POOLED_FAMILIES = ("cnn",)
"""Families whose models are pooled with the classical classifier by default (``pool_classical``)."""

PHYSICAL_SCALE_FAMILIES = ("cnn",)
"""Families trained at one physical scale by default (``physical_scale``): where it was measured (docs/quality.md)."""

CNN_DEFAULTS: dict[str, dict] = {
    "unet": {"width": 16, "depth": 4},
    "unet3plus": {"width": 8, "depth": 4},
    "elunet": {"width": 8, "depth": 4},
}
"""Width (base channels) and depth (down-sampling steps: depth + 1 resolution levels) of the CNNs by default."""


def family_of(kind: str) -> Family:
    """The :class:`Family` of a model name; one clear error for an unknown name."""
    check_choice("model", kind, MODEL_KINDS)
    return next(family for family in FAMILIES.values() if kind in family.kinds)


def check_model_options(
    kind: str,
    *,
    guidance: str = "none",
    finetune: str | None = None,
    checkpoint: str | None = None,
    boxes: bool = False,
) -> None:
    """Refuse option combinations a family cannot honour, with one message a GUI user can read too."""
    family = family_of(kind)
    if guidance not in family.guidance:
        raise MetalsegError(
            f"the {MODEL_LABELS[kind]} has no {guidance!r} guidance; it supports: {', '.join(family.guidance)}"
        )
    if boxes and not family.boxes:
        raise MetalsegError(f"box prompts need a SAM model; the {MODEL_LABELS[kind]} has no prompt encoder")
    if family.name != "sam":
        if checkpoint:
            raise MetalsegError(f"a SAM checkpoint does not apply to the {MODEL_LABELS[kind]} (trained from scratch)")
        if finetune not in (None, "full"):
            raise MetalsegError(
                f"fine-tune mode {finetune!r} applies to SAM models; the {MODEL_LABELS[kind]} is trained in full"
            )
