"""The one way the CLI drives an engine job: :func:`run_with_bar` (a click progress bar on stderr)."""

from __future__ import annotations

import sys
from typing import Any, TypeVar

import click

from napari_metalseg.progress import Job, ProgressEvent, run_job

T = TypeVar("T")

ADVANCING = ("train", "embed", "predict", "synth", "quantify")
"""Event kinds that move the bar forward."""


class TerminalProgress:
    """Shows a job's events on stderr; call it with each :class:`~napari_metalseg.progress.ProgressEvent`.

    A bar opens at the first event with a total (other than ``info`` and ``row``), or at once when ``length`` is
    given, and advances with the events of the :data:`ADVANCING` kinds. ``info`` events are printed as lines and
    ``validate`` events as ``step N: ...`` lines (unless ``echo`` is off). A ``row`` event (a study) closes the bar
    and prints ``[i/n] name ...`` when a row starts and ``[i/n] name: status`` when it ends.

    Parameters
    ----------
    label
        The bar's label.
    bar_kinds
        Only events of these kinds open and move the bar (default: any event with a total opens it).
    show_pos, show_message
        Show ``step/total`` / the event's message next to the bar.
    echo
        Print ``info`` and ``validate`` events.
    length
        Open the bar at once, with this length (the events then set the real total).
    """

    def __init__(
        self,
        label: str,
        *,
        bar_kinds: tuple[str, ...] | None = None,
        show_pos: bool = True,
        show_message: bool = True,
        echo: bool = True,
        length: int | None = None,
    ) -> None:
        self.label = label
        self.bar_kinds = bar_kinds
        self.show_pos = show_pos
        self.show_message = show_message
        self.echo = echo
        self.last: ProgressEvent | None = None
        self._bar: Any = None
        if length is not None:
            self._open(length)

    def __call__(self, event: ProgressEvent) -> None:
        self.last = event
        if event.kind == "row":
            self.close()
            if event.metrics:  # a row finished
                click.echo(f"[{event.step}/{event.total}] {event.message}", err=True)
            else:
                click.echo(f"[{event.step + 1}/{event.total}] {event.message} ...", err=True)
            return
        if event.kind == "info":
            if self.echo:
                click.echo(event.message, err=True)
            return
        moves = event.kind in ADVANCING if self.bar_kinds is None else event.kind in self.bar_kinds
        if self._bar is None and event.total and (self.bar_kinds is None or moves):
            self._open(event.total)
        if self._bar is not None and moves:
            self._bar.length = max(event.total, event.step)  # a time budget's total is an estimate that settles
            self._bar.update(event.step - self._bar.pos, event)
        if event.kind == "validate" and self.echo:
            click.echo(f"\n  step {event.step}: {event.message}", err=True)

    def _open(self, length: int) -> None:
        self._bar = click.progressbar(
            length=length,
            label=self.label,
            file=sys.stderr,
            show_pos=self.show_pos,
            item_show_func=(lambda e: e.message if e else "") if self.show_message else None,
        )
        self._bar.__enter__()

    def close(self) -> None:
        """Close the bar, if one is open."""
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def run(self, job: Job[T]) -> T:
        """Drive ``job`` to its end (:func:`~napari_metalseg.progress.run_job`) showing its events; return it."""
        try:
            return run_job(job, self)
        finally:
            self.close()


def run_with_bar(job: Job[T], label: str, **options: Any) -> T:
    """Drive an engine job with a terminal progress bar; return the job's result.

    ``options`` are those of :class:`TerminalProgress` (what the bar shows, what is printed as lines).
    """
    return TerminalProgress(label, **options).run(job)
