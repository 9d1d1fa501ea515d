"""Salesforce tables as Fivetran lands them in a warehouse, unloaded to CSV
(tests/fixtures/fivetran_salesforce, written by hand in the layout of fivetran/dbt_salesforce's
seeds): snake_case columns, `_fivetran_synced` / `_fivetran_deleted` / `_fivetran_active`
bookkeeping, `is_deleted`, booleans as true/false and t/f, timestamps ending in " UTC" or with an
offset, custom fields as `loss_reason_c`.

opportunity.csv (6 rows):
  row 2  006A  _fivetran_active false: the earlier version (Prospecting, 800)   -> excluded
  row 3  006A  the active version: Qualification, 1000, open                   -> deal
  row 4  006B  Closed Won, 5000, close_date 2026-03-20                          -> deal
  row 5  006C  Closed Lost, 700, loss_reason_c Price, owner 005Y (no user row)  -> deal
  row 6  006D  is_deleted true                                                  -> excluded
  row 7  006E  _fivetran_deleted true                                           -> excluded
  read 6 = accepted 3 + quarantined 0 + excluded 3
opportunity_history.csv (10 rows): H01-H07 accepted; H08 belongs to the deleted 006D, H09 has
  _fivetran_deleted t, H10 is_deleted t -> excluded: read 10 = accepted 7 + excluded 3.
user.csv: 005X Ana Ruiz (Enterprise).

Stage order (no stage_sort_order in the table): the moves are Prospecting -> Qualification (006A,
006B), Qualification -> Closed Won (006B), Prospecting -> Closed Lost (006C): Prospecting 1,
Qualification 2, Closed Won 3, Closed Lost 4, inferred from 2 moves between open stages.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.etl.exports_kit import load, load_copy, quarantine_codes, reconciliation_by_file

FIXTURE = Path(__file__).parents[2] / "fixtures" / "fivetran_salesforce"
T = pd.Timestamp


@pytest.fixture
def crm(tmp_path):
    return load_copy(FIXTURE, tmp_path)


def test_deals_are_read_from_the_active_undeleted_rows(crm):
    assert crm.publishable
    deals = crm.deals.set_index("deal_id").sort_index()
    assert deals.index.tolist() == ["006A", "006B", "006C"]
    assert deals["status"].tolist() == ["open", "won", "lost"]
    assert deals["amount"].tolist() == [1000.0, 5000.0, 700.0]  # 006A's active version, not the earlier 800
    assert deals.loc["006A", "stage"] == "Qualification"
    assert deals.loc["006A", "created_at"] == T("2026-01-05 10:00:00")  # "... UTC"
    assert deals.loc["006A", "owner"] == "Ana Ruiz" and deals.loc["006A", "team"] == "Enterprise"
    assert deals.loc["006C", "owner"] == "005Y"  # no user row: the id, said once in the notes
    assert deals.loc["006C", "lost_reason"] == "Price"  # loss_reason_c is Loss_Reason__c
    # Booked by the CRM's close date; the moment it was marked won is kept apart.
    assert deals.loc["006B", "crm_close_date"] == T("2026-03-20")
    assert deals.loc["006B", "closed_at"] == T("2026-04-02 16:00:00")
    assert deals.loc["006B", "forecast_category"] == "Closed"


def test_history_offsets_are_read_as_utc_and_deleted_rows_are_left_out(crm):
    history = crm.history.sort_values(["deal_id", "changed_at"])
    assert len(history) == 7
    assert history.loc[history["deal_id"] == "006A", "changed_at"].tolist() == [
        T("2026-01-05 10:00:00"), T("2026-02-01 08:00:00"),  # 09:00 at +01:00
    ]
    stay = crm.events[(crm.events["deal_id"] == "006B") & (crm.events["stage"] == "Qualification")].iloc[0]
    assert stay["entered_at"] == T("2026-02-15 09:00:00") and stay["exited_at"] == T("2026-04-02 16:00:00")


def test_reconciliation_counts_excluded_rows_apart(crm):
    assert quarantine_codes(crm) == {
        ("opportunity.csv", 2): "inactive_version",
        ("opportunity.csv", 6): "deleted_in_crm",
        ("opportunity.csv", 7): "deleted_in_crm",
        ("opportunity_history.csv", 9): "deleted_in_crm",
        ("opportunity_history.csv", 10): "deleted_in_crm",
        ("opportunity_history.csv", 11): "deleted_in_crm",
    }
    results = crm.validation.results.set_index("check_name")
    observed = {name.split("/")[-1]: text for name, text in results["observed"].items() if "reconciliation" in name}
    assert observed["opportunity.csv]"] == (
        "read 6; accepted 3 + quarantined 0 + excluded 3 (left out (2 as deleted in the CRM, "
        "1 as earlier versions of a record)) = 6"
    )
    assert observed["opportunity_history.csv]"] == (
        "read 10; accepted 7 + quarantined 0 + excluded 3 (left out as deleted in the CRM) = 10"
    )
    assert observed["user.csv]"] == "read 1; accepted 1 + quarantined 0 = 1"
    recon = reconciliation_by_file(crm)
    assert recon.loc["opportunity.csv", ["rows_read", "accepted", "quarantined", "excluded"]].tolist() == [6, 3, 3, 3]
    # Left out on purpose: no part of the blocking shares.
    assert results.loc["deals.quarantine_share", "observed"].startswith("0.00% (0 of 3 deal rows quarantined; 3 more left out")
    assert results.loc["deals.quarantine_share", "passed"]


def test_the_stage_order_is_inferred_from_the_history(crm):
    stages = crm.pipeline_stages.sort_values("stage_order")
    assert stages["stage"].tolist() == ["Prospecting", "Qualification", "Closed Won", "Closed Lost"]
    assert set(stages["order_source"]) == {"inferred"}
    assert stages["stage_moves"].iloc[0] == 2 and stages["backward_moves"].iloc[0] == 0


def test_postgres_text_booleans_and_unparseable_flags(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "exports")
    path = tmp_path / "exports" / "opportunity.csv"
    text = path.read_text(encoding="utf-8").replace("006C,false,", "006C,maybe,", 1)
    path.write_text(text, encoding="utf-8")
    config = tmp_path / "dealcast.toml"
    config.write_text('[reporting]\ncurrency = "USD"\n', encoding="utf-8")
    crm = load(tmp_path / "exports", config)
    q = crm.validation.quarantine
    bad = q[q["source_row"].eq(5) & q["source_file"].str.endswith("opportunity.csv")].iloc[0]
    assert bad["reason_code"] == "unparseable_boolean" and "'maybe'" in bad["reason"]
    assert "006C" not in set(crm.deals["deal_id"])


def test_airbyte_keeps_salesforce_field_names_and_is_read_the_same_way(tmp_path):
    # Airbyte lands Salesforce's own field names with its _airbyte_* columns and ISO "Z" timestamps.
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "opportunity.csv").write_text(
        "_airbyte_raw_id,_airbyte_extracted_at,_airbyte_meta,Id,IsDeleted,Name,StageName,StageSortOrder,Amount,"
        "CloseDate,CreatedDate,IsClosed,IsWon\n"
        'r1,2026-06-30T02:00:00.000Z,{},006A,false,Acme,Prospecting,1,1000,2026-07-31,2026-01-05T10:00:00.000Z,false,false\n'
        'r2,2026-06-30T02:00:00.000Z,{},006B,false,Bolt,Closed Won,2,5000,2026-03-20,2026-01-10T09:00:00.000Z,true,true\n'
        'r3,2026-06-30T02:00:00.000Z,{},006C,true,Gone,Prospecting,1,300,2026-08-31,2026-02-01T09:00:00.000Z,false,false\n',
        encoding="utf-8",
    )
    config = tmp_path / "dealcast.toml"
    config.write_text('[reporting]\ncurrency = "USD"\n', encoding="utf-8")
    crm = load(exports, config)
    deals = crm.deals.set_index("deal_id").sort_index()
    assert deals.index.tolist() == ["006A", "006B"] and deals["status"].tolist() == ["open", "won"]
    assert deals.loc["006A", "created_at"] == T("2026-01-05 10:00:00")
    assert crm.validation.quarantine["reason_code"].tolist() == ["deleted_in_crm"]


def test_the_summary_says_the_excluded_rows_apart(tmp_path, crm, warehouse):
    from etl.cli import RunSummary, _input_lines
    from etl.ingest.crm_load import reconciliation_frame

    as_of = dt.date(2026, 6, 30)
    warehouse.claim(as_of, "run-1")
    warehouse.write("reconciliation", reconciliation_frame(crm, "run-1"), as_of=as_of, run_id="run-1")
    run = RunSummary(warehouse, as_of, "USD", 1, tables=warehouse.table_names())
    # 17 rows in the three files: 3 deals + 7 history rows + 1 user accepted, 6 left out.
    assert _input_lines(run) == ["  input rows read 17 = accepted 11 + quarantined 0 + excluded 6 (in 3 files)"]
