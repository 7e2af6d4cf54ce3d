"""The one triton guard: keep ``import triton`` from crashing a process that shows napari.

Once a napari viewer holds an OpenGL context under Mesa, the first ``import triton`` segfaults the whole
process (triton's driver probing clashes with the GL driver). Many ordinary calls reach triton through
``torch._dynamo``: ``import peft``, ``import torchvision`` (and so ``import segment_anything``), and even the
first ``optimizer.step()`` of a ``torch.optim`` optimizer. metalseg never compiles kernels (triton only serves
``torch.compile`` on GPUs), so triton is marked absent: ``sys.modules["triton"] = None`` makes ``import triton``
raise ``ImportError`` and ``importlib.util.find_spec("triton")`` return ``None``, which torch treats as "triton not
installed" (``torch.compile`` still works with CPU backends, and CUDA runs eagerly as before).

Policy: triton is blocked unless the environment sets ``METALSEG_ALLOW_TRITON=1`` (the one switch, for scripts
that want ``torch.compile`` with triton in the same process). The guard imports nothing heavy (no torch), so
plugin start-up stays fast. It is applied once per process by the two entry points that can lead to torch:
``napari_metalseg.models`` (before any torch module of the package is imported) and ``napari_metalseg._widgets``
(before napari creates a GL context). No other module calls it.
"""

from __future__ import annotations

import os
import sys

ALLOW_ENV = "METALSEG_ALLOW_TRITON"
"""Set to ``1`` to leave triton importable (any value but empty or ``0`` counts)."""


def triton_allowed() -> bool:
    """Whether the environment switch :data:`ALLOW_ENV` leaves triton importable."""
    return os.environ.get(ALLOW_ENV, "") not in ("", "0")


def guard_triton() -> bool:
    """Mark triton as unavailable for this process, unless :data:`ALLOW_ENV` allows it; idempotent.

    Returns
    -------
    bool
        ``True`` if the guard is in place (``sys.modules["triton"] is None``), ``False`` if triton stays
        importable (the switch is on, or triton was imported before the guard ran).
    """
    if "triton" not in sys.modules and not triton_allowed():
        sys.modules["triton"] = None  # type: ignore[assignment]
    return "triton" in sys.modules and sys.modules["triton"] is None
