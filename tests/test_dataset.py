import numpy as np
import pytest

from napari_metalseg.data.dataset import (
    load_dataset,
    new_dataset,
    read_mask,
    update_metadata,
    write_item,
    write_metadata,
)
from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import PhaseSet


def _image(h=32, w=40, seed=0):
    return np.random.default_rng(seed).random((h, w)).astype(np.float32)


@pytest.fixture
def dataset_dir(tmp_path):
    root = new_dataset(tmp_path / "ds", ["ferrite", "martensite", "bainite"])
    mask = np.full((32, 40), 255, np.uint8)
    mask[:10] = 0
    mask[10:20, :20] = 2
    write_item(root, "a", _image(), mask)
    write_item(root, "b", _image(seed=1), np.ones((32, 40), np.uint8))
    write_item(root, "c", _image(seed=2), None)  # prediction only
    write_metadata(
        root,
        [
            {"name": "a", "magnification": 3000, "pixel_size_um": 0.04, "split": "train", "sample": "S1"},
            {"name": "b", "magnification": 5000, "split": "test"},
        ],
    )
    return root


def test_load_valid_dataset(dataset_dir):
    ds = load_dataset(dataset_dir)
    assert [i.name for i in ds] == ["a", "b", "c"]
    assert ds.phases.names == ["ferrite", "martensite", "bainite"]
    a = ds.item("a")
    assert (a.magnification, a.pixel_size_um, a.split, a.extra["sample"]) == (3000, 0.04, "train", "S1")
    assert ds.item("c").mask_path is None
    assert [i.name for i in ds.split("test")] == ["b"]
    assert len(ds.labelled) == 2
    summary = ds.summary()
    assert summary["images"] == 3 and summary["masks"] == 2
    # labelled pixels: a: 400 ferrite + 200 bainite, b: 1280 martensite
    assert summary["labelled_fraction"]["martensite"] == pytest.approx(1280 / 1880)
    micrograph = a.read_image()
    assert micrograph.shape == (32, 40)
    assert micrograph.magnification == 3000


def test_masks_written_atomically_and_exact(dataset_dir):
    mask = read_mask(dataset_dir / "masks" / "a.png")
    assert mask.dtype == np.uint8
    assert (mask[:10] == 0).all() and (mask[10:20, :20] == 2).all() and (mask[20:] == 255).all()
    assert not [p for p in (dataset_dir / "masks").iterdir() if p.name.startswith(".")]


def test_every_problem_is_listed(dataset_dir):
    write_item(dataset_dir, "d", _image(), None)
    # size mismatch, bad label value, orphan mask, bad metadata
    from napari_metalseg.data.dataset import write_mask

    write_mask(dataset_dir / "masks" / "d.png", np.zeros((10, 10), np.uint8))
    bad = np.zeros((32, 40), np.uint8)
    bad[0, 0] = 7
    write_mask(dataset_dir / "masks" / "b.png", bad)
    write_mask(dataset_dir / "masks" / "orphan.png", np.zeros((4, 4), np.uint8))
    update_metadata(dataset_dir, "a", magnification="abc")
    with pytest.raises(MetalsegError) as err:
        load_dataset(dataset_dir)
    msg = str(err.value)
    assert "4 problem(s)" in msg
    assert "masks/d.png: size 10x10 does not match image 40x32" in msg
    assert "masks/b.png: label values 7" in msg
    assert "masks/orphan.png: no image" in msg
    assert "magnification 'abc'" in msg


def test_require_masks_and_missing_parts(dataset_dir, tmp_path):
    with pytest.raises(MetalsegError, match="images/c.png: has no mask"):
        load_dataset(dataset_dir, require_masks=True)
    (dataset_dir / "phases.json").unlink()
    with pytest.raises(MetalsegError, match="phases.json is missing"):
        load_dataset(dataset_dir)
    with pytest.raises(MetalsegError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    PhaseSet.from_names(["a"]).save(tmp_path / "empty" / "phases.json")
    with pytest.raises(MetalsegError, match="no images"):
        load_dataset(tmp_path / "empty")


def test_new_dataset_refuses_other_phases(dataset_dir):
    with pytest.raises(MetalsegError, match="differ"):
        new_dataset(dataset_dir, ["x", "y"])


def test_write_item_rejects_bad_names_and_shapes(tmp_path):
    with pytest.raises(MetalsegError, match="invalid image name"):
        write_item(tmp_path, "../evil", _image(), None)
    with pytest.raises(MetalsegError, match="shape"):
        write_item(tmp_path, "x", _image(), np.zeros((3, 3), np.uint8))


def test_labelled_split_trains_on_unassigned_images(dataset_dir):
    from napari_metalseg.data.dataset import update_metadata

    ds = load_dataset(dataset_dir)
    assert [i.name for i in ds.labelled_split("train")] == ["a"]
    assert [i.name for i in ds.labelled_split("test")] == ["b"]
    update_metadata(dataset_dir, "b", split="")  # no split: a training image
    ds = load_dataset(dataset_dir)
    assert [i.name for i in ds.labelled_split("train")] == ["a", "b"]  # c has no mask
    assert [i.name for i in ds.labelled_split("all")] == ["a", "b"]
