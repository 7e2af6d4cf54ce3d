"""napari-metalseg: phase segmentation of steel micrographs with LoRA-adapted Segment Anything.

Importing the package is cheap: torch, segment_anything and peft are imported only where a model is built.
"""

__version__ = "0.1.0"

from napari_metalseg.errors import MetalsegError

__all__ = ["MetalsegError", "__version__"]
