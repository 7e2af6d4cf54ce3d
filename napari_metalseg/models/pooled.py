"""A CNN pooled with the classical pixel classifier trained on the same labels: :class:`PooledModel`.

The two models fail differently. The CNN learns texture and shape from context (what separates martensite from
bainite), the classical classifier places boundaries where multiscale filter responses change (what a two-phase
image with a few scribbles inside each phase needs, where a CNN trained from scratch has never seen a boundary).
Their probabilities are pooled log-linearly (a weighted geometric mean, renormalised)::

    log p(k) = (1 - w) log p_cnn(k) + w log p_classical(k) + const

with the classical weight ``w`` of the run (:data:`~.registry.POOL_WEIGHT` by default; docs/quality.md says how it
was chosen). A phase the classical classifier never saw labelled keeps a probability of (almost) 0.

Whether a run keeps the pool, and with which weight, is decided when its network has trained (:func:`pool_weight`):
only when the classifier validates close to the network, with the classifier leading when it validates as well.
Where it does not (textured phases that filter responses cannot tell apart), pooling only pulls the network towards
the classifier's mistakes.

:class:`PooledModel` honours the model contract (``preprocess`` -> ``embed`` -> ``decode``), so the tiled predictor,
validation, the study and the docks use it like any model: the embedding of a tile is the CNN's input channel
followed by the classifier's filter features, and the decoder pools the two.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from napari_metalseg.errors import MetalsegError
from napari_metalseg.models.options import check_finite_number


def pool_weight(*, network_dice: float, classical_dice: float, margin: float, weight: float) -> float:
    """The classical weight a run's model keeps, from both members' validated mean Dice:

    - more than ``margin`` points below the network: 0 (the network alone);
    - else, ``classical_dice`` at or above ``network_dice`` (validation cannot tell them apart, or the classifier is
      ahead): the classifier leads, ``(1 + weight) / 2`` (0.75 for the default 0.5);
    - else (behind the network, within ``margin``): ``weight``.

    Validation pixels that are scribbles inside each phase do not test where boundaries go: there both members may
    validate alike (a two-phase SEM image: both 100 %) although the classifier places boundaries far better, so a
    tie keeps the pool with the classifier leading (docs/quality.md: 98.32-98.34 on the real SEM image against
    97.84-98.19 with equal weights). Only a classifier clearly behind the network is dropped.
    """
    network_dice = check_finite_number("network_dice", network_dice)
    classical_dice = check_finite_number("classical_dice", classical_dice)
    margin = check_finite_number("margin", margin)
    if classical_dice < network_dice - margin:
        return 0.0
    return (1.0 + float(weight)) / 2.0 if classical_dice >= network_dice else float(weight)


class PooledModel:
    """A :class:`~.cnn.PhaseCNN` and a :class:`~.classical.PixelClassifier` with pooled probabilities.

    Parameters
    ----------
    network
        The CNN (its ``contrast`` must be ``"image"``: both members see the contrast-stretched micrograph).
    classifier
        The classical pixel classifier, fitted on the contrast-stretched training images with the same phases.
    weight
        Weight ``w`` of the classifier in the log-linear pool, in (0, 1).

    Attributes
    ----------
    kind, img_size, predict_size, num_phases, guidance, finetune_mode
        Those of the network: the pooled model trains and predicts at the network's sizes, with its guidance.
    supports_boxes, light_decoder
        ``False``: no prompt encoder; the decoder runs the whole network.
    contrast
        ``"image"``: the predictor stretches each whole micrograph's contrast before tiling.
    """

    supports_boxes = False
    light_decoder = False
    contrast = "image"

    def __init__(self, *, network: Any, classifier: Any, weight: float) -> None:
        if getattr(network, "contrast", None) != "image":
            raise MetalsegError(f"a {network.kind} cannot be pooled with the classical classifier (contrast mode)")
        if classifier.num_phases != network.num_phases:
            raise MetalsegError(
                f"the classical classifier has {classifier.num_phases} phases, the {network.kind} "
                f"{network.num_phases}: they were not trained on the same labels"
            )
        if not 0.0 < float(weight) < 1.0:
            raise MetalsegError(f"pool weight {weight!r}: must lie strictly between 0 and 1")
        self.network = network
        self.classifier = classifier
        self.weight = float(weight)
        self.kind = network.kind
        self.img_size = network.img_size
        self.predict_size = network.predict_size
        self.num_phases = network.num_phases
        self.guidance = network.guidance
        self.finetune_mode = network.finetune_mode

    def __repr__(self) -> str:
        return f"PooledModel({self.kind} + classical, classical weight {self.weight:g})"

    # -- what a model is asked besides the contract --------------------------------------------------------------
    @property
    def training(self) -> bool:
        return self.network.training

    def eval(self) -> PooledModel:
        self.network.eval()
        return self

    def train(self, mode: bool = True) -> PooledModel:
        self.network.train(mode)
        return self

    def to(self, *args: Any, **kwargs: Any) -> PooledModel:
        self.network.to(*args, **kwargs)
        return self

    def parameters(self, recurse: bool = True):
        """The network's parameters (the classifier's trees are not torch parameters)."""
        return self.network.parameters(recurse)

    def spec_fields(self) -> dict[str, Any]:
        """The network's :class:`~.spec.ModelSpec` fields and the pool weight."""
        return {**self.network.spec_fields(), "pooled": self.weight}

    def signature(self, scope: Literal["model", "encoder"] = "model") -> str:
        """Cache key: both members' signatures (``encoder``: the network's preprocessing and the classifier's
        features, which make up the embedding) and the weight."""
        if scope not in ("model", "encoder"):
            raise ValueError(f"scope must be 'model' or 'encoder', got {scope!r}")
        own = f"pool{self.weight:g}"
        return f"{self.network.signature(scope)}+{self.classifier.signature(scope)}+{own}"

    # -- the model contract --------------------------------------------------------------------------------------
    def preprocess(self, gray: torch.Tensor) -> torch.Tensor:
        """(B, H, W) or (B, 1, H, W) contrast-stretched grey images in [0, 1] -> (B, 1, H, W) float, intensities
        unchanged: the classifier's preprocessing (the network's own runs in :meth:`embed`)."""
        return self.classifier.preprocess(gray)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) images -> (B, 1 + F, H, W): the network's input, then the classifier's F features."""
        images = self.preprocess(images).float()
        network_input = self.network.embed(self.network.preprocess(images)).float()
        features = self.classifier.embed(images).float().to(network_input.device)
        return torch.cat([network_input, features], dim=1)

    def decode(
        self,
        embeddings: torch.Tensor,
        ratios: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        out_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Pooled log-probabilities (B, K, H', W') of embedded tiles (see :meth:`embed`); ``ratios`` guide the network
        (when it was built with guidance); ``boxes`` must be ``None``."""
        if boxes is not None:
            raise MetalsegError(f"box prompts need a SAM model; the {self.kind} has no prompt encoder")
        logits = self.network.decode(embeddings[:, :1], ratios=ratios, out_size=out_size).float()
        classical = self.classifier.decode(embeddings[:, 1:].float(), out_size=tuple(logits.shape[-2:]))
        classical = classical.float().to(logits.device)
        return (1.0 - self.weight) * F.log_softmax(logits, dim=1) + self.weight * classical

    def forward(
        self, images: torch.Tensor, ratios: torch.Tensor | None = None, boxes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Pooled log-probabilities of (B, 1, H, W) images (:meth:`embed` then :meth:`decode`)."""
        return self.decode(self.embed(images), ratios=ratios, boxes=boxes, out_size=tuple(images.shape[-2:]))

    __call__ = forward
