"""Deal-id positions, with the id index kept while the deals' id column is the same array."""

import numpy as np
import pandas as pd

from etl.deal_ids import deal_index, deal_positions


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
