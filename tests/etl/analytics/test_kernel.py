"""The analytics kernel on tiny hand-built data: the deals as they stood at the end of as_of (the
frame the graph stores and the arrays the tables read), frames shaped as the warehouse contract,
percentiles and ratios, and that the table modules use only the kernel's public names. Every
expected number is worked out in the comments.

Pipeline Sales: open stages Lead (1), Proposal (2); Won (3), Lost (4). as_of 2024-03-01.
  A  created 01-01 in Lead at 100 (close expected 03-31), Proposal 02-01 at 150, won 03-10 at 150:
     at the end of 03-01 it is open in Proposal at 150, expected to close 03-31.
  B  created 01-05 in Lead at 200, lost 02-10 (the CRM's close date 02-09): lost, closed 02-10,
     booked 02-09 (the CRM close date is on or before as_of).
  C  created 03-05: it did not exist yet.
"""

from __future__ import annotations

import ast
import datetime as dt
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from etl.analytics.kernel import (
    LOST,
    OPEN,
    deals_as_of,
    deals_at_as_of,
    empty_table,
    grouped_percentiles,
    safe_ratio,
    table_frame,
)
from etl.pipeline_state import prepare_history
from etl.schema import DEAL_COLUMNS, DEAL_HISTORY_COLUMNS
from etl.stages import PipelineStages, StageCatalog
from tests.etl.hand_frames import canonical

T = pd.Timestamp
AS_OF = dt.date(2024, 3, 1)
CATALOG = StageCatalog([PipelineStages("Sales", ("Lead", "Proposal"), "Won", "Lost", {"Lead": 0.1, "Proposal": 0.5})])
DEAL_DEFAULTS = dict(source_system="salesforce", source_file="Opportunity.csv", pipeline="Sales", currency="USD",
                     push_count=0, has_history=True)


def _crm() -> tuple[pd.DataFrame, pd.DataFrame]:
    deals = canonical(
        [
            dict(deal_id="A", source_row=2, created_at=T("2024-01-01"), stage="Won", stage_order=3, status="won",
                 amount=150.0, amount_reporting=150.0, expected_close_date=T("2024-03-31"), closed_at=T("2024-03-10"),
                 crm_close_date=T("2024-03-10"), last_stage_change_at=T("2024-03-10")),
            dict(deal_id="B", source_row=3, created_at=T("2024-01-05"), stage="Lost", stage_order=4, status="lost",
                 amount=200.0, amount_reporting=200.0, expected_close_date=T("2024-02-09"), closed_at=T("2024-02-10"),
                 crm_close_date=T("2024-02-09"), last_stage_change_at=T("2024-02-10")),
            dict(deal_id="C", source_row=4, created_at=T("2024-03-05"), stage="Lead", stage_order=1, status="open",
                 amount=50.0, amount_reporting=50.0, expected_close_date=T("2024-06-30"),
                 last_stage_change_at=T("2024-03-05")),
        ],
        DEAL_COLUMNS, DEAL_DEFAULTS, "deals",
    )
    rows = [
        ("A", "2024-01-01", "Lead", 100.0, "2024-03-31"),
        ("A", "2024-02-01", "Proposal", 150.0, "2024-03-31"),
        ("A", "2024-03-10", "Won", 150.0, "2024-03-10"),
        ("B", "2024-01-05", "Lead", 200.0, "2024-02-09"),
        ("B", "2024-02-10", "Lost", 200.0, "2024-02-09"),
        ("C", "2024-03-05", "Lead", 50.0, "2024-06-30"),
    ]
    history = canonical(
        [
            dict(deal_id=d, changed_at=T(at), source_row=i + 2, stage=stage, amount=amount, amount_reporting=amount,
                 expected_close_date=T(close))
            for i, (d, at, stage, amount, close) in enumerate(rows)
        ],
        DEAL_HISTORY_COLUMNS, dict(source_file="OpportunityHistory.csv", currency="USD"), "history",
    )
    return deals, prepare_history(deals, history, CATALOG)


@pytest.fixture(scope="module")
def crm():
    return _crm()


def test_deals_at_as_of_is_each_existing_deal_as_it_stood_at_the_end_of_as_of(crm):
    frame = deals_at_as_of(*crm, AS_OF)
    assert list(frame["deal_id"]) == ["A", "B"]  # C was created after as_of
    assert list(frame["status"]) == ["open", "lost"]  # A's win on 03-10 is not known yet
    assert list(frame["stage_order"]) == [2.0, 4.0]
    assert list(frame["amount_reporting"]) == [150.0, 200.0]
    assert frame["expected_close_date"].iloc[0] == T("2024-03-31")
    assert pd.isna(frame["closed_at"].iloc[0]) and pd.isna(frame["booked_at"].iloc[0])
    assert frame["closed_at"].iloc[1] == T("2024-02-10") and frame["booked_at"].iloc[1] == T("2024-02-09")
    assert (frame["as_of"] == AS_OF).all()


def test_the_arrays_the_tables_read_are_the_same_from_a_stored_frame_as_from_a_rebuild(crm):
    deals, history = crm
    buffer = io.BytesIO()
    deals_at_as_of(deals, history, AS_OF).to_parquet(buffer)  # as the intermediate-data store keeps it
    stored = deals_as_of(deals, history, AS_OF, pd.read_parquet(io.BytesIO(buffer.getvalue())))
    rebuilt = deals_as_of(deals, history, AS_OF)
    for now in (stored, rebuilt):
        assert list(now.frame["deal_id"]) == ["A", "B"]
        assert list(now.status) == [OPEN, LOST]
        assert list(now.amount) == [150.0, 200.0] and list(now.stage_order) == [2, 4]
        assert list(now.existing_row) == [0, 1, -1]  # per row of deals: C does not exist yet
        # History rows: A x3, B x2, C x1 (prepare_history keeps them grouped by deal).
        assert list(now.history_existing) == [0, 0, 0, 1, 1, -1]
        assert list(now.created_at) == [np.datetime64("2024-01-01"), np.datetime64("2024-01-05")]


def test_a_frame_for_another_night_or_other_deals_is_refused(crm):
    deals, history = crm
    other_night = deals_at_as_of(deals, history, dt.date(2024, 2, 1))
    with pytest.raises(ValueError, match=r"row 0, column as_of: the frame is for 2024-02-01, expected 2024-03-01"):
        deals_as_of(deals, history, AS_OF, other_night)
    stranger = deals_at_as_of(deals, history, AS_OF).assign(deal_id=["A", "Z"])
    with pytest.raises(ValueError, match=r"row 1, column deal_id: deal 'Z' is not in deals"):
        deals_as_of(deals, history, AS_OF, stranger)
    with pytest.raises(KeyError, match=r"missing column\(s\) \['booked_at'\]"):
        deals_as_of(deals, history, AS_OF, deals_at_as_of(deals, history, AS_OF).drop(columns="booked_at"))


def test_table_frame_follows_the_contract_types():
    # pipeline_snapshots: snapshot_date is a DATE, stage_order a nullable INTEGER, open_deals a BIGINT.
    names = [c for c in empty_table("pipeline_snapshots", AS_OF).columns if c != "as_of"]
    data = {c: np.array(["x", "y"], dtype=object) for c in names}
    data.update(
        snapshot_date=np.array(["2024-01-31", "2024-02-29"], dtype="datetime64[us]"),
        stage_order=np.array([2.0, np.nan]),
        open_deals=np.array([3, 4]),
        pipeline_value=np.array([10.0, 20.0]),
        weighted_pipeline_crm=np.array([1.0, np.nan]),
        stalled_deals=np.array([0, 1]),
        aged_deals=np.array([1, 0]),
    )
    frame = table_frame("pipeline_snapshots", data, AS_OF)
    assert str(frame["stage_order"].dtype) == "Int64" and frame["stage_order"].isna().tolist() == [False, True]
    assert str(frame["snapshot_date"].dtype).startswith("datetime64")
    assert str(frame["open_deals"].dtype) == "int64" and str(frame["segment"].dtype) == "string"
    assert list(frame["as_of"]) == [AS_OF, AS_OF]
    del data["aged_deals"]
    with pytest.raises(KeyError, match="table pipeline_snapshots: no values computed for column 'aged_deals'"):
        table_frame("pipeline_snapshots", data, AS_OF)


def test_grouped_percentiles_and_ratios_by_hand():
    # Group 0: 4, 1, 3, 2 -> sorted 1 2 3 4; median at 1.5 -> 2.5, p90 at 2.7 -> 3 + 0.7 = 3.7.
    # Group 1: 10 alone -> 10 and 10. Group 2: empty -> NULL.
    groups = np.array([0, 0, 1, 0, 0])
    values = np.array([4.0, 1.0, 10.0, 3.0, 2.0])
    out = grouped_percentiles(groups, values, 3, (0.5, 0.9))
    assert out[0].tolist() == pytest.approx([2.5, 3.7])
    assert out[1].tolist() == [10.0, 10.0]
    assert np.isnan(out[2]).all()
    # 1/2; x/0, NaN/x and x/NaN are NULL.
    ratio = safe_ratio(np.array([1.0, 2.0, np.nan, 3.0]), np.array([2.0, 0.0, 1.0, np.nan]))
    assert ratio[0] == 0.5 and np.isnan(ratio[1:]).all()


def test_table_modules_import_only_public_names_and_no_other_table_module():
    package = Path(__file__).resolve().parents[3] / "etl" / "analytics"
    for module in ("funnel", "velocity", "coaching", "health"):
        tree = ast.parse((package / f"{module}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("etl"):
                private = [alias.name for alias in node.names if alias.name.startswith("_")]
                assert not private, f"etl/analytics/{module}.py imports private {private} from {node.module}"
                if node.module.startswith("etl.analytics"):
                    assert node.module == "etl.analytics.kernel", f"etl/analytics/{module}.py imports {node.module}"
