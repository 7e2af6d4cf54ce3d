"""The one exception type the user sees.

Every problem caused by user input (a file, a value, a folder) is raised as :class:`MetalsegError` with one line that
names the offending thing and what is wrong with it. The CLI prints it as ``error: <message>`` and exits with status
2; the widgets show it in a napari notification. Errors from deeper libraries are translated at the boundary where we
know which file or value was involved.
"""


class MetalsegError(Exception):
    """A user-facing error: one clear line naming the file or value and the problem."""
