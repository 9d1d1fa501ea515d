"""Velocity when no deal is open: the nightly scoring step then scores nothing, and velocity used to
fail with "IndexError: index 0 is out of bounds" on the empty scores.

One deal, worked by hand: created 2024-01-01, won 2024-02-01 for 100 (no stage history), as_of
2024-03-01. Month 2024-02: 1 won, 100 won, cycle 31 days, 0 open deals, so velocity 0 x 100 x 1 / 31
= 0. Month 2024-03 (the as_of's month): nothing happened; the model-weighted pipeline is 0 (no open
deal to weigh), not unknown. Quarter 2024-Q1: the same won deal.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd

from etl.analytics.velocity import velocity
from etl.pipeline_state import prepare_history
from etl.schema import DEAL_COLUMNS, DEAL_HISTORY_COLUMNS, conform, empty_frame
from etl.stages import PipelineStages, StageCatalog

T = pd.Timestamp


def test_velocity_with_no_open_deal_and_no_scores():
    stages = StageCatalog([PipelineStages("Sales", ("Lead", "Proposal"), "Won", "Lost", {"Lead": 0.2, "Proposal": 0.5})])
    deal = {c: pd.NA for c in DEAL_COLUMNS}
    deal.update(
        deal_id="D1", source_system="mapped", source_file="deals.csv", source_row=2, pipeline="Sales",
        owner="Ann", amount=100.0, currency="USD", amount_reporting=100.0, created_at=T("2024-01-01"),
        expected_close_date=T("2024-02-01"), closed_at=T("2024-02-01"), stage="Won", stage_order=3, status="won",
        crm_probability=1.0, last_stage_change_at=T("2024-02-01"), push_count=0, has_history=False,
    )
    deals = conform(pd.DataFrame([deal]), DEAL_COLUMNS, "deals")
    history = prepare_history(deals, empty_frame(DEAL_HISTORY_COLUMNS), stages)
    no_scores = pd.DataFrame({"deal_id": pd.Series([], dtype="string"), "win_probability": pd.Series([], dtype="float64")})

    table = velocity(deals, history, stages, dt.date(2024, 3, 1), model_scores=no_scores)

    rows = table.loc[table["segment_type"] == "all"].set_index("period")
    assert list(rows.index) == ["2024-01", "2024-02", "2024-03", "2024-Q1"]
    february = rows.loc["2024-02"]
    assert (february["won_count"], february["won_amount"], february["open_deals"]) == (1, 100.0, 0)
    assert (february["cycle_days_mean"], february["velocity_per_day"]) == (31.0, 0.0)
    assert rows.loc["2024-03", "open_deals"] == 0 and rows.loc["2024-03", "weighted_pipeline_model"] == 0.0
    assert pd.isna(rows.loc["2024-02", "weighted_pipeline_model"])  # the model weighs the as_of's period only
    assert rows.loc["2024-Q1", "won_count"] == 1
