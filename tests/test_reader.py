"""The napari reader's decision, without a viewer: from names alone (suffix, folder), reading deferred to the function
it returns, which says why it refuses a path. Reading real files into layers is tested in test_gui_core.py, what the
user sees of a refusal in test_gui_refusals.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import napari_metalseg
from napari_metalseg._widgets.reader import folder_refusal, get_reader, is_dataset_folder, name_refusal, read_paths
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
    assert not is_dataset_folder(root)
    (root / "phases.json").write_text("not json")  # contents are checked when reading, not when deciding
    assert is_dataset_folder(root) and get_reader(str(root)) is read_paths
    with pytest.raises(MetalsegError, match="phases.json"):
        read_paths(str(root))


def test_every_folder_is_taken_and_a_refused_one_says_why(tmp_path):
    """Declining a folder would let napari say only that the reader "refused the file": the reader takes it and its
    reading says what is wrong, in one line naming the folder."""
    cases = {
        "empty": ([], "the folder is empty"),
        "no_images": (["phases.json"], "dataset folder without images/"),
        "no_phases": (["images/"], "dataset folder without phases.json"),
        "shots": (["a.tif", "b.png", "notes.txt"], "a folder of 2 micrograph file(s), not a metalseg dataset"),
        "other": (["notes.txt", "sub/"], "neither micrographs nor a metalseg dataset"),
    }
    for name, (entries, reason) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        for entry in entries:
            if entry.endswith("/"):
                (folder / entry).mkdir()
            else:
                (folder / entry).write_bytes(b"x")
        assert get_reader(str(folder)) is read_paths, name
        assert folder_refusal(folder).startswith(f"{folder}: {reason}"), folder_refusal(folder)
        with pytest.raises(MetalsegError, match=re.escape(f"{folder}: {reason}")):
            read_paths(str(folder))


def test_paths_declined_by_name_say_why(tmp_path):
    store = tmp_path / "cells.zarr"
    store.mkdir()
    (tmp_path / "scan.czi").write_bytes(b"x")
    assert name_refusal(tmp_path / "gone.tif") == f"{tmp_path / 'gone.tif'}: no such file or folder"
    assert "unsupported file type '.czi'; metalseg reads .tif" in name_refusal(tmp_path / "scan.czi")
    assert "a zarr store" in name_refusal(store)
    assert "a URL" in name_refusal("https://example.org/field.tif")
    (tmp_path / "field.TIF").write_bytes(b"x")  # the name is all that is judged
    assert name_refusal(tmp_path) is None and name_refusal(tmp_path / "field.TIF") is None
    for path in (store, "https://example.org/field.tif"):
        assert get_reader(str(path)) is None


def test_a_list_is_accepted_only_when_every_path_is(tmp_path):
    good, bad = tmp_path / "a.png", tmp_path / "b.txt"
    good.write_bytes(b"x")
    bad.write_bytes(b"x")
    assert get_reader([str(good), str(good)]) is read_paths
    assert get_reader([str(good), str(bad)]) is None
