"""Salesforce exports as real orgs hand them over: Data Loader's upper-case headers, a loss-reason
field under another custom name than the configured one, and no User.csv.

tests/fixtures/salesforce/dataloader (Data Loader extracts, file names chosen by the user, every
header upper-case, ISO timestamps with milliseconds and Z, true/false flags; no User.csv, no
Account.csv; PIPELINE__C blank, so every deal is in "Default", ordered by STAGESORTORDER):
  opportunity_extract.csv
    006A Closed Won  50000, created 2024-01-05 09:00, CloseDate 2024-03-14, owner 005A
    006B Closed Lost 20000, LOSSREASON__C "Price",      owner 005B
    006C Closed Lost 15000, LOSSREASON__C "Competitor", owner 005A
    006D Qualification (2) 30000, owner 005C
    006E Prospecting (1)   10000, owner 005B
    006F Proposal/Price Quote (3) 12000, owner 005A
    LOSS_REASON__C (the configured field, any case) is present but empty on every row.
  opportunityhistory_extract.csv: 006A Prospecting 5 Jan -> Qualification 1 Feb -> Closed Won
    14 Mar 15:00; 006B Prospecting 10 Jan -> Closed Lost 20 Feb 12:00 (5 rows).
Expected: 6 deals (1 won, 2 lost, 3 open), 5 history rows, nothing quarantined; stage order
Prospecting, Qualification, Proposal/Price Quote, Closed Won, Closed Lost (crm); loss reasons
Price and Competitor read from LOSSREASON__C; owners 005A/005B/005C kept, said once.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from etl.config import load_project_config
from etl.ingest.exports import detect_format, read_exports
from etl.ingest.readers import ExportFormatError

ROOT = Path(__file__).resolve().parents[3]
DATALOADER = ROOT / "tests" / "fixtures" / "salesforce" / "dataloader"
CONFIG = '''
[reporting]
currency = "USD"

[sources.salesforce]
lost_reason_field = "Loss_Reason__c"
'''


@pytest.fixture
def project(tmp_path):
    (tmp_path / "dealcast.toml").write_text(CONFIG, encoding="utf-8")
    return load_project_config(tmp_path / "dealcast.toml")


def test_data_loader_upper_case_headers_are_read(project):
    assert detect_format(DATALOADER / "opportunity_extract.csv") == "salesforce_opportunity"
    assert detect_format(DATALOADER / "opportunityhistory_extract.csv") == "salesforce_history"
    result = read_exports(DATALOADER, project)
    assert result.quarantine.empty
    deals = result.deals.set_index("deal_id")
    assert deals["status"].to_dict() == {
        "006A": "won", "006B": "lost", "006C": "lost", "006D": "open", "006E": "open", "006F": "open",
    }
    assert deals.loc["006A", "created_at"] == pd.Timestamp("2024-01-05 09:00")
    assert deals.loc["006A", "closed_at"] == pd.Timestamp("2024-03-14 15:00")  # when history closed it
    assert deals["amount"].sum() == 137_000
    assert len(result.history) == 5 and set(result.history["deal_id"]) == {"006A", "006B"}
    default = result.stages["Default"]
    assert default.open_stages == ("Prospecting", "Qualification", "Proposal/Price Quote")
    assert (default.won_stage, default.lost_stage, default.order_source) == ("Closed Won", "Closed Lost", "crm")
    assert [(f.rows_read, f.rows_accepted, f.rows_quarantined) for f in result.files] == [(6, 6, 0), (5, 5, 0)]


def test_the_filled_loss_reason_field_is_used_and_named(project):
    result = read_exports(DATALOADER, project)
    reasons = result.deals.set_index("deal_id")["lost_reason"]
    assert reasons.dropna().to_dict() == {"006B": "Price", "006C": "Competitor"}
    assert result.files[0].columns["lost_reason"] == "LOSSREASON__C"
    notes = [n for n in result.notes if n.startswith("loss reason")]
    assert notes == [
        "loss reason: the configured field Loss_Reason__c is empty on every lost deal; LOSSREASON__C is filled "
        "on 2 of 2 lost deal(s) and is used (set [sources.salesforce] lost_reason_field to choose another)"
    ]


def test_the_configured_loss_reason_field_wins_when_it_is_filled(project, tmp_path):
    exports = tmp_path / "exports"
    exports.mkdir()
    text = (DATALOADER / "opportunity_extract.csv").read_text(encoding="utf-8")
    # The configured field filled on one lost deal (006C), the other field on two: the configured one is read.
    text = text.replace('"005A","2024-02-01T08:00:00.000Z","","",', '"005A","2024-02-01T08:00:00.000Z","","Budget",')
    (exports / "opportunity_extract.csv").write_text(text, encoding="utf-8")
    result = read_exports(exports, project)
    assert result.deals.set_index("deal_id")["lost_reason"].dropna().to_dict() == {"006C": "Budget"}
    assert not [n for n in result.notes if n.startswith("loss reason")]


def test_without_a_user_file_owners_keep_their_ids_and_it_is_said_once(project, caplog):
    result = read_exports(DATALOADER, project)
    assert sorted(result.deals["owner"].unique()) == ["005A", "005B", "005C"]
    owner_notes = [n for n in result.notes if n.startswith("owners")]
    assert owner_notes == [
        "owners: no User.csv among the exports, so the 6 deal(s) with an owner show its Salesforce id (e.g. 005A); "
        "add User.csv from the same export to show names"
    ]
    assert caplog.text.count("no User.csv among the exports") == 1
    assert any(n.startswith("accounts: no Account.csv") for n in result.notes)


def test_owner_ids_missing_from_the_user_file_are_counted(project, tmp_path):
    exports = tmp_path / "exports"
    exports.mkdir()
    for path in DATALOADER.iterdir():
        (exports / path.name).write_bytes(path.read_bytes())
    (exports / "User.csv").write_text('"ID","USERNAME","NAME"\n"005A","ann@example.com","Ann Lee"\n', encoding="utf-8")
    result = read_exports(exports, project)
    owners = result.deals.set_index("deal_id")["owner"]
    assert owners[["006A", "006C", "006F"]].tolist() == ["Ann Lee"] * 3
    assert owners[["006B", "006D", "006E"]].tolist() == ["005B", "005C", "005B"]
    assert [n for n in result.notes if n.startswith("owners")] == [
        "owners: 2 user ids of 3 deal(s) are not in User.csv (e.g. 005B); those deals show the id"
    ]


def test_without_stage_sort_order_the_order_comes_from_the_history(project, tmp_path):
    # No StageSortOrder column. The org's probabilities put Demo (20) before Discovery (30), but
    # both deals with history went Discovery -> Demo (2 moves, the first dated before the second):
    # Discovery, Demo is the order the moves say, with none backward.
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "Opportunity.csv").write_text(
        "Id,Name,StageName,Amount,Probability,CloseDate,CreatedDate,IsClosed,IsWon\n"
        "006A,A,Demo,100,20,2024-06-30,2024-01-02 09:00:00,0,0\n"
        "006B,B,Closed Won,200,100,2024-03-01,2024-01-03 09:00:00,1,1\n"
        "006C,C,Discovery,300,30,2024-06-30,2024-01-04 09:00:00,0,0\n",
        encoding="utf-8",
    )
    (exports / "OpportunityHistory.csv").write_text(
        "OpportunityId,CreatedDate,StageName\n"
        "006A,2024-01-02 09:00:00,Discovery\n006A,2024-01-20 09:00:00,Demo\n"
        "006B,2024-01-03 09:00:00,Discovery\n006B,2024-02-01 09:00:00,Demo\n006B,2024-03-01 15:00:00,Closed Won\n"
        "006C,2024-01-04 09:00:00,Discovery\n",
        encoding="utf-8",
    )
    result = read_exports(exports, project)
    default = result.stages["Default"]
    assert default.open_stages == ("Discovery", "Demo") and default.won_stage == "Closed Won"
    assert default.order_source == "inferred"
    assert default.order_basis == "2 stage moves in OpportunityHistory (no StageSortOrder column)"
    assert result.quarantine.empty and len(result.history) == 6


def test_without_stage_sort_order_or_history_the_error_says_what_would_do(project, tmp_path):
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "Opportunity.csv").write_text(
        "Id,Name,StageName,Amount,CloseDate,CreatedDate,IsClosed,IsWon\n006A,A,Demo,100,2024-06-30,2024-01-02 09:00:00,0,0\n",
        encoding="utf-8",
    )
    with pytest.raises(ExportFormatError, match="neither a StageSortOrder column nor an OpportunityHistory.csv"):
        read_exports(exports, project)
