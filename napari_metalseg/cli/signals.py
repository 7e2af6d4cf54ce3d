"""Stopping a long command cleanly on Ctrl-C or SIGTERM (``scancel``, a cluster's pre-emption, ``torchrun`` ending
its workers): :class:`StopOnSignal`."""

from __future__ import annotations

import signal
from types import FrameType

import click

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnSignal:
    """A stop request (a callable for an engine job's ``stop``) set by the first SIGINT or SIGTERM.

    The job then ends at its next step, saving what it has (a training run saves its model and resume state); a
    second signal aborts at once. Used as a context manager, it installs its handlers on entry and puts the previous
    ones back on exit.

    Parameters
    ----------
    what : str
        What is stopped, for the line printed when the first signal arrives.
    echo : bool
        Print that line (off on the ranks of a distributed run other than 0).
    """

    def __init__(self, what: str, *, echo: bool = True) -> None:
        self.what = what
        self.echo = echo
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def __call__(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        if self.echo:
            click.echo(
                f"\n{signal.Signals(signum).name}: stopping {self.what} after the current step "
                "(send it again to abort at once)",
                err=True,
            )

    def __enter__(self) -> StopOnSignal:
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @property
    def exit_status(self) -> int:
        """The shell's status for an end by this signal: 128 + its number."""
        return 128 + (self.signal or 0)
