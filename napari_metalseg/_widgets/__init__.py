"""The thin napari layer: dock widgets, reader, writer and sample data. Widgets call the engine, never the reverse.

Importing this package must stay fast: no torch, segment_anything or peft at import time; models are built in
workers. Triton is blocked for the whole process on import (see :mod:`napari_metalseg.models.triton_guard`).
"""

import os
import sys

# A napari viewer holds a GL context; the first `import triton` then segfaults under Mesa. The GUI never compiles
# kernels, so triton is marked absent before anything can import it (no torch import needed for that).
if os.environ.get("METALSEG_ALLOW_TRITON", "") in ("", "0"):
    sys.modules.setdefault("triton", None)  # type: ignore[arg-type]
