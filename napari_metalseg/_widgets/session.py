"""Per-viewer state shared by the dock widgets: the loaded model, its phases and the predictor.

One :class:`Session` per viewer (:func:`get_session`). The Model widget (or the Training widget, when a run
finishes) calls :meth:`Session.set_model`; every widget listens to :attr:`Session.model_changed`. The phase-id <->
napari-label conversion lives in :mod:`napari_metalseg.phases`; the phase layer helpers in :mod:`.layers`.
"""

from __future__ import annotations

import weakref
from pathlib import Path

from qtpy.QtCore import QObject, Signal

from napari_metalseg.phases import PhaseSet

_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class Session(QObject):
    """What the widgets of one viewer share.

    Attributes
    ----------
    model : PhaseSAM or None
        The current model (built in a worker, set here in the GUI thread).
    predictor : Predictor or None
        Wraps ``model``; holds the embedding cache so ratio/box changes only rerun the decoder.
    phases : PhaseSet or None
    run_dir : Path or None
        The run directory the model came from (None for an untrained model).
    device : str
    ratios : list of float or None
        The current phase-ratio guidance (set by the Phase ratios widget; None = no guidance).
    dataset_dir : Path or None
        The dataset folder where "add to training set" writes.
    """

    model_changed = Signal()
    ratios_changed = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.model = None
        self.predictor = None
        self.phases: PhaseSet | None = None
        self.run_dir: Path | None = None
        self.device = "cpu"
        self.ratios: list[float] | None = None
        self.dataset_dir: Path | None = None

    def set_model(self, model, phases: PhaseSet, run_dir: str | Path | None = None, device: str = "cpu") -> None:
        """Install a model (GUI thread) and tell every widget."""
        from napari_metalseg.predict import Predictor

        self.model = model
        self.phases = phases
        self.run_dir = Path(run_dir) if run_dir else None
        self.device = device
        self.predictor = Predictor(model, phases, device=device)
        if self.ratios is not None and len(self.ratios) != len(phases):
            self.ratios = None
        self.model_changed.emit()

    def set_ratios(self, ratios: list[float] | None) -> None:
        self.ratios = None if ratios is None else [float(r) for r in ratios]
        self.ratios_changed.emit()


def get_session(viewer) -> Session:
    """The session of ``viewer`` (created on first use).

    Plugin widgets receive a proxy of the viewer; the session is keyed by the viewer itself, so every widget of
    one viewer shares it whatever object it was handed.
    """
    viewer = getattr(viewer, "__wrapped__", viewer)
    session = _SESSIONS.get(viewer)
    if session is None:
        session = Session()
        _SESSIONS[viewer] = session
        from napari_metalseg._widgets.autosave import AnnotationAutosaver  # here: it imports this module

        session.autosaver = AnnotationAutosaver(viewer)  # crash-safe annotation: one autosaver per viewer
    return session
