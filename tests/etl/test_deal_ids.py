"""Deal-id positions, with the id index kept while the deals' id column is the same array."""

import numpy as np
import pandas as pd
import pyarrow as pa

from etl.deal_ids import deal_index, deal_positions, id_ranks, index_in, is_in, run_ends, run_starts


def _deals(ids):
    return pd.DataFrame({"deal_id": pd.Series(ids, dtype="string"), "amount": np.arange(len(ids), dtype=float)})


def test_positions_of_ids_and_minus_one_for_unknown_ones():
    deals = _deals(["d3", "d1", "d2"])
    assert deal_positions(deals, pd.Series(["d1", "d9", "d3", "d1"], dtype="string")).tolist() == [1, -1, 0, 1]


def test_the_index_is_kept_for_the_same_column_and_rebuilt_for_a_changed_one():
    deals = _deals(["d1", "d2"])
    first = deal_index(deals)
    assert deal_index(deals) is first
    # An edited id column is a new array: its index is built again, with the edit.
    deals.loc[1, "deal_id"] = "d7"
    changed = deal_index(deals)
    assert changed is not first
    assert changed.tolist() == ["d1", "d7"]
    assert deal_positions(deals, pd.Series(["d7", "d2"], dtype="string")).tolist() == [1, -1]


def test_another_frame_gets_its_own_index():
    one, other = _deals(["a", "b"]), _deals(["b", "a"])
    assert deal_positions(one, pd.Series(["a"], dtype="string")).tolist() == [0]
    assert deal_positions(other, pd.Series(["a"], dtype="string")).tolist() == [1]
    assert deal_positions(one, pd.Series(["a"], dtype="string")).tolist() == [0]


def test_index_in_finds_text_ids_of_any_container_and_the_first_of_repeats():
    universe = pd.Series(["d2", "d1", "d2", None], dtype="string")
    for values in (
        pd.Series(["d1", "d9", "d2", None], dtype="string"),
        pd.Series(["d1", "d9", "d2", None], dtype=object),
        np.array(["d1", "d9", "d2", None], dtype=object),
        ["d1", "d9", "d2", None],
    ):
        # d2 is first at 0; a missing id is found where the universe holds one (3), as pandas does.
        assert index_in(values, universe).tolist() == [1, -1, 0, 3]
    assert index_in(pd.Index(["d1", "x"]), pd.Index(["x"])).tolist() == [-1, 0]


def test_is_in_answers_membership_with_repeats_in_the_pool():
    pool = pd.Series(["a", "a", "c"], dtype="string")
    assert is_in(pd.Series(["c", "b", "a", "A"], dtype="string"), pool).tolist() == [True, False, True, False]
    assert is_in(pd.Series([], dtype="string"), pool).tolist() == []


def test_runs_of_equal_ids_start_and_end_where_the_id_changes():
    ids = pd.Series(["a", "a", "b", None, None, "c", "a"], dtype="string")
    # A second run of "a" after "c" is a run of its own: rows are compared with their neighbour only.
    assert run_starts(ids).tolist() == [True, False, True, True, False, True, True]
    assert run_ends(ids).tolist() == [False, True, True, False, True, True, True]
    assert run_starts(["x"]).tolist() == [True] and run_ends(pd.Series([], dtype="string")).tolist() == []


def test_ids_read_in_several_chunks_are_looked_up_as_one_column():
    # pyarrow's CSV reader hands a column over in blocks; pandas keeps them as chunks.
    chunked = pd.Series(pd.arrays.ArrowExtensionArray(pa.chunked_array([["d1", "d2"], ["d2", "d3"]])))
    universe = pd.Series(pd.arrays.ArrowExtensionArray(pa.chunked_array([["d3"], ["d2", "d1"]])))
    assert index_in(chunked, universe).tolist() == [2, 1, 1, 0]
    assert is_in(chunked, universe.iloc[:1]).tolist() == [False, False, False, True]
    assert run_starts(chunked).tolist() == [True, True, False, True]


def test_id_ranks_number_ids_in_their_sorted_order():
    assert id_ranks(pd.Index(["D9", "D10", "Ä1", "B2"])).tolist() == [2, 1, 3, 0]  # text by code point
    assert id_ranks(pd.Series([30, 4, 100])).tolist() == [1, 0, 2]  # numbers by value, not as text
    assert id_ranks(pd.Index([7, "A"], dtype=object)) is None  # numbers and text mixed: no order here
