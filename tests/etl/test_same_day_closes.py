"""Deals without stage history that close on the day they were created.

Such deals get synthesised history (etl.pipeline_state): a creation row and a closing row. Two
real export shapes broke it:
- Pipedrive, Won time equal to Deal created to the second: both rows had the same key
  (deal_id, changed_at, source_row) and the warehouse write failed;
- a mapped export with a date-only close date (2024-03-01) and a timestamped creation
  (2024-03-01 10:30): the closing row sorted before the creation row, so the deal came back
  open at the end of the day.

Hand-written files, worked out by hand:

Pipedrive deals.csv (pipeline "Sales": Qualified -> Proposal, then Won / Lost):
  2  P1  created 2024-03-01 09:00:00, won  2024-03-01 09:00:00 (same second)
  3  P2  created 2024-03-01 09:00:00, lost 2024-03-01 09:00:00 (same second)
  4  P3  created 2024-03-01 09:00:00, won  2024-03-04 12:00:00 (an ordinary close, 3 days later)
  5  P4  created 2024-03-01 09:00:00, open in Proposal
Expected history: P1 one row (Won at 09:00), P2 one row (Lost at 09:00), P3 two rows (created
with the stage unknown at 2024-03-01 09:00, Won at 2024-03-04 12:00), P4 one row (Proposal at
creation): 5 rows, keys all different. At the end of 2024-03-01: P1 won, P2 lost, P3 and P4 open.

Mapped leads.csv (date-only close dates, timestamped creations):
  2  M1  created 2024-03-01 10:30, won  2024-03-01      -> one row, Won at 2024-03-01 10:30
  3  M2  created 2024-03-01 23:59, lost 2024-03-01      -> one row, Lost at 2024-03-01 23:59
  4  M3  created 2024-03-01 10:30, won  2024-03-02      -> two rows (creation; Won 2024-03-02 00:00)
At the end of 2024-03-01 M1 is won and M2 lost (never open again); M3 is open, won the next day.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from etl.config import Settings, load_project_config
from etl.ingest.crm_load import load_crm
from etl.pipeline_state import as_of_end, pipeline_at
from etl.warehouse import Warehouse

T = pd.Timestamp
AS_OF = dt.date(2024, 3, 10)

PIPEDRIVE_CONFIG = """
[reporting]
currency = "USD"

[sources.pipedrive]
stage_order = { "Sales" = ["Qualified", "Proposal"] }
"""

PIPEDRIVE_DEALS = """Deal - ID,Deal - Title,Deal - Value,Deal - Currency of Value,Deal - Stage,Deal - Pipeline,Deal - Status,Deal - Won time,Deal - Lost time,Deal - Deal created
P1,Walk-in order,1000,USD,Qualified,Sales,won,2024-03-01 09:00:00,,2024-03-01 09:00:00
P2,Walk-in quote,2000,USD,Qualified,Sales,lost,,2024-03-01 09:00:00,2024-03-01 09:00:00
P3,Pilot,3000,USD,Proposal,Sales,won,2024-03-04 12:00:00,,2024-03-01 09:00:00
P4,Renewal,4000,USD,Proposal,Sales,open,,,2024-03-01 09:00:00
"""

MAPPED_CONFIG = """
[reporting]
currency = "USD"

[sources]
mappings = ["leads.toml"]
"""

MAPPING = """
file = "leads.csv"
source_system = "leads"

[pipeline]
name = "Leads"
stages = ["New", "Working"]
won_stage = "Won"
lost_stage = "Lost"

[columns]
deal_id = "id"
stage = "stage"
amount = "amount"
created_at = "created"
closed_at = "closed"
"""

MAPPED_LEADS = """id,stage,amount,created,closed
M1,Won,100,2024-03-01 10:30,2024-03-01
M2,Lost,200,2024-03-01 23:59,2024-03-01
M3,Won,300,2024-03-01 10:30,2024-03-02
"""


def _project(tmp_path: Path, config: str, files: dict[str, str], config_files: dict[str, str] | None = None) -> Settings:
    exports = tmp_path / "exports"
    exports.mkdir()
    for name, text in files.items():
        (exports / name).write_text(text, encoding="utf-8")
    for name, text in (config_files or {}).items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "dealcast.toml").write_text(config, encoding="utf-8")
    project = load_project_config(tmp_path / "dealcast.toml")
    return Settings(project=project, exports_dir=exports, exports_are_sample=False, as_of=AS_OF, project_dir=tmp_path)


@pytest.fixture
def pipedrive_settings(tmp_path):
    return _project(tmp_path, PIPEDRIVE_CONFIG, {"deals.csv": PIPEDRIVE_DEALS})


@pytest.fixture
def mapped_settings(tmp_path):
    return _project(tmp_path, MAPPED_CONFIG, {"leads.csv": MAPPED_LEADS}, {"leads.toml": MAPPING})


def _history_rows(load) -> dict[str, list[tuple[pd.Timestamp, str | None]]]:
    rows: dict[str, list] = {}
    for deal, at, stage in zip(load.history["deal_id"], load.history["changed_at"], load.history["stage"]):
        rows.setdefault(str(deal), []).append((at, None if pd.isna(stage) else str(stage)))
    return rows


def _status_at(load, day: dt.date) -> dict[str, str]:
    state = pipeline_at(load.deals, load.history, as_of_end(day))
    return dict(zip(state["deal_id"].astype(str), state["status"].astype(str)))


def test_pipedrive_same_second_closes_get_one_closing_row(pipedrive_settings):
    load = load_crm(pipedrive_settings)
    assert load.publishable
    assert _history_rows(load) == {
        "P1": [(T("2024-03-01 09:00"), "Won")],
        "P2": [(T("2024-03-01 09:00"), "Lost")],
        "P3": [(T("2024-03-01 09:00"), None), (T("2024-03-04 12:00"), "Won")],
        "P4": [(T("2024-03-01 09:00"), "Proposal")],
    }
    assert not load.history.duplicated(["deal_id", "changed_at", "source_row"]).any()
    assert _status_at(load, dt.date(2024, 3, 1)) == {"P1": "won", "P2": "lost", "P3": "open", "P4": "open"}
    assert _status_at(load, dt.date(2024, 3, 4))["P3"] == "won"


def test_mapped_date_only_close_on_the_creation_day_stays_closed(mapped_settings):
    load = load_crm(mapped_settings)
    assert load.publishable
    assert _history_rows(load) == {
        "M1": [(T("2024-03-01 10:30"), "Won")],
        "M2": [(T("2024-03-01 23:59"), "Lost")],
        "M3": [(T("2024-03-01 10:30"), None), (T("2024-03-02"), "Won")],
    }
    # At the end of the creation day M1 and M2 are closed; they are never open pipeline.
    assert _status_at(load, dt.date(2024, 3, 1)) == {"M1": "won", "M2": "lost", "M3": "open"}
    assert _status_at(load, AS_OF) == {"M1": "won", "M2": "lost", "M3": "won"}
    assert load.events.loc[load.events["deal_id"].isin(["M1", "M2"]), "stage"].tolist() == ["Won", "Lost"]


@pytest.mark.parametrize("which", ["pipedrive", "mapped"])
def test_same_day_closes_write_to_the_warehouse(which, request, warehouse):
    settings = request.getfixturevalue(f"{which}_settings")
    load = load_crm(settings)
    warehouse.claim(AS_OF, "run-same-day")
    written = warehouse.write_many(load.warehouse_frames(), as_of=AS_OF, run_id="run-same-day")
    assert written["deal_history"] == {"pipedrive": 5, "mapped": 4}[which]
    stored = warehouse.read("deal_history")
    assert len(stored) == written["deal_history"]
