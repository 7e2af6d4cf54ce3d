"""The study: train a grid of models on a dataset's train split and score them on its test split, in the seed's table.

A row is a model name + input size + guidance + training budget (:class:`StudyRow`); :func:`run_study` trains each
row with :func:`napari_metalseg.training.train` (val split for model selection), scores it with
:func:`napari_metalseg.training.validate` on the test split (mean Dice per magnification and ``Avg.``), and writes
``study.md`` (the seed's layout), ``study.csv``, ``study.json``, ``study.png`` and one run folder per row. Nothing here
knows a model's internals: rows differ only in their :class:`~napari_metalseg.training.TrainConfig`.

:func:`ratio_effect` is the seed's slide "Effects of Ratio Encoding": one guided run, several ratio vectors.

Modules: :mod:`~.grid` (rows, the seed's table, grid files), :mod:`~.runner` (:func:`run_study`, a job),
:mod:`~.report` (the study files) and :mod:`~.ratios` (:func:`ratio_effect`).
"""

from napari_metalseg.study.grid import SEED_GRID, STATUSES, RowResult, StudyRow, load_grid
from napari_metalseg.study.ratios import SEED_RATIOS, RatioEffect, default_ratio_vectors, ratio_effect
from napari_metalseg.study.report import study_csv, study_figure, study_markdown, write_study
from napari_metalseg.study.runner import machine_description, run_study

__all__ = [
    "SEED_GRID",
    "SEED_RATIOS",
    "STATUSES",
    "RatioEffect",
    "RowResult",
    "StudyRow",
    "default_ratio_vectors",
    "load_grid",
    "machine_description",
    "ratio_effect",
    "run_study",
    "study_csv",
    "study_figure",
    "study_markdown",
    "write_study",
]
