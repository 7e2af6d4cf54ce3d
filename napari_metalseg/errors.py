"""The one exception type the user sees.

Every problem caused by user input (a file, a value, a folder) is raised as :class:`MetalsegError` with one line that
names the offending thing and what is wrong with it. The CLI prints it as ``error: <message>`` and exits with status
2; the widgets show it in a napari notification. Errors from deeper libraries are translated at the boundary where we
know which file or value was involved.
"""


class MetalsegError(Exception):
    """A user-facing error: one clear line naming the file or value and the problem.

    Parameters
    ----------
    message : str
        The line the user reads (never a CLI flag: front ends name their own controls).
    value : str, optional
        The engine's name of the argument whose value is wrong or missing (e.g. ``"phases"``), so that a front
        end can point at its own control for it (the CLI adds the option's name).
    """

    def __init__(self, message: str = "", *, value: str | None = None) -> None:
        super().__init__(message)
        self.value = value
