"""Micrograph reading: formats, SEM metadata, information band, bad input."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_metalseg.errors import MetalsegError
from napari_metalseg.io import MICROGRAPH_SUFFIXES, Micrograph, read_micrograph
from napari_metalseg.io.infoband import detect_info_band
from napari_metalseg.io.micrograph import micrograph_from_array
from napari_metalseg.io.sem import magnification_from_filename, parse_magnification

ZEISS = Path(__file__).parent / "data" / "sem" / "nanoporous_gold_zeiss.tif"
ZEISS_BAND_ROWS = 77  # rows 691..767: black frame line, white band with text, black frame line, one scan line
RNG_SEED = 1234


def texture(shape: tuple[int, int] = (96, 128), seed: int = RNG_SEED) -> np.ndarray:
    """A smooth random grain texture in [0, 1] (float64), like an etched microstructure."""
    rng = np.random.default_rng(seed)
    noise = rng.random((shape[0] // 8 + 2, shape[1] // 8 + 2))
    big = np.kron(noise, np.ones((8, 8)))[: shape[0], : shape[1]]
    return 0.1 + 0.8 * (0.7 * big + 0.3 * rng.random(shape))


def with_band(body: np.ndarray, rows: int) -> np.ndarray:
    """``body`` with a black information band of ``rows`` rows holding white 'text' blocks."""
    band = np.zeros((rows, body.shape[1]))
    band[rows // 4 : rows // 4 + max(2, rows // 3), 10 : body.shape[1] // 3] = 1.0
    band[rows // 4 : rows // 4 + max(2, rows // 3), body.shape[1] // 2 : body.shape[1] // 2 + 20] = 1.0
    return np.vstack([body, band])


def assert_error_names(excinfo: pytest.ExceptionInfo, path: Path | str) -> str:
    message = str(excinfo.value)
    assert Path(path).name in message
    assert "\n" not in message
    return message


# --- the real Zeiss file ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zeiss() -> Micrograph:
    return read_micrograph(ZEISS)


def test_zeiss_metadata(zeiss):
    assert zeiss.instrument == "zeiss"
    assert zeiss.magnification == 500000
    assert zeiss.pixel_size_um == pytest.approx(0.000543)
    assert zeiss.detector == "InLens"
    assert zeiss.kv == pytest.approx(20.0)
    assert zeiss.dtype == "uint8" and zeiss.bit_depth == 8
    assert zeiss.original_shape == (768, 1024)
    assert zeiss.source == str(ZEISS)


def test_zeiss_info_band_cropped_exactly(zeiss):
    assert zeiss.info_band_rows == ZEISS_BAND_ROWS
    assert zeiss.shape == (768 - ZEISS_BAND_ROWS, 1024)
    assert zeiss.image.dtype == np.float32 and zeiss.image.flags.c_contiguous
    raw = tifffile.imread(ZEISS)  # palette indices; the Zeiss palette is a gray ramp
    np.testing.assert_array_equal(zeiss.image, raw[: 768 - ZEISS_BAND_ROWS] / np.float32(255))
    # the first band row is the black frame line, everything after it is band; nothing of it is left
    assert (raw[768 - ZEISS_BAND_ROWS] == 0).mean() > 0.99
    saturated = ((zeiss.image == 0) | (zeiss.image == 1)).mean(axis=1)
    assert saturated.max() < 0.01
    assert np.ptp(zeiss.image[-1]) > 0.3  # last kept row is material


def test_zeiss_without_cropping():
    m = read_micrograph(ZEISS, crop_info_band=False)
    assert m.info_band_rows == 0
    assert m.shape == (768, 1024)
    assert (m.image[-10] == 1.0).mean() > 0.9  # band rows are still there


def test_zeiss_jpeg_copy_band_detected_from_pixels(tmp_path):
    path = tmp_path / "zeiss.jpg"
    Image.fromarray(tifffile.imread(ZEISS)).save(path, quality=90)
    m = read_micrograph(path)
    assert m.instrument is None and m.pixel_size_um is None
    assert m.info_band_rows == ZEISS_BAND_ROWS


def test_info_is_json_ready(zeiss):
    info = zeiss.info()
    assert json.loads(json.dumps(info)) == info
    assert info == {
        "shape": [691, 1024],
        "original_shape": [768, 1024],
        "dtype": "uint8",
        "bit_depth": 8,
        "magnification": 500000.0,
        "pixel_size_um": pytest.approx(0.000543),
        "info_band_rows": 77,
        "detector": "InLens",
        "kv": 20.0,
        "instrument": "zeiss",
        "source": str(ZEISS),
    }


def test_metadata_magnification_beats_filename(tmp_path):
    path = tmp_path / "npg_x3000.tif"
    shutil.copy(ZEISS, path)
    assert read_micrograph(path).magnification == 500000


# --- formats ---------------------------------------------------------------------------------------------------


def test_uint8_tiff_round_trip(tmp_path):
    data = (texture() * 255).astype(np.uint8)
    data[0, 0], data[0, 1] = 0, 255
    tifffile.imwrite(tmp_path / "a.tif", data)
    m = read_micrograph(tmp_path / "a.tif")
    assert m.image.dtype == np.float32 and m.shape == data.shape
    np.testing.assert_allclose(m.image, data / 255.0, atol=1e-7)
    assert m.image[0, 0] == 0.0 and m.image[0, 1] == 1.0
    assert (m.bit_depth, m.dtype, m.info_band_rows) == (8, "uint8", 0)
    assert m.instrument is None and m.pixel_size_um is None and m.magnification is None


def test_uint16_tiff_round_trip(tmp_path):
    data = (texture() * 65535).astype(np.uint16)
    data[5, 5] = 65535
    tifffile.imwrite(tmp_path / "a16.tiff", data, compression="zlib")
    m = read_micrograph(tmp_path / "a16.tiff")
    assert m.image[5, 5] == 1.0
    assert (m.bit_depth, m.dtype) == (16, "uint16")
    np.testing.assert_allclose(m.image, data / 65535.0, atol=1e-7)


def test_palette_tiff_applies_colormap(tmp_path):
    indices = (texture() * 3.99).astype(np.uint8)  # values 0..3
    colormap = np.zeros((3, 256), dtype=np.uint16)
    colormap[:, 1] = (65535, 0, 0)  # red
    colormap[:, 2] = (0, 65535, 0)  # green
    colormap[:, 3] = (65535, 65535, 65535)  # white
    tifffile.imwrite(tmp_path / "pal.tif", indices, photometric="palette", colormap=colormap)
    m = read_micrograph(tmp_path / "pal.tif")
    expected = np.array([0.0, 0.299, 0.587, 1.0], dtype=np.float32)[indices]
    np.testing.assert_allclose(m.image, expected, atol=1e-6)
    assert (m.bit_depth, m.dtype, m.original_shape) == (8, "uint8", indices.shape)


@pytest.mark.parametrize("planar", [False, True])
def test_rgb_tiff_luminance(tmp_path, planar):
    rgb = np.zeros((32, 40, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 128, 10
    rgb[:16] = 200  # gray part stays exact
    data = np.moveaxis(rgb, -1, 0) if planar else rgb
    tifffile.imwrite(tmp_path / "rgb.tif", data, photometric="rgb", planarconfig="separate" if planar else "contig")
    m = read_micrograph(tmp_path / "rgb.tif")
    assert m.shape == (32, 40)
    assert m.image[20, 5] == pytest.approx((0.299 * 255 + 0.587 * 128 + 0.114 * 10) / 255, abs=1e-6)
    assert m.image[0, 0] == np.float32(200) / np.float32(255)


def test_rgba_tiff_ignores_alpha(tmp_path):
    rgba = np.zeros((24, 24, 4), dtype=np.uint8)
    rgba[..., :3] = 100
    rgba[..., 3] = np.arange(24, dtype=np.uint8)[None, :] * 10
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb")
    m = read_micrograph(tmp_path / "rgba.tif")
    np.testing.assert_allclose(m.image, 100 / 255, atol=1e-6)
    assert m.original_shape == (24, 24, 4)


def test_miniswhite_tiff_is_inverted(tmp_path):
    data = np.zeros((16, 16), dtype=np.uint8)
    data[:, 8:] = 255
    tifffile.imwrite(tmp_path / "mw.tif", data, photometric="miniswhite")
    m = read_micrograph(tmp_path / "mw.tif")
    assert m.image[0, 0] == 1.0 and m.image[0, 15] == 0.0


def test_float_tiff_kept_or_scaled(tmp_path):
    inside = texture().astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", inside)
    np.testing.assert_array_equal(read_micrograph(tmp_path / "f.tif").image, inside)
    outside = inside * 1000 - 200
    tifffile.imwrite(tmp_path / "g.tif", outside)
    m = read_micrograph(tmp_path / "g.tif")
    assert m.image.min() == 0.0 and m.image.max() == 1.0
    np.testing.assert_allclose(m.image, (outside - outside.min()) / np.ptp(outside), atol=1e-6)
    assert (m.bit_depth, m.dtype) == (32, "float32")


def test_png_8_and_16_bit(tmp_path):
    data8 = (texture() * 255).astype(np.uint8)
    Image.fromarray(data8).save(tmp_path / "a.png")
    m8 = read_micrograph(tmp_path / "a.png")
    np.testing.assert_allclose(m8.image, data8 / 255.0, atol=1e-7)
    assert (m8.bit_depth, m8.dtype) == (8, "uint8")
    data16 = (texture() * 65535).astype(np.uint16)
    data16[0, 0] = 65535
    Image.fromarray(data16).save(tmp_path / "b.png")
    m16 = read_micrograph(tmp_path / "b.png")
    assert m16.image[0, 0] == 1.0
    assert (m16.bit_depth, m16.dtype) == (16, "uint16")
    np.testing.assert_allclose(m16.image, data16 / 65535.0, atol=1e-7)


def test_png_rgb_and_palette(tmp_path):
    rgb = np.zeros((20, 20, 3), dtype=np.uint8)
    rgb[..., 1] = 255
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert read_micrograph(tmp_path / "rgb.png").image[0, 0] == pytest.approx(0.587, abs=1e-6)
    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.png")
    pal = read_micrograph(tmp_path / "pal.png")
    assert pal.image[3, 3] == pytest.approx(0.587, abs=1e-6)
    assert pal.bit_depth == 8


def test_jpeg_round_trip(tmp_path):
    data = (texture() * 255).astype(np.uint8)
    Image.fromarray(data).save(tmp_path / "a.jpeg", quality=95)
    m = read_micrograph(tmp_path / "a.jpeg")
    assert m.shape == data.shape and (m.bit_depth, m.dtype) == (8, "uint8")
    assert np.abs(m.image - data / 255.0).mean() < 0.02


def test_bmp_round_trip(tmp_path):
    data = (texture() * 255).astype(np.uint8)
    Image.fromarray(data).save(tmp_path / "a.bmp")
    m = read_micrograph(tmp_path / "a.bmp")
    np.testing.assert_allclose(m.image, data / 255.0, atol=1e-7)


def test_uppercase_suffix(tmp_path):
    tifffile.imwrite(tmp_path / "UPPER.TIF", (texture() * 255).astype(np.uint8))
    assert read_micrograph(tmp_path / "UPPER.TIF").shape == (96, 128)
    assert ".tif" in MICROGRAPH_SUFFIXES and ".bmp" in MICROGRAPH_SUFFIXES


# --- FEI / ImageJ metadata -------------------------------------------------------------------------------------

FEI_TEXT = (
    "[User]\nDate=01/02/2020\n\n"
    "[Beam]\nHV=15000\n\n"
    "[EBeam]\nHV=15000\nHFW=1.536e-05\n\n"
    "[Scan]\nPixelWidth=1.5e-08\nPixelHeight=1.5e-08\nHorFieldsize=1.536e-05\n\n"
    "[Detectors]\nNumber=1\nName=ETD\nMode=SE\n\n"
    "[Image]\nResolutionX=1024\nResolutionY=884\nMagCanvasRealWidth=0.128\n"
)


def write_fei(path: Path, text: str, height: int = 943) -> None:
    body = (texture((884, 1024)) * 255).astype(np.uint8)
    data = (with_band(body / 255.0, height - 884) * 255).astype(np.uint8) if height > 884 else body
    tifffile.imwrite(path, data, extratags=[(34682, "s", 0, text, True)])  # 34682: FEI_HELIOS


def test_fei_metadata(tmp_path):
    path = tmp_path / "fei.tif"
    write_fei(path, FEI_TEXT)
    with tifffile.TiffFile(path) as tif:  # how tifffile exposes it: INI sections as nested dicts
        assert tif.is_fei and tif.fei_metadata["Scan"]["PixelWidth"] == 1.5e-08
    m = read_micrograph(path)
    assert m.instrument == "fei"
    assert m.pixel_size_um == pytest.approx(0.015)
    assert m.kv == pytest.approx(15.0)
    assert m.detector == "ETD"
    assert m.magnification == pytest.approx(0.128 / 1.536e-05)
    assert m.info_band_rows == 943 - 884  # from [Image] ResolutionY
    assert m.shape == (884, 1024)


def test_fei_without_canvas_width_has_no_magnification(tmp_path):
    path = tmp_path / "fei_nomag.tif"
    write_fei(path, FEI_TEXT.replace("MagCanvasRealWidth=0.128\n", ""), height=884)
    m = read_micrograph(path)
    assert m.magnification is None
    assert m.pixel_size_um == pytest.approx(0.015)
    assert m.info_band_rows == 0


def test_imagej_calibration_gives_pixel_size(tmp_path):
    path = tmp_path / "fiji.tif"
    tifffile.imwrite(
        path, (texture() * 255).astype(np.uint8), imagej=True, resolution=(4.0, 4.0), metadata={"unit": "micron"}
    )
    assert read_micrograph(path).pixel_size_um == pytest.approx(0.25)


# --- magnification from file names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("steel_x3000.tif", 3000),
        ("steel_3000x.tif", 3000),
        ("X5000.png", 5000),
        ("ferrite 5kx.jpg", 5000),
        ("ferrite_5kX", 5000),
        ("S355_3000X_etched.tif", 3000),
        ("pearlite-2.5kx.tif", 2500),
        ("img_x5k.tif", 5000),
        ("mag500.bmp", 500),
        ("/data/run 1/sample_200X.tif", 200),
        ("scan_1024x768.tif", None),
        ("copy_x2.tif", None),
        ("two_mags_500x_1000x.tif", None),
        ("plain.tif", None),
    ],
)
def test_magnification_from_filename(name, expected):
    assert magnification_from_filename(name) == expected


def test_filename_fallback_when_no_metadata(tmp_path):
    path = tmp_path / "bainite_x3000.tif"
    tifffile.imwrite(path, (texture() * 255).astype(np.uint8))
    m = read_micrograph(path)
    assert m.magnification == 3000 and m.pixel_size_um is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500.00 K X", 500000),
        ("25 kX", 25000),
        ("1.2 M X", 1.2e6),
        ("3000x", 3000),
        (750, 750),
        ("abc", None),
        ("0 X", None),
    ],
)
def test_parse_magnification(text, expected):
    assert parse_magnification(text) == (pytest.approx(expected) if expected else None)


# --- information band on synthetic images ----------------------------------------------------------------------


def test_synthetic_band_detected(tmp_path):
    image = with_band(texture((200, 160)), 24)
    assert detect_info_band(image) == 24
    tifffile.imwrite(tmp_path / "band.tif", (image * 255).astype(np.uint8))
    m = read_micrograph(tmp_path / "band.tif")
    assert m.info_band_rows == 24 and m.shape == (200, 160)


def _noise() -> np.ndarray:
    return np.random.default_rng(RNG_SEED).random((256, 256))


def _vertical_gradient() -> np.ndarray:
    return np.tile(np.linspace(0, 1, 256)[:, None], (1, 200))


def _horizontal_gradient() -> np.ndarray:
    return np.tile(np.linspace(0, 1, 200)[None, :], (256, 1))


def _dark_textured_bottom() -> np.ndarray:
    image = texture((256, 200))
    image[200:] = 0.02 + 0.05 * np.random.default_rng(7).random((56, 200))  # dark phase, still texture
    return image


def _black_bottom_without_text() -> np.ndarray:
    image = texture((256, 200))
    image[220:] = 0.0  # featureless void: no text, not a data bar
    return image


def _binary() -> np.ndarray:
    return (texture((256, 200)) > 0.5).astype(np.float64)


@pytest.mark.parametrize(
    "make",
    [
        _noise,
        _vertical_gradient,
        _horizontal_gradient,
        _dark_textured_bottom,
        _black_bottom_without_text,
        _binary,
        lambda: texture((256, 200)),
    ],
)
def test_no_band_on_images_without_one(tmp_path, make):
    image = make()
    assert detect_info_band(image) == 0
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, (image * 65535).astype(np.uint16))
    m = read_micrograph(path)
    assert m.info_band_rows == 0 and m.shape == image.shape


def test_zeiss_body_alone_has_no_band(zeiss):
    assert detect_info_band(zeiss.image) == 0


# --- in-memory arrays ------------------------------------------------------------------------------------------


def test_micrograph_from_array_rgb_and_copy():
    rgb = np.full((16, 20, 3), 51, dtype=np.uint8)
    m = micrograph_from_array(rgb, source="cam_x200.png", pixel_size_um=0.5)
    assert m.shape == (16, 20) and m.image[0, 0] == np.float32(0.2)
    assert (m.magnification, m.pixel_size_um, m.bit_depth, m.dtype) == (200, 0.5, 8, "uint8")
    floats = np.full((16, 16), 0.5, dtype=np.float32)
    m2 = micrograph_from_array(floats)
    m2.image[:] = 0
    assert floats[0, 0] == 0.5 and m2.source == ""


def test_micrograph_from_array_band_only_on_request():
    image = with_band(texture((200, 160)), 24)
    assert micrograph_from_array(image).info_band_rows == 0
    assert micrograph_from_array(image, crop_info_band=True).shape == (200, 160)


def test_micrograph_from_array_rejects_bad_data():
    with pytest.raises(MetalsegError, match="stack of 5 images"):
        micrograph_from_array(np.zeros((5, 32, 32)))
    with pytest.raises(MetalsegError, match="NaN or infinite"):
        micrograph_from_array(np.full((16, 16), np.nan), source="x.tif")
    with pytest.raises(MetalsegError, match="at least 8"):
        micrograph_from_array(np.zeros((4, 100)))
    with pytest.raises(TypeError, match="colour"):
        micrograph_from_array(np.zeros((16, 16)), colour="red")


# --- bad input -------------------------------------------------------------------------------------------------


def _tiff_bytes(data: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, data, **kwargs)
    return buf.getvalue()


def _png_bytes(data: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(data).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(data: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(data).save(buf, format="JPEG")
    return buf.getvalue()


def _apng_bytes() -> bytes:
    frames = [Image.fromarray(np.full((16, 16), v, dtype=np.uint8)) for v in (0, 100, 200)]
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])
    return buf.getvalue()


GRAY = (np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)
GRAY16 = (np.arange(64 * 64).reshape(64, 64) * 13).astype(np.uint16)
NOISE16 = np.random.default_rng(0).integers(0, 65535, (64, 64), dtype=np.uint16)  # incompressible

BAD_FILES = {
    "empty.tif": (b"", "empty"),
    "garbage.tif": (b"this is not an image at all" * 20, "not a readable TIFF"),
    "garbage.png": (b"\x89PNG garbage bytes" * 20, "not a readable image"),
    "garbage.jpg": (b"\xff\xd8\xff" + bytes(range(256)) * 4, "not a readable image"),
    "truncated.tif": (_tiff_bytes(GRAY16)[:5000], "truncated"),
    "truncated_zlib.tif": (_tiff_bytes(NOISE16, compression="zlib")[:3000], "truncated"),
    "truncated_header.tif": (_tiff_bytes(GRAY)[:20], "not a readable TIFF"),
    "truncated.png": (_png_bytes(NOISE16)[:3000], "not a readable image"),
    "truncated.jpg": (_jpeg_bytes((NOISE16 >> 8).astype(np.uint8))[:1500], "not a readable image"),
    "one_pixel.png": (_png_bytes(np.zeros((1, 1), dtype=np.uint8)), "1x1 pixels"),
    "thin.tif": (_tiff_bytes(np.zeros((5, 100), dtype=np.uint8)), "100x5 pixels"),
    "stack.tif": (
        _tiff_bytes(np.zeros((3, 32, 32), dtype=np.uint8), photometric="minisblack"),
        "is a stack of 3 images",
    ),
    "zstack.tif": (
        _tiff_bytes(np.zeros((4, 32, 32), dtype=np.uint8), imagej=True, metadata={"axes": "ZYX"}),
        "is a stack of 4 images",
    ),
    "frames.png": (_apng_bytes(), "is a stack of 3 images"),
    "nan.tif": (_tiff_bytes(np.where(np.eye(16) > 0, np.nan, 0.5).astype(np.float32)), "NaN or infinite"),
    "inf.tif": (_tiff_bytes(np.where(np.eye(16) > 0, np.inf, 0.5).astype(np.float32)), "NaN or infinite"),
    "picture.gif": (b"GIF89a" + bytes(100), "unsupported file type '.gif'"),
    "notes.txt": (b"hello", "unsupported file type '.txt'"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_give_one_line_error(tmp_path, name):
    content, expected = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(MetalsegError) as excinfo:
        read_micrograph(path)
    assert expected in assert_error_names(excinfo, path)
    assert excinfo.value.__cause__ is None or isinstance(excinfo.value.__cause__, MetalsegError)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(MetalsegError) as excinfo:
        read_micrograph(tmp_path / "nowhere.tif")
    assert "not found" in assert_error_names(excinfo, "nowhere.tif")
    folder = tmp_path / "folder.tif"
    folder.mkdir()
    with pytest.raises(MetalsegError) as excinfo:
        read_micrograph(folder)
    assert "folder" in assert_error_names(excinfo, folder)
