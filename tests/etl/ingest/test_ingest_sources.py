"""Several export files read together: source systems, the duplicate rule across files and
systems, and format detection overridden in dealcast.toml.

A toy CRM reader stands in for a one-file-per-deal export (HubSpot-like): each row `toy_id,amount`
becomes one deal and one history row, both from that source row.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from etl.ingest.readers import salesforce
import etl.ingest.exports
from etl.config import ConfigError, load_project_config
from etl.ingest.exports import detect_format, read_exports
from etl.ingest.readers import ExportReader, FileReport, SourceExport
from etl.schema import DEAL_COLUMNS, DEAL_HISTORY_COLUMNS, conform, empty_frame
from etl.stages import PipelineStages

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "salesforce"
SF_HEADER = ["Id", "Name", "StageName", "StageSortOrder", "Amount", "CloseDate", "CreatedDate", "IsClosed", "IsWon", "Pipeline__c"]


def _sf_row(deal_id: str, amount: str = "100") -> list[str]:
    return [deal_id, "Deal " + deal_id, "Prospecting", "1", amount, "2024-06-30", "2024-01-02 03:04:05", "0", "0", "New Business"]


def _csv(rows: list[list[str]]) -> str:
    return "".join(",".join('"' + v + '"' for v in row) + "\n" for row in rows)


@pytest.fixture(scope="module")
def project():
    return load_project_config(FIXTURES / "dealcast.toml")


def _read_toy(files, config) -> SourceExport:
    deals, history, reports = [], [], []
    for path in files["toy_deals"]:
        rows = pd.read_csv(path, dtype=str)
        source_row = pd.RangeIndex(2, len(rows) + 2)
        amount = rows["amount"].astype(float)
        deals.append(
            pd.DataFrame(
                {
                    **{c: None for c in DEAL_COLUMNS},
                    "deal_id": rows["toy_id"], "source_system": "toy", "source_file": str(path),
                    "source_row": source_row, "pipeline": "Toys", "amount": amount, "currency": "USD",
                    "amount_reporting": amount, "created_at": pd.Timestamp("2024-01-01"), "stage": "Shelf",
                    "stage_order": 1, "status": "open", "push_count": 0, "has_history": True,
                }
            )
        )
        history.append(
            pd.DataFrame(
                {
                    **{c: None for c in DEAL_HISTORY_COLUMNS},
                    "deal_id": rows["toy_id"], "changed_at": pd.Timestamp("2024-01-01"), "stage": "Shelf",
                    "amount": amount, "amount_reporting": amount, "source_file": str(path), "source_row": source_row,
                }
            )
        )
        reports.append(FileReport(path, "toy_deals", len(rows), "0" * 64, rows_accepted=len(rows)))
    return SourceExport(
        conform(pd.concat(deals), DEAL_COLUMNS, "deals"),
        conform(pd.concat(history), DEAL_HISTORY_COLUMNS, "deal_history"),
        empty_frame(etl.ingest.exports.QUARANTINE_COLUMNS),
        reports,
        [PipelineStages("Toys", ("Shelf",))],
    )


def _toy_detect(header, path):
    return "toy_deals" if header is not None and header.columns[:1] == ("toy_id",) else None


TOY = ExportReader(source_system="toy", formats=("toy_deals",), detect=_toy_detect, read=_read_toy)


def _counts(result) -> dict[str, tuple[int, int, int]]:
    return {f.path.name: (f.rows_read, f.rows_accepted, f.rows_quarantined) for f in result.files}


# ---------------------------------------------------------------------------------------------
# Duplicates and source systems


def test_same_id_in_two_files_keeps_the_first_file_by_name(tmp_path, project, monkeypatch):
    """T1 is in A_deals.csv and b_deals.csv: name order ignores case, so A_deals.csv comes first
    and keeps T1; b_deals.csv row 2 is quarantined with its history (same source row, one
    quarantine row)."""
    monkeypatch.setattr(etl.ingest.exports, "READERS", (TOY,))
    (tmp_path / "b_deals.csv").write_text("toy_id,amount\nT1,20\nT2,30\n")
    (tmp_path / "A_deals.csv").write_text("toy_id,amount\nT1,10\nT3,40\n")
    result = read_exports(tmp_path, project)
    deals = result.deals.set_index("deal_id")
    assert sorted(deals.index) == ["T1", "T2", "T3"]
    assert deals.at["T1", "amount"] == 10 and Path(deals.at["T1", "source_file"]).name == "A_deals.csv"
    assert sorted(zip(result.history["deal_id"], result.history["amount"])) == [("T1", 10), ("T2", 30), ("T3", 40)]
    (row,) = result.quarantine.to_dict("records")
    assert (Path(row["source_file"]).name, row["source_row"], row["reason_code"], row["column"]) == (
        "b_deals.csv", 2, "duplicate_id", "deal_id",
    )
    assert "'T1'" in row["reason"] and str(tmp_path / "A_deals.csv") + " row 2" in row["reason"]
    assert _counts(result) == {"A_deals.csv": (2, 2, 0), "b_deals.csv": (2, 1, 1)}
    assert set(result.deals["source_system"]) == {"toy"}


def test_two_crms_namespace_their_ids(tmp_path, project, monkeypatch):
    """The same id 006A from Salesforce and from the toy CRM: two deals, prefixed by system."""
    monkeypatch.setattr(etl.ingest.exports, "READERS", (salesforce.READER, TOY))
    (tmp_path / "Opportunity.csv").write_text(_csv([SF_HEADER, _sf_row("006A", "100")]))
    (tmp_path / "toys.csv").write_text("toy_id,amount\n006A,7\n")
    result = read_exports(tmp_path, project)
    deals = result.deals.set_index("deal_id")
    assert sorted(deals.index) == ["salesforce:006A", "toy:006A"]
    assert deals.at["salesforce:006A", "source_system"] == "salesforce" and deals.at["salesforce:006A", "amount"] == 100
    assert deals.at["toy:006A", "source_system"] == "toy" and deals.at["toy:006A", "amount"] == 7
    assert result.history["deal_id"].tolist() == ["toy:006A"]
    assert result.quarantine.empty


def test_salesforce_id_in_two_opportunity_files(tmp_path, project):
    """Two Opportunity exports of one org: the copy in the file later by name is the duplicate."""
    (tmp_path / "opps_2.csv").write_text(_csv([SF_HEADER, _sf_row("006A", "200"), _sf_row("006C")]))
    (tmp_path / "opps_1.csv").write_text(_csv([SF_HEADER, _sf_row("006A", "100"), _sf_row("006B")]))
    result = read_exports(tmp_path, project)
    assert sorted(result.deals["deal_id"]) == ["006A", "006B", "006C"]
    assert result.deals.set_index("deal_id").at["006A", "amount"] == 100
    (row,) = result.quarantine.to_dict("records")
    assert (Path(row["source_file"]).name, row["source_row"], row["reason_code"]) == ("opps_2.csv", 2, "duplicate_id")
    assert _counts(result) == {"opps_1.csv": (2, 2, 0), "opps_2.csv": (2, 1, 1)}


# ---------------------------------------------------------------------------------------------
# Format overrides


def test_format_override_wins_over_header_detection(tmp_path, project, monkeypatch):
    """A greedy reader claims every file with an Id column; the override sends Opportunity.csv
    (name matched whatever its case) to the Salesforce reader instead."""
    greedy = dataclasses.replace(
        TOY, detect=lambda header, path: "toy_deals" if header is not None and "Id" in header.columns else None
    )
    monkeypatch.setattr(etl.ingest.exports, "READERS", (greedy, salesforce.READER))
    path = tmp_path / "Opportunity.csv"
    path.write_text(_csv([SF_HEADER, _sf_row("006A")]))
    assert detect_format(path) == "toy_deals"
    overridden = dataclasses.replace(project, format_overrides={"opportunity.CSV": "salesforce_opportunity"})
    assert detect_format(path, overridden) == "salesforce_opportunity"
    result = read_exports(tmp_path, overridden)
    assert result.deals["deal_id"].tolist() == ["006A"]
    assert [f.format for f in result.files] == ["salesforce_opportunity"]


def test_format_override_from_dealcast_toml(tmp_path):
    """A file whose header no reader recognises is read as the format the config names."""
    config = tmp_path / "dealcast.toml"
    config.write_text(
        (FIXTURES / "dealcast.toml").read_text()
        + '\n[sources.format_overrides]\n"deals.csv" = "salesforce_opportunity"\n'
    )
    project = load_project_config(config)
    exports = tmp_path / "exports"
    exports.mkdir()
    # No StageSortOrder and no "StageName"+"CloseDate" pair the detector needs: only the override finds it.
    header = [c for c in SF_HEADER if c != "CloseDate"] + ["Close Date"]
    (exports / "deals.csv").write_text(_csv([header, _sf_row("006A")]))
    assert detect_format(exports / "deals.csv") is None
    # Read as a Salesforce Opportunity export, it says what is wrong with it.
    with pytest.raises(etl.ingest.exports.ExportFormatError, match=r"deals\.csv: line 1: missing required column\(s\) CloseDate"):
        read_exports(exports, project)


def test_format_override_naming_an_unknown_format(tmp_path, project):
    (tmp_path / "Opportunity.csv").write_text(_csv([SF_HEADER, _sf_row("006A")]))
    wrong = dataclasses.replace(project, format_overrides={"Opportunity.csv": "hubspot_dealz"})
    with pytest.raises(ConfigError) as error:
        read_exports(tmp_path, wrong)
    message = str(error.value)
    assert str(project.path) in message and "'Opportunity.csv'" in message and "'hubspot_dealz'" in message
    assert "salesforce_opportunity" in message and "salesforce_history" in message
    with pytest.raises(ConfigError, match="hubspot_dealz"):
        detect_format(tmp_path / "Opportunity.csv", wrong)
