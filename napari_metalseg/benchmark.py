"""Speed measurements against segment-anything's own ``SamPredictor``, in one process on the same machine.

What a user feels in the GUI: the first prediction of an image pays for the image encoder; every later change
(a ratio slider, a box) reruns only the decoder on the cached embedding. The reference is ``SamPredictor``
(``set_image`` = encoder at 1024 px, ``predict`` = decoder with a box). Weights are random (timing does not depend
on their values), so no checkpoint is needed.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable

import numpy as np


def _best_of(func: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return min(times)


def run_benchmark(
    kind: str = "vit_b",
    img_size: int = 1024,
    image_size: int = 1024,
    device: str = "cpu",
    repeat: int = 3,
    reference: bool = True,
    bf16: bool = False,
) -> dict:
    """Time the encoder, the cached decoder path and (optionally) SamPredictor on one synthetic micrograph.

    Returns
    -------
    dict
        Seconds for ``encoder_first_predict`` (tiled prediction, cold cache), ``decoder_ratio_change`` (same image,
        new ratio: decoder only), ``decoder_box`` (box prompt on the cached image), and with ``reference`` the
        ``sam_predictor_set_image`` / ``sam_predictor_predict_box`` times of segment-anything's ``SamPredictor``
        on the same image; plus the machine description.
    """
    import platform

    import torch

    from napari_metalseg.data.synth import synthesize_micrograph
    from napari_metalseg.models.phase_sam import build_phase_sam
    from napari_metalseg.phases import PhaseSet
    from napari_metalseg.predict import Predictor

    image, _ = synthesize_micrograph(image_size, magnification=3000, seed=0)
    model, _ = build_phase_sam(kind, img_size=img_size, num_phases=3, guidance="ratio")
    model = model.to(device).eval()
    phases = PhaseSet.from_names(["ferrite", "martensite", "bainite"])
    results: dict = {
        "kind": kind,
        "img_size": img_size,
        "image_size": image_size,
        "device": device,
        "bf16": bf16,
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
    }

    def cold() -> None:
        predictor = Predictor(model, phases, device=device, bf16=bf16)
        predictor.predict(image)

    results["encoder_first_predict"] = _best_of(cold, repeat)
    predictor = Predictor(model, phases, device=device, bf16=bf16)
    predictor.predict(image)
    ratios = iter(np.random.default_rng(0).dirichlet(np.ones(3), 100))
    results["decoder_ratio_change"] = _best_of(lambda: predictor.predict(image, ratios=next(ratios)), repeat)
    box = (image_size * 0.25, image_size * 0.25, image_size * 0.6, image_size * 0.5)
    predictor.predict(image, box=box)
    results["decoder_box"] = _best_of(lambda: predictor.predict(image, box=box), repeat)
    if reference:
        from segment_anything import SamPredictor

        sam = model.sam if img_size == 1024 else build_phase_sam(kind, img_size=1024, num_phases=3)[0].sam
        sam = sam.to(device).eval()
        reference_predictor = SamPredictor(sam)
        rgb = (np.repeat(image[..., None], 3, axis=2) * 255).astype(np.uint8)

        def set_image() -> None:
            with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
                reference_predictor.set_image(rgb)

        results["sam_predictor_set_image"] = _best_of(set_image, repeat)
        if bf16:
            reference_predictor.features = reference_predictor.features.float()
        results["sam_predictor_predict_box"] = _best_of(
            lambda: reference_predictor.predict(box=np.array(box), multimask_output=False), repeat
        )
    return results


def tiled_memory(kind: str = "tiny", img_size: int = 256, image_size: int = 4096) -> dict:
    """Peak Python-heap memory (tracemalloc, numpy buffers included) of a tiled prediction on a large image."""
    from napari_metalseg.models.phase_sam import build_phase_sam
    from napari_metalseg.phases import PhaseSet
    from napari_metalseg.predict import Predictor

    model, _ = build_phase_sam(kind, img_size=img_size, num_phases=3)
    image = np.random.default_rng(0).random((image_size, image_size), dtype=np.float32)
    predictor = Predictor(model.eval(), PhaseSet.from_names(["a", "b", "c"]), cache_size=0)
    tracemalloc.start()
    t0 = time.perf_counter()
    result = predictor.predict(image)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "image_size": image_size,
        "img_size": img_size,
        "seconds": seconds,
        "peak_mib": peak / 2**20,
        "output_mib": (result.probs.nbytes + result.labels.nbytes) / 2**20,
    }
