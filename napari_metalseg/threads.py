"""Torch's CPU thread count, with one owner: :func:`torch_threads`.

``torch.set_num_threads`` changes process state (with torch's OpenMP backend, the state of the calling thread), so
two places changing it on their own undo each other's changes. Engine and GUI alike limit torch's threads only
through :func:`torch_threads`, which restores the previous count when its block ends; no other code calls
``torch.set_num_threads``. Uses: the predictor runs its light decoders on one thread (``torch_threads(1)``), and the
napari Training dock trains with one core left to the GUI thread (``torch_threads(training_threads())`` around the
training job, in the worker thread that runs it).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from napari_metalseg.models.options import check_positive_int

_LOCK = threading.Lock()


@contextlib.contextmanager
def torch_threads(limit: int) -> Iterator[int]:
    """Run the block with at most ``limit`` torch CPU threads; restore the previous count afterwards.

    Parameters
    ----------
    limit : int
        Most intra-op threads torch may use in the block (at least 1); a limit above the current count changes
        nothing.

    Yields
    ------
    int
        The thread count in the block: ``min(current, limit)``.

    Raises
    ------
    MetalsegError
        If ``limit`` is not a positive integer.

    Examples
    --------
    >>> with torch_threads(1):  # doctest: +SKIP
    ...     logits = model.decode(embeddings)
    """
    limit = check_positive_int("threads", limit)
    import torch

    with _LOCK:
        before = torch.get_num_threads()
        count = min(before, limit)
        torch.set_num_threads(count)
    try:
        yield count
    finally:
        with _LOCK:
            torch.set_num_threads(before)
