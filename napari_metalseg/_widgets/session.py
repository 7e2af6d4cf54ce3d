"""Per-viewer state shared by the dock widgets: the loaded model, its phases and the predictor.

One :class:`Session` per viewer (:func:`get_session`). The Model widget (or the Training widget, when a run
finishes) calls :meth:`Session.set_model`; every widget listens to :attr:`Session.model_changed`. The phase-id <->
napari-label conversion lives in :mod:`napari_metalseg.phases`; the phase layer helpers in :mod:`.layers`.
"""

from __future__ import annotations

import weakref
from pathlib import Path

from qtpy.QtCore import QObject, Signal

from napari_metalseg.models.spec import ModelSpec
from napari_metalseg.phases import PhaseSet
from napari_metalseg.runs import RunConfig, read_run_config

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
    spec : ModelSpec or None
        What the model is (kind, size, guidance, phases, ...): the Training dock trains this model further
        (:mod:`.training_form`), and the Model dock's form and summary show it.
    run_dir : Path or None
        The run directory the model came from (None for an untrained model).
    run_config : RunConfig or None
        That run's configuration (its training provenance: the steps actually done, ...).
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
        self.spec: ModelSpec | None = None
        self.run_dir: Path | None = None
        self.run_config: RunConfig | None = None
        self.device = "cpu"
        self.ratios: list[float] | None = None
        self.dataset_dir: Path | None = None

    def set_model(
        self,
        model,
        phases: PhaseSet,
        run_dir: str | Path | None = None,
        device: str = "cpu",
        spec: ModelSpec | None = None,
    ) -> None:
        """Install a model (GUI thread) and tell every widget.

        Parameters
        ----------
        model
            The model.
        phases : PhaseSet
        run_dir : path, optional
            The run it was loaded from (its configuration is read here: the spec and the training provenance).
        device : str
        spec : ModelSpec, optional
            What the model is; by default the run's, else what the model reports (``model.spec_fields()``).

        Raises
        ------
        MetalsegError
            An unreadable run configuration.
        """
        from napari_metalseg.io.embedding_store import default_store
        from napari_metalseg.predict import Predictor

        self.run_dir = Path(run_dir) if run_dir else None
        self.run_config = read_run_config(self.run_dir) if self.run_dir is not None else None
        if spec is None:
            spec = self.run_config.spec if self.run_config is not None else spec_of_model(model, phases)
        self.spec = spec
        self.model = model
        self.phases = phases
        self.device = device
        # the SAM embeddings of micrographs opened again (even in a later session) come from the disk cache
        self.predictor = Predictor(model, phases, device=device, cache_dir=default_store())
        if self.ratios is not None and len(self.ratios) != len(phases):
            self.ratios = None
        self.model_changed.emit()

    def set_ratios(self, ratios: list[float] | None) -> None:
        self.ratios = None if ratios is None else [float(r) for r in ratios]
        self.ratios_changed.emit()


def spec_of_model(model, phases: PhaseSet) -> ModelSpec | None:
    """The :class:`~napari_metalseg.models.spec.ModelSpec` a model reports (``spec_fields()``) with ``phases``; None
    for a model that does not describe itself."""
    fields = getattr(model, "spec_fields", None)
    if fields is None:
        return None
    return ModelSpec(**fields(), phases=phases.to_json())


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
        from napari_metalseg._widgets.roles import track_micrographs

        track_micrographs(viewer)  # a renamed micrograph renames its layers
    return session
