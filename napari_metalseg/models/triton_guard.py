"""Keep ``import triton`` from crashing a napari session.

Once a napari viewer holds an OpenGL context under Mesa, the first ``import triton`` segfaults the whole
process (triton's driver probing clashes with the GL driver). Many ordinary calls reach triton through
``torch._dynamo``: ``import peft``, ``import torchvision`` (and so ``import segment_anything``), and even the
first ``optimizer.step()`` of a ``torch.optim`` optimizer. Triton is only useful with CUDA (it compiles GPU
kernels), so on machines without CUDA we mark it absent: ``sys.modules["triton"] = None`` makes
``import triton`` raise ``ImportError`` and ``importlib.util.find_spec("triton")`` return ``None``, which
torch treats as "triton not installed" (``torch.compile`` still works with CPU backends).

:func:`guard_triton` is called when the torch modules of :mod:`napari_metalseg.models` are imported, before
``segment_anything`` and ``peft`` are imported, and should be called by any code that may import those (or
step an optimizer) in a process with a napari viewer. Setting ``METALSEG_NO_TRITON=1`` applies the guard even
when CUDA is available (for a CUDA machine whose display runs on Mesa).
"""

from __future__ import annotations

import os
import sys

FORCE_ENV = "METALSEG_NO_TRITON"


def guard_triton() -> bool:
    """Mark triton as unavailable when CUDA is not available and triton is not imported yet.

    Returns
    -------
    bool
        ``True`` if the guard is in place (``sys.modules["triton"] is None``), ``False`` if triton stays
        importable (CUDA available, or triton already imported).
    """
    if "triton" in sys.modules:
        return sys.modules["triton"] is None
    if os.environ.get(FORCE_ENV, "") not in ("", "0"):
        sys.modules.setdefault("triton", None)  # type: ignore[arg-type]
        return sys.modules["triton"] is None
    import torch

    if torch.cuda.is_available():
        return False
    sys.modules.setdefault("triton", None)  # type: ignore[arg-type]
    return sys.modules["triton"] is None
