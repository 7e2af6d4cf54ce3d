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
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_metalseg.data.samples import normalize_contrast
from napari_metalseg.errors import MetalsegError
from napari_metalseg.models.registry import check_model_options
from napari_metalseg.phases import UNLABELED, PhaseSet, phase_fractions
from napari_metalseg.precision import prediction_bf16
from napari_metalseg.progress import Job, ProgressEvent, run_job
from napari_metalseg.prompts import check_box


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


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` with at least ``overlap`` pixels of overlap."""
    if length <= tile:
        return [0]
    stride = max(1, tile - overlap)
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def blend_window(size: int, floor: float = 1e-2) -> np.ndarray:
    """2-D weight window for overlap blending: a squared sine, highest in the tile centre, never zero."""
    ramp = np.sin(np.pi * (np.arange(size) + 0.5) / size) ** 2
    ramp = np.maximum(ramp, floor)
    return np.outer(ramp, ramp).astype(np.float32)


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
        Number of images whose embeddings are kept in memory.
    cache_dir : path, optional
        Also keep embeddings on disk here (safetensors), for reopening the same micrographs later.
    bf16 : bool or None
        bfloat16 autocast for the encoder; default (None): :func:`napari_metalseg.precision.prediction_bf16`, on for
        CUDA and CPUs with native bf16 (AVX512-BF16 / AMX) unless ``METALSEG_FP32=1``.
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
        cache_dir: str | Path | None = None,
        bf16: bool | None = None,
        batch_size: int = 4,
    ) -> None:
        self.model = model.eval()
        self.phases = phases
        self.device = device
        self.size = int(getattr(model, "predict_size", model.img_size))
        self.overlap = int(round(overlap * self.size))
        self.cache_size = cache_size
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.bf16 = prediction_bf16(device) if bf16 is None else bf16
        self.batch_size = batch_size
        self._cache: OrderedDict[str, object] = OrderedDict()
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
        self._cache.clear()
        self._signature = None

    def _embed_tiles(self, tiles: list[np.ndarray], key: str) -> Job:
        """Job: the embeddings of ``tiles`` (from the cache when there), one ``"embed"`` event per batch."""
        import torch

        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        disk = self.cache_dir / f"{key}.safetensors" if self.cache_dir else None
        if disk is not None and disk.is_file():
            from safetensors.torch import load_file

            emb = load_file(str(disk))["embeddings"]
        else:
            out = []
            for i in range(0, len(tiles), self.batch_size):
                batch = torch.from_numpy(np.stack(tiles[i : i + self.batch_size])).to(self.device)
                with (
                    torch.inference_mode(),
                    torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16, enabled=self.bf16),
                ):
                    out.append(self.model.embed(self.model.preprocess(batch)).float().cpu())
                yield ProgressEvent("embed", min(i + self.batch_size, len(tiles)), len(tiles), message="image encoder")
            emb = torch.cat(out)
            if disk is not None:
                from safetensors.torch import save_file

                from napari_metalseg.io.atomic import atomic_path

                with atomic_path(disk) as tmp:
                    save_file({"embeddings": emb.contiguous()}, str(tmp))
        self._cache[key] = emb
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return emb

    # -- prediction ------------------------------------------------------------------------------------------
    def predict_job(
        self,
        image: np.ndarray,
        ratios: Sequence[float] | None = None,
        box: Sequence[float] | None = None,
        tta: bool = False,
    ) -> Job[PhaseMap]:
        """Job: the phase map of a whole micrograph (tiled), or only inside ``box`` (x0, y0, x1, y1) when given.

        With ``tta`` (test-time augmentation) the micrograph is also predicted flipped and rotated (the 8 symmetries
        of the square) and the probabilities are averaged: 8 times the work, steadier boundaries.

        The inputs are checked when the job starts (its first ``next``); it holds :attr:`lock` while it runs the
        model, so it must be driven to its end (or closed) in the thread that started it.

        Yields
        ------
        ProgressEvent
            ``"embed"`` per batch of encoder tiles, then ``"predict"`` per batch of decoded tiles (per augmentation
            with ``tta``).

        Returns
        -------
        PhaseMap

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
            if box is not None:
                return (yield from self._predict_box(image, box, ratio))
            if not tta:
                return (yield from self._predict_tiled(image, ratio))
            return (yield from self._predict_tta(image, ratio))

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
        h, w = image.shape
        s = self.size
        padded = _pad_image(image, max(h, s), max(w, s))
        ys, xs = tile_starts(padded.shape[0], s, self.overlap), tile_starts(padded.shape[1], s, self.overlap)
        origins = [(y, x) for y in ys for x in xs]
        tiles = [padded[y : y + s, x : x + s] for y, x in origins]
        key = f"{image_key(image)}-{self.signature()}-t{s}-{self.overlap}"
        emb = yield from self._embed_tiles(tiles, key)
        k = len(self.phases)
        acc = np.zeros((k, *padded.shape), np.float32)
        weight = np.zeros(padded.shape, np.float32)
        window = blend_window(s) if len(origins) > 1 else np.ones((s, s), np.float32)
        for i in range(0, len(origins), self.batch_size):
            batch = emb[i : i + self.batch_size].to(self.device)
            probs = self._decode(batch, ratio, None)
            for j, (y, x) in enumerate(origins[i : i + self.batch_size]):
                acc[:, y : y + s, x : x + s] += probs[j] * window
                weight[y : y + s, x : x + s] += window
            yield ProgressEvent("predict", min(i + self.batch_size, len(origins)), len(origins), message="decoder")
        acc /= weight  # in place: the probability map is the largest buffer of a big micrograph
        probs = acc[:, :h, :w]
        return PhaseMap(probs.argmax(0).astype(np.uint8), probs)

    def _decode(self, emb, ratio: np.ndarray | None, boxes) -> np.ndarray:
        import torch

        light = getattr(self.model, "light_decoder", True)
        with torch.inference_mode(), _single_thread_on_cpu(self.device) if light else contextlib.nullcontext():
            r = None
            if ratio is not None:
                r = torch.from_numpy(np.repeat(ratio[None], emb.shape[0], 0)).to(self.device)
            b = None if boxes is None else torch.as_tensor(boxes, dtype=torch.float32, device=self.device)
            logits = self.model.decode(emb, ratios=r, boxes=b, out_size=(self.size, self.size))
            return torch.softmax(logits.float(), dim=1).cpu().numpy()

    def _predict_box(
        self, image: np.ndarray, box: tuple[int, int, int, int], ratio: np.ndarray | None
    ) -> Job[PhaseMap]:
        """Job: the phases inside a checked box (one encoder window around it; ``"embed"`` events only)."""
        from scipy import ndimage

        h, w = image.shape
        x0, y0, x1, y1 = box
        s = self.size
        margin = s // 8
        side = max(s, x1 - x0 + 2 * margin, y1 - y0 + 2 * margin)
        cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
        wy = int(np.clip(round(cy - side / 2), 0, max(0, h - side)))
        wx = int(np.clip(round(cx - side / 2), 0, max(0, w - side)))
        padded = _pad_image(image, max(h, side), max(w, side))
        window = padded[wy : wy + side, wx : wx + side]
        scale = s / side
        tile = ndimage.zoom(window, scale, order=1)[:s, :s] if side != s else window
        tile = _pad_image(tile, s, s)
        key = f"{image_key(image)}-{self.signature()}-box{wy},{wx},{side}"
        emb = yield from self._embed_tiles([tile], key)
        local = np.array([[(x0 - wx) * scale, (y0 - wy) * scale, (x1 - wx) * scale, (y1 - wy) * scale]])
        probs = self._decode(emb.to(self.device), ratio, local)[0]
        if side != s:
            probs = np.stack([ndimage.zoom(p, side / s, order=1)[:side, :side] for p in probs])
            probs = np.stack([_pad_image(p, side, side) for p in probs])
        k = len(self.phases)
        full = np.zeros((k, max(h, side), max(w, side)), np.float32)
        full[:, wy : wy + side, wx : wx + side] = probs
        full = full[:, :h, :w]
        inside = np.zeros((h, w), bool)
        inside[y0:y1, x0:x1] = True
        full[:, ~inside] = 0
        labels = np.where(inside, full.argmax(0), UNLABELED).astype(np.uint8)
        return PhaseMap(labels, full)


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
