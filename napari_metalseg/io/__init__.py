"""File input/output: micrographs (with SEM metadata and information-band cropping) and atomic writes."""

from napari_metalseg.io.micrograph import MICROGRAPH_SUFFIXES, Micrograph, micrograph_from_array, read_micrograph

__all__ = ["MICROGRAPH_SUFFIXES", "Micrograph", "micrograph_from_array", "read_micrograph"]
