"""The raw Great Expectations suites each reader runs on its files as written: every reader's results
reach `IngestResult.raw_checks`, named by file and column header, and count exactly the values whose
written form is wrong (well-formed but impossible values, such as 31/02/2024 or a probability of 150,
are the parsers' and the canonical suite's business)."""

import datetime as dt
from pathlib import Path

import pandas as pd

from etl.config import load_project_config
from etl.ingest.exports import read_exports
from etl.validation.raw import RawRules, validate_raw_rows

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
AS_OF = dt.date(2026, 6, 30)


def _raw(folder: str) -> pd.DataFrame:
    path = FIXTURES / folder
    result = read_exports(path, load_project_config(path.parent / "dealcast.toml"), as_of=AS_OF)
    return result.raw_checks.set_index("check_name")


def test_pipedrive_raw_suite():
    raw = _raw("pipedrive/exports")
    assert raw.loc["raw[deals-export.csv].Deal - Value.number", "failing_rows"] == 1
    # '150' is a number: out of range, which the reader quarantines as probability_out_of_range.
    assert raw.loc["raw[deals-export.csv].Deal - Probability.number", "failing_rows"] == 0
    assert (raw["asset"] == "crm_exports").all() and (raw["severity"] == "row").all()


def test_mapped_french_raw_suite_uses_the_mappings_locale():
    raw = _raw("mapped/french")
    # "1 234,56"-style amounts are the mapping's locale and pass; one Montant is not a number at all.
    assert raw.loc["raw[ventes_2024.csv].Montant.number", "failing_rows"] == 1
    # 31/02/2024 is written like a date (the parser then finds no such day).
    assert raw.loc["raw[ventes_2024.csv].Date de création.date", "failing_rows"] == 0
    assert raw.loc["raw[ventes_2024.csv].Gagnée.boolean", "failing_rows"] == 1


def test_salesforce_raw_suite_covers_every_file():
    raw = _raw("salesforce/small")
    files = {name.split("]")[0] + "]" for name in raw.index}
    assert {"raw[Opportunity.csv]", "raw[OpportunityHistory.csv]"} <= files
    assert raw.loc["raw[Opportunity.csv].Amount.number", "failing_rows"] == 1


def test_forms_are_checked_per_file_on_distinct_shapes():
    frame = pd.DataFrame(
        {
            "Id": ["a", "b", "b", "", "c", "d"],
            "Amount": ["1.5", "1 234,56", "", "abc", "-3e2", "1.5"],
            "_file": [0, 0, 0, 1, 1, 1],
        }
    )
    results = validate_raw_rows(
        frame, {0: "/x/a.csv", 1: "/x/b.csv"},
        RawRules.standard(not_blank=("Id",), unique=("Id",), amounts=("Amount",)),
        lambda key, column: column.upper(), "test",
    ).set_index("check_name")["failing_rows"].to_dict()
    assert results == {
        "raw[a.csv].ID.not_blank": 0, "raw[b.csv].ID.not_blank": 1,
        "raw[a.csv].ID.unique": 2, "raw[b.csv].ID.unique": 0,  # "b" twice in a.csv
        "raw[a.csv].AMOUNT.number": 1, "raw[b.csv].AMOUNT.number": 1,  # "1 234,56" and "abc"
    }
