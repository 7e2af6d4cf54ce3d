"""The autosave store of annotations (GUI-free): where it lives, the micrograph key, round trip, atomicity, damage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_metalseg.data import autosave
from napari_metalseg.data.autosave import (
    ANNOTATIONS_FILE,
    INFO_FILE,
    PHASES_FILE,
    AnnotationStore,
    autosave_root,
    micrograph_key,
)
from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import PhaseSet
from napari_metalseg.progress import run_job

PHASES = PhaseSet.from_names(["ferrite", "bainite", "martensite"])


def _labels(shape=(40, 60), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    labels[5:15, 10:40] = 1
    labels[20:30, :] = 3
    labels[rng.random(shape) < 0.05] = 2
    return labels


def _image(shape=(40, 60), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


# -- where ------------------------------------------------------------------------------------------------------


def test_root_is_the_environment_variable_when_set(monkeypatch, tmp_path):
    monkeypatch.setenv(autosave.ENV_DIR, str(tmp_path / "here"))
    assert autosave_root() == tmp_path / "here"
    assert AnnotationStore().root == tmp_path / "here"


def test_root_defaults_to_the_platform_data_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(autosave.ENV_DIR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    expected = {
        "linux": tmp_path / "xdg",
        "darwin": tmp_path / "Library" / "Application Support",
        "win32": tmp_path / "local",
    }
    for platform, base in expected.items():
        monkeypatch.setattr(autosave.sys, "platform", platform)
        assert autosave_root() == base / "napari-metalseg" / "autosave", platform
    monkeypatch.setattr(autosave.sys, "platform", "linux")
    monkeypatch.delenv("XDG_DATA_HOME")
    assert autosave_root() == Path.home() / ".local" / "share" / "napari-metalseg" / "autosave"


# -- the key ----------------------------------------------------------------------------------------------------


def test_key_follows_the_pixels_not_the_object():
    image = _image()
    key = micrograph_key(image)
    assert key == micrograph_key(image.copy()) == micrograph_key(np.asfortranarray(image))
    assert len(key) == autosave.KEY_CHARS and int(key, 16) >= 0
    other = image.copy()
    other[17, 3] = np.nextafter(other[17, 3], 2)  # one pixel, one ulp
    assert micrograph_key(other) != key
    assert micrograph_key(image.reshape(60, 40)) != key  # same bytes, another shape
    assert micrograph_key(image.astype(np.float64)) != key
    assert micrograph_key(image.view(np.int32)) != key  # same bytes, another dtype


def test_key_hashes_large_images_in_blocks_without_changing_the_key(monkeypatch):
    image = _image((301, 77), seed=3)
    whole = micrograph_key(image)
    monkeypatch.setattr(autosave, "_CHUNK_BYTES", 1000)  # ~3 rows a block
    assert micrograph_key(image) == whole
    assert micrograph_key(image[::-1][::-1]) == whole  # a strided view, copied block by block


# -- round trip -------------------------------------------------------------------------------------------------


def test_save_then_load_gives_the_annotations_back(tmp_path):
    store = AnnotationStore(tmp_path)
    key = micrograph_key(_image())
    labels = _labels()
    assert store.load(key) is None
    folder = store.save(key, labels, PHASES, image_name="steel 3000x", source=tmp_path / "steel.tif")
    assert folder == tmp_path / key
    assert sorted(p.name for p in folder.iterdir()) == sorted([ANNOTATIONS_FILE, PHASES_FILE, INFO_FILE])
    saved = store.load(key)
    assert saved is not None and saved.folder == folder
    assert saved.labels.dtype == np.uint8 and np.array_equal(saved.labels, labels)
    assert saved.phases == PHASES
    assert saved.info["image_name"] == "steel 3000x"
    assert saved.info["source"] == str(tmp_path / "steel.tif")
    assert saved.info["shape"] == [40, 60]
    assert saved.info["labelled_pixels"] == int(np.count_nonzero(labels))
    assert saved.info["saved_at"]


def test_the_png_is_the_dataset_mask_format(tmp_path):
    from napari_metalseg.data.dataset import read_mask
    from napari_metalseg.phases import labels_to_mask

    store = AnnotationStore(tmp_path)
    labels = _labels()
    folder = store.save(micrograph_key(_image()), labels, PHASES, image_name="x")
    mask = read_mask(folder / ANNOTATIONS_FILE)
    assert np.array_equal(mask, labels_to_mask(labels, len(PHASES)))
    assert PhaseSet.load(folder / PHASES_FILE) == PHASES


def test_a_later_save_replaces_the_earlier_and_labels_beyond_the_phases_are_kept(tmp_path):
    store = AnnotationStore(tmp_path)
    key = micrograph_key(_image())
    store.save(key, _labels(seed=1), PHASES, image_name="a")
    newer = _labels(seed=2)
    newer[0, 0] = 7  # drawn with a label the phase set does not name: still the user's stroke
    store.save(key, newer, PHASES, image_name="b")
    saved = store.load(key)
    assert np.array_equal(saved.labels, newer) and saved.info["image_name"] == "b"


def test_load_job_computes_the_key_from_the_image(tmp_path):
    store = AnnotationStore(tmp_path)
    image = _image()
    assert run_job(store.load_job(image=image)) == (micrograph_key(image), None)
    store.save(micrograph_key(image), _labels(), PHASES, image_name="x")
    key, saved = run_job(store.load_job(image=image))
    assert key == micrograph_key(image) and np.array_equal(saved.labels, _labels())


def test_archive_keeps_an_autosave_aside(tmp_path):
    store = AnnotationStore(tmp_path)
    key = micrograph_key(_image())
    assert store.archive(key) is None
    store.save(key, _labels(seed=1), PHASES, image_name="x")
    kept = store.archive(key)
    assert kept.parent == tmp_path / key / autosave.EARLIER
    assert store.load(key) is None
    assert sorted(p.name for p in kept.iterdir()) == sorted([ANNOTATIONS_FILE, PHASES_FILE, INFO_FILE])
    store.save(key, _labels(seed=2), PHASES, image_name="x")
    again = store.archive(key)
    assert again != kept and again.parent == kept.parent
    from napari_metalseg.data.dataset import read_mask
    from napari_metalseg.phases import labels_to_mask

    assert np.array_equal(read_mask(kept / ANNOTATIONS_FILE), labels_to_mask(_labels(seed=1)))


def test_clear_removes_the_autosave(tmp_path):
    store = AnnotationStore(tmp_path)
    key = micrograph_key(_image())
    other = micrograph_key(_image(seed=9))
    store.save(key, _labels(), PHASES, image_name="x")
    store.save(other, _labels(), PHASES, image_name="y")
    store.clear(key)
    assert store.load(key) is None and not (tmp_path / key).exists()
    assert store.load(other) is not None
    store.clear(key)  # nothing left: no error


def test_bad_input_is_refused(tmp_path):
    store = AnnotationStore(tmp_path)
    with pytest.raises(MetalsegError, match="3-D|shape"):
        store.save(micrograph_key(_image()), np.zeros((2, 3, 4), np.uint8), PHASES, image_name="stack")
    for key in ("../escape", "", "ABC/def"):
        with pytest.raises(MetalsegError, match="not a micrograph key"):
            store.save(key, _labels(), PHASES, image_name="x")


# -- atomicity and damage ---------------------------------------------------------------------------------------


def test_a_failing_write_leaves_the_previous_autosave(tmp_path, monkeypatch):
    from PIL import Image

    store = AnnotationStore(tmp_path)
    key = micrograph_key(_image())
    first = _labels(seed=1)
    store.save(key, first, PHASES, image_name="x")
    before = {p.name: p.read_bytes() for p in (tmp_path / key).iterdir()}

    def crash(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG half a file")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", crash)
    with pytest.raises(MetalsegError, match=f"{ANNOTATIONS_FILE}: cannot autosave .*disk full"):
        store.save(key, _labels(seed=2), PHASES, image_name="y")
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in (tmp_path / key).iterdir()}
    assert set(after) == set(before)  # no temp file left
    assert after[ANNOTATIONS_FILE] == before[ANNOTATIONS_FILE]  # the previous annotations, whole
    assert np.array_equal(store.load(key).labels, first)


def test_a_save_cut_short_leaves_the_previous_autosave_or_none(tmp_path, monkeypatch):
    import napari_metalseg.io.atomic as atomic

    store = AnnotationStore(tmp_path)
    key, fresh = micrograph_key(_image()), micrograph_key(_image(seed=5))
    first = _labels(seed=1)
    store.save(key, first, PHASES, image_name="x")
    info = (tmp_path / key / INFO_FILE).read_text()
    real = atomic.atomic_write_text

    def crash(path, text):
        if Path(path).name == INFO_FILE:
            raise OSError("killed")
        real(path, text)

    monkeypatch.setattr(atomic, "atomic_write_text", crash)
    with pytest.raises(MetalsegError, match=f"{INFO_FILE}: cannot autosave"):
        store.save(key, _labels(seed=2), PHASES, image_name="y")
    assert (tmp_path / key / INFO_FILE).read_text() == info
    assert np.array_equal(store.load(key).labels, first)  # the annotations are written last
    with pytest.raises(MetalsegError):
        store.save(fresh, _labels(seed=2), PHASES, image_name="y")
    assert store.load(fresh) is None  # a first save cut short: no autosave, not a damaged one


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        (ANNOTATIONS_FILE, b"not a png"),
        (PHASES_FILE, b"[{"),
        (INFO_FILE, b"{ nope"),
        (INFO_FILE, b'{"shape": [3, 3]}'),
        (INFO_FILE, None),
        (PHASES_FILE, None),
    ],
)
def test_a_damaged_autosave_is_one_error_naming_the_file(tmp_path, name, damage):
    store = AnnotationStore(tmp_path)
    key = micrograph_key(_image())
    folder = store.save(key, _labels(), PHASES, image_name="x")
    if damage is None:
        (folder / name).unlink()
    else:
        (folder / name).write_bytes(damage)
    with pytest.raises(MetalsegError) as err:
        store.load(key)
    message = str(err.value)
    assert "damaged autosave" in message and name in message and str(folder) in message
    assert "\n" not in message


def test_info_json_is_plain_json(tmp_path):
    store = AnnotationStore(tmp_path)
    folder = store.save(micrograph_key(_image()), _labels(), PHASES, image_name="x")
    info = json.loads((folder / INFO_FILE).read_text())
    assert info["format"] == autosave.FORMAT and set(info) >= {"image_name", "source", "shape", "labelled_pixels"}
