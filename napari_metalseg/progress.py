"""Progress events: the one message type long operations yield (training, tiled prediction, benchmarks).

The CLI turns them into a terminal progress bar, the napari worker into a progress bar and a live plot.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ProgressEvent:
    """One step of a long operation.

    Parameters
    ----------
    kind : str
        What is running, e.g. ``"train"``, ``"validate"``, ``"predict"``, ``"synth"``, ``"done"``.
    step, total : int
        Steps done so far and steps in all (``total = 0`` when unknown).
    loss : float or None
        Training loss of the step, when there is one.
    metrics : dict
        Anything else worth showing (learning rate, Dice per phase, ...).
    message : str
        A short human-readable line.
    """

    kind: str
    step: int = 0
    total: int = 0
    loss: float | None = None
    metrics: dict = field(default_factory=dict)
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0
