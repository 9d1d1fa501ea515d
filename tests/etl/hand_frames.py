"""Helpers for tests built on tiny hand-written data: canonical frames from the columns a test cares
about, picking one row of a table, and Salesforce exports read through the real reader and the whole
load (`etl.ingest.crm_load.load_crm`: reading, validation, history rebuild and booking dates)."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from etl.config import Settings, load_project_config
from etl.ingest.crm_load import CrmLoad, load_crm
from etl.schema import conform

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


def canonical(rows: list[dict] | pd.DataFrame, columns: dict[str, str], defaults: dict, name: str) -> pd.DataFrame:
    """A canonical frame (`columns`, e.g. `etl.schema.DEAL_COLUMNS`) from the columns given in
    `rows`; every other column takes its value from `defaults`, else NA."""
    frame = pd.DataFrame(rows).copy()
    for column in columns:
        if column not in frame:
            frame[column] = defaults.get(column, pd.NA)
    return conform(frame, columns, name)


def one_row(frame: pd.DataFrame, **where) -> pd.Series:
    """The one row of `frame` whose columns have the given values (an assertion error otherwise)."""
    mask = np.ones(len(frame), dtype=bool)
    for column, value in where.items():
        mask &= (frame[column] == value).fillna(False).to_numpy(dtype=bool)
    assert mask.sum() == 1, f"expected one row for {where}, got {int(mask.sum())}"
    return frame.loc[mask].iloc[0]
