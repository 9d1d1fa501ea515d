"""HubSpot's deal tables as Fivetran lands them (tests/fixtures/fivetran_hubspot, written by hand
in the layout of fivetran/dbt_hubspot's seeds).

deal_pipeline_stage.csv lists the stages out of order; by display_order they are Appointment
scheduled (0.2), Qualified to buy (0.4), Contract sent (0.9), then Closed won (closed_won) and
Closed lost (probability 0, not won): orders 1..5, from the CRM.

deal.csv (5 rows): 101 open in Qualified to buy (1000), 102 won (5000, closedate 2026-03-20,
entered Closed won 2026-04-02 16:00), 103 lost (700, no currency: USD, reason Budget); 104
is_deleted and 105 _fivetran_deleted are left out: read 5 = accepted 3 + excluded 2.
deal_stage.csv (9 rows): 7 rows of the three deals; 104's row goes with its deleted deal
(excluded); deal 999 is in no deal row (orphan_history, quarantined): 9 = 7 + 1 + 1.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from etl.ingest.exports import detect_format
from tests.etl.exports_kit import load_copy, quarantine_codes, reconciliation_by_file

FIXTURE = Path(__file__).parents[2] / "fixtures" / "fivetran_hubspot"
T = pd.Timestamp


@pytest.fixture
def crm(tmp_path):
    return load_copy(FIXTURE, tmp_path)


def test_the_four_tables_are_recognised():
    assert {p.name: detect_format(p) for p in sorted(FIXTURE.iterdir())} == {
        "deal.csv": "hubspot_deal_table",
        "deal_pipeline.csv": "hubspot_deal_pipeline_table",
        "deal_pipeline_stage.csv": "hubspot_deal_pipeline_stage_table",
        "deal_stage.csv": "hubspot_deal_stage_table",
    }


def test_deals_stages_and_history(crm):
    assert crm.publishable
    deals = crm.deals.set_index("deal_id").sort_index()
    assert deals.index.tolist() == ["101", "102", "103"]
    assert deals["status"].tolist() == ["open", "won", "lost"]
    assert deals["stage"].tolist() == ["Qualified to buy", "Closed won", "Closed lost"]
    assert deals["amount"].tolist() == [1000.0, 5000.0, 700.0] and set(deals["currency"]) == {"USD"}
    assert set(deals["pipeline"]) == {"Sales Pipeline"}
    assert deals.loc["101", "crm_probability"] == pytest.approx(0.4)
    assert deals.loc["102", "crm_close_date"] == T("2026-03-20") and deals.loc["102", "closed_at"] == T("2026-04-02 16:00:00")
    assert deals.loc["103", "lost_reason"] == "Budget" and deals.loc["103", "closed_at"] == T("2026-03-01 12:00:00")
    assert deals.loc["101", "owner"] == "501"
    stages = crm.pipeline_stages.sort_values("stage_order")
    assert stages["stage"].tolist() == ["Appointment scheduled", "Qualified to buy", "Contract sent", "Closed won", "Closed lost"]
    assert set(stages["order_source"]) == {"crm"}
    assert len(crm.history) == 7
    stay = crm.events[(crm.events["deal_id"] == "102") & (crm.events["stage"] == "Contract sent")].iloc[0]
    assert stay["entered_at"] == T("2026-02-15 09:00:00") and stay["exited_at"] == T("2026-04-02 16:00:00")


def test_deleted_rows_are_excluded_and_orphans_quarantined(crm):
    assert quarantine_codes(crm) == {
        ("deal.csv", 5): "deleted_in_crm",
        ("deal.csv", 6): "deleted_in_crm",
        ("deal_stage.csv", 9): "deleted_in_crm",
        ("deal_stage.csv", 10): "orphan_history",
    }
    recon = reconciliation_by_file(crm)
    counts = ["rows_read", "accepted", "quarantined", "excluded"]
    assert recon.loc["deal.csv", counts].tolist() == [5, 3, 2, 2]
    assert recon.loc["deal_stage.csv", counts].tolist() == [9, 7, 2, 1]  # the orphan is a defect, not excluded
    assert recon.loc["deal_pipeline_stage.csv", ["rows_read", "accepted", "quarantined"]].tolist() == [5, 5, 0]


def test_a_deals_export_beside_the_tables_is_refused(tmp_path):
    from etl.config import load_project_config
    from etl.ingest.exports import read_exports
    from etl.ingest.readers import ExportFormatError

    exports = tmp_path / "exports"
    shutil.copytree(FIXTURE, exports)
    export = sorted((Path(__file__).parents[2] / "fixtures" / "hubspot" / "export").glob("*.csv"))[0]
    shutil.copy(export, exports / "hubspot-deals.csv")
    config = tmp_path / "dealcast.toml"
    config.write_text('[reporting]\ncurrency = "USD"\n', encoding="utf-8")
    with pytest.raises(ExportFormatError, match="an export, or the tables a loader lands, not both"):
        read_exports(exports, load_project_config(config))
