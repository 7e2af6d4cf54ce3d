"""The embedding cache on disk: image-encoder outputs kept between sessions, bounded in bytes.

GUI-free and torch-free (arrays are numpy, files are safetensors). One file per cached entry, named by its key (the
image's content and the encoder's signature, made by the predictor)::

    <root>/<key>.safetensors      the arrays, with {"metalseg": FORMAT, "key": <key>, ...} as safetensors metadata

Files are written atomically (:mod:`napari_metalseg.io.atomic`); a file that cannot be read back (truncated,
damaged) is deleted when found and counts as a miss. Each :meth:`EmbeddingStore.save` prunes the folder to
``max_bytes``, least recently used first (a :meth:`~EmbeddingStore.load` counts as a use: it touches the file's
modification time). The store only ever deletes its own files: ``<key>.safetensors`` whose metadata is the store's
(or which is not a readable safetensors file at all) and the temporary files of its atomic writes; a safetensors
file of something else in the folder (model weights) is never counted, pruned or cleared.

The default folder is :func:`default_store_dir` (``$METALSEG_CACHE_DIR``, else the platform's user cache folder),
its default bound :func:`default_max_bytes` (``$METALSEG_CACHE_MAX_BYTES``, else :data:`DEFAULT_MAX_BYTES`).
``metalseg cache`` shows or clears it; so does the Predict tab.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_metalseg.errors import MetalsegError

ENV_DIR = "METALSEG_CACHE_DIR"
"""Environment variable: the embedding cache folder (default: see :func:`default_store_dir`)."""
ENV_MAX_BYTES = "METALSEG_CACHE_MAX_BYTES"
"""Environment variable: the byte bound of the default store (a whole number of bytes)."""
DEFAULT_MAX_BYTES = 2 << 30
"""Byte bound of the default store: 2 GiB."""
SUFFIX = ".safetensors"
FORMAT = "embeddings-1"
"""Value of the ``metalseg`` metadata entry of every file the store writes."""
MAX_KEY_CHARS = 200
_KEY = re.compile(r"[A-Za-z0-9_,-][A-Za-z0-9._,-]*")
# atomic_path's temporary file for <key>.safetensors: .<key>.safetensors.<mkstemp's random part>.safetensors
_TEMP = re.compile(r"\.[A-Za-z0-9_,-][A-Za-z0-9._,-]*\.safetensors\.[A-Za-z0-9_]+\.safetensors")
_RESERVED_METADATA = ("metalseg", "key")


def default_store_dir() -> Path:
    """The embedding cache folder: ``$METALSEG_CACHE_DIR`` when set, else ``<user cache dir>/napari-metalseg/
    embeddings`` (``~/.cache`` on Linux, ``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%`` on Windows)."""
    env = os.environ.get(ENV_DIR, "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs

    return platformdirs.user_cache_path("napari-metalseg", appauthor=False) / "embeddings"


def default_max_bytes() -> int:
    """The byte bound of the default store: ``$METALSEG_CACHE_MAX_BYTES`` when set, else :data:`DEFAULT_MAX_BYTES`.

    Raises
    ------
    MetalsegError
        The variable is not a whole number of bytes >= 0.
    """
    env = os.environ.get(ENV_MAX_BYTES, "").strip()
    if not env:
        return DEFAULT_MAX_BYTES
    try:
        value = int(env)
    except ValueError:
        value = -1
    if value < 0:
        raise MetalsegError(f"{ENV_MAX_BYTES}={env!r}: must be a whole number of bytes >= 0 (e.g. {DEFAULT_MAX_BYTES})")
    return value


def default_store() -> EmbeddingStore:
    """The store in :func:`default_store_dir` bounded by :func:`default_max_bytes` (what the CLI and the GUI show)."""
    return EmbeddingStore(default_store_dir(), max_bytes=default_max_bytes())


def format_bytes(n: int) -> str:
    """A byte count for people: ``"0 B"``, ``"812 B"``, ``"1.5 KiB"``, ``"301.2 MiB"``, ``"2.0 GiB"``."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


@dataclass(frozen=True)
class _Entry:
    path: Path
    size: int
    mtime_ns: int


class EmbeddingStore:
    """A folder of cached embeddings, one safetensors file per key, bounded in bytes.

    Parameters
    ----------
    root : path
        The folder; created on the first :meth:`save` (reading a missing folder finds an empty store).
    max_bytes : int, optional
        Bound on the bytes of the cached files, enforced after each :meth:`save` by deleting the least recently used
        (never the file just written, so one entry larger than the bound is kept alone). None: no bound.

    Raises
    ------
    MetalsegError
        ``max_bytes`` is negative.
    """

    def __init__(self, root: str | Path, *, max_bytes: int | None = None) -> None:
        if max_bytes is not None and (isinstance(max_bytes, bool) or int(max_bytes) != max_bytes or max_bytes < 0):
            raise MetalsegError(f"max_bytes {max_bytes!r}: must be a whole number of bytes >= 0 (or None)")
        self.root = Path(root).expanduser()
        self.max_bytes = None if max_bytes is None else int(max_bytes)

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.root)!r}, max_bytes={self.max_bytes!r})"

    # -- entries ---------------------------------------------------------------------------------------------------
    def path(self, key: str) -> Path:
        """The file of ``key``.

        Raises
        ------
        MetalsegError
            ``key`` has characters other than letters, digits and ``. _ , -``, starts with ``.`` or is longer than
            :data:`MAX_KEY_CHARS`.
        """
        if not isinstance(key, str) or len(key) > MAX_KEY_CHARS or not _KEY.fullmatch(key):
            raise MetalsegError(
                f"embedding cache key {key!r}: must be 1 to {MAX_KEY_CHARS} letters, digits or '._,-', "
                "not starting with '.'",
                value="key",
            )
        return self.root / f"{key}{SUFFIX}"

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays saved under ``key``, or None when there are none.

        A file that cannot be read back as the store's (truncated, damaged, another key's) is deleted and None is
        returned. A hit touches the file, so that pruning keeps it longest.

        Raises
        ------
        MetalsegError
            A bad key (see :meth:`path`); never a damaged file.
        """
        from safetensors import safe_open

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="np") as fh:
                metadata = fh.metadata() or {}
                if metadata.get("metalseg") != FORMAT:
                    return None  # a safetensors file of something else: not the store's to delete
                if metadata.get("key") != key:
                    raise ValueError(f"{path.name} holds the key {metadata.get('key')!r}")
                arrays = {name: fh.get_tensor(name) for name in fh.keys()}
        except OSError:
            return None  # cleared meanwhile, or not readable
        except Exception:  # safetensors raises its own error type: any damaged file is a miss
            _unlink(path)
            return None
        try:
            os.utime(path)
        except OSError:
            pass
        return arrays

    def save(self, key: str, arrays: Mapping[str, np.ndarray], *, metadata: Mapping[str, str] | None = None) -> None:
        """Save ``arrays`` under ``key`` (atomically, replacing what was there), then prune to ``max_bytes``.

        Parameters
        ----------
        key : str
            Letters, digits and ``. _ , -`` (see :meth:`path`).
        arrays : mapping of str to numpy.ndarray
            Saved as they are (dtype and shape); at least one.
        metadata : mapping of str to str, optional
            Kept in the file's safetensors metadata (e.g. the model signature), besides the store's own entries
            ``metalseg`` and ``key``, which it may not use.

        Raises
        ------
        MetalsegError
            A bad key, no arrays, a reserved metadata name, or a file that cannot be written (naming the folder).
            A :meth:`clear` during the write is no error: nothing is saved.
        """
        from safetensors.numpy import save_file

        from napari_metalseg.io.atomic import atomic_path

        path = self.path(key)
        if not arrays:
            raise MetalsegError(f"embedding cache key {key!r}: no arrays to save", value="arrays")
        extra = dict(metadata or {})
        reserved = sorted(set(extra) & set(_RESERVED_METADATA))
        if reserved:
            raise MetalsegError(f"embedding cache metadata {reserved}: reserved by the store", value="metadata")
        tensors = {str(name): np.ascontiguousarray(array) for name, array in arrays.items()}
        meta = {**{str(k): str(v) for k, v in extra.items()}, "metalseg": FORMAT, "key": key}
        try:
            with atomic_path(path) as tmp:
                save_file(tensors, str(tmp), metadata=meta)
        except FileNotFoundError:
            if self.root.is_dir():
                return  # the temporary file was cleared during the write
            raise MetalsegError(f"embedding cache {self.root}: cannot write {path.name} (the folder is gone)") from None
        except OSError as exc:
            raise MetalsegError(f"embedding cache {self.root}: cannot write {path.name} ({exc})") from exc
        self.prune(keep=path)

    def prune(self, *, keep: Path | None = None) -> int:
        """Delete the least recently used files until the store holds at most ``max_bytes`` (nothing without a
        bound); never ``keep``. Returns the bytes freed."""
        if self.max_bytes is None:
            return 0
        entries = sorted(self._entries(), key=lambda e: (e.mtime_ns, e.path.name))
        total = sum(e.size for e in entries)
        freed = 0
        for entry in entries:
            if total <= self.max_bytes:
                break
            if entry.path == keep:
                continue
            if _unlink(entry.path):
                total -= entry.size
                freed += entry.size
        return freed

    # -- the whole store -------------------------------------------------------------------------------------------
    def count(self) -> int:
        """Number of cached entries."""
        return sum(1 for _ in self._entries())

    def size_bytes(self) -> int:
        """Bytes of the store's files on disk (entries and leftover temporary files)."""
        return sum(e.size for e in self._entries()) + sum(e.size for e in self._temps())

    def clear(self) -> int:
        """Delete every entry and temporary file of the store (nothing else in the folder); returns the bytes freed.

        A file that cannot be deleted (in use on Windows) is left and not counted.
        """
        freed = 0
        for entry in [*self._entries(), *self._temps()]:
            if _unlink(entry.path):
                freed += entry.size
        return freed

    def describe(self, *, short: bool = False) -> str:
        """One line: ``"embedding cache /path: 12 embeddings, 301.2 MiB (limit 2.0 GiB)"``; ``short``: without the
        folder, ``"12 embeddings, 301.2 MiB of 2.0 GiB"``."""
        entries = list(self._entries())
        n = len(entries)
        size = format_bytes(sum(e.size for e in entries) + sum(e.size for e in self._temps()))
        what = f"{n} embedding{'' if n == 1 else 's'}, {size}"
        if short:
            return f"{what} (no limit)" if self.max_bytes is None else f"{what} of {format_bytes(self.max_bytes)}"
        limit = "no limit" if self.max_bytes is None else f"limit {format_bytes(self.max_bytes)}"
        return f"embedding cache {self.root}: {what} ({limit})"

    # -- listing ---------------------------------------------------------------------------------------------------
    def _files(self) -> Iterator[os.DirEntry]:
        try:
            with os.scandir(self.root) as it:
                yield from (entry for entry in it if entry.name.endswith(SUFFIX))
        except (FileNotFoundError, NotADirectoryError):
            return

    def _entries(self) -> Iterator[_Entry]:
        for entry in self._files():
            key = entry.name[: -len(SUFFIX)]
            if len(key) > MAX_KEY_CHARS or not _KEY.fullmatch(key):
                continue
            found = _stat(entry)
            if found is not None and _is_own(found.path, key):
                yield found

    def _temps(self) -> Iterator[_Entry]:
        for entry in self._files():
            if _TEMP.fullmatch(entry.name):
                found = _stat(entry)
                if found is not None:
                    yield found


def _stat(entry: os.DirEntry) -> _Entry | None:
    try:
        if not entry.is_file(follow_symlinks=False):
            return None
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return None
    return _Entry(Path(entry.path), st.st_size, st.st_mtime_ns)


def _is_own(path: Path, key: str) -> bool:
    """Whether the store may count and delete ``path``: its metadata is the store's for ``key``, or it is no
    readable safetensors file (a damaged entry); a readable safetensors file of anything else is not the store's."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as fh:
            metadata = fh.metadata() or {}
    except OSError:
        return False  # gone, or not ours to read
    except Exception:  # safetensors' own error: no readable safetensors file, a damaged entry of the store
        return True
    return metadata.get("metalseg") == FORMAT and metadata.get("key") == key


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except OSError:  # gone already, or in use (Windows)
        return False
    return True
