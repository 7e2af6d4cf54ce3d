"""Crash-safe annotation in napari: every annotations layer is autosaved a few seconds after each stroke, and restored
when its micrograph is opened again.

One :class:`AnnotationAutosaver` per viewer, installed by :func:`~.session.get_session` (``session.autosaver``). It
watches every Labels layer whose role is :data:`~.roles.ANNOTATIONS` (also layers that get the role later, e.g.
adopted ones) and saves it into the :class:`~napari_metalseg.data.autosave.AnnotationStore` under its micrograph's
content key:

* a stroke (``events.paint``), new data (``events.data``) or an undo / redo (``events.set_data``) starts two timers:
  the save runs :attr:`~AnnotationAutosaver.quiet_ms` (5 s) after the last stroke, and at the latest
  :attr:`~AnnotationAutosaver.max_delay_ms` (30 s) after the first unsaved one, even while the user keeps painting;
* the PNG is written in a worker (:meth:`~.base.JobRunner.start_job`) from a copy of the labels taken when the save
  starts; saves run one at a time, so the latest strokes always win; a layer unchanged since its last save (or since
  it appeared) is not written;
* closing the window saves what is still pending at once; removing a layer saves it if it has unsaved strokes.

When a micrograph layer is added and the store holds annotations of its pixels, they become ``<image> annotations``
(with a notification naming the folder). If the micrograph already has an annotations layer whose content differs,
nothing is replaced: the autosave is added as ``<image> annotations (autosaved <time>)`` with no role (adopt it to
use it) and moved to the autosave folder's ``earlier/`` sub-folder, so painting on does not overwrite it.

Every save sets napari's status bar, emits :attr:`AnnotationAutosaver.saved` and updates
:attr:`AnnotationAutosaver.last_saved`. Nothing here imports torch.
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QEvent, QObject, QTimer, Signal

from napari_metalseg.data.autosave import ANNOTATIONS_FILE, AnnotationStore, SavedAnnotations, micrograph_key
from napari_metalseg.phases import PhaseSet
from napari_metalseg.progress import Job

from . import roles
from .base import JobRunner, report_error
from .layers import MICROGRAPH_KEY, phases_of_layer

log = logging.getLogger(__name__)

QUIET_MS = 5_000
"""Default: save this long after the last stroke."""
MAX_DELAY_MS = 30_000
"""Default: save at the latest this long after the first unsaved stroke."""


def _when(info: dict[str, Any]) -> str:
    """The time of an autosave for a layer name ("2024-05-02 14:03")."""
    text = str(info.get("saved_at") or "")
    try:
        return datetime.fromisoformat(text).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return text or "earlier"


@dataclass(frozen=True, kw_only=True)
class _Snapshot:
    """What one save writes: a copy of the labels and everything else the worker needs (no layer)."""

    seq: int
    key: str | None
    image: Any
    labels: np.ndarray
    phases: PhaseSet
    image_name: str
    source: str | None


class _Watch(QObject):
    """The autosave state of one Labels layer: its two timers and the content last saved."""

    def __init__(self, saver: AnnotationAutosaver, layer: Any) -> None:
        super().__init__()
        self.saver = saver
        self.layer = layer
        self.pending = False
        self.digest: str | None = None
        self.saved_as: tuple[str, str, str | None] | None = None  # micrograph key, name and source of the last save
        self.was_annotations = roles.role_of(layer) == roles.ANNOTATIONS
        if self.was_annotations:  # its content when it appears is not the user's stroke: no save until it changes
            self.digest = micrograph_key(np.asarray(layer.data))
        self.quiet = QTimer(self)
        self.quiet.setSingleShot(True)
        self.quiet.timeout.connect(self.due)
        self.deadline = QTimer(self)
        self.deadline.setSingleShot(True)
        self.deadline.timeout.connect(self.due)
        events = layer.events
        for emitter in (events.paint, events.data, events.set_data):
            emitter.connect(self.changed)
        events.metadata.connect(self.role_changed)
        events.name.connect(self.role_changed)

    def disconnect_layer(self) -> None:
        events = self.layer.events
        for emitter in (events.paint, events.data, events.set_data):
            emitter.disconnect(self.changed)
        events.metadata.disconnect(self.role_changed)
        events.name.disconnect(self.role_changed)
        self.quiet.stop()
        self.deadline.stop()

    @property
    def is_annotations(self) -> bool:
        return roles.role_of(self.layer) == roles.ANNOTATIONS

    def changed(self, event: Any = None) -> None:
        """A stroke, new data or an undo: save soon (quiet timer restarted, deadline kept)."""
        if self.saver.restoring is self.layer or not self.is_annotations:
            return
        self.pending = True
        self.quiet.start(self.saver.quiet_ms)
        if not self.deadline.isActive():
            self.deadline.start(self.saver.max_delay_ms)

    def role_changed(self, event: Any = None) -> None:
        """A layer that just became a micrograph's annotations (adopted) is saved with what it holds."""
        now = self.is_annotations
        if now and not self.was_annotations:
            self.digest = None
            self.changed()
        self.was_annotations = now

    def due(self) -> None:
        self.quiet.stop()
        self.deadline.stop()
        self.saver._enqueue(self)


class AnnotationAutosaver(QObject, JobRunner):
    """Autosaves the annotations layers of one viewer and restores them (see the module docstring).

    Parameters
    ----------
    viewer : napari.Viewer
    store : AnnotationStore, optional
        Default: the autosave folder (:func:`~napari_metalseg.data.autosave.autosave_root`).
    quiet_ms, max_delay_ms : int
        Save this long after the last stroke, and at the latest this long after the first unsaved one.

    Attributes
    ----------
    saved : Signal(str, str)
        Emitted after each save: the micrograph's layer name and the folder.
    last_saved : dict of str to Path
        The folder of each micrograph's last save, by micrograph layer name.
    """

    saved = Signal(str, str)

    def __init__(
        self,
        viewer: Any,
        *,
        store: AnnotationStore | None = None,
        quiet_ms: int = QUIET_MS,
        max_delay_ms: int = MAX_DELAY_MS,
    ) -> None:
        super().__init__()
        self._viewer = weakref.ref(viewer)
        self.store = store if store is not None else AnnotationStore()
        self.quiet_ms = int(quiet_ms)
        self.max_delay_ms = int(max_delay_ms)
        self.last_saved: dict[str, Path] = {}
        self.worker = None
        self.last_error: BaseException | None = None
        self.restoring: Any = None
        self._watches: dict[int, _Watch] = {}
        self._keys: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._tasks: deque[tuple[str, Any]] = deque()
        self._current: _Watch | None = None
        self._seq = 0
        self._lock = threading.Lock()
        self._written: dict[str, int] = {}
        self._failing = False
        viewer.layers.events.inserted.connect(self._inserted)
        viewer.layers.events.removed.connect(self._removed)
        window = getattr(getattr(viewer, "window", None), "_qt_window", None)
        if window is not None:
            window.installEventFilter(self)
        for layer in list(viewer.layers):
            self._added(layer)

    @property
    def viewer(self) -> Any:
        return self._viewer()

    # -- layers --------------------------------------------------------------------------------------------------

    def _inserted(self, event: Any) -> None:
        self._added(event.value)

    def _added(self, layer: Any) -> None:
        from napari.layers import Labels

        if isinstance(layer, Labels) and id(layer) not in self._watches:
            self._watches[id(layer)] = _Watch(self, layer)
        elif roles.is_2d_image(layer):
            layer.events.data.connect(self._image_data_changed)
            # layers that belong to the micrograph (a dataset's masks) may arrive right after it: decide later
            ref = weakref.ref(layer)
            QTimer.singleShot(0, functools.partial(self._enqueue_restore, ref))

    def _removed(self, event: Any) -> None:
        layer = event.value
        if roles.is_2d_image(layer):  # a micrograph closed before its annotations: save them while it is known
            self._save_now(
                [w for w in self._watches.values() if w.pending and roles.image_name_of(w.layer) == layer.name],
                image=layer,
            )
        watch = self._watches.pop(id(layer), None)
        if watch is None:
            return
        watch.disconnect_layer()
        if watch.pending or watch is self._current or any(item is watch for _, item in self._tasks):
            self._save_now([watch])  # its last strokes, before the layer (or the whole viewer) goes
        self._tasks = deque(task for task in self._tasks if task[1] is not watch)

    def _image_data_changed(self, event: Any) -> None:
        self._keys.pop(event.source, None)

    def _image_of(self, layer: Any) -> Any:
        viewer = self.viewer
        return None if viewer is None else roles.image_of(viewer, layer)

    # -- saving --------------------------------------------------------------------------------------------------

    def _enqueue(self, watch: _Watch) -> None:
        if not any(kind == "save" and item is watch for kind, item in self._tasks):
            self._tasks.append(("save", watch))
        self._next()

    def _enqueue_restore(self, ref: Callable[[], Any]) -> None:
        self._tasks.append(("restore", ref))
        self._next()

    def _next(self) -> None:
        """Start the next task when no save or restore is running (one at a time: the latest strokes win)."""
        while self._tasks and not self.busy:
            kind, item = self._tasks.popleft()
            if kind == "save":
                snapshot = self._snapshot(item)
                if snapshot is not None:
                    self._current = item
                    self.start_job(
                        self._save_job(snapshot, item.digest),
                        "autosave",
                        lambda result, watch=item: self._saved(watch, result),
                        on_error=self._save_failed,
                        on_finish=self._finished,
                        progress=False,
                    )
            else:
                image = item()
                viewer = self.viewer
                if image is not None and viewer is not None and image in viewer.layers:
                    self.start_job(
                        self._restore_job(self._keys.get(image), image.data),
                        "autosave",
                        lambda result, ref=item: self._restored(ref, result),
                        on_finish=self._finished,
                        progress=False,
                    )

    def _finished(self) -> None:
        self._current = None
        self._next()

    def _snapshot(self, watch: _Watch, image: Any = None) -> _Snapshot | None:
        """A copy of the layer's labels and what the worker needs (None: nothing to save); ``image``: its
        micrograph, when it is no longer in the viewer."""
        layer = watch.layer
        watch.pending = False
        if not watch.is_annotations:
            return None
        if np.ndim(layer.data) != 2:
            return None
        image = image if image is not None else self._image_of(layer)
        if image is not None:
            key, data, name, source = self._keys.get(image), image.data, image.name, _source_of(image)
        elif watch.saved_as is not None:  # its micrograph was closed first: where it was saved before
            (key, name, source), data = watch.saved_as, None
        else:
            return None
        self._seq += 1
        return _Snapshot(
            seq=self._seq,
            key=key,
            image=data,
            labels=np.array(layer.data, copy=True),
            phases=self._phases_of(layer),
            image_name=name,
            source=source,
        )

    def _phases_of(self, layer: Any) -> PhaseSet:
        phases = phases_of_layer(layer)
        if phases is None:
            from .session import get_session

            viewer = self.viewer
            phases = get_session(viewer).phases if viewer is not None else None
        if phases is None:
            top = max(1, int(np.max(layer.data, initial=0)))
            phases = PhaseSet.from_names([f"phase {k}" for k in range(1, top + 1)])
        return phases

    def _save_job(self, snap: _Snapshot, previous: str | None) -> Job[tuple[str, str, Path | None, _Snapshot]]:
        """Worker: write the snapshot unless it equals the content last saved, or a later snapshot was written."""
        key = snap.key or micrograph_key(snap.image)
        digest = micrograph_key(snap.labels)
        folder = self.store.folder(key)
        if digest == previous and (folder / ANNOTATIONS_FILE).is_file():
            return key, digest, None, snap
        with self._lock:
            if self._written.get(key, 0) > snap.seq:
                return key, digest, None, snap
            folder = self.store.save(key, snap.labels, snap.phases, image_name=snap.image_name, source=snap.source)
            self._written[key] = snap.seq
        return key, digest, folder, snap
        yield  # a job that reports nothing

    def _saved(self, watch: _Watch, result: tuple[str, str, Path | None, _Snapshot]) -> None:
        key, digest, folder, snap = result
        watch.digest = digest
        watch.saved_as = (key, snap.image_name, snap.source)
        image = self._image_of(watch.layer)
        if image is not None:
            self._keys[image] = key
        self._failing = False
        if folder is not None:
            self._announce(snap.image_name, folder)

    def _announce(self, image_name: str, folder: Path) -> None:
        self.last_saved[image_name] = folder
        viewer = self.viewer
        if viewer is not None:
            viewer.status = f"annotations of {image_name} autosaved to {folder}"
        self.saved.emit(image_name, str(folder))

    def _save_failed(self, exc: BaseException) -> None:
        """Report a failed save once (not every few seconds while the folder stays unwritable)."""
        self.last_error = exc
        if not self._failing:
            self._failing = True
            report_error(exc)
        else:
            log.warning("autosave failed again: %s", exc)

    def flush(self) -> None:
        """Save every layer with unsaved strokes now, in the calling (GUI) thread (the window is closing)."""
        watches = [w for w in self._watches.values() if w.pending or w is self._current]
        watches += [w for kind, w in self._tasks if kind == "save" and w not in watches]
        self._save_now(watches)

    def _save_now(self, watches: list[_Watch], image: Any = None) -> None:
        """Save layers in the calling (GUI) thread, whatever the worker is doing: a save it is running with an older
        copy does not overwrite this one (the snapshots are numbered)."""
        from napari_metalseg.progress import run_job

        self._tasks = deque(task for task in self._tasks if not any(task[1] is w for w in watches))
        for watch in watches:
            watch.quiet.stop()
            watch.deadline.stop()
            snapshot = self._snapshot(watch, image)
            if snapshot is None:
                continue
            try:
                self._saved(watch, run_job(self._save_job(snapshot, watch.digest)))
            except Exception as exc:  # closing: say it, but let the window close
                self._save_failed(exc)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.Close:
            self.flush()
        return False

    # -- restoring -----------------------------------------------------------------------------------------------

    def _restore_job(self, key: str | None, image: Any) -> Job[tuple[str, SavedAnnotations | None, str | None]]:
        """Worker: the micrograph's key, its autosave (or None) and the autosave's content hash."""
        key, saved = yield from self.store.load_job(key, image=image)
        return key, saved, None if saved is None else micrograph_key(saved.labels)

    def _restored(self, ref: Callable[[], Any], result: tuple[str, SavedAnnotations | None, str | None]) -> None:
        from napari.utils.notifications import show_info

        from .layers import image_transform, labels_layer_kwargs

        key, saved, digest = result
        image, viewer = ref(), self.viewer
        if image is None or viewer is None or image not in viewer.layers:
            return
        self._keys[image] = key
        if saved is None:
            return
        pixels = int(np.count_nonzero(saved.labels))
        if saved.labels.shape != roles.image_hw(image):
            return  # cannot happen for the same pixels; never paint a wrong-sized layer
        existing = roles.find_layer(viewer, image, roles.ANNOTATIONS)
        empty = existing is not None and np.shape(existing.data) == saved.labels.shape and not np.any(existing.data)
        if existing is None or empty:  # nothing painted there yet: nothing is replaced
            layer = (
                existing if existing is not None else roles.annotations_layer(viewer, image, saved.phases, create=True)
            )
            self.restoring = layer
            try:
                layer.data = saved.labels
            finally:
                self.restoring = None
            self._saved_as(layer, digest, key, image)
            self.last_saved[image.name] = saved.folder
            show_info(f"restored {pixels} labelled pixels of {image.name!r} from the autosave in {saved.folder}")
            return
        if np.array_equal(np.asarray(existing.data), saved.labels):
            self._saved_as(existing, digest, key, image)
            self.last_saved[image.name] = saved.folder
            return
        name = f"{roles.layer_name(image.name, roles.ANNOTATIONS)} (autosaved {_when(saved.info)})"
        viewer.add_labels(saved.labels, **labels_layer_kwargs(saved.phases, name, **image_transform(image)))
        earlier = self.store.archive(key)
        show_info(
            f"the autosave of {image.name!r} ({pixels} labelled pixels) differs from the layer {existing.name!r}: "
            f"it is shown as the layer {name!r} (adopt it to use it) and kept in {earlier or saved.folder}"
        )

    def _saved_as(self, layer: Any, digest: str | None, key: str, image: Any) -> None:
        """Record that ``layer`` holds what the autosave holds (no save until it changes)."""
        watch = self._watches.get(id(layer))
        if watch is not None:
            watch.digest = digest
            watch.pending = False
            watch.saved_as = (key, image.name, _source_of(image))


def _source_of(image: Any) -> str | None:
    """The file a micrograph layer was read from (None: unknown)."""
    info = (getattr(image, "metadata", None) or {}).get(MICROGRAPH_KEY) or {}
    source = info.get("source") or getattr(getattr(image, "source", None), "path", None)
    return str(source) if source else None


def autosaver_of(viewer: Any) -> AnnotationAutosaver:
    """The autosaver of a viewer (:func:`~.session.get_session` installs it)."""
    from .session import get_session

    return get_session(viewer).autosaver
