"""The base of the plugin's dock widgets and the one way the GUI runs an engine job.

A *job* is a generator of :class:`~napari_metalseg.progress.ProgressEvent` that returns its result (see
:mod:`napari_metalseg.progress`). :meth:`JobRunner.start_job` runs one in a napari worker thread and owns everything
around it: the worker, the napari progress bar, the busy state, the error report (:func:`report_error`) and
cancellation (:meth:`JobRunner.cancel`: ``worker.quit()``; the job stops at its next event and is closed in the worker
thread, so its ``finally`` blocks run there). Every dock (:class:`DockWidget`) and the live preview controller run
their background work this way.

Every dock fits a laptop screen: :class:`DockWidget` moves the layout a dock builds into a scroll area once the dock's
``__init__`` has run (so a dock's minimum height is a few lines, whatever its form holds), and shows the last error
of bad input or of a job in full in its error line (word-wrapped, selectable) below that scroll area, besides the
napari notification.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Generator
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QHBoxLayout, QLabel, QLineEdit, QPushButton, QScrollArea, QVBoxLayout, QWidget

from napari_metalseg._widgets.session import get_session
from napari_metalseg.errors import MetalsegError
from napari_metalseg.progress import Job, ProgressEvent

log = logging.getLogger(__name__)


MIN_LINES = 4
"""A dock's scroll area is at least this many text lines high (its minimum height: the rest scrolls)."""


def report_error(exc: BaseException) -> None:
    """Show an error as a napari notification: a :class:`MetalsegError` (bad input) with its whole message, anything
    else with its traceback available (a bug). A dock also shows it in its error line (:meth:`DockWidget.show_error`).
    """
    from napari.utils.notifications import notification_manager, show_error

    if isinstance(exc, MetalsegError):
        show_error(str(exc))
        return
    log.error("metalseg worker failed", exc_info=exc)
    notification_manager.receive_error(type(exc), exc, exc.__traceback__)


def while_alive(method: Callable) -> Callable:
    """A slot that does nothing once its Qt object is deleted (a job can outlive a closed viewer)."""

    @functools.wraps(method)
    def slot(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except RuntimeError as exc:
            if "deleted" in str(exc):
                return None
            raise

    return slot


class _Failed:
    """What :func:`_drive` returns when the job raised a ``RuntimeError`` (the worker would swallow it)."""

    def __init__(self, error: RuntimeError) -> None:
        self.error = error


def _drive(job: Job) -> Generator[ProgressEvent, None, Any]:
    """The worker's generator: the job's events and result; a ``RuntimeError`` of the job comes back as
    :class:`_Failed` (napari's worker takes a ``RuntimeError`` for a deleted Qt object and would neither report it
    nor emit ``finished``, leaving the dock busy)."""
    try:
        return (yield from job)
    except RuntimeError as exc:
        return _Failed(exc)


@functools.cache
def _worker_class() -> type:
    """napari's ``GeneratorWorker`` that closes its generator in the worker thread when it stops (quit included)."""
    from napari.qt.threading import GeneratorWorker

    class JobWorker(GeneratorWorker):
        def work(self):
            try:
                return super().work()
            finally:
                self._gen.close()  # a job stopped by quit(): its finally blocks run here, in the worker thread

    return JobWorker


def _show_event(pbar, desc: str, event: ProgressEvent) -> None:
    """Move a napari progress bar to ``event`` (its total when known, its message after ``desc``)."""
    if event.total and pbar.total != event.total:
        pbar.total = event.total
    if event.total:
        pbar.n = min(event.step, event.total)
    label = f"{desc}: {event.message}" if event.message else desc
    if pbar.desc != label:
        pbar.set_description(label)
    pbar.refresh()


class JobRunner:
    """Runs one engine job at a time in a napari worker (mixed into :class:`DockWidget` and the live preview).

    Attributes
    ----------
    worker : GeneratorWorker or None
        The worker of the running job, if any.
    last_error : BaseException or None
        The last error of a job or of bad input (kept for tests and the status line).
    """

    worker = None
    last_error: BaseException | None = None

    @property
    def busy(self) -> bool:
        """True while a job runs."""
        return self.worker is not None

    def start_job(
        self,
        job: Job,
        desc: str,
        on_done: Callable[[Any], None],
        *,
        on_error: Callable[[BaseException], None] | None = None,
        on_finish: Callable[[], None] | None = None,
        on_event: Callable[[ProgressEvent], None] | None = None,
        total: int = 0,
        progress: bool = True,
    ):
        """Run ``job`` in a napari worker thread.

        Parameters
        ----------
        job : generator
            An engine job (yields :class:`~napari_metalseg.progress.ProgressEvent`, returns the result); it runs in
            the worker thread and must not touch layers or widgets.
        desc : str
            Progress bar text (each event's message is shown after it).
        on_done : callable
            Called in the GUI thread with the job's result.
        on_error : callable, optional
            Called in the GUI thread with the exception; default: keep it in :attr:`last_error` and
            :func:`report_error`.
        on_finish : callable, optional
            Called in the GUI thread at the end (done, failed or cancelled), once the runner is no longer busy.
        on_event : callable, optional
            Called in the GUI thread with every event.
        total : int
            Steps of the progress bar before the first event says (0: unknown).
        progress : bool
            Show a napari progress bar (off for quick jobs repeated while the user works, e.g. the live preview).

        Returns
        -------
        GeneratorWorker
            Already started.

        Raises
        ------
        RuntimeError
            A job is already running (check :attr:`busy` first).
        """
        from napari.qt.threading import create_worker
        from qtpy.QtCore import QThreadPool

        if self.worker is not None:
            raise RuntimeError(f"{type(self).__name__} is already running a job")
        # Qt converts large images (e.g. napari's activity spinner frames) on the global thread pool while the GUI
        # thread waits, holding the GIL when called from Python; napari's workers run on that pool too (2 threads on a
        # 2-core machine). A pool filled with workers that need the GIL would then deadlock the GUI: keep threads spare.
        pool = QThreadPool.globalInstance()
        pool.setMaxThreadCount(max(pool.maxThreadCount(), pool.activeThreadCount() + 4))
        # napari creates the progress bar quietly and shows it when the worker starts: showing it processes Qt events,
        # which must not happen while the caller is half-way through starting a job.
        worker = create_worker(
            _drive,
            job,
            _start_thread=False,
            _ignore_errors=True,
            _worker_class=_worker_class(),
            _progress={"desc": desc} if progress else None,
        )
        pbar = worker.pbar
        if pbar is not None and total:
            pbar.total = total
        failed = on_error or self._job_failed

        @while_alive
        def yielded(event: ProgressEvent) -> None:
            if pbar is not None:
                _show_event(pbar, desc, event)
            if on_event is not None:
                on_event(event)

        @while_alive
        def returned(result: Any) -> None:
            if isinstance(result, _Failed):
                failed(result.error)
            else:
                on_done(result)

        @while_alive
        def finished() -> None:
            if self.worker is worker:
                self.worker = None
            if on_finish is not None:
                on_finish()

        worker.yielded.connect(yielded)
        worker.returned.connect(returned)
        worker.errored.connect(while_alive(failed))
        worker.finished.connect(finished)
        self.worker = worker
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop the running job at its next event (``worker.quit()``); its result is dropped, ``on_finish`` runs."""
        if self.worker is not None:
            self.worker.quit()

    def _job_failed(self, exc: BaseException) -> None:
        self.last_error = exc
        report_error(exc)


class DockWidget(QWidget, JobRunner):
    """A dock widget bound to one viewer, running its background work with :meth:`~JobRunner.start_job`.

    A subclass builds its form with a layout on ``self`` in its ``__init__``, as any Qt widget; once the outermost
    ``__init__`` returns, that layout moves into a scroll area (:meth:`_wrap_in_scroll_area`), with the dock's error
    line below it.

    Attributes
    ----------
    viewer : napari.Viewer
        The viewer (plugin widgets receive a proxy of it).
    session : Session
        State shared by every dock of this viewer (model, predictor, phases, ratios).
    worker : GeneratorWorker or None
        The worker of the job this dock is running, if any.
    last_error : BaseException or None
        The last error shown to the user (kept for tests and the status line); setting it to None (a new action
        starts) clears the error line.
    error_line : QLabel
        The last error's whole message (word-wrapped, selectable); hidden while there is none.
    scroll : QScrollArea
        The scroll area holding the dock's form.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None:
            cls.__init__ = _then_wrap(init, cls)

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = get_session(napari_viewer)
        self.worker = None
        self.scroll: QScrollArea | None = None
        self.error_line = QLabel()
        self.error_line.setObjectName("metalseg_error_line")
        self.error_line.setWordWrap(True)
        self.error_line.setTextFormat(Qt.TextFormat.PlainText)
        self.error_line.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_line.setStyleSheet("color: #ff6b6b;")
        self.error_line.hide()
        self._last_error: BaseException | None = None

    @property
    def last_error(self) -> BaseException | None:
        """The last error shown to the user; setting None clears the error line."""
        return self._last_error

    @last_error.setter
    def last_error(self, exc: BaseException | None) -> None:
        self._last_error = exc
        if exc is None:
            self.error_line.clear()
            self.error_line.hide()

    def show_error(self, exc: BaseException) -> None:
        """Show ``exc`` in the error line, its whole message (the type first when it is not a MetalsegError)."""
        text = str(exc) if isinstance(exc, MetalsegError) else f"{type(exc).__name__}: {exc}"
        self.error_line.setText(f"error: {text}")
        self.error_line.show()

    def _job_failed(self, exc: BaseException) -> None:
        self.last_error = exc
        self.show_error(exc)
        report_error(exc)

    def _failed(self, exc: BaseException) -> None:
        """Keep and report an error of bad input or of a job."""
        self._job_failed(exc)

    def _wrap_in_scroll_area(self) -> None:
        """Move the layout the dock built into a scroll area, with the error line below it (once)."""
        if self.scroll is not None:
            return
        body = QWidget()
        body.setObjectName("metalseg_dock_body")
        if self.layout() is not None:
            body.setLayout(self.layout())  # Qt takes the layout off this widget, with the widgets it holds
        scroll = QScrollArea()
        scroll.setWidget(body)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setMinimumHeight(MIN_LINES * self.fontMetrics().height())
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll, 1)
        outer.addWidget(self.error_line)
        self.scroll = scroll


def _then_wrap(init: Callable, cls: type) -> Callable:
    """``init`` of ``cls``, then, when ``cls`` is the most derived class defining ``__init__``, the scroll area."""

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if next(k for k in type(self).__mro__ if "__init__" in k.__dict__) is cls:
            self._wrap_in_scroll_area()

    return __init__


def browse_row(edit: QLineEdit, browse) -> QWidget:
    """A path field with a "…" button that calls ``browse`` (a file or folder picker)."""
    row = QWidget()
    box = QHBoxLayout(row)
    box.setContentsMargins(0, 0, 0, 0)
    box.addWidget(edit, 1)
    button = QPushButton("…")
    button.setFixedWidth(28)
    button.setToolTip("Browse")
    button.clicked.connect(browse)
    box.addWidget(button)
    return row
