"""The mapped-CSV reader: any CSV through a mapping file (docs/mapping.md).

Real data: ../shared/data/maven_crm through the shipped examples/maven_crm/mapping.toml; the
expected figures come from the data set's README (8,800 deals: 4,238 won, 2,473 lost, 2,089 open)
or are recounted here from the raw files with Python's csv module.

Hand-written fixtures (tests/fixtures/mapped, config dealcast.toml with reporting currency EUR):

french/ventes_2024.csv: Windows-1252, ';', decimal commas, day-first dates, oui/non booleans
(Gagnée = won, Clôturée = closed), French stage names (mapping mappings/french.toml):
  2  F-001 open, Génération de prospects, "1 234,56 €" -> 1234.56, created 03/02/2024, close 31/05/2024, 10 %
  3  F-002 open, Négociation, "1.234,56" -> 1234.56, created 15/01/2024, close 28/06/2024, 60 %
  4  F-003 Signature, Gagnée oui, Clôturée oui -> won, stage Gagné, "12<NBSP>500 €" -> 12500, closed 13/03/2024
  5  F-004 Démonstration, Gagnée non, Clôturée oui -> lost, stage Perdu, "980,5" -> 980.5, closed 05/04/2024;
           its name holds a ';' inside quotes
  6  F-005 "12,34,5"                   -> unparseable_amount
  7  F-006 created 31/02/2024          -> unparseable_date
  8  F-007 Gagnée "peut-être"          -> unparseable_boolean
  9  F-008 stage "Inconnue"            -> unknown_stage
 10  F-001 again                       -> duplicate_id (row 2 kept)
 11  F-009 "prise de contact" (case), "€ 2 000" -> 2000, Devise blank -> EUR (default), no
           probability -> the stage's 0.20, no close date
 12  F-010 "Prospection" (value map) -> Génération de prospects, "0,99", created 29/02/2024, no account

tab/deals_export.tsv: UTF-8 with BOM, tab-separated, month-first dates (%m/%d/%Y), a status
column, owners from tab/owners.tsv joined on owner_id (mapping mappings/tab.toml):
  2  T1 Demo, Open, "$1,500.00" -> 1500, created 03/04/2024 = 4 March, close 06/30/2024, 0.4, Ann Lee / East
  3  T2 Proposal, Won -> Closed Won, 2500, closed 04/01/2024 = 1 April, Bob Ray / West
  4  T3 Lead, "Closed - Lost" (value map) -> Closed Lost, 700, closed 02/20/2024, owner U9 in no lookup
  5  T4 Lead, Open, blank amount (kept, NaN), no close date, probability from the stage (0.1)
  6  T5 stage Closed Won but state Open -> status_stage_mismatch
  7  (empty line)                      -> blank_row
  8  T6 created 13/01/2024 (no month 13) -> unparseable_date
owners.tsv: U1 Ann Lee East, U2 Bob Ray West, a blank key (missing_id), U1 again (duplicate_id).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import etl.ingest.exports
from etl.config import ConfigError, load_project_config
from etl.ingest.exports import read_exports
from etl.pipeline_state import prepare_history
from etl.ingest.readers import ExportFormatError
from etl.ingest.readers import mapped
from etl.ingest.csvfiles import infer_dayfirst, parse_any_booleans, parse_dates, parse_locale_numbers
from etl.schema import DEAL_COLUMNS

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures" / "mapped"
MAVEN = ROOT.parent / "shared" / "data" / "maven_crm"
MAVEN_MAPPING = ROOT / "examples" / "maven_crm" / "mapping.toml"
T = pd.Timestamp


def _text(values: list[str]) -> pd.Series:
    return pd.Series(values, dtype="str")


# --------------------------------------------------------------------------------------------
# Value parsing helpers


def test_locale_numbers_french_and_english_layouts():
    values, bad = parse_locale_numbers(
        _text(["1 234,56", "1.234,56", "1\u00a0234,56 €", "€ 12,5", "-3", "", "abc", "1.2345,6", "1\u202f000"]),
        decimal=",",
        thousands=[" ", "."],
    )
    expected = [1234.56, 1234.56, 1234.56, 12.5, -3.0, np.nan, np.nan, np.nan, 1000.0]
    np.testing.assert_allclose(values.to_numpy(), expected, equal_nan=True)
    assert bad.tolist() == [False, False, False, False, False, False, True, True, False]

    values, bad = parse_locale_numbers(_text(["$1,234.50", "£3", "1 000", "12,5"]), decimal=".", thousands=",")
    np.testing.assert_allclose(values.to_numpy(), [1234.5, 3.0, np.nan, np.nan], equal_nan=True)
    assert bad.tolist() == [False, False, True, True]


def test_dates_day_first_month_first_and_explicit_format():
    column = _text(["31/05/2024", "01/06/2024 14:30", "2024-01-02", "", "x"])
    assert infer_dayfirst(column) is True
    assert infer_dayfirst(_text(["05/31/2024", "06/01/2024"])) is False
    assert infer_dayfirst(_text(["05/06/2024"])) is None
    values, bad = parse_dates(column, dayfirst=True)
    assert values.tolist()[:3] == [T("2024-05-31"), T("2024-06-01 14:30"), T("2024-01-02")]
    assert bad.tolist() == [False, False, False, False, True]
    values, bad = parse_dates(_text(["05/31/2024", "31/05/2024"]), date_format="%m/%d/%Y")
    assert values.iloc[0] == T("2024-05-31") and bad.tolist() == [False, True]


def test_booleans_in_any_spelling():
    values, bad = parse_any_booleans(_text(["Oui", "non", "X", "", "YES", "no", "1", "0", "True", "peut-être"]))
    assert values.tolist()[:9] == [True, False, True, pd.NA, True, False, True, False, True]
    assert bad.tolist() == [False] * 9 + [True]


# --------------------------------------------------------------------------------------------
# Hand-written fixtures


@pytest.fixture(scope="module")
def fixture_project():
    return load_project_config(FIXTURES / "dealcast.toml")


def _ingest(monkeypatch, project, exports: Path):
    monkeypatch.setattr(etl.ingest.exports, "READERS", (mapped.reader_for(project),))
    return read_exports(exports, project)


def _by_id(deals: pd.DataFrame) -> dict[str, pd.Series]:
    return {row["deal_id"]: row for _, row in deals.iterrows()}


def _quarantined(result, name: str) -> dict[int, str]:
    rows = result.quarantine.loc[result.quarantine["source_file"].str.endswith("/" + name)]
    return dict(zip(rows["source_row"].tolist(), rows["reason_code"].tolist()))


def test_french_windows_1252_export(monkeypatch, fixture_project):
    result = _ingest(monkeypatch, fixture_project, FIXTURES / "french")
    deals = _by_id(result.deals)
    assert sorted(deals) == ["F-001", "F-002", "F-003", "F-004", "F-009", "F-010"]
    expected = {
        #        row stage                      status  amount    created       close         closed        prob
        "F-001": (2, "Génération de prospects", "open", 1234.56, "2024-02-03", "2024-05-31", None, 0.10),
        "F-002": (3, "Négociation", "open", 1234.56, "2024-01-15", "2024-06-28", None, 0.60),
        "F-003": (4, "Gagné", "won", 12500.0, "2023-12-01", "2024-03-13", "2024-03-13", 1.0),
        "F-004": (5, "Perdu", "lost", 980.5, "2023-11-20", "2024-04-05", "2024-04-05", 0.0),
        "F-009": (11, "Prise de contact", "open", 2000.0, "2024-03-05", None, None, 0.20),
        "F-010": (12, "Génération de prospects", "open", 0.99, "2024-02-29", None, None, 0.05),
    }
    orders = {"Génération de prospects": 1, "Prise de contact": 3, "Négociation": 5, "Gagné": 7, "Perdu": 8}
    for deal_id, (row, stage, status, amount, created, close, closed, prob) in expected.items():
        deal = deals[deal_id]
        assert deal["source_row"] == row, deal_id
        assert deal["stage"] == stage and deal["status"] == status, deal_id
        assert deal["stage_order"] == orders[stage], deal_id
        assert deal["amount"] == pytest.approx(amount) and deal["amount_reporting"] == pytest.approx(amount), deal_id
        assert deal["currency"] == "EUR", deal_id
        assert deal["created_at"] == T(created), deal_id
        assert (pd.isna(deal["expected_close_date"]) if close is None else deal["expected_close_date"] == T(close)), deal_id
        assert (pd.isna(deal["closed_at"]) if closed is None else deal["closed_at"] == T(closed)), deal_id
        assert deal["crm_probability"] == pytest.approx(prob), deal_id
        assert deal["pipeline"] == "Ventes France" and deal["source_system"] == "tableur_fr"
        assert not deal["has_history"]
    assert deals["F-004"]["deal_name"] == "Audit; phase 2"
    assert deals["F-003"]["account"] == "Crédit Agricole" and deals["F-002"]["owner"] == "Jérôme Petit"
    assert pd.isna(deals["F-010"]["account"])
    assert _quarantined(result, "ventes_2024.csv") == {
        6: "unparseable_amount",
        7: "unparseable_date",
        8: "unparseable_boolean",
        9: "unknown_stage",
        10: "duplicate_id",
    }
    reasons = dict(zip(result.quarantine["source_row"], result.quarantine["reason"]))
    assert "'12,34,5'" in reasons[6] and "Montant" in reasons[6]
    assert "'31/02/2024'" in reasons[7]
    assert "row 2" in reasons[10]
    assert result.history.empty
    (report,) = result.files
    assert (report.format, report.rows_read, report.rows_accepted, report.rows_quarantined) == ("mapped", 11, 6, 5)
    # The French pipeline is declared in the mapping, with its localised stage names in order.
    pipeline = result.stages["Ventes France"]
    assert pipeline.open_stages[2:4] == ("Prise de contact", "Démonstration")
    assert (pipeline.won_stage, pipeline.lost_stage) == ("Gagné", "Perdu")


def test_tab_separated_export_with_status_column_and_owner_lookup(monkeypatch, fixture_project):
    result = _ingest(monkeypatch, fixture_project, FIXTURES / "tab")
    deals = _by_id(result.deals)
    assert sorted(deals) == ["T1", "T2", "T3", "T4"]
    t1, t2, t3, t4 = (deals[k] for k in ("T1", "T2", "T3", "T4"))
    assert (t1["stage"], t1["status"], t1["amount"], t1["crm_probability"]) == ("Demo", "open", 1500.0, 0.4)
    assert (t1["created_at"], t1["expected_close_date"]) == (T("2024-03-04"), T("2024-06-30"))
    assert (t1["owner"], t1["team"]) == ("Ann Lee", "East")
    assert (t2["stage"], t2["status"], t2["closed_at"], t2["owner"], t2["team"]) == (
        "Closed Won", "won", T("2024-04-01"), "Bob Ray", "West",
    )
    assert (t3["stage"], t3["status"], t3["closed_at"], t3["amount"]) == ("Closed Lost", "lost", T("2024-02-20"), 700.0)
    assert pd.isna(t3["owner"]) and pd.isna(t3["team"])
    assert np.isnan(t4["amount"]) and t4["crm_probability"] == pytest.approx(0.1) and pd.isna(t4["expected_close_date"])
    assert set(result.deals["source_system"]) == {"inside_crm"}
    assert _quarantined(result, "deals_export.tsv") == {6: "status_stage_mismatch", 7: "blank_row", 8: "unparseable_date"}
    assert _quarantined(result, "owners.tsv") == {4: "missing_id", 5: "duplicate_id"}
    reports = {r.path.name: r for r in result.files}
    assert (reports["deals_export.tsv"].rows_read, reports["deals_export.tsv"].rows_accepted) == (7, 4)
    assert reports["owners.tsv"].format == "mapped_lookup"
    assert (reports["owners.tsv"].rows_read, reports["owners.tsv"].rows_accepted, reports["owners.tsv"].rows_quarantined) == (4, 2, 2)


def test_blank_created_at_is_quarantined_unless_the_mapping_says_otherwise(tmp_path, fixture_project):
    (tmp_path / "deals.csv").write_text(
        "id,stage,created,closed\nA,Won,2024-01-05,2024-02-01\nB,Open1,,\nC,Open1,2024-01-02,\n", encoding="utf-8"
    )
    body = (
        'file = "deals.csv"\n{rule}\n[pipeline]\nname = "P"\nstages = ["Open1"]\nwon_stage = "Won"\nlost_stage = "Lost"\n'
        '[columns]\ndeal_id = "id"\nstage = "stage"\ncreated_at = "created"\nclosed_at = "closed"\n'
    )
    files = {"mapped": [tmp_path / "deals.csv"]}
    for rule, expected in (("", None), ('created_at_when_blank = "earliest"', "2024-01-02"), ('created_at_when_blank = "latest"', "2024-02-01")):
        (tmp_path / "m.toml").write_text(body.format(rule=rule), encoding="utf-8")
        out = mapped.read_with([mapped.load_mapping(tmp_path / "m.toml")], files, fixture_project)
        if expected is None:
            assert out.deals["deal_id"].tolist() == ["A", "C"]
            assert out.quarantine["reason_code"].tolist() == ["implausible_date"]
            assert out.quarantine["source_row"].tolist() == [3]
        else:
            created = dict(zip(out.deals["deal_id"], out.deals["created_at"]))
            assert created["B"] == T(expected), rule


def test_mapping_errors_name_the_file_and_the_setting(tmp_path, fixture_project):
    bad = tmp_path / "bad.toml"
    bad.write_text('file = "x.csv"\ncolour = "blue"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.toml.*colour"):
        mapped.load_mapping(bad)
    spec = mapped.load_mapping(FIXTURES / "mappings" / "tab.toml")
    with pytest.raises(ExportFormatError, match=r"owners\.tsv"):
        mapped.read_with([spec], {"mapped": [FIXTURES / "tab" / "deals_export.tsv"]}, fixture_project)


# --------------------------------------------------------------------------------------------
# Maven CRM through the shipped mapping


@pytest.fixture(scope="module")
def maven_config(tmp_path_factory):
    if not MAVEN.is_dir():
        pytest.skip(f"shared data not found: {MAVEN}")
    folder = tmp_path_factory.mktemp("maven_config")
    config = folder / "dealcast.toml"
    config.write_text(
        f'[reporting]\ncurrency = "USD"\n\n[sources]\nmappings = ["{MAVEN_MAPPING.as_posix()}"]\n', encoding="utf-8"
    )
    return config


@pytest.fixture(scope="module")
def maven(maven_config):
    project = load_project_config(maven_config)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(etl.ingest.exports, "READERS", (mapped.reader_for(project),))
        return read_exports(MAVEN, project)


def _raw(name: str) -> list[dict[str, str]]:
    with open(MAVEN / name, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_maven_counts_and_status(maven):
    deals = maven.deals
    assert len(deals) == 8800
    assert deals["status"].value_counts().to_dict() == {"won": 4238, "lost": 2473, "open": 2089}
    assert maven.quarantine.empty
    assert maven.history.empty and not deals["has_history"].any()
    assert set(deals["source_system"]) == {"maven_crm"} and set(deals["pipeline"]) == {"Maven Sales"}
    assert list(deals.columns) == list(DEAL_COLUMNS)


def test_maven_products_accounts_and_lookups(maven):
    deals = maven.deals
    raw = _raw("sales_pipeline.csv")
    products = {row["product"]: row for row in _raw("products.csv")}
    # GTXPro (pipeline) and GTX Pro (products.csv) are one product.
    assert set(deals["product"]) == set(products)
    assert (deals["product"] == "GTX Pro").sum() == sum(r["product"] in ("GTXPro", "GTX Pro") for r in raw)
    # Blank accounts are kept as unknown.
    assert deals["account"].isna().sum() == 1425 == sum(r["account"] == "" for r in raw)
    # Every deal is valued at its product's list price, never at close_value.
    by_id = deals.set_index("deal_id")
    assert by_id.at["Z063OYW0", "amount"] == float(products["GTX Pro"]["sales_price"])  # close_value 4514
    lost = deals.loc[deals["status"] == "lost"]
    assert (lost["amount"] > 0).all()
    # Team (manager) and region by sales agent; the account's sector with the typo corrected.
    teams = {row["sales_agent"]: row for row in _raw("sales_teams.csv")}
    assert by_id.at["1C1I7A6R", "team"] == teams["Moses Frase"]["manager"]
    assert by_id.at["1C1I7A6R", "region"] == teams["Moses Frase"]["regional_office"]
    sectors = {row["account"]: row["sector"] for row in _raw("accounts.csv")}
    assert by_id.at["1C1I7A6R", "account_segment"] == sectors["Cancity"]
    assert "technolgy" not in set(deals["account_segment"].dropna())
    assert (deals["account_segment"] == "technology").sum() == sum(
        sectors.get(r["account"]) == "technolgy" for r in raw
    )


def test_maven_dates(maven):
    deals = maven.deals.set_index("deal_id")
    raw = _raw("sales_pipeline.csv")
    latest = max(max(r["engage_date"] for r in raw if r["engage_date"]), max(r["close_date"] for r in raw if r["close_date"]))
    prospecting = [r["opportunity_id"] for r in raw if r["deal_stage"] == "Prospecting"]
    assert len(prospecting) == 500
    assert (deals.loc[prospecting, "created_at"] == T(latest)).all()
    assert deals["created_at"].notna().all()
    first = raw[0]
    assert deals.at[first["opportunity_id"], "created_at"] == T(first["engage_date"])
    assert deals.at[first["opportunity_id"], "closed_at"] == T(first["close_date"])
    assert deals.loc[deals["status"] == "open", "closed_at"].isna().all()


def test_maven_reconciliation_per_file(maven):
    reports = {r.path.name: r for r in maven.files}
    expected = {"sales_pipeline.csv": ("mapped", 8800), "accounts.csv": ("mapped_lookup", 85),
                "products.csv": ("mapped_lookup", 7), "sales_teams.csv": ("mapped_lookup", 35)}
    assert set(reports) == set(expected)
    for name, (fmt, rows) in expected.items():
        report = reports[name]
        assert report.format == fmt, name
        assert report.rows_read == rows == len(_raw(name)), name
        assert report.rows_read == report.rows_accepted + report.rows_quarantined, name


def test_default_reader_detects_configured_mappings(monkeypatch, maven_config):
    monkeypatch.setenv("DEALCAST_CONFIG", str(maven_config))
    assert mapped.READER.detect(None, MAVEN / "sales_pipeline.csv") == "mapped"
    assert mapped.READER.detect(None, MAVEN / "accounts.csv") == "mapped_lookup"
    assert mapped.READER.detect(None, MAVEN / "quotas.csv") is None
    assert mapped.READER.lookup_formats == ("mapped_lookup",)


def test_maven_history_is_what_is_known_only(maven):
    prepared = prepare_history(maven.deals, maven.history, maven.stages)
    # One creation row per deal plus one closing row per closed deal: 8,800 + 4,238 + 2,473.
    assert len(prepared) == 8800 + 4238 + 2473
    closed_ids = set(maven.deals.loc[maven.deals["status"] != "open", "deal_id"])
    creation = prepared.drop_duplicates("deal_id", keep="first")
    assert creation.loc[creation["deal_id"].isin(closed_ids), "stage"].isna().all()
