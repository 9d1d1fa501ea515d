"""The HubSpot deals export reader on a hand-written export in HubSpot's own header names.

Fixture: tests/fixtures/hubspot/export/hubspot-crm-exports-all-deals-2024-04-10.csv, config
tests/fixtures/hubspot/dealcast.toml ("Partner Pipeline" configured: Discovery 0.2, Proposal 0.5,
Negotiation 0.8, Closed won, Closed lost; "Sales Pipeline" not configured, so inferred). The
Sales Pipeline columns use the newer `Date entered "..."` labels (with "Presentation scheduled"
before "Qualified to buy" in the file, plus a `Date exited` and a `Time in` column to ignore);
the Partner Pipeline columns use the older `Date entered '...'` labels, and Proposal has both.

  row  deal  pipeline  stage                   dates entered
   2   1001  Sales     Closed won              Appt 01-05 09:00, Qualified 01-20 10:30, Presentation 02-10, won 03-18 16:45
   3   1002  Sales     Presentation scheduled  Appt 02-01 08:00, Presentation 02-20 14:00 (skips Qualified); EUR 8000, company 8800
   4   1003  Sales     Closed lost             Appt 01-10 11:00, Qualified 01-25 09:15, lost 04-02 10:00; "Went with competitor"
   5   1004  Sales     Qualified to buy        none -> has_history False; no company
   6   1005  Sales     Appointment scheduled   Appt 01-15 13:00; currency and company amount blank
   7   1006  Sales     Qualified to buy        Appt 02-05 10:00, Qualified 02-12 10:00; probability 0.45 (1004 has 0.4)
   8   2001  Partner   Closed won              Discovery 02-01 10:00, Proposal '03-01' / "03-04 15:30", won 05-08 17:00
                                               (+ a Sales Pipeline date from before it was moved: ignored)
   9   2002  Partner   Proposal                Discovery 03-10 09:00, Proposal (older only) 03-25 12:00
  10   2003  Partner   Closed won              none; Close Date 2024-04-30
  11   1007  Amount "12,5k"                    -> unparseable_amount
  12   1001  again                             -> duplicate_id
  13   2004  Deal Stage "Verbal commit"        -> unknown_stage
  14   1008  Qualified date "2024-13-45"       -> unparseable_date

Sales Pipeline median entry times (accepted deals, own-pipeline columns only):
Appointment scheduled {01-05 09:00, 01-10 11:00, 01-15 13:00, 02-01 08:00, 02-05 10:00} -> 01-15 13:00;
Qualified to buy {01-20 10:30, 01-25 09:15, 02-12 10:00} -> 01-25 09:15;
Presentation scheduled {02-10 00:00, 02-20 14:00} -> 02-15 07:00. So the order is Appointment,
Qualified, Presentation, whatever the column order. Probabilities: Appointment 0.2 (1005 only),
Qualified unknown (0.4 and 0.45), Presentation 0.6 (1002 only).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import etl.ingest.exports
from etl.config import ConfigError, load_project_config
from etl.pipeline_state import prepare_history, stage_events
from etl.ingest.readers import ExportFormatError, hubspot, salesforce
from etl.ingest.csvfiles import sniff_header
from etl.ingest.readers.hubspot import DEALS, NEWER, OLDER, hubspot_settings, read_hubspot, stage_columns
from etl.schema import DEAL_COLUMNS, DEAL_HISTORY_COLUMNS, QUARANTINE_COLUMNS

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
HUBSPOT = FIXTURES / "hubspot"
EXPORT_DIR = HUBSPOT / "export"
EXPORT = EXPORT_DIR / "hubspot-crm-exports-all-deals-2024-04-10.csv"
T = pd.Timestamp
NAN = math.nan
SALES = "Sales Pipeline"
PARTNER = "Partner Pipeline"


@pytest.fixture(scope="module")
def project():
    return load_project_config(HUBSPOT / "dealcast.toml")


@pytest.fixture(scope="module")
def export(project):
    return read_hubspot({DEALS: [EXPORT]}, project)


def _deal(export, deal_id: str) -> pd.Series:
    rows = export.deals.loc[export.deals["deal_id"] == deal_id]
    assert len(rows) == 1, deal_id
    return rows.iloc[0]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# Detection and column names


def test_detect_recognises_hubspot_exports_and_rejects_salesforce(tmp_path):
    assert hubspot.detect(sniff_header(EXPORT), EXPORT) == DEALS
    older = _write(
        tmp_path,
        "deals.csv",
        "Deal ID,Deal Name,Deal Stage,Amount,Date entered 'New (Default)'\n7,A,New,10,2024-01-01\n",
    )
    assert hubspot.detect(sniff_header(older), older) == DEALS
    for name in ("Opportunity.csv", "OpportunityHistory.csv", "User.csv", "Account.csv"):
        path = FIXTURES / "salesforce" / "small" / name
        assert hubspot.detect(sniff_header(path), path) is None, name
    # And the Salesforce reader leaves the HubSpot file alone.
    assert salesforce.detect(sniff_header(EXPORT), EXPORT) is None
    pipedrive = _write(tmp_path, "pd.csv", "Deal - ID,Deal - Title,Deal - Stage,Deal - Pipeline\n1,A,Lead,Main\n")
    assert hubspot.detect(sniff_header(pipedrive), pipedrive) is None


def test_stage_columns_both_generations_and_parentheses():
    columns = [
        "Record ID",
        'Date entered "Demo (onsite) (Sales Pipeline)"',
        "Date entered 'Closed won (EMEA (new))'",
        'Date exited "Demo (onsite) (Sales Pipeline)"',
        'Time in "Demo (onsite) (Sales Pipeline)"',
        "date entered 'Lead (Sales Pipeline)'",
    ]
    found = stage_columns(columns, ["Sales Pipeline", "EMEA (new)"])
    assert [(c.stage, c.pipeline, c.generation, c.position) for c in found] == [
        ("Demo (onsite)", "Sales Pipeline", NEWER, 1),
        ("Closed won", "EMEA (new)", OLDER, 2),
        ("Lead", "Sales Pipeline", OLDER, 5),
    ]


# --------------------------------------------------------------------------------------------
# The hand-written export


def test_deals_worked_out_by_hand(export):
    deals = export.deals
    assert list(deals.columns) == list(DEAL_COLUMNS)
    assert sorted(deals["deal_id"]) == ["1001", "1002", "1003", "1004", "1005", "1006", "2001", "2002", "2003"]
    assert set(deals["source_system"]) == {"hubspot"}
    expected = {
        # deal: pipeline, stage, order, status, amount, currency, amount_reporting, closed_at,
        #       last_stage_change_at, has_history, probability
        "1001": (SALES, "Closed won", 4, "won", 12000, "USD", 12000, T("2024-03-18 16:45"), T("2024-03-18 16:45"), True, 1.0),
        "1002": (SALES, "Presentation scheduled", 3, "open", 8000, "EUR", 8800, None, T("2024-02-20 14:00"), True, 0.6),
        "1003": (SALES, "Closed lost", 5, "lost", 5000, "USD", 5000, T("2024-04-02 10:00"), T("2024-04-02 10:00"), True, 0.0),
        "1004": (SALES, "Qualified to buy", 2, "open", 3000, "USD", 3000, None, None, False, 0.4),
        "1005": (SALES, "Appointment scheduled", 1, "open", 2500, "USD", 2500, None, T("2024-01-15 13:00"), True, 0.2),
        "1006": (SALES, "Qualified to buy", 2, "open", 4000, "USD", 4000, None, T("2024-02-12 10:00"), True, 0.45),
        "2001": (PARTNER, "Closed won", 4, "won", 20000, "USD", 20000, T("2024-05-08 17:00"), T("2024-05-08 17:00"), True, 1.0),
        "2002": (PARTNER, "Proposal", 2, "open", 7000, "USD", 7000, None, T("2024-03-25 12:00"), True, 0.5),
        "2003": (PARTNER, "Closed won", 4, "won", 9000, "USD", 9000, T("2024-04-30"), None, False, 1.0),
    }
    for deal_id, values in expected.items():
        d = _deal(export, deal_id)
        pipeline, stage, order, status, amount, currency, reporting, closed, changed, has_history, prob = values
        assert (d["pipeline"], d["stage"], d["stage_order"], d["status"]) == (pipeline, stage, order, status), deal_id
        assert (d["amount"], d["currency"], d["amount_reporting"]) == (amount, currency, reporting), deal_id
        assert (pd.isna(d["closed_at"]) if closed is None else d["closed_at"] == closed), deal_id
        assert (pd.isna(d["last_stage_change_at"]) if changed is None else d["last_stage_change_at"] == changed), deal_id
        assert bool(d["has_history"]) is has_history, deal_id
        assert d["crm_probability"] == pytest.approx(prob), deal_id
        assert d["push_count"] == 0
    lost = _deal(export, "1003")
    assert lost["lost_reason"] == "Went with competitor"
    assert lost["forecast_category"] == "Omit"
    acme = _deal(export, "1001")
    assert acme["deal_name"] == "Acme renewal, 2024"
    assert acme["account"] == "Acme Corp"  # from "Associated Company (Primary)"
    assert acme["owner"] == "Ana Ruiz"
    assert acme["deal_type"] == "existingbusiness"
    assert acme["created_at"] == T("2024-01-05 09:00")
    assert acme["expected_close_date"] == T("2024-03-20")
    assert pd.isna(_deal(export, "1004")["account"])
    assert _deal(export, "2003")["created_at"] == T("2024-02-15")


def test_history_rows_worked_out_by_hand(export):
    history = export.history
    assert list(history.columns) == list(DEAL_HISTORY_COLUMNS)
    rows = list(
        zip(history["deal_id"], history["changed_at"], history["stage"], history["crm_probability"].round(2))
    )
    expected = [
        # Current amount and close date on every row; earlier stages carry their default
        # probability (Qualified to buy has none: its deals disagree), the current stage the deal's.
        ("1001", T("2024-01-05 09:00"), "Appointment scheduled", 0.2),
        ("1001", T("2024-01-20 10:30"), "Qualified to buy", NAN),
        ("1001", T("2024-02-10"), "Presentation scheduled", 0.6),
        ("1001", T("2024-03-18 16:45"), "Closed won", 1.0),
        ("1002", T("2024-02-01 08:00"), "Appointment scheduled", 0.2),
        ("1002", T("2024-02-20 14:00"), "Presentation scheduled", 0.6),
        ("1003", T("2024-01-10 11:00"), "Appointment scheduled", 0.2),
        ("1003", T("2024-01-25 09:15"), "Qualified to buy", NAN),
        ("1003", T("2024-04-02 10:00"), "Closed lost", 0.0),
        ("1005", T("2024-01-15 13:00"), "Appointment scheduled", 0.2),
        ("1006", T("2024-02-05 10:00"), "Appointment scheduled", 0.2),
        ("1006", T("2024-02-12 10:00"), "Qualified to buy", 0.45),
        ("2001", T("2024-02-01 10:00"), "Discovery", 0.2),
        ("2001", T("2024-03-04 15:30"), "Proposal", 0.5),  # the newer column wins over '2024-03-01'
        ("2001", T("2024-05-08 17:00"), "Closed won", 1.0),
        ("2002", T("2024-03-10 09:00"), "Discovery", 0.2),
        ("2002", T("2024-03-25 12:00"), "Proposal", 0.5),
    ]
    assert len(rows) == len(expected)
    for got, want in zip(rows, expected):
        assert got[:3] == want[:3]
        assert (math.isnan(got[3]) and math.isnan(want[3])) or got[3] == want[3], got
    eur = history.loc[history["deal_id"] == "1002"]
    assert eur["amount"].tolist() == [8000.0, 8000.0]
    assert eur["amount_reporting"].tolist() == [8800.0, 8800.0]
    assert (eur["expected_close_date"] == T("2024-06-30")).all()
    assert eur["forecast_category"].isna().tolist() == [True, False]
    assert eur["forecast_category"].iloc[1] == "Best case"
    assert eur["source_row"].tolist() == [3, 3]
    # No rows for deals without dates, nor for the Sales Pipeline date of the moved deal 2001.
    assert not history["deal_id"].isin(["1004", "2003"]).any()
    assert T("2024-01-20 09:00") not in set(history.loc[history["deal_id"] == "2001", "changed_at"])


def test_inferred_stage_order_by_median_entry_time(export):
    assert len(export.pipelines) == 1
    sales = export.pipelines[0]
    assert sales.name == SALES
    assert sales.open_stages == ("Appointment scheduled", "Qualified to buy", "Presentation scheduled")
    assert (sales.won_stage, sales.lost_stage) == ("Closed won", "Closed lost")
    assert sales.probabilities["Appointment scheduled"] == 0.2
    assert math.isnan(sales.probabilities["Qualified to buy"])
    assert sales.probabilities["Presentation scheduled"] == 0.6


def test_quarantine_and_file_report(export):
    q = export.quarantine
    assert list(q.columns) == list(QUARANTINE_COLUMNS)
    assert dict(zip(q["source_row"], q["reason_code"])) == {
        11: "unparseable_amount",
        12: "duplicate_id",
        13: "unknown_stage",
        14: "unparseable_date",
    }
    by_row = q.set_index("source_row")
    assert by_row.at[11, "column"] == "Amount" and "'12,5k'" in by_row.at[11, "reason"]
    assert "row 2" in by_row.at[12, "reason"]
    assert "'Verbal commit'" in by_row.at[13, "reason"] and PARTNER in by_row.at[13, "reason"]
    assert by_row.at[14, "column"] == 'Date entered "Qualified to buy (Sales Pipeline)"'
    assert "'2024-13-45'" in by_row.at[14, "reason"]
    assert '"Record ID": "1008"' in by_row.at[14, "raw_record"]
    (report,) = export.files
    assert (report.rows_read, report.rows_accepted, report.rows_quarantined) == (13, 9, 4)
    assert report.format == DEALS


# --------------------------------------------------------------------------------------------
# Settings and small hand-made files

RENEWALS_HEADER = (
    "Deal ID,Deal Stage,Pipeline,Amount,Amount in company currency,Currency,Close Date,Create Date,"
    "Deal probability,\"Date entered \"\"Renew (Renewals)\"\"\",\"Date entered \"\"Signed (Renewals)\"\"\"\n"
)


def _config(tmp_path: Path, hubspot_section: str) -> Path:
    return _write(tmp_path, "dealcast.toml", f'[reporting]\ncurrency = "USD"\n\n[sources.hubspot]\n{hubspot_section}\n')


def test_configured_won_lost_names_and_closed_deal_without_close_time(tmp_path):
    export_file = _write(
        tmp_path,
        "renewals.csv",
        RENEWALS_HEADER
        + "1,Renew,Renewals,100,,USD,2024-05-01,2024-01-01,0.3,2024-01-02,\n"
        + "2,signed,Renewals,200,,USD,2024-02-01,2024-01-01,1,2024-01-03,2024-01-20 12:00\n"
        + "3,Dropped,Renewals,300,,USD,,2024-01-01,0,2024-01-04,\n"
        + "4,Renew,Renewals,400,,GBP,2024-05-01,2024-01-01,1.5,,\n",
    )
    project = load_project_config(
        _config(tmp_path, 'won_stages = "Signed"\nlost_stages = ["Dropped", "Lost"]\ncompany_currency = "EUR"')
    )
    result = read_hubspot({DEALS: [export_file]}, project)
    (renewals,) = result.pipelines
    # Names match in any case; the stage is spelled as the Deal Stage column spells it.
    assert (renewals.open_stages, renewals.won_stage, renewals.lost_stage) == (("Renew",), "signed", "Dropped")
    signed = result.deals.set_index("deal_id").loc["2"]
    assert (signed["stage"], signed["status"], signed["closed_at"]) == ("signed", "won", T("2024-01-20 12:00"))
    assert result.history.loc[result.history["deal_id"] == "2", "stage"].tolist() == ["Renew", "signed"]
    assert dict(zip(result.quarantine["source_row"], result.quarantine["reason_code"])) == {
        4: "missing_required_value",  # deal 3: closed, no close date and no date entered "Dropped"
        5: "unparseable_number",  # deal 4: probability 1.5
    }
    assert result.quarantine.set_index("source_row").at[4, "column"] == "Close Date"


def test_amount_in_company_currency_only_when_company_currency_is_the_reporting_one(tmp_path):
    export_file = _write(
        tmp_path,
        "deals.csv",
        RENEWALS_HEADER
        + "1,Renew,Renewals,100,110,EUR,2024-05-01,2024-01-01,0.3,2024-01-02,\n"
        + "2,Renew,Renewals,200,200,USD,2024-05-01,2024-01-01,0.3,2024-01-02,\n",
    )
    for section, eur_reporting in (('company_currency = "USD"', 110.0), ('company_currency = "EUR"', NAN)):
        project = load_project_config(_config(tmp_path, section + '\nwon_stages = ["Signed"]'))
        deals = read_hubspot({DEALS: [export_file]}, project).deals.set_index("deal_id")
        got = deals.at["1", "amount_reporting"]
        assert (math.isnan(got) and math.isnan(eur_reporting)) or got == eur_reporting, section
        assert deals.at["2", "amount_reporting"] == 200.0  # USD deal: its own amount either way
        assert deals.at["1", "currency"] == "EUR" and deals.at["1", "amount"] == 100.0


def test_bad_settings_and_missing_columns_are_explained(tmp_path):
    project = load_project_config(_config(tmp_path, 'won_stage = "Signed"'))
    with pytest.raises(ConfigError, match=r"\[sources.hubspot\] has unknown setting\(s\) \['won_stage'\]"):
        hubspot_settings(project)
    no_stage = _write(tmp_path, "deals.csv", "Record ID,Deal Name,Pipeline,Create Date\n1,A,Main,2024-01-01\n")
    project = load_project_config(_config(tmp_path, ""))
    with pytest.raises(ExportFormatError, match=r"deals.csv: line 1: missing required column\(s\) Deal Stage"):
        read_hubspot({DEALS: [no_stage]}, project)


# --------------------------------------------------------------------------------------------
# End to end through ingest


def test_ingest_end_to_end(monkeypatch, project):
    monkeypatch.setattr(etl.ingest.exports, "READERS", (salesforce.READER, hubspot.READER))
    result = etl.ingest.exports.read_exports(EXPORT_DIR, project, as_of=pd.Timestamp("2024-04-10").date())
    assert len(result.deals) == 9
    assert len(result.history) == 17
    assert len(result.quarantine) == 4
    assert result.stages[SALES].open_stages == ("Appointment scheduled", "Qualified to buy", "Presentation scheduled")
    assert result.stages[PARTNER].open_stages == ("Discovery", "Proposal", "Negotiation")
    # The EUR deal is valued from HubSpot's company-currency amount, not quarantined.
    eur = result.deals.set_index("deal_id").loc["1002"]
    assert (eur["currency"], eur["amount"], eur["amount_reporting"]) == ("EUR", 8000.0, 8800.0)

    prepared = prepare_history(result.deals, result.history, result.stages)
    events = stage_events(prepared, pd.Timestamp("2024-04-10"))
    globex = events.loc[events["deal_id"] == "1002"].sort_values("entered_at")
    # The skipped stage (Qualified to buy) is not invented: two stays, 19 days 6 hours in the first.
    assert globex["stage"].tolist() == ["Appointment scheduled", "Presentation scheduled"]
    assert globex["days_in_stage"].iloc[0] == pytest.approx(19.25)
    assert globex["is_current"].tolist() == [False, True]
    acme = events.loc[events["deal_id"] == "1001"].sort_values("entered_at")
    assert acme["stage_order"].tolist() == [1, 2, 3, 4]
    assert not np.any(acme["is_backward"])
