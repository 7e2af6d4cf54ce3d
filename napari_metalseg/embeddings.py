"""The in-memory cache of tile embeddings: per micrograph, filled tile by tile, least recently used out first.

The :class:`~napari_metalseg.predict.Predictor` keys an entry by the micrograph's content, the encoder signature,
the tile layout and the precision; a whole prediction fills every tile of the entry, a box prompt on a micrograph
not predicted yet only the tiles it needs. The cache is bounded in bytes (the embedding tensors) and in entries.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

DEFAULT_CACHE_BYTES = 1 << 30
"""Default byte bound of the in-memory cache (1 GiB: about 250 vit_b tiles of 1024 px, 40 micrographs of
2048 x 1536)."""


class TileEmbeddings:
    """The embeddings of one micrograph's tiles; tiles not computed yet are missing.

    Importing this module is cheap (torch is imported when a tile is stored).

    Parameters
    ----------
    n_tiles : int
        Number of tiles of the micrograph's :class:`~napari_metalseg.tiles.TileGrid`.
    """

    def __init__(self, n_tiles: int) -> None:
        self.done = np.zeros(n_tiles, bool)
        self.tensor: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        """Bytes held (the whole tile tensor once the first tile is stored)."""
        return 0 if self.tensor is None else self.tensor.numel() * self.tensor.element_size()

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    def missing(self, tiles: Sequence[int]) -> list[int]:
        """Those of ``tiles`` not computed yet, in order."""
        return [int(i) for i in tiles if not self.done[i]]

    def store(self, tiles: Sequence[int], values: torch.Tensor) -> None:
        """Keep ``values[j]`` as the embedding of tile ``tiles[j]``."""
        import torch

        if self.tensor is None:
            self.tensor = torch.empty((len(self.done), *values.shape[1:]), dtype=values.dtype)
        self.tensor[list(tiles)] = values.to(self.tensor.dtype)
        self.done[list(tiles)] = True

    def get(self, tiles: Sequence[int]) -> torch.Tensor:
        """The embeddings of ``tiles`` (all computed), as one (len(tiles), C, h, w) tensor (no copy for all)."""
        if self.missing(tiles):
            raise KeyError(f"tiles {self.missing(tiles)} are not embedded yet")
        if list(tiles) == list(range(len(self.done))):
            return self.tensor
        return self.tensor[list(tiles)]


class EmbeddingCache:
    """Least-recently-used cache of :class:`TileEmbeddings`, bounded in bytes and in micrographs.

    Parameters
    ----------
    max_images : int
        Most micrographs kept (0 keeps none once a prediction ends).
    max_bytes : int
        Most bytes of embeddings kept once a prediction ends.
    """

    def __init__(self, *, max_images: int = 4, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_images = max_images
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, TileEmbeddings] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    @property
    def nbytes(self) -> int:
        """Bytes of embeddings held."""
        return sum(entry.nbytes for entry in self._entries.values())

    def entry(self, key: str, n_tiles: int) -> TileEmbeddings:
        """The entry of ``key`` (created empty when absent), now the most recently used."""
        if key not in self._entries:
            self._entries[key] = TileEmbeddings(n_tiles)
        self._entries.move_to_end(key)
        return self._entries[key]

    def trim(self) -> None:
        """Drop least recently used entries until both bounds hold (an entry larger than ``max_bytes`` alone is
        dropped too: the bound is never exceeded between predictions)."""
        while self._entries and (len(self._entries) > self.max_images or self.nbytes > self.max_bytes):
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
