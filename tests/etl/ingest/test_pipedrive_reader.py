"""The Pipedrive deals export reader on hand-written exports.

Fixture tests/fixtures/pipedrive (config dealcast.toml: reporting currency USD; pipeline
"Enterprise" configured with Discovery, Negotiation, Closed Won, Closed Lost; "Partners" ordered by
[sources.pipedrive] stage_order = Referral, Joint Pitch, Contract; "Sales" not configured).

exports/deals-export.csv, the export's header spellings (spreadsheet row: deal):
  2  101  Sales, Qualified, Open, 12000 USD, probability 20
  3  102  Sales, Proposal Made, WON at 2024-04-15 16:30, 30000 EUR, probability 60
  4  103  Sales, Contact Made, lost at 2024-03-20 11:00 "Price too high", 8000 USD, probability 40
  5  104  Sales, Contact Made, Open, 5000.50 USD, probability blank
  6  105  Partners, Referral, Open, 15000 USD, probability 30
  7  106  Partners, Joint Pitch, Won at 2024-05-02 10:00, 22000 EUR, probability 70
  8  107  Value "12,5k"                          -> quarantined unparseable_amount
  9  108  status Deleted                         -> quarantined deleted_in_crm
 10  109  probability 150                        -> quarantined probability_out_of_range
 11  110  Partners, stage Handshake              -> quarantined unknown_stage
exports/deals-import.csv, import-template spellings in mixed case (Deal - Currency, Deal - Add
time, Organization - Name, "Deal -  Pipeline"):
  2  201  Sales, Proposal Made, open, 40000 USD, no probability column
  3  102  again                                  -> quarantined duplicate_id (first: export row 3)
  4  202  Sales, Won without a Won time, currency blank
  5  203  Enterprise (configured), won at 2024-03-28 15:00

"Sales" stages typical probabilities (accepted rows): Qualified 20, Contact Made 40 (103; 104 is
blank), Proposal Made 60 -> ordered Qualified, Contact Made, Proposal Made (first appearance is
Qualified, Proposal Made, Contact Made), then Won (4) and Lost (5).
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import etl.ingest.exports
from etl.config import ConfigError, load_project_config
from etl.ingest.exports import detect_format, read_exports
from etl.pipeline_state import prepare_history
from etl.ingest.readers import ExportFormatError, salesforce
from etl.ingest.csvfiles import CsvHeader
from etl.ingest.readers.pipedrive import (
    DEALS,
    READER,
    PipedriveSourceConfig,
    detect,
    normalise_header,
    read_pipedrive,
    resolve_headers,
)
from etl.schema import DEAL_COLUMNS, DEAL_HISTORY_COLUMNS, QUARANTINE_COLUMNS

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "pipedrive"
EXPORTS = FIXTURES / "exports"
EXPORT_FILE = EXPORTS / "deals-export.csv"
IMPORT_FILE = EXPORTS / "deals-import.csv"
T = pd.Timestamp

EXPORT_HEADER = (
    "Deal - ID,Deal - Title,Deal - Value,Deal - Currency of Value,Deal - Stage,Deal - Pipeline,Deal - Status,"
    "Deal - Won time,Deal - Lost time,Deal - Lost reason,Deal - Expected close date,Deal - Deal created,"
    "Deal - Owner,Deal - Probability,Deal - Organization,Deal - Label,Deal - Close time"
)
MINIMAL_HEADER = "Deal - ID,Deal - Stage,Deal - Pipeline,Deal - Status,Deal - Deal created,Deal - Probability"


@pytest.fixture(scope="module")
def project():
    return load_project_config(FIXTURES / "dealcast.toml")


@pytest.fixture(scope="module")
def result(project):
    return read_pipedrive({DEALS: [EXPORT_FILE, IMPORT_FILE]}, project)


def _deal(result, deal_id: str) -> pd.Series:
    rows = result.deals.loc[result.deals["deal_id"] == deal_id]
    assert len(rows) == 1, deal_id
    return rows.iloc[0]


def _header(line: str, path: str = "deals.csv") -> CsvHeader:
    delimiter = ";" if line.count(";") > line.count(",") else ","
    return CsvHeader(
        path=Path(path),
        columns=tuple(c.strip() for c in line.split(",")),
        line=line,
        likely_delimiter=delimiter,
    )


# --------------------------------------------------------------------------------------------
# Detection and header matching


def test_detect_accepts_export_and_template_spellings():
    assert detect(_header(EXPORT_HEADER), Path("deals.csv")) == DEALS
    template = "Deal - Title,Deal - Value,Deal - Currency,Deal - Stage,Deal - Status,Organization - Name"
    assert detect(_header(template), Path("deals.csv")) == DEALS
    # Without the prefix, recognised by a header only Pipedrive uses.
    assert detect(_header("ID,Title,Stage,Pipeline,Status,Won time,Value"), Path("x.csv")) == DEALS
    assert detect(_header(EXPORT_HEADER.replace(",", ";")), Path("deals.csv")) == DEALS
    assert detect(None, Path("deals.csv")) is None


def test_detect_rejects_other_crms_and_generic_files():
    salesforce_header = "Id,Name,StageName,Amount,CloseDate,CreatedDate,IsClosed,IsWon,Probability"
    hubspot_header = (
        'Record ID,Deal Name,Deal Stage,Pipeline,Amount,Close Date,Create Date,Deal owner,'
        '"Date entered ""Qualified (Sales Pipeline)"""'
    )
    generic = "id,stage,status,amount,created"
    for line in (salesforce_header, hubspot_header, generic):
        assert detect(_header(line), Path("export.csv")) is None, line


def test_header_matching_is_tolerant():
    assert normalise_header("  DEAL -  Won   Time ") == "won time"
    assert normalise_header("Deal-Title") == "title"
    assert normalise_header("Organization - Name") == "organization - name"
    columns = ("deal - id", " Deal - CURRENCY ", "Add time", "Organization - Name", "Deal - Label")
    assert resolve_headers(columns) == {
        "id": "deal - id",
        "currency": " Deal - CURRENCY ",
        "created": "Add time",
        "organization": "Organization - Name",
    }
    # The export spelling wins over the template's when a file has both.
    both = resolve_headers(("Deal - Currency", "Deal - Currency of Value", "Deal - Add time", "Deal - Deal created"))
    assert both["currency"] == "Deal - Currency of Value"
    assert both["created"] == "Deal - Deal created"


# --------------------------------------------------------------------------------------------
# The hand-written export


def test_identity_and_quarantine(result):
    by_file = {f.path.name: (f.rows_read, f.rows_accepted, f.rows_quarantined) for f in result.files}
    assert by_file == {"deals-export.csv": (10, 6, 4), "deals-import.csv": (4, 3, 1)}
    assert sorted(result.deals["deal_id"]) == ["101", "102", "103", "104", "105", "106", "201", "202", "203"]
    quarantined = {
        (Path(f).name, r): (code, column)
        for f, r, code, column in result.quarantine[["source_file", "source_row", "reason_code", "column"]].itertuples(index=False)
    }
    assert quarantined == {
        ("deals-export.csv", 8): ("unparseable_amount", "Deal - Value"),
        ("deals-export.csv", 9): ("deleted_in_crm", "Deal - Status"),
        ("deals-export.csv", 10): ("probability_out_of_range", "Deal - Probability"),
        ("deals-export.csv", 11): ("unknown_stage", "Deal - Stage"),
        ("deals-import.csv", 3): ("duplicate_id", "Deal - ID"),
    }
    reasons = dict(zip(result.quarantine["source_row"], result.quarantine["reason"]))
    assert "'12,5k'" in reasons[8]
    assert "'Handshake'" in reasons[11] and "Referral, Joint Pitch, Contract" in reasons[11]
    assert "deals-export.csv row 3" in reasons[3]
    assert list(result.quarantine.columns) == list(QUARANTINE_COLUMNS)


def test_canonical_frames_and_no_history(result):
    assert list(result.deals.columns) == list(DEAL_COLUMNS)
    assert result.deals.dtypes.astype(str).to_dict() == DEAL_COLUMNS
    assert (result.deals["source_system"] == "pipedrive").all()
    assert not result.deals["has_history"].any()
    assert result.history.empty and list(result.history.columns) == list(DEAL_HISTORY_COLUMNS)
    assert (result.deals["push_count"] == 0).all()
    assert result.deals["forecast_category"].isna().all()


def test_stage_catalogue(result):
    pipelines = {p.name: p for p in result.pipelines}
    assert sorted(pipelines) == ["Partners", "Sales"]  # Enterprise is configured, not built
    sales = pipelines["Sales"]
    assert sales.open_stages == ("Qualified", "Contact Made", "Proposal Made")
    assert (sales.won_stage, sales.lost_stage) == ("Won", "Lost")
    assert sales.probabilities == {"Qualified": 0.2, "Contact Made": 0.4, "Proposal Made": 0.6}
    partners = pipelines["Partners"]
    assert partners.open_stages == ("Referral", "Joint Pitch", "Contract")
    assert partners.probabilities["Referral"] == 0.3 and partners.probabilities["Joint Pitch"] == 0.7
    assert np.isnan(partners.probabilities["Contract"])


def test_open_deals(result):
    d = _deal(result, "101")
    assert (d["pipeline"], d["stage"], d["stage_order"], d["status"]) == ("Sales", "Qualified", 1, "open")
    assert (d["deal_name"], d["account"], d["owner"]) == ("Acme renewal", "Acme Corp", "Ann Lee")
    assert (d["amount"], d["currency"], d["amount_reporting"]) == (12000.0, "USD", 12000.0)
    assert d["crm_probability"] == 0.2
    assert d["created_at"] == T("2024-03-01 09:00:00")
    assert d["expected_close_date"] == T("2024-06-30")
    assert pd.isna(d["closed_at"]) and pd.isna(d["last_stage_change_at"]) and pd.isna(d["lost_reason"])

    # Blank probability -> the stage's default (Contact Made, typical 40).
    d = _deal(result, "104")
    assert (d["stage"], d["stage_order"], d["amount"], d["crm_probability"]) == ("Contact Made", 2, 5000.5, 0.4)

    d = _deal(result, "105")
    assert (d["pipeline"], d["stage"], d["stage_order"], d["crm_probability"]) == ("Partners", "Referral", 1, 0.3)

    # Import-template file: Deal - Add time, Organization - Name; no probability column.
    d = _deal(result, "201")
    assert (d["stage"], d["stage_order"], d["crm_probability"]) == ("Proposal Made", 3, 0.6)
    assert (d["account"], d["created_at"], d["amount"]) == ("Soylent", T("2024-04-01 10:00:00"), 40000.0)


def test_closed_deals(result):
    d = _deal(result, "102")  # status WON, EUR
    assert (d["status"], d["stage"], d["stage_order"]) == ("won", "Won", 4)
    assert d["closed_at"] == T("2024-04-15 16:30:00") == d["last_stage_change_at"]
    assert (d["amount"], d["currency"]) == (30000.0, "EUR")
    assert np.isnan(d["amount_reporting"])
    assert d["crm_probability"] == 0.6
    assert d["source_row"] == 3 and d["source_file"].endswith("deals-export.csv")

    d = _deal(result, "103")  # status lost, with a reason
    assert (d["status"], d["stage"], d["stage_order"]) == ("lost", "Lost", 5)
    assert d["closed_at"] == T("2024-03-20 11:00:00")
    assert d["lost_reason"] == "Price too high"
    assert d["crm_probability"] == 0.4

    d = _deal(result, "106")  # Partners, 3 open stages -> Won is 4
    assert (d["pipeline"], d["stage"], d["stage_order"], d["currency"]) == ("Partners", "Won", 4, "EUR")
    assert d["closed_at"] == T("2024-05-02 10:00:00")

    d = _deal(result, "202")  # won without Won time: kept, closed_at blank; blank currency -> USD
    assert (d["status"], d["stage"], d["currency"], d["amount_reporting"]) == ("won", "Won", "USD", 9000.0)
    assert pd.isna(d["closed_at"])
    assert d["crm_probability"] == 1.0  # blank probability -> the won stage's 1

    d = _deal(result, "203")  # configured pipeline: its own won stage name
    assert (d["pipeline"], d["stage"], d["stage_order"]) == ("Enterprise", "Closed Won", 3)
    assert d["closed_at"] == T("2024-03-28 15:00:00")


def test_prepare_history_gives_only_what_is_known(result, project):
    catalog = project.stages
    for pipeline in result.pipelines:
        catalog = catalog.with_pipeline(pipeline)
    prepared = prepare_history(result.deals, result.history, catalog)
    rows = {
        deal: list(zip(part["changed_at"], part["stage"].astype(object).where(part["stage"].notna(), None)))
        for deal, part in prepared.groupby("deal_id")
    }
    assert rows["101"] == [(T("2024-03-01 09:00:00"), "Qualified")]
    assert rows["102"] == [(T("2024-02-10 10:00:00"), None), (T("2024-04-15 16:30:00"), "Won")]
    assert rows["103"] == [(T("2024-01-15 08:30:00"), None), (T("2024-03-20 11:00:00"), "Lost")]


# --------------------------------------------------------------------------------------------
# Through ingest


def test_ingest_end_to_end(tmp_path, project, monkeypatch):
    """Through `etl.ingest.exports`: detection among other files, the currency step converting EUR deals
    (rates: EUR 1.10 from 2024-04-01, 1.05 from 2024-05-01), the row identity per file."""
    monkeypatch.setattr(etl.ingest.exports, "READERS", (salesforce.READER, READER))
    for path in (EXPORT_FILE, IMPORT_FILE):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "notes.csv").write_text("a,b\n1,2\n")
    (tmp_path / "rates.csv").write_text("date,currency,rate\n2024-04-01,EUR,1.10\n2024-05-01,EUR,1.05\n")
    with_rates = type(project)(**{**project.__dict__, "rates_file": "rates.csv"})
    assert detect_format(tmp_path / "deals-import.csv") == DEALS
    ingested = read_exports(tmp_path, with_rates, as_of=dt.date(2024, 6, 1))
    assert sorted(ingested.deals["deal_id"]) == ["101", "102", "103", "104", "105", "106", "201", "202", "203"]
    assert len(ingested.quarantine) == 5
    assert sorted(p.name for p in ingested.skipped_files) == ["notes.csv", "rates.csv"]
    assert {"Enterprise", "Sales", "Partners"} <= set(ingested.stages.names)
    assert ingested.stages["Sales"].order_of("Proposal Made") == 3
    reporting = dict(zip(ingested.deals["deal_id"], ingested.deals["amount_reporting"]))
    assert reporting["102"] == pytest.approx(30000 * 1.10)  # won 2024-04-15
    assert reporting["106"] == pytest.approx(22000 * 1.05)  # won 2024-05-02
    assert reporting["101"] == 12000.0
    counts = {f.path.name: (f.rows_read, f.rows_accepted, f.rows_quarantined) for f in ingested.files}
    assert counts == {"deals-export.csv": (10, 6, 4), "deals-import.csv": (4, 3, 1)}


# --------------------------------------------------------------------------------------------
# Settings, stage-order fallback and unreadable files


def _write(tmp_path: Path, header: str, rows: list[str], name: str = "deals.csv") -> Path:
    path = tmp_path / name
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def test_inferred_order_falls_back_to_first_appearance(tmp_path, project, caplog):
    path = _write(
        tmp_path,
        MINIMAL_HEADER,
        [
            "1,Demo,Field,open,2024-01-01,50",
            "2,Intro,Field,open,2024-01-02,50",  # same probability as Demo: not told apart
            "3,Demo,Field,won,2024-01-03,",
        ],
    )
    with caplog.at_level(logging.WARNING, logger="etl.ingest.readers.pipedrive"):
        out = read_pipedrive({DEALS: [path]}, project)
    (field,) = out.pipelines
    assert field.open_stages == ("Demo", "Intro")
    assert any("first appear" in r.getMessage() for r in caplog.records)
    assert out.quarantine.empty
    assert dict(zip(out.deals["deal_id"], out.deals["stage_order"])) == {"1": 1, "2": 2, "3": 3}


def test_settings_and_semicolon_file(tmp_path, project):
    path = tmp_path / "deals.csv"
    path.write_text(
        "ID;Stage;Status;Add time;Value;Currency\n7;Intro;open;2024-02-01 10:00:00;100;\n", encoding="utf-8"
    )
    configured = load_project_config(FIXTURES / "dealcast.toml")
    raw = {**configured.sources, "pipedrive": {"default_pipeline": "Inbound", "default_currency": "eur"}}
    custom = type(configured)(**{**configured.__dict__, "sources": raw})
    out = read_pipedrive({DEALS: [path]}, custom)
    d = out.deals.iloc[0]
    assert (d["pipeline"], d["currency"], d["amount"]) == ("Inbound", "EUR", 100.0)
    assert np.isnan(d["amount_reporting"])

    bad = type(configured)(**{**configured.__dict__, "sources": {"pipedrive": {"stage_orders": {}}}})
    with pytest.raises(ConfigError, match="unknown setting"):
        PipedriveSourceConfig.from_project(bad)
    bad = type(configured)(**{**configured.__dict__, "sources": {"pipedrive": {"stage_order": {"X": "A"}}}})
    with pytest.raises(ConfigError, match="stage_order"):
        PipedriveSourceConfig.from_project(bad)
    assert PipedriveSourceConfig.from_project(configured).stage_order == {"Partners": ("Referral", "Joint Pitch", "Contract")}


def test_missing_required_column_names_file_and_columns(tmp_path, project):
    path = _write(tmp_path, "Deal - Title,Deal - Stage,Deal - Status,Deal - Won time", ["A,Intro,open,"])
    with pytest.raises(ExportFormatError) as err:
        read_pipedrive({DEALS: [path]}, project)
    message = str(err.value)
    assert str(path) in message and "line 1" in message
    assert "Deal - ID" in message and "Deal - Deal created" in message


def test_row_checks(tmp_path, project):
    path = _write(
        tmp_path,
        MINIMAL_HEADER,
        [
            ",Intro,Field,open,2024-01-01,10",  # row 2: missing id
            "2,Intro,Field,,2024-01-01,10",  # row 3: blank status
            "3,Intro,Field,pending,2024-01-01,10",  # row 4: not open/won/lost
            "4,Intro,Field,open,,10",  # row 5: no creation time
            "5,,Field,open,2024-01-01,10",  # row 6: open deal without a stage
            "6,Intro,Field,open,31/01/2024,10",  # row 7: unparseable date
            ",,,,,",  # row 8: blank
            "8,Intro,Field,open,2024-01-01,ten",  # row 9: unparseable probability
            "9,Intro,Field,lost,2024-01-01,",  # kept: a lost deal
        ],
    )
    out = read_pipedrive({DEALS: [path]}, project)
    codes = dict(zip(out.quarantine["source_row"], out.quarantine["reason_code"]))
    assert codes == {
        2: "missing_id",
        3: "missing_required_value",
        4: "invalid_status",
        5: "missing_required_value",
        6: "missing_required_value",
        7: "unparseable_date",
        8: "blank_row",
        9: "unparseable_number",
    }
    assert out.deals["deal_id"].tolist() == ["9"]
    assert out.files[0].rows_read == 9 and out.files[0].rows_accepted == 1 and out.files[0].rows_quarantined == 8
