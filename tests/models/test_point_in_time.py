"""No training snapshot uses information dated after its prediction date, checked row by row on
generated data.

The synthetic CRM can be exported as it stood on any day (`make_crm(..., as_of=day)`: only the
history rows written by the end of that day, and each deal's stage, status and close date as they
were then). A snapshot at Monday 00:00 t may use only what an export taken at the end of the
Sunday before shows, restricted to the deals created before t. So for every training row of a
sample of prediction dates, the features computed from that earlier export must be exactly the
training row's features: a feature that peeked at a later stage move, amount, close date or
outcome (of this deal, or of the owner's, product's or account's other deals) would differ.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from etl.pipeline_state import prepare_history
from models.training_set import CONTEXT_COLUMNS, snapshot_features
from tests.models.synthetic import CATALOG, make_crm

# The shared synthetic world of tests/models/conftest.py (make_crm(1500, seed=1), as_of 2024-12-31).
N_DEALS, SEED = 1500, 1


@pytest.fixture(scope="module")
def full_export(training):
    return training


def _export_before(t: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The same CRM as exported at the end of the day before `t` (t is a midnight)."""
    day_before = (t - pd.Timedelta(days=1)).date().isoformat()
    deals, history = make_crm(N_DEALS, seed=SEED, as_of=day_before)
    assert (deals["created_at"] < t).all() and (history["changed_at"] < t).all()
    return deals, prepare_history(deals, history, CATALOG)


def _mismatched_columns(rows: pd.DataFrame, then: pd.DataFrame, columns: list[str]) -> list[str]:
    """Columns whose values differ between two frames indexed by the same deal ids."""
    differing = []
    for column in columns:
        if pd.api.types.is_numeric_dtype(rows[column]):
            a, b = rows[column].to_numpy(dtype=float), then[column].to_numpy(dtype=float)
            same = np.isclose(a, b, rtol=0, atol=1e-9) | (np.isnan(a) & np.isnan(b))
        else:
            same = rows[column].astype("string").fillna("<NA>").to_numpy() == then[column].astype("string").fillna("<NA>").to_numpy()
        if not bool(np.all(same)):
            differing.append(column)
    return differing


def _rows_and_export(full_export, t: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = full_export.frame
    rows = frame.loc[(frame["snapshot_at"] == t) & (frame["snapshot_kind"] == "scheduled")].set_index("deal_id").sort_index()
    deals_then, history_then = _export_before(t)
    then = snapshot_features(deals_then, history_then, CATALOG, t).set_index("deal_id")
    # Every labelled deal open at t was open in the export of that day (censored ones too).
    assert set(rows.index) <= set(then.index), f"{t}: deals in the training set not open in that day's export"
    return rows, then.loc[rows.index]


def test_every_snapshot_row_is_what_an_export_of_that_day_shows(full_export):
    frame = full_export.frame
    dates = sorted(frame.loc[frame["snapshot_kind"] == "scheduled", "snapshot_at"].unique())
    assert len(dates) > 100
    # Twelve prediction dates spread over the history, from the first months to the last.
    chosen = [pd.Timestamp(dates[i]) for i in np.linspace(2, len(dates) - 1, 12).astype(int)]
    columns = [*full_export.feature_names, *[c for c in CONTEXT_COLUMNS if c not in full_export.feature_names]]
    assert {"stage", "days_in_stage", "stage_moves", "close_pushes", "owner_prior_win_rate"} <= set(columns)
    checked = 0
    for t in chosen:
        rows, then = _rows_and_export(full_export, t)
        assert _mismatched_columns(rows, then, columns) == [], f"snapshot {t:%Y-%m-%d} uses later information"
        checked += len(rows)
    assert checked > 400


def test_the_check_notices_a_feature_from_the_future(full_export):
    """The tripwire itself: a training row whose stage-move count covers the deal's whole life (a
    leak) instead of the moves before the snapshot is caught by the same comparison."""
    deals, history = make_crm(N_DEALS, seed=SEED)
    frame = full_export.frame
    t = pd.Timestamp(sorted(frame.loc[frame["snapshot_kind"] == "scheduled", "snapshot_at"].unique())[60])
    rows, then = _rows_and_export(full_export, t)
    leaky = rows.assign(stage_moves=(history.groupby("deal_id").size() - 1).reindex(rows.index).astype(float))
    assert _mismatched_columns(leaky, then, ["stage", "stage_moves"]) == ["stage_moves"]
