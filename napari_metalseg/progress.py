"""The one progress protocol of the engine: a long operation is a *job*, a generator of :class:`ProgressEvent`.

A job yields events while it works and ``return``\\ s its result, so every caller drives it the same way:

- the CLI and scripts call :func:`run_job` (optionally with a callback that draws a terminal progress bar);
- the napari docks hand the generator to one background worker (``DockWidget.start_job``): each yielded event
  updates the dock's progress bar, the returned value reaches the GUI thread, and cancelling stops the job at its
  next event (the generator is closed, so its ``finally`` blocks run).

Convenience functions that return a result directly (e.g. ``Predictor.predict``) are :func:`run_job` on the
job form of the same operation (``Predictor.predict_job``).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Literal, TypeVar, get_args

ProgressKind = Literal["info", "train", "validate", "embed", "predict", "synth", "quantify", "row", "stopped", "done"]
"""What an event reports:

``info``
    a status line (loading, resuming, fitting);
``train`` / ``validate``
    a training step (with its loss) / a validation (``metrics`` holds the Dice scores);
``embed`` / ``predict``
    image-encoder tiles / decoder tiles or test-time augmentations of a prediction;
``synth``
    a synthetic micrograph written;
``quantify``
    a field of view measured;
``row``
    a row of a study started or finished;
``stopped`` / ``done``
    the job stopped early (its partial result is kept) / finished.
"""

PROGRESS_KINDS: tuple[str, ...] = get_args(ProgressKind)

T = TypeVar("T")

Job = Generator["ProgressEvent", None, T]
"""A long operation: yields :class:`ProgressEvent`, returns its result."""


@dataclass
class ProgressEvent:
    """One step of a long operation.

    Parameters
    ----------
    kind : ProgressKind
        What is running (see :data:`ProgressKind`); any other value is refused.
    step, total : int
        Steps done so far and steps in all (``total = 0`` when unknown).
    loss : float or None
        Training loss of the step, when there is one.
    metrics : dict
        Anything else worth showing (learning rate, Dice per phase, ...).
    message : str
        A short human-readable line.
    """

    kind: ProgressKind
    step: int = 0
    total: int = 0
    loss: float | None = None
    metrics: dict = field(default_factory=dict)
    message: str = ""

    def __post_init__(self) -> None:
        if self.kind not in PROGRESS_KINDS:
            raise ValueError(f"progress kind {self.kind!r} is not one of {', '.join(PROGRESS_KINDS)}")

    @property
    def fraction(self) -> float:
        """``step / total`` (0 when the total is unknown)."""
        return self.step / self.total if self.total else 0.0


def run_job(job: Job[T], on_event: Callable[[ProgressEvent], None] | None = None) -> T:
    """Drive ``job`` to its end, passing every event to ``on_event``; return the job's result.

    Parameters
    ----------
    job
        A generator of :class:`ProgressEvent` (its ``return`` value is the result).
    on_event
        Called with each event, in the calling thread; ``None`` ignores them.

    Returns
    -------
    object
        What the job returned.
    """
    while True:
        try:
            event = next(job)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)
