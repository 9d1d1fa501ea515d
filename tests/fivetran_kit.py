"""Salesforce tables laid out the way Fivetran lands them in a warehouse (fivetran/dbt_salesforce's
source tables: snake_case names, typed columns, `_fivetran_synced` and `_fivetran_deleted`), made
from CSV files and written to a PostgreSQL schema for the warehouse-source tests."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

# Fivetran's table for each Salesforce Data Export file.
TABLE_OF_FILE = {
    "Opportunity.csv": "opportunity",
    "OpportunityHistory.csv": "opportunity_history",
    "User.csv": "user",
    "Account.csv": "account",
}
SYNCED = pd.Timestamp("2026-11-15 02:00:00", tz="UTC")
_NUMBERS = {"amount", "probability", "expected_revenue", "stage_sort_order", "prev_amount", "total_opportunity_quantity"}


def snake_case(name: str) -> str:
    """Salesforce's field name as Fivetran names the column: `StageName` -> `stage_name`,
    `Pipeline__c` -> `pipeline_c`, `Pricebook2Id` -> `pricebook_2_id`."""
    if name.startswith("_"):
        return name
    custom = name.endswith("__c")
    base = name[:-3] if custom else name
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Za-z])(?=[0-9])", "_", base).lower()
    return words + ("_c" if custom else "")


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns (as read from CSV, every value a string) with Fivetran's types: flags as
    booleans, dates and times as timestamps (UTC), amounts as numbers, blanks as NULL."""
    out = {}
    for column in frame.columns:
        values = frame[column].astype("string").str.strip()
        values = values.mask(values.eq(""))
        flag = column.startswith(("is_", "has_")) or column in ("_fivetran_deleted", "_fivetran_active")
        if flag:
            out[column] = values.str.lower().map({"1": True, "0": False, "true": True, "false": False, "t": True, "f": False}).astype("boolean")
        elif column.endswith(("_date", "_synced", "_stamp", "_modstamp")) or column in ("close_date",):
            text = values.str.replace(r"\s*UTC$", "", regex=True)
            out[column] = pd.to_datetime(text, format="ISO8601", utc=True)
        elif column in _NUMBERS:
            out[column] = pd.to_numeric(values)
        else:
            out[column] = values.astype(object).where(values.notna(), None)
    return pd.DataFrame(out)


def fivetran_table(path: Path) -> pd.DataFrame:
    """A Salesforce Data Export file as Fivetran's table: snake_case, typed, with its bookkeeping
    columns (synced at `SYNCED`, nothing deleted)."""
    text = pd.read_csv(path, dtype=str, keep_default_na=False)
    text.columns = [snake_case(c) for c in text.columns]
    table = typed(text)
    table.insert(0, "_fivetran_synced", SYNCED)
    table.insert(1, "_fivetran_deleted", False)
    return table


def write_tables(url: str, schema: str, tables: dict[str, pd.DataFrame]) -> None:
    """Create `schema` and write each table into it (replacing any of the same name)."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            for name, frame in tables.items():
                frame.to_sql(name, conn, schema=schema, if_exists="replace", index=False)
    finally:
        engine.dispose()


def drop_schema(url: str, schema: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        engine.dispose()
