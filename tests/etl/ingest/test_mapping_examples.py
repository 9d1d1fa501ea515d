"""The worked mapping examples shipped beside examples/maven_crm, on small realistic fixtures.

examples/olist_funnel on tests/fixtures/olist_funnel (20 leads, 5 in closed_deals.csv; the
export's end is 2018-06-12 16:40, the latest won_date; lost_after_days = 90):
  won  L01 (won 2018-01-20 10:15:02), L03, L07, L11, L13 (won 2018-06-12 16:40, the latest date)
  lost L02, L04, L05, L06, L08, L09, L10: first contact on or before 2018-03-01, so 90 days later
       (at the latest 2018-05-30, L10) is before the export's end; L02 (5 Jan) is lost on 5 Apr
  open L12 (15 Mar: 13 Jun is after the end), L14 ... L20
  creation-to-won: 5 of 20 leads.
examples/pipedrive_eu on tests/fixtures/pipedrive_eu (see its README for the table worked by hand).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pandas as pd
import pytest

from etl.config import Settings, load_project_config
from etl.ingest.crm_load import load_crm
from etl.ingest.exports import read_exports
from etl.ingest.readers import ExportFormatError

ROOT = Path(__file__).resolve().parents[3]
T = pd.Timestamp


def _lead(name: str) -> str:
    """The fixture's mql_id of lead `name` (an md5 hex digest, as Olist's ids look)."""
    return hashlib.md5(name.encode()).hexdigest()


def _settings(tmp_path: Path, exports: Path, mapping: Path | None, currency: str, as_of: dt.date) -> Settings:
    mappings = f'\n[sources]\nmappings = ["{mapping}"]\n' if mapping else ""
    (tmp_path / "dealcast.toml").write_text(f'[reporting]\ncurrency = "{currency}"\n{mappings}', encoding="utf-8")
    return Settings(load_project_config(tmp_path / "dealcast.toml"), exports, False, as_of, tmp_path)


@pytest.fixture
def olist(tmp_path):
    settings = _settings(
        tmp_path, ROOT / "tests" / "fixtures" / "olist_funnel", ROOT / "examples" / "olist_funnel" / "mapping.toml",
        "USD", dt.date(2018, 6, 30),
    )
    return load_crm(settings)


def test_olist_every_lead_is_a_deal_won_lost_or_open(olist):
    deals = olist.deals.set_index("deal_id")
    by_lead = {f"L{i:02d}": _lead(f"L{i:02d}") for i in range(1, 21)}
    status = {name: deals.loc[lead, "status"] for name, lead in by_lead.items()}
    assert sorted(n for n, s in status.items() if s == "won") == ["L01", "L03", "L07", "L11", "L13"]
    assert sorted(n for n, s in status.items() if s == "lost") == ["L02", "L04", "L05", "L06", "L08", "L09", "L10"]
    assert sorted(n for n, s in status.items() if s == "open") == ["L12", *[f"L{i}" for i in range(14, 21)]]
    assert deals.loc[by_lead["L01"], "closed_at"] == T("2018-01-20 10:15:02")
    assert deals.loc[by_lead["L13"], "closed_at"] == T("2018-06-12 16:40:00")
    assert deals.loc[by_lead["L02"], "closed_at"] == T("2018-04-05")
    assert deals.loc[by_lead["L10"], "closed_at"] == T("2018-05-30")
    assert pd.isna(deals.loc[by_lead["L12"], "closed_at"]) and deals.loc[by_lead["L12"], "stage"] == "MQL"
    assert deals.loc[by_lead["L05"], "lead_source"] is pd.NA and deals.loc[by_lead["L01"], "lead_source"] == "organic_search"
    assert deals.loc[by_lead["L02"], "created_at"] == T("2018-01-05")
    assert deals["amount"].isna().all() and deals["owner"].isna().all()
    won_share = (deals["status"] == "won").sum() / len(deals)
    assert won_share == 5 / 20
    # Every row read: 20 leads accepted as deals, 5 closed-deal rows as lookup entries.
    recon = olist.validation.reconciliation.set_index("source_file")
    assert sorted(zip(recon["rows_read"], recon["accepted"], recon["quarantined"])) == [(5, 5, 0), (20, 20, 0)]
    assert olist.publishable


def test_olist_history_is_creation_then_close(olist):
    lead = _lead("L02")
    rows = olist.history.loc[olist.history["deal_id"] == lead]
    assert list(zip(rows["changed_at"], rows["stage"].astype(object).where(rows["stage"].notna(), None))) == [
        (T("2018-01-05"), None), (T("2018-04-05"), "Lost"),
    ]


@pytest.fixture
def eu_exports():
    return ROOT / "tests" / "fixtures" / "pipedrive_eu"


def test_european_pipedrive_export_through_its_mapping(tmp_path, eu_exports):
    settings = _settings(tmp_path, eu_exports, ROOT / "examples" / "pipedrive_eu" / "mapping.toml", "EUR", dt.date(2024, 6, 1))
    result = read_exports(settings.exports_dir, settings.project)
    deals = result.deals.set_index("deal_id")
    assert list(deals.index) == ["1", "2", "3", "4", "6"]
    assert deals["deal_name"].tolist()[:2] == ["Müller GmbH – Rahmenvertrag", "Société Générale pilot"]
    assert deals["amount"].tolist() == [12500.0, 8400.5, 1250.0, 980.0, 25000.0]
    assert deals["status"].tolist() == ["won", "lost", "open", "open", "open"]
    assert deals["stage"].tolist() == ["Won", "Lost", "Qualified", "Demo Scheduled", "Negotiations Started"]
    assert deals["closed_at"].tolist()[:2] == [T("2024-04-03 16:30"), T("2024-03-20 11:00")]
    assert deals["created_at"].tolist() == [
        T("2024-01-15 09:12"), T("2024-02-01 10:00"), T("2024-03-05 14:45"), T("2024-03-12 08:30"), T("2024-03-20 16:05"),
    ]
    assert deals.loc["2", "lost_reason"] == "Zu teuer" and deals.loc["1", "owner"] == "Jörg Weiß"
    assert deals.loc["3", "crm_probability"] == 0.2 and pd.isna(deals.loc["4", "crm_probability"])
    assert result.quarantine["reason_code"].tolist() == ["excluded_by_filter"]
    assert result.quarantine["source_row"].tolist() == [6]
    assert [(f.rows_read, f.rows_accepted, f.rows_quarantined) for f in result.files] == [(6, 5, 1)]


def test_the_pipedrive_reader_refuses_the_european_file_and_points_to_a_mapping(tmp_path, eu_exports):
    settings = _settings(tmp_path, eu_exports, None, "EUR", dt.date(2024, 6, 1))
    with pytest.raises(ExportFormatError) as error:
        read_exports(settings.exports_dir, settings.project)
    message = str(error.value)
    assert "deals-2024-06-01.csv: column Deal - Value: 6 of 6 values" in message
    assert "'12.500,00'" in message and "decimal comma" in message
    assert "examples/pipedrive_eu/mapping.toml" in message and "docs/mapping.md" in message


@pytest.mark.parametrize(
    ("name", "text", "column", "example"),
    [
        (
            "hubspot.csv",
            "Record ID,Deal Name,Deal Stage,Pipeline,Amount,Create Date\n"
            '1,A,Closed won,Sales Pipeline,"1.234,56",2024-01-05\n2,B,Closed lost,Sales Pipeline,"99,5",2024-01-06\n',
            "Amount", "'1.234,56'",
        ),
        (
            "Opportunity.csv",
            "Id,Name,StageName,StageSortOrder,Amount,CloseDate,CreatedDate,IsClosed,IsWon\n"
            "006A,A,Prospecting,1,100,31/05/2024,15/01/2024 09:00,0,0\n006B,B,Prospecting,1,100,30/06/2024,16/01/2024 09:00,0,0\n",
            "CreatedDate", "'15/01/2024 09:00'",
        ),
    ],
)
def test_other_readers_refuse_regional_formats_too(tmp_path, name, text, column, example):
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / name).write_text(text, encoding="utf-8")
    settings = _settings(tmp_path, exports, None, "USD", dt.date(2024, 6, 1))
    with pytest.raises(ExportFormatError, match=f"{name}: column {column}: 2 of 2 values .*{example}.*mapping file"):
        read_exports(settings.exports_dir, settings.project)


def test_a_semicolon_separated_export_a_reader_cannot_split_suggests_a_mapping(tmp_path):
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "hubspot.csv").write_text(
        "Record ID;Deal Name;Deal Stage;Pipeline;Amount;Create Date\n1;A;Closed won;Sales Pipeline;1.234,56;05.01.2024\n",
        encoding="utf-8",
    )
    settings = _settings(tmp_path, exports, None, "USD", dt.date(2024, 6, 1))
    with pytest.raises(ExportFormatError) as error:
        read_exports(settings.exports_dir, settings.project)
    message = str(error.value)
    assert "the header is semicolon-separated; expected a comma-separated HubSpot deals export (header found" in message
    assert "Excel with European settings" in message and "examples/pipedrive_eu/mapping.toml" in message
