"""Benchmarks and held-out data generators for napari-metalseg (not part of the installed package)."""
