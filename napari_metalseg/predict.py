"""Prediction: tiled sliding-window inference with a cached image embedding, ratio guidance and box prompts.

The heavy image encoder runs once per image (per tile) and its output is cached under a key made of the image
content hash and the model signature, so changing the ratio or drawing a box reruns only the light decoder.

A prediction is a job (:mod:`napari_metalseg.progress`): :meth:`Predictor.predict_job` yields ``"embed"`` and
``"predict"`` events and returns the :class:`PhaseMap`; :meth:`Predictor.predict` runs it to the end. The predictor's
:attr:`~Predictor.lock` is held while a job runs the model, so jobs of several threads never interleave.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_metalseg.data.samples import StretchedImage, normalize_contrast
from napari_metalseg.data.scale import resample_image, resample_labels, scaled_shape, zoom_factor
from napari_metalseg.embeddings import DEFAULT_CACHE_BYTES, EmbeddingCache
from napari_metalseg.errors import MetalsegError
from napari_metalseg.models.options import reads_ratios
from napari_metalseg.models.registry import check_model_options
from napari_metalseg.phases import UNLABELED, PhaseSet, phase_fractions
from napari_metalseg.precision import prediction_bf16
from napari_metalseg.priors import MAX_PIXELS, fraction_biases
from napari_metalseg.progress import Job, ProgressEvent, run_job
from napari_metalseg.prompts import check_box
from napari_metalseg.tiles import TileGrid, blend_window, row_bands

if TYPE_CHECKING:
    from napari_metalseg.io.embedding_store import EmbeddingStore


class PhaseMap:
    """A prediction: ``labels`` uint8 HxW (phase index; 255 outside a box prompt), ``probs`` float32 KxHxW.

    Built from ``probs``, or from blended ``logits`` (a torch tensor, ``scale`` times coarser than the labels):
    then ``probs`` is their upsampled softmax, computed on first use. A ratio slider or a box needs the labels only
    (15 ms saved on 2048 x 1536), and a huge micrograph's labels never need a full-size float map.
    """

    def __init__(
        self,
        labels: np.ndarray,
        probs: np.ndarray | None = None,
        *,
        logits=None,
        scale: int = 1,
        num_phases: int | None = None,
    ) -> None:
        if probs is not None and logits is not None:
            raise ValueError("a PhaseMap takes probs or logits, not both")
        if probs is None and logits is None and num_phases is None:
            raise ValueError("a PhaseMap of labels only needs num_phases")
        self.labels = labels
        self._probs = probs
        self._logits = logits
        self._scale = scale
        self._num_phases = num_phases

    @property
    def num_phases(self) -> int:
        """K."""
        if self._num_phases is not None:
            return self._num_phases
        return self._probs.shape[0] if self._probs is not None else self._logits.shape[0]

    @property
    def has_probs(self) -> bool:
        """Whether the probabilities exist (or can be computed): not for a micrograph predicted as a stream."""
        return self._probs is not None or self._logits is not None

    @property
    def probs(self) -> np.ndarray:
        """Probability of each phase (K, H, W), float32.

        Raises
        ------
        MetalsegError
            For a micrograph predicted as a stream (:data:`STREAM_PIXELS`): only its labels are kept.
        """
        if not self.has_probs:
            h, w = self.labels.shape
            raise MetalsegError(
                f"the {w} x {h} micrograph was predicted as a stream of tiles (more than {STREAM_PIXELS:,} pixels): "
                "only its labels are kept, no probability maps"
            )
        if self._probs is None:
            import torch
            import torch.nn.functional as F

            logits = self._logits
            if self._scale > 1:
                size = (logits.shape[1] * self._scale, logits.shape[2] * self._scale)
                logits = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
            h, w = self.labels.shape
            self._probs = torch.softmax(logits[:, :h, :w], dim=0).numpy()
            self._logits = None
        return self._probs

    def resampled(self, shape: tuple[int, int]) -> PhaseMap:
        """This map, of a micrograph resampled to a model's working scale, resampled back to the micrograph's
        ``shape``: the logits or probabilities bilinearly (the labels taken from them; given fractions are in the
        logits, so they hold), the labels alone by the nearest pixel (a streamed micrograph); the unlabeled pixels
        outside a box stay unlabeled."""
        import torch
        import torch.nn.functional as F

        h, w = self.labels.shape
        if self._logits is not None:
            f = self._scale
            valid = self._logits[:, : -(-h // f), : -(-w // f)]
            size = (-(-shape[0] // f), -(-shape[1] // f))
            return _logit_map(F.interpolate(valid[None], size=size, mode="bilinear", align_corners=False)[0], shape, f)
        labels = resample_labels(self.labels, shape)
        if self._probs is None:
            return PhaseMap(labels, num_phases=self.num_phases)
        probs = torch.from_numpy(np.ascontiguousarray(self._probs))[None]
        probs = F.interpolate(probs, size=shape, mode="bilinear", align_corners=False)[0].numpy()
        return PhaseMap(np.where(labels == UNLABELED, UNLABELED, probs.argmax(0)).astype(np.uint8), probs)

    def fractions(self) -> np.ndarray:
        """Area fraction of each phase over the predicted pixels."""
        k = self.num_phases
        fractions = phase_fractions(self.labels, k)
        return np.zeros(k) if fractions is None else fractions


DECODE_BATCH = 16
"""Tiles per decoder call in a whole prediction (one call for a 2048 x 1536 micrograph at 1024 px tiles)."""

BAND_VALUES = 1 << 24
"""Upsampled logits per band when a prediction's labels are taken (64 MiB of float32)."""

STREAM_PIXELS = 1 << 25
"""Micrographs with more pixels (5793 x 5793) are predicted as a stream: row of tiles after row of tiles, their
embeddings not cached and only the labels kept, so memory grows with one row of tiles, not with the micrograph."""

DIHEDRAL: tuple[tuple[int, bool], ...] = tuple((k, flip) for flip in (False, True) for k in range(4))
"""The 8 symmetries of the square as (quarter turns, horizontal flip first): the test-time augmentations."""


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is usable, else ``"cpu"``; checks an explicit ``"cuda"``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MetalsegError(f"device {device!r} requested but no CUDA GPU is available; use the device 'cpu' or 'auto'")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise MetalsegError(f"unknown device {device!r}; use auto, cpu or cuda")
    return device


def check_ratios(ratios: Sequence[float] | None, phases: PhaseSet) -> np.ndarray | None:
    """Validate a phase-ratio vector (length K, finite, >= 0, sum > 0) and normalise it to sum 1."""
    if ratios is None:
        return None
    try:
        arr = np.asarray(list(ratios), dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise MetalsegError(f"ratio {ratios!r}: expected {len(phases)} numbers ({', '.join(phases.names)})") from None
    if arr.shape != (len(phases),):
        raise MetalsegError(
            f"ratio {list(ratios)} has {arr.size} values but the model has {len(phases)} phases "
            f"({', '.join(phases.names)})"
        )
    if not np.isfinite(arr).all():
        raise MetalsegError(f"ratio {list(ratios)} contains NaN or infinite values")
    if (arr < 0).any():
        raise MetalsegError(f"ratio {list(ratios)} contains negative values")
    with np.errstate(over="ignore"):
        total = arr.sum()
    if total <= 0:
        raise MetalsegError(f"ratio {list(ratios)} sums to 0")
    if not np.isfinite(total):  # finite values whose sum overflows: scale them down first
        arr = arr / arr.max()
        total = arr.sum()
    return (arr / total).astype(np.float32)


def image_key(image: np.ndarray) -> str:
    """Content hash of an image (shape + dtype + bytes)."""
    arr = np.ascontiguousarray(image)
    digest = hashlib.sha1(f"{arr.shape}{arr.dtype}".encode())
    digest.update(arr.data)
    return digest.hexdigest()


class Predictor:
    """Predict phase maps with a trained model, caching image embeddings.

    Parameters
    ----------
    model
        A model of any family (see :func:`napari_metalseg.runs.load_run`): it embeds tiles of ``model.predict_size``
        (``model.img_size`` when it has none) and decodes them into K logit maps.
    phases : PhaseSet
    device : str
        ``"cpu"`` or ``"cuda"``.
    overlap : float
        Tile overlap as a fraction of the model input size.
    cache_size : int
        Most micrographs whose tile embeddings are kept in memory (:class:`~napari_metalseg.embeddings.EmbeddingCache`).
    cache_bytes : int
        Most bytes of tile embeddings kept in memory.
    cache_dir : path or EmbeddingStore, optional
        Also keep the embeddings of models with a heavy encoder (``model.heavy_encoder``: SAM) on disk, in this
        folder or store (:class:`~napari_metalseg.io.embedding_store.EmbeddingStore`, bounded in bytes), for
        reopening the same micrographs later; a store that cannot be read or written is skipped, it never fails a
        prediction.
    bf16 : bool or None
        bfloat16 autocast for the networks (SAM's encoder and decoder, the CNNs); default (None):
        :func:`napari_metalseg.precision.prediction_bf16`, on for CUDA and CPUs with native bf16 (AVX512-BF16 / AMX)
        unless ``METALSEG_FP32=1``.
    batch_size : int
        Tiles per encoder batch (the decoder takes at least :data:`DECODE_BATCH` tiles per call).

    Attributes
    ----------
    lock : threading.RLock
        Held by a prediction job while it runs the model (and by any other code running :attr:`model`, e.g. the
        encoder feature maps of the napari dock), so predictions of several threads never interleave.

    Examples
    --------
    >>> predictor = Predictor.from_run("runs/steel")            # doctest: +SKIP
    >>> phase_map = predictor.predict(micrograph.image)          # doctest: +SKIP
    >>> phase_map = predictor.predict(micrograph.image, ratios=[0.2, 0.6, 0.2])  # decoder only  # doctest: +SKIP
    """

    def __init__(
        self,
        model,
        phases: PhaseSet,
        device: str = "cpu",
        overlap: float = 0.25,
        cache_size: int = 4,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        cache_dir: str | Path | EmbeddingStore | None = None,
        bf16: bool | None = None,
        batch_size: int = 4,
    ) -> None:
        self.model = model.eval()
        self.phases = phases
        self.device = device
        self.size = int(getattr(model, "predict_size", model.img_size))
        self.overlap = int(round(overlap * self.size))
        self.cache = EmbeddingCache(max_images=cache_size, max_bytes=cache_bytes)
        self.store = None
        if cache_dir is not None and getattr(model, "heavy_encoder", False):
            from napari_metalseg.io.embedding_store import EmbeddingStore

            self.store = cache_dir if isinstance(cache_dir, EmbeddingStore) else EmbeddingStore(Path(cache_dir))
        self.bf16 = prediction_bf16(device) if bf16 is None else bf16
        self.batch_size = batch_size
        self._signature: str | None = None
        self._last_resampled: tuple[tuple[str, float], np.ndarray] | None = None
        self.lock = threading.RLock()

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "auto", **kwargs) -> Predictor:
        from napari_metalseg.runs import load_run

        device = resolve_device(device)
        model, config = load_run(run_dir, device=device)
        return cls(model, config.spec.phase_set, device=device, **kwargs)

    # -- embedding cache -------------------------------------------------------------------------------------
    def signature(self) -> str:
        """Key of the cached embeddings: what the image encoder computes (decoder changes keep the cache)."""
        if self._signature is None:
            self._signature = self.model.signature(scope="encoder")
        return self._signature

    def invalidate(self) -> None:
        """Forget cached embeddings and the model signature (call after the weights change)."""
        self.cache.clear()
        self._signature = None

    def _cache_key(self, image: np.ndarray, grid: TileGrid) -> str:
        precision = "bf16" if self.bf16 else "fp32"
        return f"{image_key(image)}-{self.signature()}-t{grid.size}-{grid.overlap}-{precision}"

    def _embeddings(self, image: np.ndarray, grid: TileGrid, key: str, tiles: Sequence[int]) -> Job:
        """Job: the embeddings of ``tiles`` of ``image`` (B, C, h, w), computing only those not cached yet (one
        ``"embed"`` event per encoder batch); the entry goes to disk once every tile of the micrograph is in it."""
        import torch

        entry = self.cache.entry(key, len(grid))
        disk_key = hashlib.sha256(key.encode()).hexdigest()  # any signature, a file name the store accepts
        if not entry.complete and self.store is not None:
            with contextlib.suppress(MetalsegError):  # an unreadable store is a miss, never a failed prediction
                stored = self.store.load(disk_key) or {}
                if stored.get("embeddings") is not None and stored["embeddings"].shape[0] == len(grid):
                    entry.store(range(len(grid)), torch.from_numpy(stored["embeddings"]))
        missing = entry.missing(tiles)
        if missing:
            fill = float(image.mean())
            for i in range(0, len(missing), self.batch_size):
                batch_tiles = missing[i : i + self.batch_size]
                entry.store(batch_tiles, self._encode(image, grid, batch_tiles, fill))
                done = min(i + self.batch_size, len(missing))
                yield ProgressEvent("embed", done, len(missing), message="image encoder")
            if entry.complete and self.store is not None:
                with contextlib.suppress(MetalsegError):  # a full disk or a read-only folder: memory cache only
                    self.store.save(disk_key, {"embeddings": entry.tensor.numpy()}, metadata={"entry": key})
        return entry.get(tiles)

    def _encode(self, image: np.ndarray, grid: TileGrid, tiles: Sequence[int], fill: float):
        """The embeddings (B, C, h, w), float32 on the CPU, of ``tiles`` of the micrograph padded with ``fill`` (its
        mean: as training crops are padded) to the grid's padded shape, tile by tile (one encoder call; under bf16
        autocast when :attr:`bf16`)."""
        import torch

        s = grid.size
        stack = np.full((len(tiles), s, s), fill, np.float32)
        for tile, t in zip(stack, tiles, strict=True):
            y, x = grid.origins[t]
            inside = image[y : y + s, x : x + s]
            tile[: inside.shape[0], : inside.shape[1]] = inside
        batch = torch.from_numpy(stack).to(self.device)
        with torch.inference_mode(), torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16, enabled=self.bf16):
            return self.model.embed(self.model.preprocess(batch)).float().cpu()

    # -- prediction ------------------------------------------------------------------------------------------
    def predict_job(
        self,
        image: np.ndarray,
        ratios: Sequence[float] | None = None,
        box: Sequence[float] | None = None,
        tta: bool = False,
        match_fractions: bool = True,
        pixel_size_um: float | None = None,
    ) -> Job[PhaseMap]:
        """Job: the phase map of a whole micrograph (tiled), or only inside ``box`` (x0, y0, x1, y1) when given.

        ``ratios`` are the phase fractions of the micrograph, when the user knows them. A model trained with ratio
        guidance reads them (in its guidance encoder). With ``match_fractions`` the labels of a whole micrograph are
        then given these fractions, for any model: one constant per phase is added to the blended logits
        (:func:`~napari_metalseg.priors.fraction_biases`, a change of prior), so only the pixels the model was least
        sure of change phase. The fractions of such a map are the ones given, not a measurement.

        The micrograph is cut into tiles of the model input size (:class:`~napari_metalseg.tiles.TileGrid`);
        each tile is encoded once and its embedding cached, so a new ratio vector or a box reruns only the
        decoder. A box is decoded on the tile(s) it needs (:meth:`~napari_metalseg.tiles.TileGrid.tiles_for_box`),
        with the box in tile coordinates, and only the box region is upsampled; on a micrograph not predicted
        yet only those tiles are encoded.

        With ``tta`` (test-time augmentation) the micrograph is also predicted flipped and rotated (the 8 symmetries
        of the square) and the probabilities are averaged: 8 times the work, steadier boundaries.

        ``pixel_size_um`` is the micrograph's pixel size. A model with a working scale (``model.pixel_size_um``,
        :mod:`napari_metalseg.data.scale`) sees the micrograph resampled to it (a box with it), and the phase map is
        resampled back to the micrograph's pixels (:meth:`zoom_for`); without a pixel size it is predicted as it is.

        The inputs are checked when the job starts (its first ``next``); it holds :attr:`lock` while it runs the
        model, so it must be driven to its end (or closed) in the thread that started it.

        Yields
        ------
        ProgressEvent
            ``"embed"`` per batch of tiles the encoder runs on, then ``"predict"`` per batch of decoded tiles
            (per augmentation with ``tta``).

        Returns
        -------
        PhaseMap
            With a box: ``labels`` is :data:`~napari_metalseg.phases.UNLABELED` and ``probs`` 0 outside the box.

        Raises
        ------
        MetalsegError
            A bad image, ratio vector or box, ratios that the model cannot use (a box, or no fraction matching, with
            a model trained without guidance), a box for a model that takes none, ``tta`` with a box, ``tta`` or
            matched fractions on a micrograph too large for its probability maps, or a pixel size too far from the
            model's working scale.
        """
        image = _check_image(image)
        ratio = self.check_options(ratios=ratios, box=box, tta=tta, match_fractions=match_fractions)
        if box is not None:
            box = check_box(box, image.shape)
        zoom = self.zoom_for(pixel_size_um)
        if zoom != 1.0:
            shape = image.shape
            image = self._resampled(image, zoom)
            if box is not None:
                box = check_box([round(v * zoom) for v in box], image.shape)
            return (yield from self.predict_job(image, ratios, box, tta, match_fractions)).resampled(shape)
        streamed = box is None and image.size > STREAM_PIXELS
        matched = match_fractions and ratio is not None and box is None
        if streamed and (tta or matched):
            what = "test-time augmentation" if tta else "matching the given phase fractions"
            raise MetalsegError(
                f"{what} needs the probability maps, which a micrograph of more than {STREAM_PIXELS:,} pixels does "
                f"not keep ({image.shape[1]} x {image.shape[0]}); predict it without "
                f"{'tta' if tta else 'phase ratios'}"
            )
        if getattr(self.model, "contrast", None) == "image":  # a stream reads the stretched tiles only
            image = StretchedImage(image) if streamed else normalize_contrast(image)
        with self.lock:
            try:
                if box is not None:
                    return (yield from self._predict_box(image, box, ratio))
                if streamed:
                    return (yield from self._predict_stream(image, ratio))
                if not tta:
                    return (yield from self._predict_tiled(image, ratio, matched))
                return (yield from self._predict_tta(image, ratio, matched))
            finally:
                self.cache.trim()

    @property
    def working_pixel_size(self) -> float | None:
        """The model's working scale (um per pixel; ``None``: micrographs are predicted as they are)."""
        return getattr(self.model, "pixel_size_um", None)

    def zoom_for(self, pixel_size_um: float | None) -> float:
        """How much a micrograph of ``pixel_size_um`` is enlarged before this model sees it (1.0: not resampled).

        Raises
        ------
        MetalsegError
            When the pixel size is beyond :data:`~napari_metalseg.data.scale.MAX_ZOOM` of the working scale.
        """
        return zoom_factor(pixel_size_um, self.working_pixel_size)

    def _resampled(self, image: np.ndarray, zoom: float) -> np.ndarray:
        """``image`` resampled ``zoom`` times; the last one is kept (a ratio slider or a box predicts it again)
        unless it is predicted as a stream (:data:`STREAM_PIXELS`: nothing of such a micrograph is kept)."""
        shape = scaled_shape(image.shape, zoom)
        if shape[0] * shape[1] > STREAM_PIXELS:
            return resample_image(image, shape)
        key = (image_key(image), zoom)
        if self._last_resampled is None or self._last_resampled[0] != key:
            self._last_resampled = (key, resample_image(image, shape))
        return self._last_resampled[1]

    def check_options(
        self,
        *,
        ratios: Sequence[float] | None = None,
        box: Sequence[float] | None = None,
        tta: bool = False,
        match_fractions: bool = True,
    ) -> np.ndarray | None:
        """Check prediction options against this model (the box against an image is checked per image); returns
        the normalised ratio vector.

        Raises
        ------
        MetalsegError
            A bad ratio vector, ratios that the model cannot use (with a box or without ``match_fractions``, for a
            model trained without guidance), a box for a model that takes none, or ``tta`` with a box.
        """
        ratio = check_ratios(ratios, self.phases)
        if ratio is not None and not self.guided and (box is not None or not match_fractions):
            where = "inside a box" if box is not None else "without matching the fractions"
            raise MetalsegError(
                f"this model was trained without ratio guidance: it uses phase ratios only to match the fractions of "
                f"a whole micrograph, not {where}; predict without phase ratios"
            )
        if box is not None:
            check_model_options(self.model.kind, boxes=True)
            if tta:
                raise MetalsegError("test-time augmentation applies to whole micrographs, not to box prompts")
        return ratio

    @property
    def guided(self) -> bool:
        """Whether the model reads phase ratios (trained with ratio or spatial guidance)."""
        return reads_ratios(self.model)

    def predict(
        self,
        image: np.ndarray,
        ratios: Sequence[float] | None = None,
        box: Sequence[float] | None = None,
        tta: bool = False,
        match_fractions: bool = True,
        pixel_size_um: float | None = None,
    ) -> PhaseMap:
        """The phase map of ``image``: :meth:`predict_job` run to its end (see there)."""
        return run_job(
            self.predict_job(
                image, ratios=ratios, box=box, tta=tta, match_fractions=match_fractions, pixel_size_um=pixel_size_um
            )
        )

    def _predict_tta(self, image: np.ndarray, ratio: np.ndarray | None, matched: bool) -> Job[PhaseMap]:
        """Job: the 8 dihedral views predicted and averaged, one ``"predict"`` event per view; with ``matched`` the
        averaged map is given the fractions ``ratio``."""
        acc = None
        for i, (k, flip) in enumerate(DIHEDRAL):
            view = np.rot90(image[:, ::-1] if flip else image, k)
            probs = run_job(self._predict_tiled(np.ascontiguousarray(view), ratio, False)).probs
            probs = np.rot90(probs, -k, axes=(1, 2))
            probs = probs[:, :, ::-1] if flip else probs
            acc = probs.copy() if acc is None else acc + probs
            yield ProgressEvent("predict", i + 1, len(DIHEDRAL), message="test-time augmentation")
        acc /= len(DIHEDRAL)
        if matched:
            import torch

            log_probs = torch.from_numpy(np.log(np.maximum(acc, 1e-12)))
            acc = torch.softmax(log_probs + fraction_biases(log_probs, ratio)[:, None, None], 0).numpy()
        return PhaseMap(acc.argmax(0).astype(np.uint8), acc)

    def _predict_tiled(self, image: np.ndarray, ratio: np.ndarray | None, matched: bool) -> Job[PhaseMap]:
        """Job: every tile decoded at the decoder's own resolution, the tiles' logits blended there, the blended
        map upsampled band by band into labels (the probabilities on first use); with ``matched`` the blended map
        is first given the fractions ``ratio`` (:func:`~napari_metalseg.priors.fraction_biases`)."""
        import torch

        h, w = image.shape
        grid = self.tile_grid(image.shape)
        emb = yield from self._embeddings(image, grid, self._cache_key(image, grid), range(len(grid)))
        m, f = self._mask_scale()
        ph, pw = grid.padded_shape
        acc = torch.zeros((len(self.phases), ph // f, pw // f))
        weight = torch.zeros((ph // f, pw // f))
        window = self._window(grid)
        step = max(self.batch_size, DECODE_BATCH)  # the decoder is light: many tiles per call
        for i in range(0, len(grid), step):
            origins = grid.origins[i : i + step]
            logits = self._decode(emb[i : i + step], ratio, None, (m, m))
            _blend(acc, weight, logits, origins, f, window)
            yield ProgressEvent("predict", i + len(origins), len(grid), message="decoder")
        acc /= weight
        if matched:
            acc += fraction_biases(_pixel_sample(acc, (h, w), f), ratio)[:, None, None]
        return _logit_map(acc, (h, w), f)

    def _predict_stream(self, image: np.ndarray, ratio: np.ndarray | None) -> Job[PhaseMap]:
        """Job: a huge micrograph predicted row of tiles after row of tiles, blended like :meth:`_predict_tiled`
        (the same labels), without caching its embeddings. The blended map is held only for the rows a later row
        of tiles still overlaps; the rows no tile changes any more become labels at once. One ``"predict"`` event
        per row of tiles."""
        import torch

        h, w = image.shape
        grid = self.tile_grid(image.shape)
        m, f = self._mask_scale()
        pw = grid.padded_shape[1]
        k, margin = len(self.phases), 1 if f > 1 else 0  # bilinear upsampling reads one map row beyond
        fill = float(image.mean())
        window = self._window(grid)
        starts = sorted({y for y, _ in grid.origins})
        labels = np.empty((h, w), np.uint8)
        acc, weight = torch.zeros((k, 0, pw // f)), torch.zeros((0, pw // f))
        top, emitted, done = 0, 0, 0  # map row of acc[:, 0]; pixel rows labelled; tiles done
        for r, y in enumerate(starts):
            row = [t for t, (ty, _) in enumerate(grid.origins) if ty == y]
            grow = (y + grid.size) // f - top - acc.shape[1]
            if grow > 0:
                acc = torch.cat([acc, torch.zeros((k, grow, pw // f))], 1)
                weight = torch.cat([weight, torch.zeros((grow, pw // f))], 0)
            for i in range(0, len(row), self.batch_size):
                tiles = row[i : i + self.batch_size]
                logits = self._decode(self._encode(image, grid, tiles, fill), ratio, None, (m, m))
                _blend(acc, weight, logits, [grid.origins[t] for t in tiles], f, window, top=top)
            done += len(row)
            yield ProgressEvent("predict", done, len(grid), message="rows of tiles")
            last = r == len(starts) - 1
            final = h if last else min(h, (starts[r + 1] // f - margin) * f)  # no later tile reaches above
            if final > emitted:
                labels[emitted:final] = _row_labels(acc, weight, top, (emitted, final), w, f)
                emitted = final
            keep = max(top, emitted // f - 1)  # the map rows the next labels still read (_low_res_rows' margin)
            if keep > top:
                acc, weight = acc[:, keep - top :].clone(), weight[keep - top :].clone()
                top = keep
        return PhaseMap(labels, num_phases=k)

    def tile_grid(self, shape: tuple[int, int]) -> TileGrid:
        """The tile layout of a micrograph, padded so that tiles start on whole pixels of the decoder's maps."""
        return TileGrid(tuple(shape), self.size, self.overlap, multiple=self._mask_scale()[1])

    def _mask_scale(self) -> tuple[int, int]:
        """(side of the decoder's own logit maps, tile pixels per map pixel): (256, 4) for SAM at 1024."""
        m = int(getattr(self.model, "mask_size", (self.size, self.size))[0])
        return m, self.size // m

    def _window(self, grid: TileGrid):
        """The blending weights of a tile at the decoder's resolution (ones when one tile covers the image)."""
        import torch

        m = self._mask_scale()[0]
        return torch.from_numpy(blend_window(m) if len(grid) > 1 else np.ones((m, m), np.float32))

    def _decode(self, emb, ratio: np.ndarray | None, boxes, out_size: tuple[int, int]):
        """Logits (B, K, *out_size), float32 torch on the CPU, from cached embeddings; ``boxes`` (B, 4) in tile
        pixels or ``None``. Under bf16 autocast when :attr:`bf16`."""
        import torch

        with self._decoding():
            emb = emb.to(self.device)
            r = self._ratio_rows(ratio, emb.shape[0]) if self.guided else None
            b = None if boxes is None else torch.as_tensor(boxes, dtype=torch.float32, device=self.device)
            return self.model.decode(emb, ratios=r, boxes=b, out_size=out_size).float().cpu()

    def _ratio_rows(self, ratio: np.ndarray | None, n: int):
        """The ratio vector repeated for ``n`` tiles, on the device (``None`` without guidance)."""
        import torch

        return None if ratio is None else torch.from_numpy(np.repeat(ratio[None], n, 0)).to(self.device)

    @contextlib.contextmanager
    def _decoding(self):
        """Inference mode, bf16 autocast when :attr:`bf16`, one CPU thread for light decoders."""
        import torch

        light = getattr(self.model, "light_decoder", True)
        with (
            torch.inference_mode(),
            _single_thread_on_cpu(self.device) if light else contextlib.nullcontext(),
            torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16, enabled=self.bf16),
        ):
            yield

    def _decode_rects(self, emb, ratio: np.ndarray | None, boxes: np.ndarray, rects: list) -> list:
        """Logits of tile ``j`` with box ``boxes[j]`` (tile pixels) on the rectangle ``rects[j] = (r0, r1, c0, c1)``
        of its decoder-resolution map, each (K, r1 - r0, c1 - c0); a model with ``decode_masks`` computes only the
        embedding cells under the rectangle."""
        import torch

        m, _ = self._mask_scale()
        if not hasattr(self.model, "decode_masks"):
            full = self._decode(emb, ratio, boxes, (m, m))
            return [full[j, :, r0:r1, c0:c1] for j, (r0, r1, c0, c1) in enumerate(rects)]
        cell = m // self.model.embedding_size[0]
        cells = [(r0 // cell, -(-r1 // cell), c0 // cell, -(-c1 // cell)) for r0, r1, c0, c1 in rects]
        with self._decoding():
            r = self._ratio_rows(ratio, len(boxes))
            b = torch.from_numpy(boxes.astype(np.float32)).to(self.device)
            parts = self.model.decode_masks(emb.to(self.device), r, b, cells)
        return [
            part.cpu()[:, r0 - cr0 * cell : r1 - cr0 * cell, c0 - cc0 * cell : c1 - cc0 * cell]
            for part, (r0, r1, c0, c1), (cr0, _, cc0, _) in zip(parts, rects, cells, strict=True)
        ]

    def _predict_box(
        self, image: np.ndarray, box: tuple[int, int, int, int], ratio: np.ndarray | None
    ) -> Job[PhaseMap]:
        """Job: the phases inside a checked box, from the cached embeddings of the tile(s) it needs.

        A box inside one tile is that tile's single pass with the box as prompt. A box that fits in no tile is
        decoded on every tile overlapping it (and the one map pixel of margin the upsampling reads), blended as a
        whole prediction is. Either way only the map pixels under the box are upsampled."""
        import torch

        h, w = image.shape
        x0, y0, x1, y1 = box
        grid = self.tile_grid(image.shape)
        m, f = self._mask_scale()
        tiles = grid.tiles_for_box(box, margin=2 * f)  # the map pixels the upsampling reads
        emb = yield from self._embeddings(image, grid, self._cache_key(image, grid), tiles)
        s = grid.size
        origins = [grid.origins[t] for t in tiles]
        # the box seen from each tile, clipped to the tile
        local = np.array([[*_clip(x0 - x, y0 - y, s), *_clip(x1 - x, y1 - y, s)] for y, x in origins])
        if len(tiles) == 1:  # the tile's own map is the canvas
            (oy, ox), total = origins[0], (m, m)
            region = (y0 - oy, y1 - oy, x0 - ox, x1 - ox)
        else:  # the micrograph's map is the canvas
            (oy, ox), total = (0, 0), (grid.padded_shape[0] // f, grid.padded_shape[1] // f)
            region = (y0, y1, x0, x1)
        a0, a1, b0, b1 = _low_res_rows(region, f, total)
        rects = []
        for y, x in origins:
            ty, tx = (y - oy) // f, (x - ox) // f  # the tile's map origin on the canvas
            rects.append((max(a0, ty) - ty, min(a1, ty + m) - ty, max(b0, tx) - tx, min(b1, tx + m) - tx))
        used = [j for j, (r0, r1, c0, c1) in enumerate(rects) if r1 > r0 and c1 > c0]  # tiles under the canvas
        origins, rects = [origins[j] for j in used], [rects[j] for j in used]
        parts = self._decode_rects(emb[used], ratio, local[used], rects)
        canvas = torch.zeros((len(self.phases), a1 - a0, b1 - b0))
        weight = torch.zeros((a1 - a0, b1 - b0))
        window = self._window(grid)
        for (y, x), (r0, r1, c0, c1), part in zip(origins, rects, parts, strict=True):
            ty, tx = (y - oy) // f - a0, (x - ox) // f - b0
            canvas[:, ty + r0 : ty + r1, tx + c0 : tx + c1].addcmul_(part, window[r0:r1, c0:c1])
            weight[ty + r0 : ty + r1, tx + c0 : tx + c1] += window[r0:r1, c0:c1]
        logits = _upsample_region(canvas / weight, (a0, b0), f, region)
        yield ProgressEvent("predict", 1, 1, message="decoder")
        full = np.zeros((len(self.phases), h, w), np.float32)  # calloc: pages outside the box are never touched
        full[:, y0:y1, x0:x1] = torch.softmax(logits, dim=0).numpy()
        labels = np.full((h, w), UNLABELED, np.uint8)
        labels[y0:y1, x0:x1] = _argmax(logits).numpy()
        return PhaseMap(labels, full)


def _logit_map(acc, shape: tuple[int, int], f: int) -> PhaseMap:
    """The :class:`PhaseMap` of the ``shape`` pixels of the blended, divided map ``acc`` (K, rows, cols), ``f`` times
    coarser; its labels band by band: the full-size K x H x W map is never held (16384 x 16384 x 3 floats: 3 GiB)."""
    h, w = shape
    if f == 1:
        return PhaseMap(_argmax(acc[:, :h, :w]).numpy(), logits=acc)
    labels = np.empty((h, w), np.uint8)
    rows = max(f, (BAND_VALUES // (acc.shape[0] * acc.shape[2] * f)) // f * f)  # K x rows x padded width
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        labels[y0:y1] = _row_labels(acc, None, 0, (y0, y1), w, f)
    return PhaseMap(labels, logits=acc, scale=f)


def _clip(x: int, y: int, s: int) -> tuple[int, int]:
    return min(max(x, 0), s), min(max(y, 0), s)


def _low_res_rows(region: tuple[int, int, int, int], f: int, total: tuple[int, int]) -> tuple[int, int, int, int]:
    """Rows ``a0:a1`` and columns ``b0:b1`` of a map ``f`` times coarser than the pixels (``total`` its size) that
    bilinear upsampling reads for the pixel rows ``y0:y1`` and columns ``x0:x1`` of ``region``: one map pixel of
    margin, clipped to the map."""
    y0, y1, x0, x1 = region
    return (
        max(0, y0 // f - 1),
        min(total[0], -(-y1 // f) + 1),
        max(0, x0 // f - 1),
        min(total[1], -(-x1 // f) + 1),
    )


def _upsample_region(crop, offset: tuple[int, int], f: int, region: tuple[int, int, int, int]):
    """Pixel rows ``y0:y1`` and columns ``x0:x1`` of a map ``f`` times coarser, bilinearly upsampled
    (``align_corners=False``), from the crop of that map starting at ``offset`` that :func:`_low_res_rows` gives:
    the same values as upsampling the whole map and cropping, computed on the region only."""
    import torch.nn.functional as F

    y0, y1, x0, x1 = region
    if f > 1:
        crop = F.interpolate(crop[None], scale_factor=(f, f), mode="bilinear", align_corners=False)[0]
    oy, ox = offset[0] * f, offset[1] * f
    return crop[:, y0 - oy : y1 - oy, x0 - ox : x1 - ox]


def _blend(acc, weight, logits, origins, f: int, window, top: int = 0) -> None:
    """Add the tiles' ``logits`` (B, K, m, m), weighted by the blending ``window``, into the blended map ``acc`` and
    the weights into ``weight``; tile ``j`` starts at pixel ``origins[j]`` (y, x), the map is ``f`` times coarser
    and its first row is map row ``top``."""
    m = logits.shape[-1]
    for j, (y, x) in enumerate(origins):
        rows, cols = slice(y // f - top, y // f - top + m), slice(x // f, x // f + m)
        acc[:, rows, cols].addcmul_(logits[j], window)
        weight[rows, cols] += window


def _row_labels(acc, weight, top: int, rows: tuple[int, int], width: int, f: int) -> np.ndarray:
    """Labels of the pixel rows ``rows`` (y0, y1) from the blended map ``acc`` (``f`` times coarser, its first row map
    row ``top``), divided by ``weight`` first unless it is ``None`` (already divided): only the map rows the
    bilinear upsampling reads are upsampled."""
    y0, y1 = rows
    total = (top + acc.shape[1], acc.shape[2])
    a0, a1, _, _ = _low_res_rows((y0, y1, 0, width), f, total)
    band = acc[:, a0 - top : a1 - top]
    if weight is not None:
        band = band / weight[a0 - top : a1 - top]
    return _argmax(_upsample_region(band, (a0, 0), f, (y0, y1, 0, width))).numpy()


def _pixel_sample(acc, shape: tuple[int, int], f: int):
    """An evenly strided sample (K, n), at most :data:`~napari_metalseg.priors.MAX_PIXELS` pixels, of the logits of
    the micrograph's ``shape`` pixels that the blended map ``acc`` (``f`` times coarser, divided) upsamples to: the
    pixels whose labels the fractions count. Upsampled band by band."""
    import torch

    h, w = shape
    if f == 1:
        return acc[:, :h, :w]
    step = max(1, int(np.ceil(np.sqrt(h * w / MAX_PIXELS))))
    rows = max(step, (BAND_VALUES // (acc.shape[0] * w)) // step * step)
    parts = []
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        a0, a1, _, _ = _low_res_rows((y0, y1, 0, w), f, acc.shape[1:])
        parts.append(_upsample_region(acc[:, a0:a1], (a0, 0), f, (y0, y1, 0, w))[:, ::step, ::step])
    return torch.cat(parts, 1)


def _argmax(logits):
    """Index of the largest of K maps (K, H, W) as uint8 (the first on ties): K passes over contiguous maps, 4x
    faster than ``argmax(0)``, which reduces across the slow axis (measured on 3 x 1536 x 2048: 11 vs 35-220 ms)."""
    import torch

    best, labels = logits[0], None
    for k in range(1, logits.shape[0]):
        higher = logits[k] > best
        if k < logits.shape[0] - 1:
            best = torch.maximum(best, logits[k])
        labels = higher.to(torch.uint8) if labels is None else labels.masked_fill_(higher, k)
    return torch.zeros(logits.shape[1:], dtype=torch.uint8) if labels is None else labels


@contextlib.contextmanager
def _single_thread_on_cpu(device: str):
    """Run the light decoder on one CPU thread: its small matrix products gain nothing from several threads and
    lose up to 90x when the cores are shared (measured here: 10 ms vs 0.9 s for 3 tiny tiles with a busy core)."""
    if device != "cpu":
        yield
        return
    from napari_metalseg.threads import torch_threads

    with torch_threads(1):
        yield


def _check_image(image: np.ndarray) -> np.ndarray:
    """A 2-D image of at least 8 x 8 pixels: integer images are kept as they are (each tile is converted to float32
    when it is encoded, so a huge 8-bit micrograph never exists as a float copy), others become float32 and must be
    finite (checked in bands, without a full-size temporary)."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise MetalsegError(f"expected a 2-D grayscale image, got shape {image.shape}")
    if min(image.shape) < 8:
        raise MetalsegError(f"image of shape {image.shape} is too small (at least 8x8 pixels)")
    if np.issubdtype(image.dtype, np.integer) or image.dtype == bool:
        return image
    image = image.astype(np.float32, copy=False)
    if not all(np.isfinite(image[band]).all() for band in row_bands(*image.shape)):
        raise MetalsegError("image contains NaN or infinite values")
    return image
