"""The Salesforce Data Export reader, on the real developer-org sample and on hand-written files.

Hand-written export (tests/fixtures/salesforce/small, config tests/fixtures/salesforce/dealcast.toml
with one configured pipeline, "New Business": Prospecting, Qualification, Proposal/Price Quote,
Negotiation/Review, then Closed Won / Closed Lost). User.csv is UTF-8 with a byte-order mark,
Account.csv is Windows-1252 (é, ü and an en dash), Opportunity.csv holds (spreadsheet row: deal):

  2  006D1  won, New Business; history: Prospecting -> Qualification -> Proposal -> back to
            Qualification -> Negotiation (amount 40000 -> 50000) -> Closed Won on 2024-03-14 11:15
  3  006D2  open in Proposal/Price Quote; history: Qualification, Proposal (03-01 09:00), an
            amount-only change (60000 -> 75000, 03-20) and a close-date push (05-31 -> 06-30, 04-02)
  4  006D3  Amount "12,5k"                        -> quarantined unparseable_amount
  5  006D4  IsDeleted = 1                         -> quarantined deleted_in_crm
  6  006D5  CurrencyIsoCode EUR                   -> quarantined unknown_currency by etl.ingest.exports
                                                     (the fixture config has no rates file)
  7  006D6  lost, Name with a quoted line break, no history, no account
  8  006D7  blank Pipeline__c -> pipeline "Default"; owner 005Z and account 001Q are in no lookup
  9  006D8  "Default"; its history has stage Qualification, unknown in "Default" -> unknown_stage
 10  006D9  "Default", stage Signed (closed, won), no history
 11  006D10 stage "Verbal Commit", unknown in New Business -> unknown_stage

"Default" is not configured, so its order comes from the export: Discovery (StageSortOrder 1,
Probability 15), Demo (2, 40), Signed (3, IsClosed 1, IsWon 1) as the won stage, and no lost stage
in the export, so "Closed Lost".
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from etl.config import load_project_config
from etl.ingest.exports import read_exports
from etl.pipeline_state import prepare_history, stage_events
from etl.ingest.readers import ExportFormatError
from etl.ingest.csvfiles import parse_booleans, parse_timestamps
from etl.ingest.readers.salesforce import HISTORY, OPPORTUNITY, read_salesforce
from etl.schema import DEAL_COLUMNS, DEAL_HISTORY_COLUMNS, QUARANTINE_COLUMNS

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "salesforce"
SMALL = FIXTURES / "small"
DEVORG = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "salesforce_devorg_sample"
T = pd.Timestamp

STANDARD_PICKLIST = (
    "Prospecting",
    "Qualification",
    "Needs Analysis",
    "Value Proposition",
    "Id. Decision Makers",
    "Perception Analysis",
    "Proposal/Price Quote",
    "Negotiation/Review",
)


@pytest.fixture(scope="module")
def fixture_project():
    return load_project_config(FIXTURES / "dealcast.toml")


@pytest.fixture(scope="module")
def small(fixture_project):
    return read_exports(SMALL, fixture_project)


def _deal(result, deal_id: str) -> pd.Series:
    rows = result.deals.loc[result.deals["deal_id"] == deal_id]
    assert len(rows) == 1, deal_id
    return rows.iloc[0]


def _quarantined(result, file_name: str) -> dict[int, str]:
    rows = result.quarantine.loc[result.quarantine["source_file"].str.endswith("/" + file_name)]
    return dict(zip(rows["source_row"].tolist(), rows["reason_code"].tolist()))


def _records(path: Path, encoding: str = "utf-8-sig") -> list[dict[str, str]]:
    """The file's records, read with Python's csv module (an independent reading)."""
    with open(path, encoding=encoding, newline="") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------------------------------------
# The real developer-org export


@pytest.fixture(scope="module")
def devorg():
    if not DEVORG.is_dir():
        pytest.fail(f"the real Salesforce sample is expected beside the repository at {DEVORG}")
    return read_exports(DEVORG, load_project_config(Path(__file__).resolve().parents[3] / "dealcast.toml"))


def test_devorg_counts_and_outcomes(devorg):
    deals = devorg.deals
    assert len(deals) == 31
    assert (deals["status"] == "won").sum() == 18
    assert (deals["status"] == "open").sum() == 13
    assert (deals["status"] == "lost").sum() == 0
    assert len(devorg.history) == 62
    assert devorg.quarantine.empty
    assert set(deals["pipeline"]) == {"Default"}
    assert deals["has_history"].all()
    # Won amount, summed from the file by another route.
    won_amount = sum(float(r["Amount"]) for r in _records(DEVORG / "Opportunity.csv") if r["StageName"] == "Closed Won")
    assert deals.loc[deals["status"] == "won", "amount_reporting"].sum() == pytest.approx(won_amount)
    assert list(deals.columns) == list(DEAL_COLUMNS)
    assert list(devorg.history.columns) == list(DEAL_HISTORY_COLUMNS)


def test_devorg_stage_order_is_inferred_standard_picklist(devorg):
    pipeline = devorg.stages["Default"]
    assert pipeline.open_stages == STANDARD_PICKLIST
    assert pipeline.won_stage == "Closed Won"
    assert pipeline.lost_stage == "Closed Lost"  # no lost deal in the export: the default name
    # Default probability = the deals' Probability in that stage (e.g. Id. Decision Makers 60).
    assert pipeline.probabilities["Id. Decision Makers"] == pytest.approx(0.60)
    assert pipeline.probabilities["Negotiation/Review"] == pytest.approx(0.90)
    deal = _deal(devorg, "0064600000J5S5XAAV")  # Id. Decision Makers, 5th open stage
    assert deal["stage_order"] == 5
    assert _deal(devorg, "0064600000J5S5VAAV")["stage_order"] == 9  # Closed Won after 8 open stages


def test_devorg_single_timestamp_history(devorg):
    """Every history row is stamped 2018-10-13 17:16:45; each deal's two rows keep its stage and
    only move the close date from 2013-09-16 to the deal's CloseDate."""
    stamp = T("2018-10-13 17:16:45")
    assert (devorg.history["changed_at"] == stamp).all()
    deals = devorg.deals
    won = deals["status"] == "won"
    assert (deals.loc[won, "closed_at"] == stamp).all()
    assert deals.loc[~won, "closed_at"].isna().all()
    assert (deals["last_stage_change_at"] == stamp).all()
    # Open deals: the second row's close date is later than the first (2013 -> 2018): one push
    # each. Won deals were already closed at the first row: no push.
    assert (deals.loc[~won, "push_count"] == 1).all()
    assert (deals.loc[won, "push_count"] == 0).all()

    prepared = prepare_history(deals, devorg.history, devorg.stages)
    events = stage_events(prepared, T("2018-10-14"))
    assert len(events) == 31  # one stay per deal: no stage change is invented
    assert (events["entered_at"] == stamp).all()
    assert events["exited_at"].isna().all()
    open_days = events.loc[events["stage"] != "Closed Won", "days_in_stage"]
    # Open stays run from 2018-10-13 17:16:45 to the end of 2018-10-14: 1 day 6 h 43 min 15 s.
    assert open_days.tolist() == pytest.approx([1 + (6 * 3600 + 43 * 60 + 15) / 86400] * 13, abs=1e-6)
    assert events.loc[events["stage"] == "Closed Won", "days_in_stage"].isna().all()


def test_devorg_every_row_is_accounted_for(devorg):
    expected_rows = {
        "Opportunity.csv": len(_records(DEVORG / "Opportunity.csv")),
        "OpportunityHistory.csv": len(_records(DEVORG / "OpportunityHistory.csv")),
        "Account.csv": len(_records(DEVORG / "Account.csv")),
    }
    assert {f.path.name: f.rows_read for f in devorg.files} == expected_rows
    for report in devorg.files:
        canonical = (devorg.deals["source_file"] == str(report.path)).sum() + (
            devorg.history["source_file"] == str(report.path)
        ).sum()
        if report.format in (OPPORTUNITY, HISTORY):
            assert report.rows_accepted == canonical
        assert report.rows_read == report.rows_accepted + report.rows_quarantined


# ---------------------------------------------------------------------------------------------
# The hand-written export


def test_small_accepted_deals_and_identity(small):
    assert sorted(small.deals["deal_id"]) == ["006D1", "006D2", "006D6", "006D7", "006D9"]
    counts = {f.path.name: (f.rows_read, f.rows_accepted, f.rows_quarantined) for f in small.files}
    assert counts == {
        "Opportunity.csv": (10, 5, 5),
        "OpportunityHistory.csv": (18, 11, 7),
        "User.csv": (3, 3, 0),
        "Account.csv": (3, 3, 0),
    }
    assert [p.name for p in small.skipped_files] == ["quotas.csv"]
    assert len(small.history) == 11
    assert len(small.quarantine) == 12


def test_small_quarantine_reasons(small):
    assert _quarantined(small, "Opportunity.csv") == {
        4: "unparseable_amount",
        5: "deleted_in_crm",
        6: "unknown_currency",
        9: "unknown_stage",
        11: "unknown_stage",
    }
    assert _quarantined(small, "OpportunityHistory.csv") == {
        8: "deal_quarantined",  # 006D3
        11: "deleted_in_crm",  # 006D4 is deleted in Salesforce: its history is left out with it
        14: "deal_quarantined",  # 006D5
        15: "orphan_history",  # 006ZZ is in no Opportunity row
        17: "unknown_stage",  # 006D8 in Qualification, not a "Default" stage
        18: "deal_quarantined",  # 006D10
        19: "deal_quarantined",  # 006D3 again
    }
    q = small.quarantine.set_index(["source_row", "reason_code"])
    amount = q.loc[(4, "unparseable_amount")]
    assert amount["column"] == "Amount"
    assert "12,5k" in amount["reason"] and "Amount" in amount["reason"]
    raw = json.loads(amount["raw_record"])
    assert raw["Id"] == "006D3" and raw["Amount"] == "12,5k" and raw["Region__c"] == ""
    currency = q.loc[(6, "unknown_currency")]
    assert "EUR" in currency["reason"] and "no exchange-rate file is configured" in currency["reason"]
    assert currency["column"] == "currency"
    assert "Verbal Commit" in q.loc[(11, "unknown_stage")]["reason"]
    assert list(small.quarantine.columns) == list(QUARANTINE_COLUMNS)


def test_small_won_deal_with_backward_move(small, fixture_project):
    d1 = _deal(small, "006D1")
    assert d1["status"] == "won"
    assert d1["stage_order"] == 5  # four configured open stages, then won
    assert d1["owner"] == "Ana Souza"  # User Name for OwnerId 005A (User.csv has a BOM)
    assert d1["team"] == "Enterprise"  # Department
    assert d1["region"] == "EMEA"  # Region__c blank: the owner's Division
    assert d1["account"] == "Société Générale"  # Account.csv is Windows-1252
    assert d1["product"] == "Widgets" and d1["account_segment"] == "Enterprise"
    assert d1["lead_source"] == "Web" and d1["deal_type"] == "New Customer"
    assert d1["amount"] == 50000 and d1["amount_reporting"] == 50000 and d1["currency"] == "USD"
    assert d1["crm_probability"] == 1.0
    assert d1["created_at"] == T("2024-01-05 09:00:00")
    assert d1["expected_close_date"] == T("2024-03-14")
    assert d1["closed_at"] == T("2024-03-14 11:15:00")  # entered Closed Won per history
    assert d1["last_stage_change_at"] == T("2024-03-14 11:15:00")  # no LastStageChangeDate: history
    assert d1["push_count"] == 0  # close date only moved earlier (03-15 -> 03-14)
    assert d1["forecast_category"] == "Closed"

    prepared = prepare_history(small.deals, small.history, small.stages)
    rows = prepared.loc[prepared["deal_id"] == "006D1"]
    assert rows["stage"].tolist() == [
        "Prospecting",
        "Qualification",
        "Proposal/Price Quote",
        "Qualification",
        "Negotiation/Review",
        "Closed Won",
    ]
    assert rows["is_backward"].tolist() == [False, False, False, True, False, False]
    assert rows["forecast_category"].tolist() == ["Pipeline", "Pipeline", "Best Case", "Pipeline", "Commit", "Closed"]
    events = stage_events(prepared, T("2024-06-30"))
    days = events.loc[events["deal_id"] == "006D1", "days_in_stage"].tolist()
    # 01-05 09:00 -> 01-20 10:00, -> 02-01 12:00, -> 02-10 08:30, -> 02-25 16:00, -> 03-14 11:15
    expected = [15 + 1 / 24, 12 + 2 / 24, 8 + 20.5 / 24, 15 + 7.5 / 24, 17 + 19.25 / 24]
    assert days[:5] == pytest.approx(expected)
    assert pd.isna(days[5])


def test_small_open_deal_amount_change_and_push(small):
    d2 = _deal(small, "006D2")
    assert d2["status"] == "open" and d2["stage_order"] == 3
    assert d2["owner"] == "Bo Lindqvist" and d2["team"] == "Mid-Market"
    assert d2["region"] == "DACH"  # Region__c wins over the owner's Division
    assert d2["account"] == "Müller GmbH"
    assert d2["amount"] == 75000 and d2["crm_probability"] == pytest.approx(0.6)
    assert pd.isna(d2["closed_at"])
    assert d2["last_stage_change_at"] == T("2024-03-01 09:00:00")  # LastStageChangeDate
    assert d2["push_count"] == 1  # 2024-05-31 -> 2024-06-30
    assert d2["forecast_category"] == "Best Case"

    history = small.history.loc[small.history["deal_id"] == "006D2"]
    assert history["source_row"].tolist() == [4, 7, 10, 13]
    assert history["amount"].tolist() == [60000, 60000, 75000, 75000]
    assert history["expected_close_date"].tolist() == [T("2024-05-31")] * 3 + [T("2024-06-30")]
    prepared = prepare_history(small.deals, small.history, small.stages)
    rows = prepared.loc[prepared["deal_id"] == "006D2"]
    assert rows["is_stage_change"].tolist() == [True, True, False, False]  # amount/close-only rows
    assert rows["is_push"].tolist() == [False, False, False, True]


def test_small_lost_deal_without_history(small):
    d6 = _deal(small, "006D6")
    assert d6["deal_name"] == "Big Deal\nPhase 2"
    assert d6["source_row"] == 7
    assert d6["status"] == "lost" and d6["stage_order"] == 6
    assert d6["lost_reason"] == "Price"
    assert pd.isna(d6["account"])  # blank AccountId stays NA
    assert d6["owner"] == "Cy Park" and pd.isna(d6["team"]) and d6["region"] == "APAC"
    assert not d6["has_history"]
    assert d6["closed_at"] == T("2024-04-10")  # CloseDate at midnight
    assert d6["forecast_category"] == "Omitted"
    # The record after the quoted line break is spreadsheet row 8, not 9.
    assert _deal(small, "006D7")["source_row"] == 8


def test_small_inferred_pipeline_and_lookup_fallbacks(small):
    default = small.stages["Default"]
    assert default.open_stages == ("Discovery", "Demo")
    assert default.won_stage == "Signed" and default.lost_stage == "Closed Lost"
    assert default.probabilities == {"Discovery": pytest.approx(0.15), "Demo": pytest.approx(0.40)}
    assert small.stages["New Business"].open_stages == (
        "Prospecting",
        "Qualification",
        "Proposal/Price Quote",
        "Negotiation/Review",
    )
    d7 = _deal(small, "006D7")
    assert d7["pipeline"] == "Default" and d7["stage_order"] == 1 and d7["status"] == "open"
    assert d7["owner"] == "005Z" and d7["account"] == "001Q"  # ids kept when no lookup row
    assert pd.isna(d7["team"]) and pd.isna(d7["region"]) and pd.isna(d7["product"])
    d9 = _deal(small, "006D9")
    assert d9["status"] == "won" and d9["stage_order"] == 3
    assert d9["account"] == "Acme – Widgets"  # en dash: byte 0x96 in Windows-1252
    assert d9["closed_at"] == T("2024-03-29")


def test_small_history_continuity_gap(small):
    """Row 9 (006D1, Negotiation) says PrevAmount 45000, the row before it has 40000."""
    gaps = small.history_gaps
    assert len(gaps) == 1
    gap = gaps.iloc[0]
    assert (gap["deal_id"], gap["source_row"], gap["column"]) == ("006D1", 9, "PrevAmount")
    assert float(gap["expected"]) == 40000 and gap["found"] == "45000"


# ---------------------------------------------------------------------------------------------
# Small files written by the tests

OPP_HEADER = ["Id", "Name", "StageName", "StageSortOrder", "Amount", "CloseDate", "CreatedDate", "IsClosed", "IsWon"]


def _opp(deal_id: str, stage: str = "Prospecting", amount: str = "100", sort: str = "1", closed: str = "0") -> list[str]:
    return [deal_id, f"Deal {deal_id}", stage, sort, amount, "2024-06-30", "2024-01-02 03:04:05", closed, "0"]


def _write(path: Path, rows: list[list[str]], encoding: str = "utf-8") -> Path:
    text = "".join(",".join('"' + v.replace('"', '""') + '"' for v in row) + "\n" for row in rows)
    path.write_bytes(text.encode(encoding))
    return path


def test_duplicate_and_missing_ids(tmp_path, fixture_project):
    path = _write(tmp_path / "Opportunity.csv", [OPP_HEADER, _opp("A"), _opp(""), _opp("A", amount="999"), _opp("B")])
    result = read_salesforce({OPPORTUNITY: [path]}, fixture_project)
    assert result.deals["deal_id"].tolist() == ["A", "B"]
    assert result.deals["amount"].tolist() == [100.0, 100.0]  # the first "A" is kept
    codes = dict(zip(result.quarantine["source_row"], result.quarantine["reason_code"]))
    assert codes == {3: "missing_id", 4: "duplicate_id"}
    assert "row 2" in result.quarantine.loc[result.quarantine["source_row"] == 4, "reason"].iloc[0]


def test_blank_line_and_ragged_row_keep_row_numbers(tmp_path, fixture_project):
    path = tmp_path / "Opportunity.csv"
    _write(path, [OPP_HEADER, _opp("A")])
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("\n")  # row 3: blank
        handle.write('"X","too","few"\n')  # row 4: 3 fields of 9
    _write(tmp_path / "tail.csv", [_opp("B")])
    with open(path, "a", encoding="utf-8") as handle:
        handle.write((tmp_path / "tail.csv").read_text())  # row 5
    result = read_salesforce({OPPORTUNITY: [path]}, fixture_project)
    assert result.deals[["deal_id", "source_row"]].values.tolist() == [["A", 2], ["B", 5]]
    codes = dict(zip(result.quarantine["source_row"], result.quarantine["reason_code"]))
    assert codes == {3: "blank_row", 4: "malformed_row"}
    ragged = result.quarantine.loc[result.quarantine["source_row"] == 4].iloc[0]
    assert "3 fields" in ragged["reason"] and "9" in ragged["reason"]
    assert json.loads(ragged["raw_record"]) == {"Id": "X", "Name": "too", "StageName": "few"}
    (report,) = result.files
    assert (report.rows_read, report.rows_accepted, report.rows_quarantined) == (4, 2, 2)


def test_unparseable_values_name_column_and_value(tmp_path, fixture_project):
    bad_date = _opp("A")
    bad_date[6] = "31/12/2023"
    bad_bool = _opp("B")
    bad_bool[7] = "maybe"
    blank_stage = _opp("C", stage="")
    path = _write(tmp_path / "Opportunity.csv", [OPP_HEADER, bad_date, bad_bool, blank_stage, _opp("D")])
    result = read_salesforce({OPPORTUNITY: [path]}, fixture_project)
    q = result.quarantine.set_index("source_row")
    assert q.loc[2, "reason_code"] == "unparseable_date" and q.loc[2, "column"] == "CreatedDate"
    assert "31/12/2023" in q.loc[2, "reason"]
    assert q.loc[3, "reason_code"] == "unparseable_boolean" and q.loc[3, "column"] == "IsClosed"
    assert q.loc[4, "reason_code"] == "missing_required_value" and q.loc[4, "column"] == "StageName"
    assert result.deals["deal_id"].tolist() == ["D"]


def test_users_with_first_and_last_name(tmp_path, fixture_project):
    opp = _opp("A")
    header = OPP_HEADER + ["OwnerId"]
    _write(tmp_path / "Opportunity.csv", [header, opp + ["005X"]])
    _write(tmp_path / "User.csv", [["Id", "Username", "FirstName", "LastName"], ["005X", "x@e.com", "Xu", "Li"]])
    result = read_exports(tmp_path, fixture_project)
    assert result.deals["owner"].tolist() == ["Xu Li"]


def test_unconfigured_pipeline_without_sort_order_is_refused(tmp_path, fixture_project):
    header = [c for c in OPP_HEADER if c != "StageSortOrder"]
    row = [v for c, v in zip(OPP_HEADER, _opp("A")) if c != "StageSortOrder"]
    path = _write(tmp_path / "Opportunity.csv", [header, row])
    with pytest.raises(ExportFormatError, match=r"Opportunity\.csv.*'Default'.*StageSortOrder"):
        read_salesforce({OPPORTUNITY: [path]}, fixture_project)


def test_history_without_opportunity_file_is_refused(tmp_path, fixture_project):
    path = _write(tmp_path / "OpportunityHistory.csv", [["OpportunityId", "CreatedDate", "StageName"], ["A", "2024-01-01", "X"]])
    with pytest.raises(ExportFormatError, match="no Opportunity.csv"):
        read_salesforce({HISTORY: [path]}, fixture_project)


def test_value_parsers():
    stamps, bad = parse_timestamps(
        pd.Series(["2024-03-01 10:00:00", "2024-03-01T10:00:00Z", "2024-03-01T10:00:00.000+0200", "2024-03-01", "", "soon"])
    )
    assert stamps.tolist()[:4] == [T("2024-03-01 10:00"), T("2024-03-01 10:00"), T("2024-03-01 08:00"), T("2024-03-01")]
    assert pd.isna(stamps.iloc[4]) and pd.isna(stamps.iloc[5])
    assert bad.tolist() == [False, False, False, False, False, True]
    flags, bad = parse_booleans(pd.Series(["1", "0", "TRUE", "false", "", "yes"]))
    assert flags.tolist()[:4] == [True, False, True, False]
    assert bad.tolist() == [False, False, False, False, False, True]


def test_unconfigured_pipeline_with_only_closed_deals_is_quarantined(tmp_path, fixture_project):
    """Without an open deal the export gives no open-stage order: the deals wait in quarantine."""
    header = OPP_HEADER + ["Pipeline__c"]
    rows = [
        _opp("A", stage="Closed Won", sort="9", closed="1") + ["Legacy"],
        _opp("B", stage="Prospecting") + ["New Business"],
    ]
    path = _write(tmp_path / "Opportunity.csv", [header, *rows])
    result = read_salesforce({OPPORTUNITY: [path]}, fixture_project)
    assert result.deals["deal_id"].tolist() == ["B"]
    assert result.pipelines == []
    (reason,) = result.quarantine["reason"]
    assert result.quarantine["reason_code"].tolist() == ["unknown_stage"]
    assert "'Legacy'" in reason and "configure it under [[pipelines]]" in reason


def test_history_rows_sharing_one_timestamp(tmp_path, fixture_project):
    """Three stage changes saved at the same second: kept in file order, the stays before the
    last change last 0 days, nothing is invented."""
    _write(tmp_path / "Opportunity.csv", [OPP_HEADER + ["Pipeline__c"], _opp("A", stage="Proposal/Price Quote", sort="3") + ["New Business"]])
    header = ["OpportunityId", "CreatedDate", "StageName", "CloseDate"]
    at = "2024-01-02 03:04:05"
    rows = [["A", at, "Prospecting", "2024-06-30"], ["A", at, "Qualification", "2024-06-30"], ["A", at, "Proposal/Price Quote", "2024-06-30"]]
    _write(tmp_path / "OpportunityHistory.csv", [header, *rows])
    result = read_exports(tmp_path, fixture_project)
    deal = _deal(result, "A")
    assert deal["last_stage_change_at"] == T(at)
    prepared = prepare_history(result.deals, result.history, result.stages)
    events = stage_events(prepared, T("2024-01-03"))
    assert events["stage"].tolist() == ["Prospecting", "Qualification", "Proposal/Price Quote"]
    assert events["days_in_stage"].tolist()[:2] == [0.0, 0.0]
    # The last stay runs to the end of 2024-01-03: 1 day 20 h 55 min 55 s (less 1 microsecond).
    assert events["days_in_stage"].iloc[2] == pytest.approx(1 + (20 * 3600 + 55 * 60 + 55) / 86400, abs=1e-6)
