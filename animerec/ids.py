"""The id spaces: raw MyAnimeList anime ids and catalog positions (index into the sorted catalog)."""

from __future__ import annotations

import numpy as np


def catalog_positions(catalog_ids: np.ndarray, anime_ids: np.ndarray) -> np.ndarray:
    """Positions of raw anime ids in the sorted catalog ids; -1 where absent (padding included)."""
    anime_ids = np.asarray(anime_ids)
    if len(catalog_ids) == 0:
        return np.full(anime_ids.shape, -1, np.int64)
    pos = np.minimum(np.searchsorted(catalog_ids, anime_ids), len(catalog_ids) - 1)
    return np.where(catalog_ids[pos] == anime_ids, pos, -1)
