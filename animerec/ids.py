"""The id spaces: raw MyAnimeList anime ids and catalog positions (index into the sorted catalog),
and membership in any sorted set of ids."""

from __future__ import annotations

import numpy as np


def positions_in(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Index of each key in the sorted array `sorted_keys`; -1 where absent."""
    keys = np.asarray(keys)
    if len(sorted_keys) == 0:
        return np.full(keys.shape, -1, np.int64)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return np.where(sorted_keys[pos] == keys, pos, -1)


def catalog_positions(catalog_ids: np.ndarray, anime_ids: np.ndarray) -> np.ndarray:
    """Positions of raw anime ids in the sorted catalog ids; -1 where absent (padding included)."""
    return positions_in(catalog_ids, anime_ids)
