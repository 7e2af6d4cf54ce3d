"""Property-based tests (hypothesis): whatever the input, the micrograph readers, the dataset loader and the box and
ratio checks give a valid result or one :class:`MetalsegError`, never another exception.

The number of examples and the seed are fixed by the ``metalseg`` hypothesis profile (tests/conftest.py), so the
file takes seconds and a failure reproduces; ``pytest --hypothesis-profile thorough tests/test_properties.py`` searches
harder. Each crash found became a named regression test at the end of this file.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from napari_metalseg.data.dataset import load_dataset
from napari_metalseg.errors import MetalsegError
from napari_metalseg.io import micrograph_from_array, read_micrograph
from napari_metalseg.phases import UNLABELED, PhaseSet
from napari_metalseg.predict import check_ratios
from napari_metalseg.prompts import check_box

DTYPES = ("uint8", "uint16", "int8", "int16", "int32", "float16", "float32", "float64", "bool")
SHAPES = st.one_of(
    st.tuples(st.integers(1, 20), st.integers(1, 20)),
    st.tuples(st.integers(1, 20), st.integers(1, 20), st.integers(1, 5)),
)


@st.composite
def small_arrays(draw, dtypes=DTYPES, shapes=SHAPES, finite: bool = False) -> np.ndarray:
    """Small 2-D or H x W x C arrays of any pixel type with extreme values (and NaN and infinities unless
    ``finite``)."""
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    elements = None
    if dtype.kind == "f":
        width = dtype.itemsize * 8
        elements = st.one_of(
            st.floats(0, 1, width=width), st.floats(width=width, allow_nan=not finite, allow_infinity=not finite)
        )
    return draw(hnp.arrays(dtype, draw(shapes), elements=elements))


def _check_micrograph_image(image: np.ndarray, width: int | None = None) -> None:
    assert image.dtype == np.float32 and image.ndim == 2
    assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0
    if width is not None:
        assert image.shape[1] == width


def _png_bytes(array: np.ndarray) -> bytes | None:
    """The array as PNG, when Pillow has a mode for it (L, LA, RGB, RGBA, I;16 or 1)."""
    grey = array.ndim == 2 and array.dtype.name in ("uint8", "uint16", "bool")
    colour = array.ndim == 3 and array.dtype.name == "uint8" and array.shape[2] in (2, 3, 4)
    if not (grey or colour):
        return None
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _tiff_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    rgb = array.ndim == 3 and array.shape[2] in (3, 4)
    tifffile.imwrite(buffer, array, photometric="rgb" if rgb else "minisblack")
    return buffer.getvalue()


def _read_bytes(data: bytes, suffix: str):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"field{suffix}"
        path.write_bytes(data)
        return read_micrograph(path)


# ------------------------------------------------------------------------------------------------ micrograph readers


@given(array=small_arrays(), suffix=st.sampled_from([".png", ".tif"]))
def test_written_arrays_read_back_or_are_refused_clearly(array, suffix):
    data = _png_bytes(array) if suffix == ".png" else _tiff_bytes(array)
    if data is None:
        data = _tiff_bytes(array)
        suffix = ".tiff"
    try:
        micrograph = _read_bytes(data, suffix)
    except MetalsegError:
        return
    _check_micrograph_image(micrograph.image, width=array.shape[1])
    assert micrograph.image.shape[0] <= array.shape[0]


@given(array=small_arrays(dtypes=("uint8", "uint16"), shapes=st.tuples(st.integers(8, 24), st.integers(8, 24))))
def test_grey_png_round_trip_is_exact(array):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "field.png"
        path.write_bytes(_png_bytes(array))
        micrograph = read_micrograph(path, crop_info_band=False)
    np.testing.assert_allclose(micrograph.image, array / np.iinfo(array.dtype).max, rtol=0, atol=1e-6)


@given(
    kind=st.sampled_from(["png", "tif"]),
    array=small_arrays(dtypes=("uint8",), shapes=st.tuples(st.integers(8, 16), st.integers(8, 16))),
    cut=st.floats(0.0, 1.0),
    suffix=st.sampled_from([".png", ".tif", ".jpg", ".bmp"]),
)
def test_truncated_or_misnamed_files_are_refused_clearly(kind, array, cut, suffix):
    data = _png_bytes(array) if kind == "png" else _tiff_bytes(array)
    data = data[: int(len(data) * cut)]
    try:
        micrograph = _read_bytes(data, suffix)
    except MetalsegError:
        return
    _check_micrograph_image(micrograph.image)


@given(data=st.binary(max_size=300), suffix=st.sampled_from([".png", ".tif", ".tiff", ".jpg", ".bmp"]))
def test_arbitrary_bytes_are_refused_clearly(data, suffix):
    try:
        micrograph = _read_bytes(data, suffix)
    except MetalsegError:
        return
    _check_micrograph_image(micrograph.image)


@given(array=small_arrays())
def test_in_memory_arrays_convert_or_are_refused_clearly(array):
    try:
        micrograph = micrograph_from_array(array)
    except MetalsegError:
        return
    _check_micrograph_image(micrograph.image, width=array.shape[1])


@given(array=small_arrays(dtypes=("float16", "float32", "float64"), finite=True))
def test_finite_float_arrays_map_into_the_unit_interval(array):
    try:
        micrograph = micrograph_from_array(array)
    except MetalsegError:
        return  # too small, or a stack: the shape, not the values
    _check_micrograph_image(micrograph.image, width=array.shape[1])


# ---------------------------------------------------------------------------------------------------- dataset loader

NAMES = st.sampled_from(["a", "b", "c.d", "A"])
META_VALUES = st.sampled_from(["", "3000", "0.05", "-1", "abc", "nan", "1e400"])
SPLIT_VALUES = st.sampled_from(["", "train", "val", "test", "bogus"])


@st.composite
def dataset_layouts(draw) -> dict:
    """A dataset folder description: phases.json, images, masks and metadata.csv, each right or wrong."""
    k = draw(st.integers(1, 4))
    phases = draw(
        st.sampled_from(
            [
                json.dumps([{"name": f"p{i}"} for i in range(k)]),
                json.dumps([f"p{i}" for i in range(k)]),
                "[]",
                "{not json",
                json.dumps([{"name": ""}]),
                json.dumps([{"name": "x", "color": "red"}]),
                None,
            ]
        )
    )
    size = st.tuples(st.integers(4, 20), st.integers(4, 20))
    images = draw(
        st.dictionaries(
            NAMES,
            st.tuples(st.sampled_from([".png", ".tif", ".txt", ".PNG"]), size, st.booleans()),
            max_size=3,
        )
    )
    masks = draw(
        st.dictionaries(
            NAMES,
            st.tuples(size, st.sampled_from([0, 1, 2, 3, 4, 255]), st.sampled_from(["L", "RGB", "I;16", "bytes"])),
            max_size=3,
        )
    )
    meta = draw(
        st.one_of(
            st.none(),
            st.just("no header\n"),
            st.lists(st.tuples(NAMES, META_VALUES, META_VALUES, SPLIT_VALUES), max_size=3),
        )
    )
    return {"phases": phases, "images": images, "masks": masks, "meta": meta, "require_masks": draw(st.booleans())}


def _write_layout(root: Path, layout: dict, rng: np.random.Generator) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    if layout["phases"] is not None:
        (root / "phases.json").write_text(layout["phases"])
    for name, (suffix, (h, w), readable) in layout["images"].items():
        path = root / "images" / f"{name}{suffix}"
        pixels = rng.integers(0, 256, (h, w), dtype=np.uint8)
        if not readable or suffix == ".txt":
            path.write_bytes(b"garbage")
        elif suffix.lower() == ".png":
            Image.fromarray(pixels).save(path, format="PNG")
        else:
            tifffile.imwrite(path, pixels)
    for name, ((h, w), top, mode) in layout["masks"].items():
        path = root / "masks" / f"{name}.png"
        values = rng.integers(0, top + 1, (h, w)).astype(np.uint8)
        if mode == "bytes":
            path.write_bytes(b"\x89PNG broken")
        elif mode == "RGB":
            Image.fromarray(np.stack([values] * 3, axis=-1)).save(path)
        elif mode == "I;16":
            Image.fromarray(values.astype(np.uint16)).save(path)
        else:
            Image.fromarray(values).save(path)
    meta = layout["meta"]
    if isinstance(meta, str):
        (root / "metadata.csv").write_text(meta)
    elif meta is not None:
        lines = ["name,magnification,pixel_size_um,split"] + [",".join(row) for row in meta]
        (root / "metadata.csv").write_text("\n".join(lines) + "\n")


@given(layout=dataset_layouts(), seed=st.integers(0, 2**16))
def test_any_dataset_layout_loads_or_is_refused_in_one_error(layout, seed):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "ds"
        _write_layout(root, layout, np.random.default_rng(seed))
        try:
            dataset = load_dataset(root, require_masks=layout["require_masks"])
        except MetalsegError:
            return
        k = len(dataset.phases)
        assert dataset.items and all(item.split in (None, "train", "val", "test") for item in dataset.items)
        for item in dataset.labelled:  # a loaded dataset's masks are valid for its images
            mask = item.read_mask()
            assert mask.dtype == np.uint8 and mask.shape == item.read_image().shape
            assert ((mask < k) | (mask == UNLABELED)).all()
        if layout["require_masks"]:
            assert all(item.mask_path is not None for item in dataset.items)
        assert dataset.summary()["images"] == len(dataset)


# ------------------------------------------------------------------------------------------------ box and ratio checks

ANYTHING = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(),
    st.integers(-(10**400), 10**400),
    st.text(max_size=4),
    st.none(),
    st.booleans(),
)


@given(
    box=st.one_of(st.lists(ANYTHING, max_size=6), ANYTHING, st.lists(st.floats(-5, 120), min_size=4, max_size=4)),
    shape=st.tuples(st.integers(1, 100), st.integers(1, 100)),
)
def test_check_box_gives_a_box_inside_the_image_or_one_error(box, shape):
    try:
        x0, y0, x1, y1 = check_box(box, shape)
    except MetalsegError:
        return
    h, w = shape
    assert all(isinstance(v, int) for v in (x0, y0, x1, y1))
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


@given(
    ratios=st.one_of(
        st.none(), st.lists(ANYTHING, max_size=5), ANYTHING, st.lists(st.floats(0, 1e308), min_size=1, max_size=5)
    ),
    k=st.integers(1, 4),
)
def test_check_ratios_gives_fractions_summing_to_one_or_one_error(ratios, k):
    phases = PhaseSet.from_names([f"p{i}" for i in range(k)])
    try:
        result = check_ratios(ratios, phases)
    except MetalsegError:
        return
    if ratios is None:
        assert result is None
        return
    assert result.dtype == np.float32 and result.shape == (k,)
    assert np.isfinite(result).all() and (result >= 0).all()
    assert result.sum() == pytest.approx(1.0, abs=1e-5)


# ------------------------------------------------------------------------------------ regressions found by hypothesis


def test_regression_ratio_with_text_is_one_error():
    with pytest.raises(MetalsegError, match=r"ratio \['a', 1\]: expected 2 numbers \(p0, p1\)"):
        check_ratios(["a", 1], PhaseSet.from_names(["p0", "p1"]))


def test_regression_ratio_with_a_huge_integer_is_one_error():
    with pytest.raises(MetalsegError, match="expected 1 numbers"):
        check_ratios([10**400], PhaseSet.from_names(["p0"]))


def test_regression_ratio_that_is_not_a_sequence_is_one_error():
    with pytest.raises(MetalsegError, match="ratio 0.5: expected 2 numbers"):
        check_ratios(0.5, PhaseSet.from_names(["p0", "p1"]))


def test_regression_ratio_whose_sum_overflows_is_still_normalised():
    result = check_ratios([1e308, 1e308, 0.0], PhaseSet.from_names(["p0", "p1", "p2"]))
    np.testing.assert_array_equal(result, np.array([0.5, 0.5, 0.0], np.float32))


def test_regression_box_with_a_huge_integer_is_one_error():
    with pytest.raises(MetalsegError, match="expected four numbers"):
        check_box([0, 0, 10**400, 5], (10, 10))


def test_regression_float_image_spanning_more_than_float64_holds_stays_finite():
    data = np.zeros((8, 8))
    data[0, 0], data[0, 1] = -1.7e308, 1.7e308
    image = micrograph_from_array(data).image
    assert np.isfinite(image).all()
    assert image[0, 0] == 0.0 and image[0, 1] == 1.0 and image[4, 4] == pytest.approx(0.5)
