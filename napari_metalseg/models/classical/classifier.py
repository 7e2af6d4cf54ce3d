"""The fitted classical pixel classifier behind the project's model contract, and its files."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from napari_metalseg.errors import MetalsegError
from napari_metalseg.models.classical.features import FEATURE_SET, TRUNCATE, n_features, pixel_features, usable_cpus
from napari_metalseg.models.classical.textformat import compose_text, parse_classifier_text

if TYPE_CHECKING:
    import torch

LOG_ZERO = -1.0e4
"""Log-probability of a phase that was never labelled: finite (safe to interpolate), ``exp`` of it is exactly 0."""

_CHUNK = 1 << 16
"""Pixels per LightGBM prediction call (a cache-friendly transposed copy of the (F, H, W) features)."""

_MAX_FILE_BYTES = 256 << 20


# -- the model ---------------------------------------------------------------------------------------------------
class PixelClassifier:
    """A fitted LightGBM pixel classifier behind the project's model contract (CPU only, no gradients).

    Build it with :func:`fit_classifier`, :meth:`from_text` or :func:`load_classifier`, not directly.

    Parameters
    ----------
    booster
        The LightGBM ``Booster`` (parsed from ``body``).
    header
        The validated JSON header (see :meth:`to_text`).
    body
        LightGBM's text model, exactly as stored.

    Attributes
    ----------
    kind, img_size, predict_size, num_phases, guidance, supports_boxes, light_decoder, finetune_mode, n_parameters
        The model contract; ``img_size`` = ``predict_size`` = the tile size; ``n_parameters`` counts tree nodes.
    sigmas
        Filter scales of :func:`pixel_features`.
    labeled_phases, unlabeled_phases
        Phases that had labelled pixels, and those that had none (always probability 0).
    """

    kind = "classical"
    guidance = "none"
    supports_boxes = False
    light_decoder = False
    finetune_mode = None

    def __init__(self, *, booster: Any, header: dict[str, Any], body: str) -> None:
        self._booster = booster
        self._header = dict(header)
        self._body = body
        self.num_phases = int(header["num_phases"])
        self.img_size = int(header["tile_size"])
        self.predict_size = self.img_size
        self.sigmas = tuple(float(s) for s in header["sigmas"])
        self.labeled_phases = tuple(int(p) for p in header["labeled_phases"])
        self.unlabeled_phases = tuple(int(p) for p in header["unlabeled_phases"])
        self.binary = header["objective"] == "binary"
        self.n_trees = int(booster.num_trees())
        leaves = sum(int(n) for n in re.findall(r"^num_leaves=(\d+)$", body, flags=re.MULTILINE))
        self.n_parameters = 2 * leaves - self.n_trees  # a tree with L leaves has L - 1 split nodes
        self.training = False
        self._model_digest: str | None = None

    def __repr__(self) -> str:
        return (
            f"PixelClassifier(num_phases={self.num_phases}, trees={self.n_trees}, features={self.n_features}, "
            f"tile={self.img_size}, unlabeled_phases={list(self.unlabeled_phases)})"
        )

    @property
    def n_features(self) -> int:
        """Feature channels ``F`` of :meth:`embed`."""
        return n_features(self.sigmas)

    @property
    def config(self) -> dict[str, Any]:
        """The settings that describe this model (for run files and reports)."""
        return {
            "kind": self.kind,
            "img_size": self.img_size,
            "num_phases": self.num_phases,
            "guidance": self.guidance,
            "finetune": None,
            "feature_set": FEATURE_SET,
            "sigmas": list(self.sigmas),
            "unlabeled_phases": list(self.unlabeled_phases),
        }

    # -- torch-module look-alikes (CPU only, nothing to train by gradient) ---------------------------------------
    def eval(self) -> PixelClassifier:
        return self.train(False)

    def train(self, mode: bool = True) -> PixelClassifier:
        self.training = bool(mode)
        return self

    def to(self, *args: Any, **kwargs: Any) -> PixelClassifier:
        return self

    def parameters(self, recurse: bool = True) -> Iterator[Any]:
        return iter(())

    # -- the model contract --------------------------------------------------------------------------------------
    def preprocess(self, gray: torch.Tensor) -> torch.Tensor:
        """(B, H, W) or (B, 1, H, W) grey images in [0, 1] -> (B, 1, H, W) float, intensities unchanged.

        No per-tile normalisation: the tiles of one micrograph must see the same intensity scale.
        """
        if gray.ndim == 3:
            gray = gray[:, None]
        if gray.ndim != 4 or gray.shape[1] != 1:
            raise ValueError(f"preprocess expects (B, 1, H, W) or (B, H, W) grey images, got {tuple(gray.shape)}")
        return gray if gray.is_floating_point() else gray.float()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) preprocessed images -> (B, F, H, W) float32 :func:`pixel_features` (what tiles cache)."""
        import torch

        images = self.preprocess(images)
        arrays = images.detach().float().cpu().numpy()
        feats = np.stack([pixel_features(a[0], sigmas=self.sigmas) for a in arrays])
        return torch.from_numpy(feats).to(images.device)

    def decode(
        self,
        embeddings: torch.Tensor,
        ratios: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        out_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Classify features: (B, F, H, W) -> (B, K, H', W') log-probabilities (softmax gives the probabilities).

        Parameters
        ----------
        embeddings
            (B, F, H, W) from :meth:`embed`.
        ratios, boxes
            Not supported: must be ``None``.
        out_size
            ``(H', W')`` of the result, default ``(H, W)``; resized bilinearly when different.

        Returns
        -------
        torch.Tensor
            (B, K, H', W') float32 on the device of ``embeddings``; phases never labelled get :data:`LOG_ZERO`
            (probability exactly 0).
        """
        import torch
        import torch.nn.functional as F

        self._check_prompts(ratios, boxes)
        if embeddings.ndim != 4 or embeddings.shape[1] != self.n_features:
            raise ValueError(f"decode expects (B, {self.n_features}, H, W) features, got {tuple(embeddings.shape)}")
        feats = embeddings.detach().float().cpu().numpy()
        out = torch.from_numpy(np.stack([self._predict(f, log=True) for f in feats]))
        if out_size is not None and tuple(out_size) != tuple(out.shape[2:]):
            out = F.interpolate(out, size=tuple(out_size), mode="bilinear", align_corners=False)
        return out.to(embeddings.device)

    def forward(
        self, images: torch.Tensor, ratios: torch.Tensor | None = None, boxes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Classify preprocessed images (B, 1, H, W) into (B, K, H, W) log-probabilities (see :meth:`decode`)."""
        self._check_prompts(ratios, boxes)
        return self.decode(self.embed(images), out_size=tuple(images.shape[-2:]))

    __call__ = forward

    def predict_proba_features(self, features: np.ndarray) -> np.ndarray:
        """Phase probabilities (K, H, W) float32 of one image's (F, H, W) features (the live preview; no torch)."""
        features = np.asarray(features)
        if features.ndim != 3 or features.shape[0] != self.n_features:
            raise ValueError(f"expected ({self.n_features}, H, W) features, got shape {features.shape}")
        return self._predict(features, log=False)

    def _check_prompts(self, ratios: object, boxes: object) -> None:
        if ratios is not None:
            raise ValueError("this model was built without phase-fraction guidance (guidance='none')")
        if boxes is not None:
            raise MetalsegError("box prompts need a SAM model; the classical pixel classifier has no prompt encoder")

    def _predict(self, features: np.ndarray, log: bool) -> np.ndarray:
        """(F, H, W) features -> (K, H, W) float32 log-probabilities (``log``) or probabilities.

        LightGBM's raw scores are turned into (log-)probabilities in float64, chunk by chunk.
        """
        f, h, w = features.shape
        flat = features.reshape(f, -1)
        n = flat.shape[1]
        out = np.empty((self.num_phases, n), np.float32)
        out[list(self.unlabeled_phases)] = LOG_ZERO if log else 0.0
        labeled = list(self.labeled_phases)
        threads = usable_cpus()
        for start in range(0, n, _CHUNK):
            rows = np.ascontiguousarray(flat[:, start : start + _CHUNK].T, dtype=np.float32)
            raw = np.asarray(self._booster.predict(rows, raw_score=True, num_threads=threads), np.float64)
            if self.binary:
                lp = np.stack([-np.logaddexp(0.0, raw), -np.logaddexp(0.0, -raw)])
            else:
                raw -= raw.max(axis=1, keepdims=True)
                raw -= np.log(np.exp(raw).sum(axis=1, keepdims=True))
                lp = raw.T
            out[labeled, start : start + rows.shape[0]] = lp if log else np.exp(lp)
        return out.reshape(self.num_phases, h, w)

    def signature(self, scope: Literal["model", "encoder"] = "model") -> str:
        """A string identifying the computation, for caches.

        ``model``: a hash of the model text (trees and header); ``encoder``: only what :meth:`embed` depends on
        (:data:`FEATURE_SET`, the sigmas and the tile size), not the trees, so refitting keeps cached features.
        """
        if scope == "encoder":
            key = repr((FEATURE_SET, self.sigmas, TRUNCATE, self.img_size)).encode()
            return f"classical-{self.img_size}-enc-{hashlib.sha256(key).hexdigest()[:16]}"
        if scope == "model":
            if self._model_digest is None:
                self._model_digest = hashlib.sha256(self.to_text().encode("utf-8")).hexdigest()
            return f"classical-{self.img_size}-k{self.num_phases}-none-{self._model_digest[:16]}"
        raise ValueError(f"scope must be 'model' or 'encoder', got {scope!r}")

    # -- storage -------------------------------------------------------------------------------------------------
    def to_text(self) -> str:
        """The stored form: ``# napari-metalseg classical v1 {json header}`` then LightGBM's ``model_to_string``.

        The header holds ``num_phases``, ``feature_set``, ``sigmas``, ``tile_size``, ``labeled_phases``,
        ``unlabeled_phases``, ``objective``, ``n_features``, the ``lightgbm`` version that wrote the model and
        ``model_sha256``, the SHA-256 of the LightGBM text (truncation and edits are detected on loading).
        """
        return compose_text({key: value for key, value in self._header.items() if key != "model_sha256"}, self._body)

    @classmethod
    def from_text(cls, text: str, source: str) -> PixelClassifier:
        """Parse :meth:`to_text` output; ``source`` (a file name) is named in every error.

        Raises
        ------
        MetalsegError
            When ``text`` is not our header followed by the matching LightGBM text model.
        """
        header, booster, body = parse_classifier_text(text, source)
        return cls(booster=booster, header=header, body=body)


# -- files -------------------------------------------------------------------------------------------------------
def save_classifier(model: PixelClassifier, path: str | Path) -> Path:
    """Write ``model.to_text()`` to ``path`` atomically (plain UTF-8 text; never pickle)."""
    from napari_metalseg.io.atomic import atomic_write_text

    path = Path(path)
    atomic_write_text(path, model.to_text())
    return path


def load_classifier(path: str | Path) -> PixelClassifier:
    """Read a classifier written by :func:`save_classifier`.

    The file is read as bytes and decoded as strict UTF-8; only our header followed by the LightGBM text model it
    describes is accepted. Nothing is ever unpickled.

    Raises
    ------
    MetalsegError
        Naming ``path``: missing or unreadable, binary (e.g. a pickle), empty, too large, wrong header or
        version, or truncated / modified / unreadable model text.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > _MAX_FILE_BYTES:
            raise MetalsegError(
                f"{path}: {size} bytes is too large for a classical pixel classifier "
                f"(at most {_MAX_FILE_BYTES >> 20} MiB)"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise MetalsegError(f"{path}: cannot read the classifier ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise MetalsegError(
            f"{path}: not a text file (byte {exc.start} is not UTF-8); a classical pixel "
            "classifier is plain text (pickles and other binary files are refused)"
        ) from None
    return PixelClassifier.from_text(text, str(path))
