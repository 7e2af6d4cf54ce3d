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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_metalseg.data.samples import normalize_contrast
from napari_metalseg.embeddings import DEFAULT_CACHE_BYTES, EmbeddingCache
from napari_metalseg.errors import MetalsegError
from napari_metalseg.models.registry import check_model_options
from napari_metalseg.phases import UNLABELED, PhaseSet, phase_fractions
from napari_metalseg.progress import Job, ProgressEvent, run_job
from napari_metalseg.prompts import check_box
from napari_metalseg.tiles import TileGrid


@dataclass
class PhaseMap:
    """A prediction: ``labels`` uint8 HxW (phase index; 255 outside a box prompt), ``probs`` float32 KxHxW."""

    labels: np.ndarray
    probs: np.ndarray

    def fractions(self) -> np.ndarray:
        """Area fraction of each phase over the predicted pixels."""
        k = self.probs.shape[0]
        fractions = phase_fractions(self.labels, k)
        return np.zeros(k) if fractions is None else fractions


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
    cache_dir : path, optional
        Also keep the embeddings of models with a heavy encoder (SAM) on disk here
        (:class:`~napari_metalseg.io.embedding_store.EmbeddingStore`), for reopening the same micrographs later.
    bf16 : bool or None
        bfloat16 autocast for the encoder; default: on for CUDA, off on CPU.
    batch_size : int
        Tiles per encoder / decoder batch.

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
        cache_dir: str | Path | None = None,
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
        if cache_dir is not None and getattr(model, "heavy_encoder", True):
            from napari_metalseg.io.embedding_store import EmbeddingStore

            self.store = EmbeddingStore(Path(cache_dir))
        self.bf16 = device.startswith("cuda") if bf16 is None else bf16
        self.batch_size = batch_size
        self._signature: str | None = None
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
        if not entry.complete and self.store is not None and (stored := self.store.load(key)) is not None:
            if stored.get("embeddings") is not None and stored["embeddings"].shape[0] == len(grid):
                entry.store(range(len(grid)), torch.from_numpy(stored["embeddings"]))
        missing = entry.missing(tiles)
        if missing:
            padded = _pad_image(image, *grid.padded_shape)
            s = grid.size
            for i in range(0, len(missing), self.batch_size):
                batch_tiles = missing[i : i + self.batch_size]
                stack = np.stack([padded[y : y + s, x : x + s] for y, x in (grid.origins[t] for t in batch_tiles)])
                batch = torch.from_numpy(stack).to(self.device)
                with (
                    torch.inference_mode(),
                    torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16, enabled=self.bf16),
                ):
                    entry.store(batch_tiles, self.model.embed(self.model.preprocess(batch)).float().cpu())
                done = min(i + self.batch_size, len(missing))
                yield ProgressEvent("embed", done, len(missing), message="image encoder")
            if entry.complete and self.store is not None:
                self.store.save(key, {"embeddings": entry.tensor.numpy()})
        return entry.get(tiles)

    # -- prediction ------------------------------------------------------------------------------------------
    def predict_job(
        self,
        image: np.ndarray,
        ratios: Sequence[float] | None = None,
        box: Sequence[float] | None = None,
        tta: bool = False,
    ) -> Job[PhaseMap]:
        """Job: the phase map of a whole micrograph (tiled), or only inside ``box`` (x0, y0, x1, y1) when given.

        The micrograph is cut into tiles of the model input size (:class:`~napari_metalseg.tiles.TileGrid`);
        each tile is encoded once and its embedding cached, so a new ratio vector or a box reruns only the
        decoder. A box is decoded on the tile(s) it needs (:meth:`~napari_metalseg.tiles.TileGrid.tiles_for_box`),
        with the box in tile coordinates, and only the box region is upsampled; on a micrograph not predicted
        yet only those tiles are encoded.

        With ``tta`` (test-time augmentation) the micrograph is also predicted flipped and rotated (the 8 symmetries
        of the square) and the probabilities are averaged: 8 times the work, steadier boundaries.

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
            A bad image, ratio vector or box, ratios for a model trained without guidance, a box for a model that
            takes none, or ``tta`` with a box.
        """
        image = _check_image(image)
        if getattr(self.model, "contrast", None) == "image":
            image = normalize_contrast(image)
        ratio = check_ratios(ratios, self.phases)
        if ratio is not None and getattr(self.model, "guidance", "none") == "none":
            raise MetalsegError("this model was trained without ratio guidance; predict without phase ratios")
        if box is not None:
            check_model_options(self.model.kind, boxes=True)
            if tta:
                raise MetalsegError("test-time augmentation applies to whole micrographs, not to box prompts")
            box = check_box(box, image.shape)
        with self.lock:
            try:
                if box is not None:
                    return (yield from self._predict_box(image, box, ratio))
                if not tta:
                    return (yield from self._predict_tiled(image, ratio))
                return (yield from self._predict_tta(image, ratio))
            finally:
                self.cache.trim()

    def predict(
        self,
        image: np.ndarray,
        ratios: Sequence[float] | None = None,
        box: Sequence[float] | None = None,
        tta: bool = False,
    ) -> PhaseMap:
        """The phase map of ``image``: :meth:`predict_job` run to its end (see there)."""
        return run_job(self.predict_job(image, ratios=ratios, box=box, tta=tta))

    def _predict_tta(self, image: np.ndarray, ratio: np.ndarray | None) -> Job[PhaseMap]:
        """Job: the 8 dihedral views predicted and averaged, one ``"predict"`` event per view."""
        acc = None
        for i, (k, flip) in enumerate(DIHEDRAL):
            view = np.rot90(image[:, ::-1] if flip else image, k)
            probs = run_job(self._predict_tiled(np.ascontiguousarray(view), ratio)).probs
            probs = np.rot90(probs, -k, axes=(1, 2))
            probs = probs[:, :, ::-1] if flip else probs
            acc = probs.copy() if acc is None else acc + probs
            yield ProgressEvent("predict", i + 1, len(DIHEDRAL), message="test-time augmentation")
        acc /= len(DIHEDRAL)
        return PhaseMap(acc.argmax(0).astype(np.uint8), acc)

    def _predict_tiled(self, image: np.ndarray, ratio: np.ndarray | None) -> Job[PhaseMap]:
        """Job: every tile decoded and blended into the whole micrograph's phase map (torch buffers, no copies)."""
        import torch

        h, w = image.shape
        grid = TileGrid(image.shape, self.size, self.overlap)
        emb = yield from self._embeddings(image, grid, self._cache_key(image, grid), range(len(grid)))
        s = grid.size
        acc = torch.zeros((len(self.phases), *grid.padded_shape))
        weight = torch.zeros(grid.padded_shape)
        window = torch.from_numpy(grid.window)
        for i in range(0, len(grid), self.batch_size):
            origins = grid.origins[i : i + self.batch_size]
            probs = torch.softmax(self._decode(emb[i : i + self.batch_size], ratio, None, (s, s)), dim=1)
            for j, (y, x) in enumerate(origins):
                acc[:, y : y + s, x : x + s].addcmul_(probs[j], window)
                weight[y : y + s, x : x + s] += window
            yield ProgressEvent("predict", i + len(origins), len(grid), message="decoder")
        acc /= weight  # in place: the probability map is the largest buffer of a big micrograph
        probs = acc[:, :h, :w]
        return PhaseMap(probs.argmax(0).to(torch.uint8).numpy(), probs.numpy())

    def _decode(self, emb, ratio: np.ndarray | None, boxes, out_size: tuple[int, int]):
        """Logits (B, K, *out_size), float32 torch on the CPU, from cached embeddings; ``boxes`` (B, 4) in tile
        pixels or ``None``. Under bf16 autocast when :attr:`bf16`."""
        import torch

        light = getattr(self.model, "light_decoder", True)
        device_type = self.device.split(":")[0]
        with (
            torch.inference_mode(),
            _single_thread_on_cpu(self.device) if light else contextlib.nullcontext(),
            torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.bf16),
        ):
            emb = emb.to(self.device)
            r = None
            if ratio is not None:
                r = torch.from_numpy(np.repeat(ratio[None], emb.shape[0], 0)).to(self.device)
            b = None if boxes is None else torch.as_tensor(boxes, dtype=torch.float32, device=self.device)
            return self.model.decode(emb, ratios=r, boxes=b, out_size=out_size).float().cpu()

    def _decode_box(self, emb, ratio: np.ndarray | None, local: np.ndarray, s: int) -> list:
        """Logits (K, m, m) of each tile at the decoder's own resolution ``m`` (``s`` for models without one),
        for its box ``local[j]`` (tile pixels); a model with :meth:`decode_masks` computes only the cells the box
        region needs (the rest stays 0 and is never read)."""
        import torch

        boxes = local.astype(np.float32)
        if not hasattr(self.model, "decode_masks"):
            return list(self._decode(emb, ratio, boxes, getattr(self.model, "mask_size", (s, s))))
        m = self.model.mask_size[0]
        f, cell = s / m, m // self.model.embedding_size[0]
        cells = []
        for lx0, ly0, lx1, ly1 in local:
            rows = max(0, int(ly0 // f) - 1) // cell, -(-min(m, int(-(-ly1 // f)) + 1) // cell)
            cols = max(0, int(lx0 // f) - 1) // cell, -(-min(m, int(-(-lx1 // f)) + 1) // cell)
            cells.append((*rows, *cols))
        device_type = self.device.split(":")[0]
        light = getattr(self.model, "light_decoder", True)
        with (
            torch.inference_mode(),
            _single_thread_on_cpu(self.device) if light else contextlib.nullcontext(),
            torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.bf16),
        ):
            r = None if ratio is None else torch.from_numpy(np.repeat(ratio[None], len(local), 0)).to(self.device)
            parts = self.model.decode_masks(emb.to(self.device), r, torch.from_numpy(boxes).to(self.device), cells)
        out = []
        for (r0, r1, c0, c1), part in zip(cells, parts, strict=True):
            full = torch.zeros((part.shape[0], m, m))
            full[:, cell * r0 : cell * r1, cell * c0 : cell * c1] = part.cpu()
            out.append(full)
        return out

    def _predict_box(
        self, image: np.ndarray, box: tuple[int, int, int, int], ratio: np.ndarray | None
    ) -> Job[PhaseMap]:
        """Job: the phases inside a checked box, from the cached embeddings of the tile(s) it needs."""
        import torch

        h, w = image.shape
        x0, y0, x1, y1 = box
        grid = TileGrid(image.shape, self.size, self.overlap)
        tiles = grid.tiles_for_box(box)
        emb = yield from self._embeddings(image, grid, self._cache_key(image, grid), tiles)
        s = grid.size
        origins = [grid.origins[t] for t in tiles]
        # the box seen from each tile, clipped to the tile
        local = np.array([[max(x0 - x, 0), max(y0 - y, 0), min(x1 - x, s), min(y1 - y, s)] for y, x in origins])
        logits = self._decode_box(emb, ratio, local, s)
        acc = torch.zeros((len(self.phases), y1 - y0, x1 - x0))
        weight = torch.zeros((y1 - y0, x1 - x0))
        window = torch.from_numpy(grid.window)
        for j, (y, x) in enumerate(origins):
            lx0, ly0, lx1, ly1 = (int(v) for v in local[j])
            region = _upsample_region(logits[j], (s, s), (ly0, ly1, lx0, lx1))
            part = window[ly0:ly1, lx0:lx1] if len(tiles) > 1 else torch.ones((ly1 - ly0, lx1 - lx0))
            oy, ox = y + ly0 - y0, x + lx0 - x0
            acc[:, oy : oy + ly1 - ly0, ox : ox + lx1 - lx0].addcmul_(region, part)
            weight[oy : oy + ly1 - ly0, ox : ox + lx1 - lx0] += part
        acc /= weight
        yield ProgressEvent("predict", 1, 1, message="decoder")
        full = np.zeros((len(self.phases), h, w), np.float32)  # calloc: pages outside the box are never touched
        full[:, y0:y1, x0:x1] = acc.numpy()
        labels = np.full((h, w), UNLABELED, np.uint8)
        labels[y0:y1, x0:x1] = acc.argmax(0).to(torch.uint8).numpy()
        return PhaseMap(labels, full)


def _upsample_region(logits, size: tuple[int, int], region: tuple[int, int, int, int]):
    """Rows ``y0:y1`` and columns ``x0:x1`` of ``logits`` (K, h, w) bilinearly resized to ``size``, then softmaxed:
    the same values as resizing the whole map (``align_corners=False``) and cropping, computed on the region only
    (the crop keeps one low-resolution pixel of margin, so the interpolation at its edges is the same)."""
    import torch
    import torch.nn.functional as F

    y0, y1, x0, x1 = region
    k, h, w = logits.shape
    if (h, w) == tuple(size):
        return torch.softmax(logits[:, y0:y1, x0:x1], dim=0)
    fy, fx = size[0] / h, size[1] / w
    a0, a1 = max(0, int(y0 // fy) - 1), min(h, int(-(-y1 // fy)) + 1)
    b0, b1 = max(0, int(x0 // fx) - 1), min(w, int(-(-x1 // fx)) + 1)
    crop = logits[None, :, a0:a1, b0:b1]
    up = F.interpolate(crop, scale_factor=(fy, fx), mode="bilinear", align_corners=False)[0]
    oy, ox = round(a0 * fy), round(b0 * fx)
    return torch.softmax(up[:, y0 - oy : y1 - oy, x0 - ox : x1 - ox], dim=0)


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
    image = np.asarray(image)
    if image.ndim != 2:
        raise MetalsegError(f"expected a 2-D grayscale image, got shape {image.shape}")
    if min(image.shape) < 8:
        raise MetalsegError(f"image of shape {image.shape} is too small (at least 8x8 pixels)")
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise MetalsegError("image contains NaN or infinite values")
    return image


def _pad_image(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """Pad at the bottom/right to (h, w) with the image mean (as training crops are padded)."""
    ih, iw = image.shape
    if ih >= h and iw >= w:
        return image
    out = np.full((max(h, ih), max(w, iw)), float(image.mean()), np.float32)
    out[:ih, :iw] = image
    return out
