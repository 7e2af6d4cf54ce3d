"""The embedding cache on disk (napari_metalseg.io.embedding_store) and its command, ``metalseg cache``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from napari_metalseg.cli import main
from napari_metalseg.errors import MetalsegError
from napari_metalseg.io.embedding_store import (
    DEFAULT_MAX_BYTES,
    ENV_DIR,
    ENV_MAX_BYTES,
    EmbeddingStore,
    default_max_bytes,
    default_store,
    default_store_dir,
    format_bytes,
)

KEY = "3f2a9c0d1e-tiny-128-enc-0123abcd-t128-32"


def embedding(seed: int, n: int = 4) -> dict[str, np.ndarray]:
    """``n`` KiB of float32 embeddings."""
    return {"embeddings": np.random.default_rng(seed).standard_normal((n, 256), dtype=np.float32)}


def age(store: EmbeddingStore, key: str, seconds_ago: float) -> None:
    """Set the last use of ``key`` to ``seconds_ago`` (the clock's resolution then plays no part in the LRU order)."""
    when = os.stat(store.path(key)).st_mtime - seconds_ago
    os.utime(store.path(key), (when, when))


def test_round_trip_gives_equal_arrays_dtypes_and_shapes(tmp_path):
    store = EmbeddingStore(tmp_path / "cache")
    arrays = {
        "embeddings": np.random.default_rng(0).standard_normal((2, 8, 4, 4), dtype=np.float32),
        "mask": np.arange(12, dtype=np.uint8).reshape(3, 4),
        "transposed": np.arange(6, dtype=np.int64).reshape(2, 3).T,  # not C-contiguous
    }
    assert store.load(KEY) is None
    store.save(KEY, arrays, metadata={"signature": "tiny-128-enc-0123abcd"})
    back = store.load(KEY)
    assert back is not None and sorted(back) == sorted(arrays)
    for name, array in arrays.items():
        assert back[name].dtype == array.dtype and back[name].shape == array.shape
        np.testing.assert_array_equal(back[name], array)
    assert store.count() == 1
    assert store.size_bytes() == store.path(KEY).stat().st_size > arrays["embeddings"].nbytes
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"{KEY}.safetensors"]  # no temporary file left


def test_save_replaces_the_entry_of_the_same_key(tmp_path):
    store = EmbeddingStore(tmp_path)
    store.save(KEY, embedding(1))
    store.save(KEY, embedding(2))
    assert store.count() == 1
    np.testing.assert_array_equal(store.load(KEY)["embeddings"], embedding(2)["embeddings"])


def test_byte_limit_prunes_the_least_recently_used_and_keeps_the_newest(tmp_path):
    one = EmbeddingStore(tmp_path)
    one.save("a", embedding(0))
    size = one.size_bytes()  # every entry below has the same size
    store = EmbeddingStore(tmp_path, max_bytes=2 * size)
    store.save("b", embedding(1))
    age(store, "a", 300)
    age(store, "b", 200)
    assert store.load("a") is not None  # a use: "a" is now the most recently used, "b" the least
    store.save("c", embedding(2))
    assert store.load("b") is None
    assert store.load("a") is not None and store.load("c") is not None
    assert store.count() == 2 and store.size_bytes() <= 2 * size


def test_an_entry_larger_than_the_limit_is_kept_alone(tmp_path):
    store = EmbeddingStore(tmp_path, max_bytes=100)
    store.save("small", {"x": np.zeros(4, np.float32)})
    age(store, "small", 60)
    store.save("big", embedding(0))
    assert store.count() == 1
    np.testing.assert_array_equal(store.load("big")["embeddings"], embedding(0)["embeddings"])


def test_no_limit_keeps_everything(tmp_path):
    store = EmbeddingStore(tmp_path, max_bytes=None)
    for i in range(5):
        store.save(f"k{i}", embedding(i))
    assert store.count() == 5
    assert store.prune() == 0


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "other key"])
def test_a_damaged_file_is_a_miss_and_is_deleted(tmp_path, damage):
    store = EmbeddingStore(tmp_path)
    store.save(KEY, embedding(0))
    path = store.path(KEY)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 3 + b"not a safetensors file" * 10)
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # an entry renamed to another key
        store.save("other", embedding(1))
        store.path("other").replace(path)
    assert store.load(KEY) is None
    assert not path.exists()
    store.save(KEY, embedding(3))  # the key works again
    np.testing.assert_array_equal(store.load(KEY)["embeddings"], embedding(3)["embeddings"])


def test_clear_removes_only_the_stores_files(tmp_path):
    store = EmbeddingStore(tmp_path)
    store.save("a", embedding(0))
    store.save("b", embedding(1))
    stray = tmp_path / ".a.safetensors.k2x_9q.safetensors"  # a temporary file left by a crash mid-write
    stray.write_bytes(b"\x00" * 100)
    (tmp_path / "damaged.safetensors").write_bytes(b"\x00" * 50)  # an entry that no longer reads: the store's
    foreign = {
        "model.safetensors": None,  # a safetensors file of something else (model weights)
        "notes.txt": b"keep me",
        ".hidden.safetensors": b"not a key",
        "weights.safetensors.bak": b"keep me too",
    }
    save_file({"w": np.ones(3, np.float32)}, str(tmp_path / "model.safetensors"))
    for name, data in foreign.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.safetensors").write_bytes(b"in a sub-folder")
    expected = store.path("a").stat().st_size + store.path("b").stat().st_size + 100 + 50
    assert store.count() == 3 and store.size_bytes() == expected  # the foreign files are not counted

    assert store.clear() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*foreign, "sub"])
    assert (tmp_path / "sub" / "c.safetensors").exists()
    assert store.count() == 0 and store.size_bytes() == 0
    assert store.load("model") is None and (tmp_path / "model.safetensors").exists()  # not the store's: kept
    assert store.clear() == 0


def test_pruning_never_deletes_a_foreign_file(tmp_path):
    save_file({"w": np.ones(1000, np.float32)}, str(tmp_path / "model.safetensors"))
    os.utime(tmp_path / "model.safetensors", (0, 0))  # older than everything
    store = EmbeddingStore(tmp_path, max_bytes=1)
    store.save("a", embedding(0))
    store.save("b", embedding(1))
    assert (tmp_path / "model.safetensors").exists()
    assert store.count() == 1 and store.load("b") is not None


@pytest.mark.parametrize("key", ["", ".hidden", "../escape", "a/b", "a b", "ä", "x" * 201, None])
def test_a_bad_key_is_refused_naming_it(tmp_path, key):
    store = EmbeddingStore(tmp_path)
    with pytest.raises(MetalsegError) as err:
        store.save(key, embedding(0))
    assert repr(key) in str(err.value) and err.value.value == "key"
    with pytest.raises(MetalsegError):
        store.load(key)
    assert list(tmp_path.iterdir()) == []


def test_the_predictors_keys_are_accepted(tmp_path):
    store = EmbeddingStore(tmp_path)
    for key in (f"{'a' * 40}-vit_b-1024-enc-0f1e2d3c-t1024-256", f"{'b' * 40}-tiny-128-enc-99-box12,40,128"):
        store.save(key, embedding(0))
        assert store.load(key) is not None


def test_save_refuses_no_arrays_and_reserved_metadata(tmp_path):
    store = EmbeddingStore(tmp_path)
    with pytest.raises(MetalsegError, match="no arrays"):
        store.save(KEY, {})
    with pytest.raises(MetalsegError, match="reserved"):
        store.save(KEY, embedding(0), metadata={"key": "x"})
    with pytest.raises(MetalsegError, match="max_bytes"):
        EmbeddingStore(tmp_path, max_bytes=-1)


def test_save_into_a_folder_that_cannot_be_made_is_one_error_naming_it(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    store = EmbeddingStore(blocker / "cache")
    with pytest.raises(MetalsegError) as err:
        store.save(KEY, embedding(0))
    assert str(blocker / "cache") in str(err.value)
    assert store.load(KEY) is None and store.count() == 0 and store.clear() == 0


def test_describe_says_folder_count_size_and_limit(tmp_path):
    store = EmbeddingStore(tmp_path, max_bytes=2 << 30)
    assert store.describe() == f"embedding cache {tmp_path}: 0 embeddings, 0 B (limit 2.0 GiB)"
    store.save("a", {"x": np.zeros((1024, 1024), np.float32)})  # 4 MiB and a header
    assert store.describe() == f"embedding cache {tmp_path}: 1 embedding, 4.0 MiB (limit 2.0 GiB)"
    assert store.describe(short=True) == "1 embedding, 4.0 MiB of 2.0 GiB"
    assert EmbeddingStore(tmp_path).describe(short=True) == "1 embedding, 4.0 MiB (no limit)"
    assert [format_bytes(n) for n in (0, 812, 1536, 301.2 * 2**20, 2**31)] == [
        "0 B",
        "812 B",
        "1.5 KiB",
        "301.2 MiB",
        "2.0 GiB",
    ]


def test_a_missing_folder_is_an_empty_store_and_is_not_created(tmp_path):
    store = EmbeddingStore(tmp_path / "nowhere")
    assert store.count() == 0 and store.size_bytes() == 0 and store.clear() == 0 and store.load(KEY) is None
    assert "0 embeddings, 0 B" in store.describe()
    assert not (tmp_path / "nowhere").exists()


def test_default_folder_and_limit_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "mine"))
    monkeypatch.delenv(ENV_MAX_BYTES, raising=False)
    assert default_store_dir() == tmp_path / "mine"
    assert default_max_bytes() == DEFAULT_MAX_BYTES == 2 << 30
    monkeypatch.setenv(ENV_MAX_BYTES, "1000")
    store = default_store()
    assert store.root == tmp_path / "mine" and store.max_bytes == 1000
    monkeypatch.setenv(ENV_MAX_BYTES, "2 GB")
    with pytest.raises(MetalsegError, match=ENV_MAX_BYTES):
        default_max_bytes()
    monkeypatch.delenv(ENV_DIR)
    folder = default_store_dir()
    assert folder.name == "embeddings" and folder.parent.name == "napari-metalseg" and folder.is_absolute()


def test_the_tests_never_use_the_users_cache():
    """tests/conftest.py points every test at its own cache folder."""
    folder = default_store_dir()
    assert os.environ.get(ENV_DIR) and folder == Path(os.environ[ENV_DIR])
    assert not any(folder.iterdir())


def test_the_store_imports_no_torch():
    code = "import sys, napari_metalseg.io.embedding_store, napari_metalseg.cli.cache; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# -- metalseg cache ------------------------------------------------------------------------------------------------


def test_cache_command_shows_and_clears_the_default_store(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_DIR, str(tmp_path))
    monkeypatch.setenv(ENV_MAX_BYTES, str(1 << 30))
    store = default_store()
    store.save("a", embedding(0))
    store.save("b", embedding(1))
    size = store.size_bytes()
    runner = CliRunner()

    shown = runner.invoke(main, ["cache"])
    assert shown.exit_code == 0, shown.output
    assert shown.output.strip() == f"embedding cache {tmp_path}: 2 embeddings, {format_bytes(size)} (limit 1.0 GiB)"
    assert store.count() == 2

    as_json = runner.invoke(main, ["cache", "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output) == {"dir": str(tmp_path), "embeddings": 2, "bytes": size, "max_bytes": 1 << 30}

    cleared = runner.invoke(main, ["cache", "--clear"])
    assert cleared.exit_code == 0, cleared.output
    lines = cleared.output.strip().splitlines()
    assert lines == [
        f"freed {format_bytes(size)} (2 embeddings)",
        f"embedding cache {tmp_path}: 0 embeddings, 0 B (limit 1.0 GiB)",
    ]
    assert store.count() == 0 and list(tmp_path.iterdir()) == []


def test_cache_command_on_another_folder_with_json(tmp_path):
    store = EmbeddingStore(tmp_path / "elsewhere")
    store.save("a", embedding(0))
    (tmp_path / "elsewhere" / "notes.txt").write_text("keep")
    size = store.size_bytes()
    result = CliRunner().invoke(main, ["cache", "--dir", str(tmp_path / "elsewhere"), "--clear", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["freed_bytes"] == size and report["embeddings"] == 0 and report["bytes"] == 0
    assert report["dir"] == str(tmp_path / "elsewhere")
    assert [p.name for p in (tmp_path / "elsewhere").iterdir()] == ["notes.txt"]
    assert default_store().count() == 0  # the default store was not touched


def test_cache_command_with_a_bad_limit_is_one_error_line(monkeypatch):
    monkeypatch.setenv(ENV_MAX_BYTES, "lots")
    result = CliRunner().invoke(main, ["cache"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and ENV_MAX_BYTES in lines[0]


def test_a_clear_during_a_save_is_no_error_and_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.numpy

    store = EmbeddingStore(tmp_path)
    write = safetensors.numpy.save_file
    freed = []

    def write_then_clear(tensors, filename, metadata=None):
        write(tensors, filename, metadata=metadata)
        freed.append(EmbeddingStore(tmp_path).clear())  # another process clears the cache meanwhile

    monkeypatch.setattr(safetensors.numpy, "save_file", write_then_clear)
    store.save(KEY, embedding(0))
    assert freed[0] > 0  # the clear found and removed the temporary file
    assert list(tmp_path.iterdir()) == [] and store.load(KEY) is None
