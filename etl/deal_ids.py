"""Where deal ids stand in a deals frame, without hashing a million ids again at every call.

The point-in-time rebuild, the booking dates and the training set each look the ids of one frame
up in the ids of the deals frame; the forecast backtest does so dozens of times per quarter with
the same deals. `deal_index` keeps the index (and the hash table it builds) of the latest deal-id
column it was given, recognised by its very array: a frame read once and passed around is hashed
once. A changed column (assigned, edited: pandas then makes a new array) is a new one, hashed anew.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np
import pandas as pd

_lock = threading.Lock()
# [weak reference to the deal-id array, its pd.Index]
_latest: list = [None, None]


def deal_index(deals: pd.DataFrame) -> pd.Index:
    """`pd.Index(deals["deal_id"])`, the same object while the column's array is the same."""
    ids = deals["deal_id"]
    array = ids.array
    with _lock:
        ref, index = _latest
        if ref is not None and ref() is array:
            return index
    index = pd.Index(ids)
    try:
        ref = weakref.ref(array)
    except TypeError:  # an array type without weak references: nothing kept
        return index
    with _lock:
        _latest[:] = [ref, index]
    return index


def deal_positions(deals: pd.DataFrame, ids: pd.Series | pd.Index | np.ndarray) -> np.ndarray:
    """The position in `deals` of each of `ids`, -1 where it is not there (`deals.deal_id` unique)."""
    return deal_index(deals).get_indexer(ids)
