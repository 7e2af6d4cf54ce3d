"""The classical pixel classifier: multiscale filter features + LightGBM gradient-boosted trees.

This is what labs use today (ilastik pixel classification, Fiji Trainable Weka, Labkit): every pixel is described
by smoothed intensity, edge and texture responses at several scales (:func:`pixel_features`), and a tree ensemble
is trained on exactly the pixels the user scribbled (:func:`fit_classifier`). It needs no GPU and no pretrained
weights, trains in about a second and is fast enough to be the live preview of the napari annotation loop.

:class:`PixelClassifier` honours the same contract as :class:`~.phase_sam.PhaseSAM` (``preprocess`` /
``embed`` / ``decode`` / ``signature``), so the tiled predictor caches its features per tile like SAM embeddings.

Storage is plain text, never pickle: one header line ``# napari-metalseg classical v1 {json}`` followed by
LightGBM's own text model (:meth:`PixelClassifier.to_text`). :func:`load_classifier` refuses anything else
(binary bytes, a pickle payload, another header or version, truncated or modified text) with one
:class:`~napari_metalseg.errors.MetalsegError` naming the file.

numpy, scipy and the standard library only at import time; torch and lightgbm are imported when needed.

numpy, scipy and the standard library only at import time; torch and lightgbm are imported when needed.

Modules: :mod:`~.features` (the feature stack), :mod:`~.textformat` (the stored text: header, checksum and
structural checks), :mod:`~.fitting` (the pixel draw and LightGBM training) and :mod:`~.classifier`
(:class:`PixelClassifier` and its files).
"""

from napari_metalseg.models.classical.classifier import LOG_ZERO, PixelClassifier, load_classifier, save_classifier
from napari_metalseg.models.classical.features import (
    DEFAULT_SIGMAS,
    FEATURE_SET,
    PER_SCALE,
    TRUNCATE,
    feature_names,
    feature_radius,
    n_features,
    pixel_features,
)
from napari_metalseg.models.classical.fitting import (
    DEFAULT_ESTIMATORS,
    DEFAULT_LEARNING_RATE,
    DEFAULT_LEAVES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_TILE,
    PARALLEL_FIT_ROWS,
    draw_pixels,
    fit_classifier,
)
from napari_metalseg.models.classical.textformat import FORMAT_VERSION, HEADER_PREFIX

__all__ = [
    "DEFAULT_ESTIMATORS",
    "DEFAULT_LEARNING_RATE",
    "DEFAULT_LEAVES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_SIGMAS",
    "DEFAULT_TILE",
    "FEATURE_SET",
    "FORMAT_VERSION",
    "HEADER_PREFIX",
    "LOG_ZERO",
    "PARALLEL_FIT_ROWS",
    "PER_SCALE",
    "TRUNCATE",
    "PixelClassifier",
    "draw_pixels",
    "feature_names",
    "feature_radius",
    "fit_classifier",
    "load_classifier",
    "n_features",
    "pixel_features",
    "save_classifier",
]
