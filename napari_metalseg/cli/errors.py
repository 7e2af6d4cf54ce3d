"""How the CLI reports a user error: one ``error:`` line, exit status 2, naming the option the user can change."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click

from napari_metalseg.errors import MetalsegError

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(func: F | None = None, /, **aliases: str) -> Any:
    """Decorate a command so that a :class:`MetalsegError` becomes one ``error:`` line and exit status 2.

    The engine's messages name its arguments, never CLI flags; the message is passed through
    :func:`name_option` with the command's own options (engine argument ``img_size`` is ``--img-size``) plus
    ``aliases`` for engine names that differ from the option's (``model="--model"`` where the option's value is
    called ``kind``).

    Use as ``@user_errors`` or ``@user_errors(model="--model")``.
    """

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return command(*args, **kwargs)
            except MetalsegError as exc:
                click.echo(f"error: {name_option(exc, _options() | aliases)}", err=True)
                sys.exit(2)

        return wrapper  # type: ignore[return-value]

    return decorate(func) if func is not None else decorate


def _options() -> dict[str, str]:
    """``{value name: "--flag"}`` for the options of the command that is running."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return {}
    return {p.name: p.opts[0] for p in ctx.command.params if isinstance(p, click.Option) and p.name and p.opts}


def name_option(exc: MetalsegError, options: Mapping[str, str]) -> str:
    """The message of an engine error, naming the CLI option for the engine argument it is about.

    Parameters
    ----------
    exc
        The engine's error. When its ``value`` (the argument it is about) is one of ``options``, the option is
        put in front (``--phases: scans/phases.json: phases.json is missing ...``); when the message starts with
        an argument's name (``img_size 100: must be ...``), the option replaces the name.
    options
        ``{engine argument name: "--flag"}``.

    Returns
    -------
    str
        The line to show after ``error:``.
    """
    message = str(exc)
    if exc.value is not None and exc.value in options:
        return f"{options[exc.value]}: {message}"
    for name, flag in options.items():
        if message.startswith(f"{name} "):
            return flag + message[len(name) :]
    return message
