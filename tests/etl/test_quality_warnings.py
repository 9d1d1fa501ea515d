"""The data-quality warnings on a hand-built CRM whose every count is worked out below.

Pipelines N (open stages A, B) and M (open stage A), as_of 2024-06-30 (to 23:59:59.999999).
Wins (amount): largest win 10,000.
  w1 N 10000  created 01-02 09:00, A; B 02-01; won 03-01 09:00               (a real cycle)
  w2 N  2000  created 04-02 10:00, won 04-02 10:30                           keyed in at close (30 min)
  w3 N  3000  created 03-01 09:00, A; B 05-10 09:00; won 05-10 10:00         last stage 60 min before the win
  w4 M  1000  created 02-01 09:00, A; won 05-02 09:00, CRM close date 07-15 after as_of (booked 05-02)
Losses:
  l1 N 500000 created 02-01, lost 04-01                                      50x the largest win (outlier)
  l2 M   400  created 01-15, A; won 03-01; re-opened in A 03-10; lost 04-20  Closed Won -> A: contradictory
Open (expected close date, age):
  o1 N 4000  created 01-10, A, expected 05-31                                overdue
  o2 N 5000  created 05-01, B, expected 04-15 (before creation)              overdue, close before creation
  o3 N 200000 created 06-01, A, expected 09-30                               20x the largest win (outlier)
  o4 M  700  created 06-20, A, expected 08-31
  o5 M  800  created 06-25, A, expected 06-01 (before creation)              overdue, close before creation
Stalled deals (the stalled_deals table, given): o1 and o2 in N; o4 in M.

Wins: 4; keyed in at close w2 (created 30 minutes before the win) and w3 (last stage entered 60
minutes before the win): 2 of 4 = 50% > 20% -> fires; N 2 of 3, M 0 of 1.
Overdue: o1, o2, o5 = 3 of 5 open (60% > 25%) -> fires; N 2 of 3, M 1 of 2.
Close before creation: o2, o5 -> fires (any).
Outliers (> 3 x 10,000): l1 (500,000) and o3 (200,000) of 7 open or lost -> fires.
Contradictory: l2 -> fires; 1 of 11 deals with history.
Mostly stalled: N 2 of 3 open (66.7% > 50%) fires; M 1 of 2 (50%, not above) does not; all fires.
Future close date: w4 -> fires; 1 of 6 closed.
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from etl.cli import RunSummary, _warning_lines
from etl.config import ConfigError, WarningsConfig, load_project_config
from etl.pipeline_state import prepare_history
from etl.quality_warnings import data_quality_warnings
from etl.schema import DEAL_COLUMNS, DEAL_HISTORY_COLUMNS
from etl.stages import PipelineStages, StageCatalog
from etl.tables import TABLES
from tests.etl.hand_frames import canonical

T = pd.Timestamp
AS_OF = dt.date(2024, 6, 30)
WON, LOST = "Closed Won", "Closed Lost"
CATALOG = StageCatalog([PipelineStages("N", ("A", "B")), PipelineStages("M", ("A",))])

DEALS = [
    # deal, pipeline, amount, created, stage, status, expected close, crm close date
    ("w1", "N", 10000, "2024-01-02 09:00", WON, "won", "2024-03-01", "2024-03-01"),
    ("w2", "N", 2000, "2024-04-02 10:00", WON, "won", "2024-04-02", "2024-04-02"),
    ("w3", "N", 3000, "2024-03-01 09:00", WON, "won", "2024-05-10", "2024-05-10"),
    ("w4", "M", 1000, "2024-02-01 09:00", WON, "won", "2024-07-15", "2024-07-15"),
    ("l1", "N", 500000, "2024-02-01 00:00", LOST, "lost", "2024-04-01", "2024-04-01"),
    ("l2", "M", 400, "2024-01-15 00:00", LOST, "lost", "2024-04-20", "2024-04-20"),
    ("o1", "N", 4000, "2024-01-10 00:00", "A", "open", "2024-05-31", None),
    ("o2", "N", 5000, "2024-05-01 00:00", "B", "open", "2024-04-15", None),
    ("o3", "N", 200000, "2024-06-01 00:00", "A", "open", "2024-09-30", None),
    ("o4", "M", 700, "2024-06-20 00:00", "A", "open", "2024-08-31", None),
    ("o5", "M", 800, "2024-06-25 00:00", "A", "open", "2024-06-01", None),
]
EVENTS = [
    ("w1", "2024-01-02 09:00", "A"), ("w1", "2024-02-01 09:00", "B"), ("w1", "2024-03-01 09:00", WON),
    ("w2", "2024-04-02 10:00", "A"), ("w2", "2024-04-02 10:30", WON),
    ("w3", "2024-03-01 09:00", "A"), ("w3", "2024-05-10 09:00", "B"), ("w3", "2024-05-10 10:00", WON),
    ("w4", "2024-02-01 09:00", "A"), ("w4", "2024-05-02 09:00", WON),
    ("l1", "2024-02-01 00:00", "A"), ("l1", "2024-04-01 00:00", LOST),
    ("l2", "2024-01-15 00:00", "A"), ("l2", "2024-03-01 00:00", WON), ("l2", "2024-03-10 00:00", "A"), ("l2", "2024-04-20 00:00", LOST),
    ("o1", "2024-01-10 00:00", "A"), ("o2", "2024-05-01 00:00", "B"), ("o3", "2024-06-01 00:00", "A"),
    ("o4", "2024-06-20 00:00", "A"), ("o5", "2024-06-25 00:00", "A"),
]


@pytest.fixture(scope="module")
def warnings_table() -> pd.DataFrame:
    deals = pd.DataFrame(DEALS, columns=["deal_id", "pipeline", "amount", "created_at", "stage", "status", "expected_close_date", "crm_close_date"])
    for column in ("created_at", "expected_close_date", "crm_close_date"):
        deals[column] = pd.to_datetime(deals[column])
    deals["amount"] = deals["amount"].astype(float)
    deals["amount_reporting"] = deals["amount"]
    closing = {d: T(t) for d, t, s in EVENTS if s in (WON, LOST)}
    deals["closed_at"] = [closing[d] if status != "open" else pd.NaT for d, status in zip(deals["deal_id"], deals["status"])]
    defaults = dict(source_system="hand", source_file="deals.csv", source_row=1, owner="Ana", currency="USD", push_count=0,
                    has_history=True, deal_name="Deal")
    deals = canonical(deals, DEAL_COLUMNS, defaults, "deals")
    expected = dict(zip(deals["deal_id"], deals["expected_close_date"]))
    history = pd.DataFrame(EVENTS, columns=["deal_id", "changed_at", "stage"])
    history["changed_at"] = pd.to_datetime(history["changed_at"])
    history["expected_close_date"] = history["deal_id"].map(expected)
    history["amount_reporting"] = history["deal_id"].map(dict(zip(deals["deal_id"], deals["amount"])))
    history["amount"] = history["amount_reporting"]
    history["source_row"] = np.arange(2, len(history) + 2)
    history["source_file"] = "history.csv"
    prepared = prepare_history(deals, canonical(history, DEAL_HISTORY_COLUMNS, {}, "history"), CATALOG)
    stalled = pd.DataFrame({"deal_id": ["o1", "o2", "o4"], "reason": ["In A for 171 days", "In B for 60 days", "open 10 days"]})
    return data_quality_warnings(deals, prepared, stalled, AS_OF, WarningsConfig())


def _row(table: pd.DataFrame, check: str, pipeline: str = "all") -> pd.Series:
    rows = table[(table["check_name"] == check) & (table["pipeline"] == pipeline)]
    assert len(rows) == 1, (check, pipeline)
    return rows.iloc[0]


def _examples(row: pd.Series) -> list[str]:
    return [e["deal_id"] for e in json.loads(row["examples"])]


def test_columns_are_the_warehouse_table(warnings_table):
    assert list(warnings_table.columns) == TABLES["data_quality_warnings"].columns
    assert len(warnings_table) == 7 * 3  # seven warnings x (all, M, N)
    assert (warnings_table["severity"] == "warning").all()


@pytest.mark.parametrize(
    "check, pipeline, fired, affected, population, amount, examples",
    [
        ("wins_keyed_in_at_close", "all", True, 2, 4, 5000.0, ["w3", "w2"]),
        ("wins_keyed_in_at_close", "N", True, 2, 3, 5000.0, ["w3", "w2"]),
        ("wins_keyed_in_at_close", "M", False, 0, 1, 0.0, []),
        ("overdue_open_deals", "all", True, 3, 5, 9800.0, ["o2", "o1", "o5"]),
        ("overdue_open_deals", "M", True, 1, 2, 800.0, ["o5"]),
        ("close_date_before_creation", "all", True, 2, 5, 5800.0, ["o2", "o5"]),
        ("outlier_amounts", "all", True, 2, 7, 700000.0, ["l1", "o3"]),
        ("outlier_amounts", "M", False, 0, 3, 0.0, []),
        ("contradictory_history", "all", True, 1, 11, 400.0, ["l2"]),
        ("pipeline_mostly_stalled", "N", True, 2, 3, 9000.0, ["o2", "o1"]),
        ("pipeline_mostly_stalled", "M", False, 1, 2, 700.0, ["o4"]),
        ("pipeline_mostly_stalled", "all", True, 3, 5, 9700.0, ["o2", "o1", "o4"]),
        ("future_close_date", "all", True, 1, 6, 1000.0, ["w4"]),
    ],
)
def test_counts_amounts_and_examples(warnings_table, check, pipeline, fired, affected, population, amount, examples):
    row = _row(warnings_table, check, pipeline)
    assert (bool(row["fired"]), row["affected"], row["population"]) == (fired, affected, population)
    assert row["affected_amount"] == amount
    assert _examples(row) == examples


def test_messages_and_details_say_what_happened(warnings_table):
    keyed = _row(warnings_table, "wins_keyed_in_at_close")
    assert keyed["message"].startswith("2 of 4 wins (50.0%) were keyed in at close")
    assert keyed["share"] == 0.5 and keyed["threshold"] == 0.2
    details = {e["deal_id"]: e["detail"] for e in json.loads(keyed["examples"])}
    assert details == {
        "w2": "created 2024-04-02 10:00, marked won 30 minute(s) later",
        "w3": "entered its last open stage 60 minute(s) before it was marked won",
    }
    contradiction = json.loads(_row(warnings_table, "contradictory_history")["examples"])[0]["detail"]
    assert contradiction == "Closed Won -> A on 2024-03-10 00:00"
    outlier = json.loads(_row(warnings_table, "outlier_amounts")["examples"])[0]["detail"]
    assert outlier == "amount 500,000 is 50x the largest win (10,000)"
    future = json.loads(_row(warnings_table, "future_close_date")["examples"])[0]["detail"]
    assert future == "marked closed 2024-05-02 with a close date of 2024-07-15: booked on 2024-05-02"
    stalled = _row(warnings_table, "pipeline_mostly_stalled")
    assert stalled["message"].endswith("Mostly stalled: N.")
    assert pd.isna(_row(warnings_table, "outlier_amounts")["threshold"])


def test_dealcast_summary_lists_the_fired_warnings(warehouse, warnings_table):
    warehouse.claim(AS_OF, "run-w")
    assert warehouse.write("data_quality_warnings", warnings_table, as_of=AS_OF, run_id="run-w") == 21
    read_back = warehouse.read("data_quality_warnings", as_of=AS_OF)
    assert json.loads(read_back.set_index(["check_name", "pipeline"]).loc[("outlier_amounts", "all"), "examples"])[0]["amount_reporting"] == 500000.0
    def warning_lines(as_of: dt.date) -> list[str]:
        return _warning_lines(RunSummary(warehouse, as_of, "USD", 1, tables=warehouse.table_names()))

    lines = warning_lines(AS_OF)
    # All seven warnings fire on this CRM, listed in the order of the table.
    assert lines[0] == "  data-quality warnings (7 fired; counts and examples in data_quality_warnings):"
    assert lines[1].startswith("    wins_keyed_in_at_close: 2 of 4 wins (50.0%) were keyed in at close")
    assert [line.split(":")[0].strip() for line in lines[1:]] == [
        "wins_keyed_in_at_close", "overdue_open_deals", "close_date_before_creation", "outlier_amounts",
        "contradictory_history", "pipeline_mostly_stalled", "future_close_date",
    ]
    assert warning_lines(dt.date(2024, 7, 1)) == []


@pytest.mark.parametrize(
    "setting, message",
    [
        ("overdue_share = 1.5", r"\[warnings\] overdue_share must be a share between 0 and 1, got 1.5"),
        ("outlier_factor = 1", r"\[warnings\] outlier_factor must be above 1"),
        ("keyed_at_close_hours = -2", r"\[warnings\] keyed_at_close_hours must not be negative, got -2"),
        ('keyed_at_close_minutes = "ten"', r"\[warnings\] keyed_at_close_minutes must be a number, got 'ten'"),
        ("overdue = 0.3", r"\[warnings\] has unknown setting\(s\) \['overdue'\]"),
    ],
)
def test_bad_warning_settings_are_named(tmp_path, setting, message):
    config = tmp_path / "dealcast.toml"
    config.write_text(f"[warnings]\n{setting}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_project_config(config)


def test_warning_settings_are_read(tmp_path):
    config = tmp_path / "dealcast.toml"
    config.write_text("[warnings]\nkeyed_at_close_hours = 0\noverdue_share = 0.5\n", encoding="utf-8")
    warnings = load_project_config(config).warnings
    assert (warnings.keyed_at_close_hours, warnings.overdue_share, warnings.outlier_factor) == (0.0, 0.5, 3.0)
