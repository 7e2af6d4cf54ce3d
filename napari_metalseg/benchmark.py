"""Speed as a user feels it, against segment-anything's own ``SamPredictor``, in one process on one machine.

What a user waits for in the GUI: the first prediction of a micrograph pays for the image encoder; a later ratio
change or box on the same micrograph should rerun only the decoder on the cached embedding. :func:`benchmark_job`
times exactly these steps through the public :class:`~napari_metalseg.predict.Predictor` API (``predict``,
``predict(ratios=...)``, ``predict(box=...)``, ``invalidate``) and the reference, ``SamPredictor`` as
segment-anything ships it (``set_image`` = encoder at 1024 px, fp32; ``predict`` with a box = decoder), on the
same weights. Every number is a median, in milliseconds, of ``repeat`` runs after one warm-up run. Weights are
random (timing does not depend on their values), so no checkpoint is needed.

Fields (``None`` where a field does not apply, with the reason in ``notes``):

``encoder_ms``
    Cold prediction of the ``image_size`` square micrograph (a new Predictor: empty cache), the whole prediction.
``sam_predictor_set_image_ms`` / ``encoder_ratio_vs_sam``
    ``SamPredictor.set_image`` on the same micrograph (RGB uint8), and ``encoder_ms`` divided by it.
``cache_hit_ms``
    The same micrograph predicted again (embeddings in memory).
``large_first_predict_ms`` / ``box_first_ms``
    Cold prediction of the ``large_shape`` micrograph, then the first box on it.
``box_ms`` / ``encoder_calls_during_boxes``
    Median over ``boxes`` boxes at distinct seeded random places and sizes on the cached large micrograph (some
    across tile borders), and how often ``model.embed`` ran during them.
``sam_predictor_box_ms``
    ``SamPredictor.predict`` with a box on its cached image, median over as many boxes.
``ratio_update_ms``
    The cached large micrograph predicted with a new ratio vector each time (models with ratio guidance).

``notes`` also flags a step that did not do what its name says: a cold prediction without an encoder call, or a
cache hit or ratio update with one (the image encoder, ``model.embed``, is counted throughout).

Peak memory of huge micrographs is measured by ``python -m benchmarks.memory`` (whole-process resident memory, in
a fresh process per size; docs/scaling.md).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator

import numpy as np

from napari_metalseg.precision import native_bf16
from napari_metalseg.progress import Job, ProgressEvent, run_job

PHASE_NAMES = ("ferrite", "martensite", "bainite")
"""The phases of the benchmark models (three, like SAM's three multimask outputs)."""

TIMINGS: tuple[str, ...] = (
    "encoder_ms",
    "sam_predictor_set_image_ms",
    "encoder_ratio_vs_sam",
    "cache_hit_ms",
    "large_first_predict_ms",
    "box_first_ms",
    "box_ms",
    "sam_predictor_box_ms",
    "encoder_calls_during_boxes",
    "ratio_update_ms",
)
"""The measured fields of a :func:`benchmark_job` result, in the order of the table."""

UNITS = {"encoder_ratio_vs_sam": "x", "encoder_calls_during_boxes": "calls"}
"""Unit of each measured field that is not in milliseconds."""

SAM_REFERENCE_SIZE = 1024
"""Input size of segment-anything's ``SamPredictor`` as it ships (``ResizeLongestSide(1024)``)."""


def benchmark_job(
    kind: str = "vit_b",
    *,
    img_size: int = 1024,
    image_size: int = 1024,
    large_shape: tuple[int, int] = (1536, 2048),
    device: str = "cpu",
    repeat: int = 3,
    boxes: int = 10,
    bf16: bool | None = None,
    guidance: str = "ratio",
    reference: bool = True,
    seed: int = 0,
) -> Job[dict]:
    """Job: time what a user feels with one model (random weights), and ``SamPredictor`` on the same weights.

    Parameters
    ----------
    kind : str
        A model name that can be built untrained: a SAM kind (``tiny``, ``vit_b``, ...) or a task-specific CNN
        (``unet``, ``unet3plus``, ``elunet``); not the classical classifier, which is fitted.
    img_size : int
        Model input size; for a CNN its training crop size (its tile size is ``model.predict_size``).
    image_size : int
        Side of the square micrograph of ``encoder_ms``, ``cache_hit_ms`` and the ``SamPredictor`` reference.
    large_shape : (int, int)
        Height and width of the large micrograph of the box, ratio and ``large_first_predict_ms`` fields.
    device : str
        ``"cpu"`` or ``"cuda"`` (resolved already).
    repeat : int
        Timed runs of each step after its one warm-up run; the fields are their medians.
    boxes : int
        Number of distinct boxes of ``box_ms`` and ``sam_predictor_box_ms``.
    bf16 : bool or None
        Passed to the Predictor (``None``: its default; the precision used is reported).
    guidance : str
        ``"ratio"`` (builds the model with ratio guidance: ``ratio_update_ms`` is measured) or ``"none"``.
    reference : bool
        Run segment-anything's ``SamPredictor`` (SAM models only).
    seed : int
        Seed of the micrographs, boxes and ratio vectors.

    Yields
    ------
    ProgressEvent
        An ``info`` event before each long step.

    Returns
    -------
    dict
        The settings (``model``, ``family``, ``img_size``, ``tile_size``, ``image_size``, ``large_shape``,
        ``repeat``, ``warmup``, ``boxes``, ``boxes_across_tile_borders``, ``guidance``, ``precision``, ``bf16``,
        ``sam_reference``, ``sam_reference_img_size``, ``sam_predictor_precision``), the fields of
        :data:`TIMINGS` (milliseconds unless :data:`UNITS` says otherwise; ``None`` where one does not apply),
        ``machine`` (:func:`machine_info`) and ``notes`` (why a field is ``None``, and how to read some).

    Raises
    ------
    MetalsegError
        An unknown or classical model, a bad size, guidance, ``repeat`` or ``boxes``.
    """
    from napari_metalseg.data.synth import synthesize_micrograph
    from napari_metalseg.errors import MetalsegError
    from napari_metalseg.models.options import check_choice, check_positive_int
    from napari_metalseg.models.registry import MODEL_LABELS, check_model_options, family_of
    from napari_metalseg.models.spec import ModelSpec
    from napari_metalseg.phases import PhaseSet
    from napari_metalseg.predict import Predictor

    family = family_of(kind).name
    if family == "classical":
        raise MetalsegError(
            f"model {kind!r}: the classical pixel classifier is fitted, not built with random weights; "
            "benchmark a SAM kind or a task-specific CNN"
        )
    check_choice("guidance", guidance, ("ratio", "none"))
    check_model_options(kind, guidance=guidance)
    repeat = check_positive_int("repeat", repeat)
    boxes = check_positive_int("boxes", boxes)
    phases = PhaseSet.from_names(list(PHASE_NAMES))
    spec = ModelSpec(kind=kind, img_size=img_size, phases=phases.to_json(), guidance=guidance)
    label = MODEL_LABELS[kind]
    yield ProgressEvent("info", message=f"building {label} at {img_size} px (random weights)")
    model, _ = spec.build(device)
    model = model.eval()
    image, _ = synthesize_micrograph(image_size, magnification=3000, seed=seed)
    large, _ = synthesize_micrograph(tuple(large_shape), magnification=3000, seed=seed + 1)
    sync = _synchronizer(device)

    def new_predictor() -> Predictor:
        return Predictor(model, phases, device=device, bf16=bf16)

    predictor = new_predictor()
    tile = predictor.size
    notes: dict[str, str] = {}
    results: dict = {
        "model": kind,
        "family": family,
        "img_size": img_size,
        "tile_size": tile,
        "image_size": image_size,
        "large_shape": [int(large_shape[0]), int(large_shape[1])],
        "repeat": repeat,
        "warmup": 1,
        "boxes": None,
        "boxes_across_tile_borders": None,
        "guidance": guidance,
        "precision": "bf16" if predictor.bf16 else "fp32",
        "bf16": bool(predictor.bf16),
        "sam_reference": None,
        "sam_reference_img_size": None,
        "sam_predictor_precision": None,
        **dict.fromkeys(TIMINGS),
    }
    h, w = image.shape
    H, W = large.shape

    yield ProgressEvent("info", message=f"encoder_ms: cold predictions of a {w} x {h} micrograph")

    def cold_image() -> float:
        nonlocal predictor
        predictor = new_predictor()
        return _clock(lambda: predictor.predict(image), sync)

    with _counting_calls(model, "embed") as calls:
        results["encoder_ms"] = _median_ms(cold_image, repeat)
    if calls[0] < 1 + repeat:
        notes["encoder_ms"] = (
            f"the encoder ran {calls[0]} times in {1 + repeat} cold predictions: a cache outside the new "
            "Predictor's memory answered, so encoder_ms is not a cold prediction"
        )
    with _counting_calls(model, "embed") as calls:
        results["cache_hit_ms"] = _median_ms(lambda: _clock(lambda: predictor.predict(image), sync), repeat)
    _note_cache_misses(notes, "cache_hit_ms", calls[0], family)
    if family == "cnn":
        notes["encoder_ms"] = notes["cache_hit_ms"] = (
            "a CNN has no separate encoder: its cache holds the preprocessed tiles and every prediction runs the "
            "whole network"
        )

    places = _random_boxes(np.random.default_rng(seed), (H, W), tile, boxes + 1) if family == "sam" else []
    first_box = places[0] if places else None
    yield ProgressEvent("info", message=f"large_first_predict_ms: cold predictions of a {W} x {H} micrograph")
    large_ms, first_box_ms = [], []

    def cold_large() -> None:
        nonlocal predictor
        predictor = new_predictor()
        large_ms.append(_clock(lambda: predictor.predict(large), sync))
        if first_box is not None:
            first_box_ms.append(_clock(lambda: predictor.predict(large, box=first_box), sync))

    for _ in range(1 + repeat):  # the first is the warm-up
        cold_large()
    results["large_first_predict_ms"] = _median_of(large_ms[1:])
    if first_box_ms:
        results["box_first_ms"] = _median_of(first_box_ms[1:])

    if guidance == "ratio":
        yield ProgressEvent("info", message=f"ratio_update_ms: new ratio vectors on the cached {W} x {H} micrograph")
        vectors = iter(np.random.default_rng(seed).dirichlet(np.ones(len(phases)), 1 + repeat))
        with _counting_calls(model, "embed") as calls:
            results["ratio_update_ms"] = _median_ms(
                lambda: _clock(lambda: predictor.predict(large, ratios=next(vectors)), sync), repeat
            )
        _note_cache_misses(notes, "ratio_update_ms", calls[0], family)
    else:
        notes["ratio_update_ms"] = "the model is built without ratio guidance (guidance 'none')"

    if family == "sam":
        yield ProgressEvent("info", message=f"box_ms: {boxes} boxes on the cached {W} x {H} micrograph")
        with _counting_calls(model, "embed") as calls:
            box_times = [_clock(lambda b=b: predictor.predict(large, box=b), sync) for b in places[1:]]
        results["box_ms"] = _median_of(box_times)
        results["encoder_calls_during_boxes"] = calls[0]
        results["boxes"] = boxes
        results["boxes_across_tile_borders"] = sum(_across_border(b, tile) for b in places[1:])
        notes["box_first_ms"] = (
            "the first box on a just-predicted micrograph (the same box each run, after the cold prediction)"
        )
        notes["box_ms"] = (
            f"median over {boxes} distinct boxes, after box_first_ms's runs; encoder_calls_during_boxes counts "
            "model.embed calls during them"
        )
    else:
        why = f"the {label} has no prompt encoder: no box prompts"
        for field in ("box_first_ms", "box_ms", "encoder_calls_during_boxes"):
            notes[field] = why

    if family != "sam":
        why = "segment-anything's SamPredictor applies to SAM models only"
        for field in ("sam_predictor_set_image_ms", "encoder_ratio_vs_sam", "sam_predictor_box_ms"):
            notes[field] = why
    elif not reference:
        for field in ("sam_predictor_set_image_ms", "encoder_ratio_vs_sam", "sam_predictor_box_ms"):
            notes[field] = "the SamPredictor reference was not run (reference off)"
    else:
        yield from _reference(model, spec, image, device, repeat, boxes, seed, results, notes, sync)

    results["machine"] = machine_info(device)
    results["notes"] = notes
    return results


def run_benchmark(kind: str = "vit_b", **options) -> dict:
    """:func:`benchmark_job` run to its end (the same keyword arguments); returns its result."""
    return run_job(benchmark_job(kind, **options))


def _reference(model, spec, image, device, repeat, boxes, seed, results, notes, sync) -> Job[None]:
    """Job: the ``SamPredictor`` fields of ``results`` (fp32, no autocast, as segment-anything ships it)."""
    from segment_anything import SamPredictor

    reference_size = SAM_REFERENCE_SIZE
    if model.img_size == reference_size:
        sam = model.sam
        results["sam_reference"] = "model.sam (the same weights, segment-anything's own attention code)"
    else:
        from dataclasses import replace

        yield ProgressEvent("info", message=f"building a {spec.kind} at {reference_size} px for SamPredictor")
        sam = replace(spec, img_size=reference_size, guidance="none").build(device)[0].sam
        results["sam_reference"] = f"a separate {spec.kind} built at {reference_size} px (random weights)"
        notes["sam_reference"] = (
            f"the model's img_size is {model.img_size}, SamPredictor works at {reference_size} px: the reference "
            "is another model of the same kind, so encoder_ratio_vs_sam compares different input sizes"
        )
    results["sam_reference_img_size"] = reference_size
    results["sam_predictor_precision"] = "fp32"
    from napari_metalseg.models.sam_attention import stock_copy

    reference = SamPredictor(stock_copy(sam).eval())  # segment-anything's own attention code, not the fused one
    rgb = np.repeat((np.clip(image, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=2)
    yield ProgressEvent("info", message=f"sam_predictor_set_image_ms: SamPredictor.set_image at {reference_size} px")
    results["sam_predictor_set_image_ms"] = _median_ms(lambda: _clock(lambda: reference.set_image(rgb), sync), repeat)
    results["encoder_ratio_vs_sam"] = round(results["encoder_ms"] / results["sam_predictor_set_image_ms"], 3)
    yield ProgressEvent("info", message=f"sam_predictor_box_ms: {boxes} boxes with SamPredictor.predict")
    places = _random_boxes(np.random.default_rng(seed + 2), image.shape, max(image.shape), boxes + 1)

    def box_time(box: tuple[int, int, int, int]) -> float:
        return _clock(lambda: reference.predict(box=np.array(box, dtype=np.float32), multimask_output=False), sync)

    box_time(places[0])  # warm-up
    results["sam_predictor_box_ms"] = _median_of([box_time(b) for b in places[1:]])


def _note_cache_misses(notes: dict[str, str], field: str, calls: int, family: str) -> None:
    """Note under ``field`` that the image encoder of a SAM model ran ``calls`` times where the cache should have
    answered (a CNN's "encoder" only hands on the cached tiles)."""
    if calls and family == "sam":
        notes[field] = f"the image encoder ran {calls} times: the cache did not hold the micrograph's embeddings"


@contextlib.contextmanager
def _counting_calls(model, method: str) -> Iterator[list[int]]:
    """Count the calls of ``model.<method>`` in the block (``[count]``, updated as they happen)."""
    original = getattr(model, method)
    calls = [0]

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    setattr(model, method, counted)  # an instance attribute shadows the method
    try:
        yield calls
    finally:
        delattr(model, method)


def _synchronizer(device: str) -> Callable[[], None]:
    """What waits for the device's queued work before a clock is read (nothing on the CPU)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None


def _clock(func: Callable[[], object], sync: Callable[[], None]) -> float:
    """Seconds ``func`` takes, the device's queued work included."""
    sync()
    t0 = time.perf_counter()
    func()
    sync()
    return time.perf_counter() - t0


def _median_of(seconds: list[float]) -> float:
    """Median of times in seconds, in milliseconds (3 decimals)."""
    return round(statistics.median(seconds) * 1000, 3)


def _median_ms(run: Callable[[], float], repeat: int) -> float:
    """Median in ms of ``repeat`` calls of ``run`` (each returns its own time in seconds) after one warm-up call."""
    run()
    return _median_of([run() for _ in range(repeat)])


def _random_boxes(rng: np.random.Generator, shape: tuple[int, int], tile: int, n: int) -> list[tuple[int, ...]]:
    """``n`` distinct boxes ``(x0, y0, x1, y1)`` inside ``shape`` (H, W), sides ``tile/16``..``tile/2`` (at least 8
    px); every third box is centred on the vertical and every third on the horizontal edge of the first tile (at
    ``tile``), so some boxes span tile borders."""
    h, w = shape
    lo = max(8, tile // 16)
    hi = max(lo, tile // 2)
    found: list[tuple[int, ...]] = []
    while len(found) < n:
        bw, bh = (int(min(v, side)) for v, side in zip(rng.integers(lo, hi + 1, 2), (w, h), strict=True))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        if len(found) % 3 == 1 and tile < w:
            cx = tile
        elif len(found) % 3 == 2 and tile < h:
            cy = tile
        x0 = int(np.clip(round(cx - bw / 2), 0, w - bw))
        y0 = int(np.clip(round(cy - bh / 2), 0, h - bh))
        box = (x0, y0, x0 + bw, y0 + bh)
        if box not in found:
            found.append(box)
    return found


def _across_border(box: tuple[int, ...], tile: int) -> bool:
    """Whether ``box`` spans the right or bottom edge of the first tile."""
    x0, y0, x1, y1 = box
    return x0 < tile < x1 or y0 < tile < y1


def machine_info(device: str) -> dict:
    """The machine a benchmark ran on: CPU model, logical cores, torch threads and version, device, GPU, native
    bfloat16, date."""
    import torch

    gpu = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": device,
        "gpu": gpu,
        "native_bf16": native_bf16(device),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as lines:
            for line in lines:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_table(results: dict) -> str:
    """A :func:`benchmark_job` result as text: the machine and settings lines, then ``field  value  unit`` rows
    (``-`` and the note where a field does not apply)."""
    m = results["machine"]
    gpu = f", {m['gpu']}" if m["gpu"] else ""
    large_h, large_w = results["large_shape"]
    lines = [
        f"machine: {m['cpu']}, {m['logical_cores']} logical cores, {m['torch_threads']} torch threads, "
        f"torch {m['torch']}, {m['device']}{gpu}, native bf16 {'yes' if m['native_bf16'] else 'no'}, {m['date']}",
        f"model: {results['model']} at {results['img_size']} px (tiles of {results['tile_size']} px), "
        f"{results['precision']}, guidance {results['guidance']}; micrographs {results['image_size']} x "
        f"{results['image_size']} and {large_w} x {large_h}; medians of {results['repeat']} "
        f"run{'s' if results['repeat'] != 1 else ''} after {results['warmup']} warm-up",
    ]
    if results["sam_reference"]:
        lines.append(f"reference: SamPredictor on {results['sam_reference']}, {results['sam_predictor_precision']}")
    rows = [("field", "value", "unit")]
    for field in TIMINGS:
        value = results[field]
        unit = UNITS.get(field, "ms")
        if value is None:
            rows.append((field, "-", results["notes"].get(field, "")))
        elif isinstance(value, int):
            rows.append((field, str(value), unit))
        else:
            rows.append((field, f"{value:.3f}" if unit == "x" else f"{value:.1f}", unit))
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    lines += [f"{name:<{width}}  {value:>{value_width}}  {unit}".rstrip() for name, value, unit in rows]
    return "\n".join(lines)
