"""The napari reader's decision, without a viewer: from names alone (suffix, dataset layout), reading deferred to the
function it returns. Reading real files into layers is tested in test_gui_core.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import napari_metalseg
from napari_metalseg._widgets.reader import get_reader, is_dataset_folder, read_paths
from napari_metalseg.errors import MetalsegError
from napari_metalseg.io import MICROGRAPH_SUFFIXES

MANIFEST = Path(napari_metalseg.__file__).parent / "napari.yaml"


def test_manifest_lists_exactly_the_suffixes_the_reader_reads():
    (reader,) = yaml.safe_load(MANIFEST.read_text())["contributions"]["readers"]
    assert sorted(reader["filename_patterns"]) == sorted(f"*{suffix}" for suffix in MICROGRAPH_SUFFIXES)
    assert reader["accepts_directories"] is True


@pytest.mark.parametrize("name", ["field.tif", "FIELD.TIFF", "a.png", "b.JPG", "c.jpeg", "d.bmp"])
def test_a_micrograph_suffix_is_accepted_without_reading_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"not an image at all")  # the decision must not look inside
    assert get_reader(str(path)) is read_paths
    with pytest.raises(MetalsegError, match=name):
        read_paths(str(path))  # reading happens when napari calls the function, with the file named


@pytest.mark.parametrize("name", ["notes.txt", "scan.czi", "archive.tif.gz", "noext"])
def test_other_files_are_declined(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"x")
    assert get_reader(str(path)) is None


def test_missing_file_and_empty_list_are_declined(tmp_path):
    assert get_reader(str(tmp_path / "gone.tif")) is None
    assert get_reader([]) is None


def test_dataset_folder_is_recognised_by_its_layout_only(tmp_path):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    assert not is_dataset_folder(root) and get_reader(str(root)) is None
    (root / "phases.json").write_text("not json")  # contents are checked when reading, not when deciding
    assert is_dataset_folder(root) and get_reader(str(root)) is read_paths
    with pytest.raises(MetalsegError, match="phases.json"):
        read_paths(str(root))
    assert get_reader(str(tmp_path)) is None  # a folder that merely contains a dataset


def test_a_list_is_accepted_only_when_every_path_is(tmp_path):
    good, bad = tmp_path / "a.png", tmp_path / "b.txt"
    good.write_bytes(b"x")
    bad.write_bytes(b"x")
    assert get_reader([str(good), str(good)]) is read_paths
    assert get_reader([str(good), str(bad)]) is None
