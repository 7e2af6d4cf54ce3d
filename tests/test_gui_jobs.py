"""The one way the docks run an engine job (DockWidget.start_job): events, result, errors, cancellation."""

from __future__ import annotations

import threading

import pytest

from napari_metalseg._widgets.base import DockWidget
from napari_metalseg.errors import MetalsegError
from napari_metalseg.progress import ProgressEvent


@pytest.fixture
def dock(make_napari_viewer_proxy):
    return DockWidget(make_napari_viewer_proxy())


def _counting(n: int, log: dict, fail: BaseException | None = None, gate: threading.Event | None = None):
    try:
        for i in range(n):
            yield ProgressEvent("predict", i + 1, n, message=f"tile {i + 1}")
            if gate is not None:
                gate.wait(10)
        if fail is not None:
            raise fail
        return "result"
    finally:
        log["finally_thread"] = threading.get_ident()


def test_a_job_reports_events_and_its_result(dock, qtbot):
    log, events, done, finished = {}, [], [], []
    worker = dock.start_job(
        _counting(3, log), "counting", done.append, on_event=events.append, on_finish=lambda: finished.append(1)
    )
    assert worker is dock.worker and dock.busy
    with pytest.raises(RuntimeError, match="already running"):
        dock.start_job(_counting(1, {}), "again", done.append)
    qtbot.waitUntil(lambda: not dock.busy, timeout=10_000)
    assert done == ["result"] and finished == [1] and dock.last_error is None
    assert [e.step for e in events] == [1, 2, 3]
    assert log["finally_thread"] != threading.get_ident()


@pytest.mark.parametrize("error", [MetalsegError("bad input"), RuntimeError("a torch error")])
def test_errors_of_a_job_are_reported_and_the_dock_is_free_again(dock, qtbot, error):
    done, finished = [], []
    dock.start_job(_counting(2, {}, fail=error), "failing", done.append, on_finish=lambda: finished.append(1))
    qtbot.waitUntil(lambda: not dock.busy, timeout=10_000)
    assert dock.last_error is error and done == [] and finished == [1]


def test_cancel_stops_the_job_at_its_next_event_and_runs_its_finally_in_the_worker(dock, qtbot):
    log, events, done, finished = {}, [], [], []
    gate = threading.Event()
    dock.start_job(
        _counting(1000, log, gate=gate),
        "long",
        done.append,
        on_event=events.append,
        on_finish=lambda: finished.append(1),
    )
    qtbot.waitUntil(lambda: len(events) >= 1, timeout=10_000)
    dock.cancel()
    gate.set()
    qtbot.waitUntil(lambda: not dock.busy, timeout=10_000)
    assert done == [] and finished == [1] and len(events) < 1000
    assert "finally_thread" in log and log["finally_thread"] != threading.get_ident()
