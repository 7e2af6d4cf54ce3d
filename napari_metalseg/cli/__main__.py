"""``python -m napari_metalseg.cli``: the ``metalseg`` command."""

from napari_metalseg.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
