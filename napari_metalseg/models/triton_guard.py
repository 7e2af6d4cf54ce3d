"""Keep ``import triton`` from crashing a napari session.

Once a napari viewer holds an OpenGL context under Mesa, the first ``import triton`` segfaults the whole process
(triton's driver probing clashes with the GL driver). ``import peft`` reaches triton through ``torch._dynamo``.
Triton is only useful with CUDA (it compiles GPU kernels), so on machines without CUDA we mark it absent before
peft is imported: ``sys.modules["triton"] = None`` makes ``import triton`` raise ``ImportError`` and
``importlib.util.find_spec("triton")`` return ``None``, which torch treats as "triton not installed".

Call :func:`guard_triton` at the top of every function that imports peft.
"""

from __future__ import annotations

import sys


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
    import torch

    if torch.cuda.is_available():
        return False
    sys.modules.setdefault("triton", None)  # type: ignore[arg-type]
    return sys.modules["triton"] is None
