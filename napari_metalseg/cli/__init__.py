"""The ``metalseg`` command: one CLI with subcommands, all driving the same engine functions as the napari widgets.

One module per group of commands: :mod:`~.data` (``info``, ``synth``), :mod:`~.training` (``train``, ``study``),
:mod:`~.prediction` (``predict``, ``evaluate``, ``features``), :mod:`~.quantify` (``quantify``), :mod:`~.cache`
(``cache``) and :mod:`~.app` (``gui``, ``demo``, ``benchmark``). Every engine job runs through
:func:`~.progress.run_with_bar` (a progress bar on stderr); every user error is one ``error:`` line naming the option
to change (:func:`~.errors.user_errors`). Option values are parsed in :mod:`~.values`.
"""

from __future__ import annotations

import click

from napari_metalseg.cli.app import benchmark, demo, gui
from napari_metalseg.cli.cache import cache
from napari_metalseg.cli.data import info, synth
from napari_metalseg.cli.prediction import evaluate, features, predict
from napari_metalseg.cli.quantify import quantify
from napari_metalseg.cli.training import study, train

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="napari-metalseg")
def main() -> None:
    """napari-metalseg: segment steel micrographs into phases and report phase fractions."""


for _command in (info, synth, train, predict, evaluate, features, quantify, benchmark, study, cache, gui, demo):
    main.add_command(_command)
