"""The thin napari layer: dock widgets, reader, writer and sample data. Widgets call the engine, never the reverse.

Importing this package must stay fast: no torch, segment_anything or peft at import time; models are built in
workers. Importing it applies the triton guard (:func:`napari_metalseg.models.triton_guard.guard_triton`) before
napari can create an OpenGL context: it is one of the guard's two entry points (the other is
:mod:`napari_metalseg.models`).
"""

from napari_metalseg.models.triton_guard import guard_triton

guard_triton()  # a napari viewer holds a GL context; the first `import triton` would then segfault under Mesa
