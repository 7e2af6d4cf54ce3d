"""napari sample data: a synthetic dual-phase steel micrograph with its ground truth, and a real Zeiss SEM image."""

from __future__ import annotations

from importlib.resources import as_file, files

SYNTH_SIZE = 512
SYNTH_MAGNIFICATION = 3000.0
SYNTH_FRACTIONS = (0.55, 0.30, 0.15)
SYNTH_SEED = 7
ZEISS_FILE = "nanoporous_gold_zeiss.tif"
ZEISS_NOTE = (
    "Real SEM micrograph of nanoporous gold (Zeiss, InLens, 500 kX, 0.543 nm pixels) from the aquami 1.1.0 "
    "package by Joshua Stuckner, MIT license"
)


def synthetic_micrograph() -> list[tuple]:
    """A 512 px synthetic ferrite/martensite/bainite micrograph at 3000x and its exact phase mask (a hidden
    reference layer: never training data, never quantified as a field)."""
    from napari_metalseg._widgets.layers import UNITS, labels_layer_kwargs
    from napari_metalseg._widgets.roles import REFERENCE, role_metadata
    from napari_metalseg.data.synth import DEFAULT_PHASES, pixel_size_for, synthesize_micrograph

    image, mask = synthesize_micrograph(SYNTH_SIZE, SYNTH_FRACTIONS, SYNTH_MAGNIFICATION, seed=SYNTH_SEED)
    px = pixel_size_for(SYNTH_MAGNIFICATION, SYNTH_SIZE)
    name = "synthetic steel 3000x"
    info = {
        "shape": list(image.shape),
        "magnification": SYNTH_MAGNIFICATION,
        "pixel_size_um": px,
        "source": "napari-metalseg synthetic sample",
        "fractions": list(SYNTH_FRACTIONS),
        "seed": SYNTH_SEED,
    }
    image_kwargs = {
        "name": name,
        "colormap": "gray",
        "contrast_limits": (0.0, 1.0),
        "scale": (px, px),
        "units": UNITS,
        "metadata": {"metalseg_micrograph": info},
    }
    from napari_metalseg.phases import mask_to_labels

    truth_kwargs = labels_layer_kwargs(
        DEFAULT_PHASES, f"{name} ground truth", scale=(px, px), metadata=role_metadata(name, REFERENCE)
    )
    truth_kwargs["visible"] = False
    return [(image, image_kwargs, "image"), (mask_to_labels(mask), truth_kwargs, "labels")]


def zeiss_sem() -> list[tuple]:
    """The real Zeiss SEM micrograph shipped with the plugin (information band cropped, 0.543 nm pixels)."""
    from napari_metalseg._widgets.reader import read_micrograph_layer

    with as_file(files("napari_metalseg").joinpath("sample_data", ZEISS_FILE)) as path:
        data, kwargs, kind = read_micrograph_layer(path, name="nanoporous gold (Zeiss SEM, 500 kX)")
    kwargs["metadata"]["note"] = ZEISS_NOTE
    return [(data, kwargs, kind)]
