"""When no file of the exports folder is recognised, the error lists every file with why it was not
matched, and points to mapping files and [sources.format_overrides]."""

from __future__ import annotations

from pathlib import Path

import pytest

from etl.config import load_project_config
from etl.ingest.exports import read_exports, unrecognised_reason
from etl.ingest.readers import ExportFormatError

FILES = {
    "empty.csv": b"",
    "pipeline.xlsx": b"PK\x03\x04\x14\x00\x06\x00 workbook bytes",
    # HubSpot's contact table as Fivetran lands it: a loader's table, but not one Dealcast reads.
    "contact.csv": b"id,property_email,property_lifecyclestage,_fivetran_synced\n"
    b"201,ann@example.com,lead,2024-06-01 02:00:00\n",
    # Salesforce in snake_case from a loader that adds no bookkeeping column and no table name.
    "sf_history_dump.csv": b"opp_ref,created,stage_name,close_date\n"
    b"006A,2024-05-01 09:00:00,Prospecting,2024-05-31\n",
    "hubspot-deals.csv": b"Deal Name,Deal Stage,Pipeline,Amount\nAcme,Closed won,Sales Pipeline,100\n",
    "pipedrive.csv": b"Deal - ID,Deal - Title,Deal - Stage\n1,Acme,Qualified\n",
    "salesforce-report.csv": b"Opportunity Name,StageName,Amount\nAcme,Prospecting,100\n",
    "notes.csv": b"when,who,what\n2024-06-01,Ann,called Acme\n",
}


@pytest.fixture
def exports(tmp_path):
    folder = tmp_path / "exports"
    folder.mkdir()
    for name, data in FILES.items():
        (folder / name).write_bytes(data)
    (tmp_path / "dealcast.toml").write_text('[reporting]\ncurrency = "USD"\n', encoding="utf-8")
    return folder


def test_every_file_is_listed_with_why_it_was_not_recognised(exports):
    project = load_project_config(exports.parent / "dealcast.toml")
    with pytest.raises(ExportFormatError) as error:
        read_exports(exports, project)
    message = str(error.value)
    assert message.startswith(f"{exports}: no CRM export recognised among 8 file(s):\n")
    lines = dict(line.strip()[2:].split(": ", 1) for line in message.splitlines()[1:9])
    assert lines["empty.csv"] == "the file is empty"
    assert lines["pipeline.xlsx"].startswith("no header line could be read (a binary file such as a spreadsheet saved as .xlsx")
    assert "is a table landed by Fivetran or Airbyte" in lines["contact.csv"]
    assert "Dealcast reads Salesforce's opportunity, opportunity_history, user and account tables" in lines["contact.csv"]
    assert "Salesforce fields in snake_case (stage_name, close_date)" in lines["sf_history_dump.csv"]
    assert "needs id, stage_name, close_date" in lines["sf_history_dump.csv"]
    assert lines["hubspot-deals.csv"] == (
        "it has a HubSpot Deal Stage column but no Record ID (or Deal ID), which a HubSpot deals export needs"
    )
    assert lines["pipedrive.csv"] == "it has Pipedrive 'Deal - ' headers but not both Deal - Stage and Deal - Status"
    assert lines["salesforce-report.csv"] == (
        "it has Salesforce fields (StageName) but no Id or CloseDate, which an Opportunity export needs"
    )
    assert lines["notes.csv"] == (
        "its header (when, who, what) is no Salesforce, HubSpot or Pipedrive export; no mapping file's `file` "
        "matches its name (no mapping file is configured)"
    )
    assert "[sources] mappings (docs/mapping.md)" in message
    assert "[sources.format_overrides] (formats: " in message and "salesforce_opportunity" in message
    assert str(exports.parent / "dealcast.toml") in message


def test_the_reason_names_the_mappings_that_did_not_claim_the_file(exports, tmp_path):
    (tmp_path / "leads.toml").write_text(
        'file = "leads_*.csv"\n[pipeline]\nname = "Leads"\nstages = ["New"]\n[columns]\ndeal_id = "id"\nstage = "stage"\n',
        encoding="utf-8",
    )
    (tmp_path / "dealcast.toml").write_text('[reporting]\ncurrency = "USD"\n[sources]\nmappings = ["leads.toml"]\n', encoding="utf-8")
    project = load_project_config(tmp_path / "dealcast.toml")
    assert unrecognised_reason(exports / "notes.csv", project).endswith(
        "no mapping file's `file` matches its name (mappings read: 'leads_*.csv')"
    )


def test_an_empty_folder_says_so(tmp_path):
    (tmp_path / "dealcast.toml").write_text('[reporting]\ncurrency = "USD"\n', encoding="utf-8")
    (tmp_path / "exports").mkdir()
    with pytest.raises(ExportFormatError, match="the exports folder holds no file"):
        read_exports(tmp_path / "exports", load_project_config(tmp_path / "dealcast.toml"))


def test_the_exports_listing_says_why_a_file_is_not_recognised(exports):
    from etl.ingest.crm_load import describe_exports

    listing = describe_exports(exports).set_index("file")
    assert listing.loc["notes.csv", "format"] is None
    assert listing.loc["notes.csv", "not_recognised"] == "its header (when, who, what) is no Salesforce, HubSpot or Pipedrive export"
    assert listing.loc["empty.csv", "not_recognised"] == "the file is empty"
    assert "Fivetran or Airbyte" in listing.loc["contact.csv", "not_recognised"]


def test_salesforce_tables_as_a_warehouse_loader_lands_them_are_recognised(tmp_path):
    from etl.ingest.exports import detect_format

    tables = {
        "opportunity.csv": "_fivetran_synced,id,is_deleted,name,stage_name,amount,close_date,created_date,is_closed,is_won",
        "opportunity_history.csv": "_fivetran_synced,id,opportunity_id,created_date,stage_name,amount,close_date",
        "user.csv": "_fivetran_synced,id,name,username,department,division",
        "account.csv": "_fivetran_synced,id,name,account_number,billing_city",
        # Any file name: the header decides.
        "sf_opps_2024.csv": "ID,STAGE_NAME,CLOSE_DATE,AMOUNT",
    }
    formats = {}
    for name, header in tables.items():
        (tmp_path / name).write_text(header + "\n", encoding="utf-8")
        formats[name] = detect_format(tmp_path / name)
    assert formats == {
        "opportunity.csv": "salesforce_opportunity",
        "opportunity_history.csv": "salesforce_history",
        "user.csv": "salesforce_user",
        "account.csv": "salesforce_account",
        "sf_opps_2024.csv": "salesforce_opportunity",
    }
