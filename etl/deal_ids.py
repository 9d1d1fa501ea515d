"""Where deal ids stand in a deals frame, without hashing a million ids again at every call.

The point-in-time rebuild, the booking dates and the training set each look the ids of one frame
up in the ids of the deals frame; the forecast backtest does so dozens of times per quarter with
the same deals. `deal_index` keeps the index (and the hash table it builds) of the latest deal-id
column it was given, recognised by its very array: a frame read once and passed around is hashed
once. A changed column (assigned, edited: pandas then makes a new array) is a new one, hashed anew.

`index_in` and `is_in` look text ids up once: an Arrow hash lookup, two to three times faster than
a pandas index on millions of Arrow-backed ids (which first turns them into Python strings).
"""

from __future__ import annotations

import threading
import weakref

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

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


def arrow_values(values) -> pa.Array:
    """`values` (a Series, Index, array or list) as one Arrow array: a column read from CSV comes
    in several chunks, joined here. Raises pyarrow's error for values of mixed types."""
    array = pa.array(values.array if isinstance(values, (pd.Series, pd.Index)) else values, from_pandas=True)
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def id_ranks(ids) -> np.ndarray | None:
    """Each of `ids` (unique, none missing) numbered by its place in their sorted order (text by
    code point, numbers by value): integers that sort as the ids do. None for ids Arrow cannot
    order (numbers and text mixed in one column)."""
    try:
        order = pc.sort_indices(arrow_values(ids)).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError):
        return None
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(len(order))
    return ranks


def _arrow_text(values) -> pa.Array:
    return pc.cast(arrow_values(values), pa.large_string())


def index_in(values, universe) -> np.ndarray:
    """Position of each of `values` (text ids: a Series, Index, array or list) in `universe`,
    -1 where absent; the first position when `universe` repeats a value. A missing value is found
    where `universe` holds one, as `pd.Index.get_indexer` finds it."""
    found = pc.index_in(_arrow_text(values), value_set=_arrow_text(universe))
    return np.asarray(found.fill_null(-1).to_numpy(zero_copy_only=False), dtype="int64")


def is_in(values, pool) -> np.ndarray:
    """Whether each of `values` (text ids) is among `pool` (repeats allowed), as booleans."""
    found = pc.is_in(_arrow_text(values), value_set=_arrow_text(pool))
    return np.asarray(found.to_numpy(zero_copy_only=False), dtype=bool)


def run_starts(values) -> np.ndarray:
    """Whether each row starts a run of equal values (the first row always does): the first row of
    each deal in a frame grouped by deal. Compared in Arrow, without turning millions of text ids
    into Python strings; a missing value starts a run unless the row before is missing too."""
    text = _arrow_text(values)
    starts = np.ones(len(text), dtype=bool)
    if len(text) > 1:
        before, after = text.slice(0, len(text) - 1), text.slice(1)
        differs = pc.not_equal(after, before)
        either_missing = pc.xor(pc.is_null(after), pc.is_null(before))
        starts[1:] = pc.if_else(pc.is_null(differs), either_missing, differs).to_numpy(zero_copy_only=False)
    return starts


def run_ends(values) -> np.ndarray:
    """Whether each row ends a run of equal values (`run_starts` read from the other end)."""
    starts = run_starts(values)
    return np.append(starts[1:], True) if len(starts) else starts
