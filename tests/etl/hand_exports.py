"""Tiny Salesforce exports written by hand for the tests, read through the real reader and the whole
load (`etl.crm.load_crm`: reading, validation, history rebuild and booking dates)."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

from etl.config import Settings, load_project_config
from etl.crm import CrmLoad, load_crm

OPPORTUNITY_HEADER = [
    "Id", "IsDeleted", "Name", "StageName", "Amount", "Probability", "CloseDate", "IsClosed", "IsWon",
    "CurrencyIsoCode", "OwnerId", "CreatedDate", "Pipeline__c",
]
HISTORY_HEADER = ["Id", "OpportunityId", "CreatedDate", "StageName", "Amount", "CloseDate", "Probability", "IsDeleted"]


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_ALL)
        writer.writerow(header)
        writer.writerows(rows)


def load_salesforce(
    folder: Path, config: str, opportunities: list[list[str]], history: list[list[str]], as_of: dt.date
) -> CrmLoad:
    """Write Opportunity.csv and OpportunityHistory.csv (rows in the headers above) and dealcast.toml
    (`config`) into `folder`, and load them for `as_of`."""
    exports = folder / "exports"
    exports.mkdir(parents=True, exist_ok=True)
    write_csv(exports / "Opportunity.csv", OPPORTUNITY_HEADER, opportunities)
    write_csv(exports / "OpportunityHistory.csv", HISTORY_HEADER, history)
    path = folder / "dealcast.toml"
    path.write_text(config, encoding="utf-8")
    project = load_project_config(path)
    return load_crm(Settings(project=project, exports_dir=exports, exports_are_sample=False, as_of=as_of, project_dir=folder))
