"""The canonical frames every CRM reader produces, whatever the source.

Conventions:
- timestamps are timezone-naive `datetime64` values in UTC; dates are timestamps at midnight;
- money is float in the deal's own currency (`amount`) and in the reporting currency
  (`amount_reporting`);
- probabilities are 0-1 floats;
- text columns use pandas' string dtype, missing values are NA (never the text "nan").

`deals`: one row per deal, as the export says it is now.
`deal_history`: one row per change of a deal (stage, amount, expected close date, probability,
  forecast category), each row the deal's full state from `changed_at` on. The first row is the
  deal's creation. Salesforce's OpportunityHistory has exactly this shape; other sources are
  converted into it. Stage events, field changes and "the pipeline as it stood at t" are all
  derived from it in `etl.pipeline_state`.
"""

from __future__ import annotations

import pandas as pd

TEXT = "string"
FLOAT = "float64"
INT = "int64"
NULLABLE_INT = "Int64"
BOOL = "bool"
TIMESTAMP = "datetime64[us]"

DEAL_COLUMNS: dict[str, str] = {
    "deal_id": TEXT,
    "source_system": TEXT,
    "source_file": TEXT,
    "source_row": INT,
    "pipeline": TEXT,
    "deal_name": TEXT,
    "account": TEXT,
    "owner": TEXT,
    "team": TEXT,
    "product": TEXT,
    "region": TEXT,
    "account_segment": TEXT,
    "lead_source": TEXT,
    "deal_type": TEXT,
    "amount": FLOAT,
    "currency": TEXT,
    "amount_reporting": FLOAT,
    "created_at": TIMESTAMP,
    "expected_close_date": TIMESTAMP,
    "closed_at": TIMESTAMP,
    # The close date the CRM reports a closed deal by (Salesforce CloseDate, HubSpot Close Date,
    # Pipedrive won/lost time, a mapped file's close date); NaT while open. See etl.bookings.
    "crm_close_date": TIMESTAMP,
    "stage": TEXT,
    "stage_order": NULLABLE_INT,
    "status": TEXT,
    "lost_reason": TEXT,
    "forecast_category": TEXT,
    "crm_probability": FLOAT,
    "last_stage_change_at": TIMESTAMP,
    "push_count": INT,
    "has_history": BOOL,
}

DEAL_HISTORY_COLUMNS: dict[str, str] = {
    "deal_id": TEXT,
    "changed_at": TIMESTAMP,
    "stage": TEXT,
    "amount": FLOAT,
    "amount_reporting": FLOAT,
    "expected_close_date": TIMESTAMP,
    "crm_probability": FLOAT,
    "forecast_category": TEXT,
    "source_file": TEXT,
    "source_row": INT,
}

STAGE_EVENT_COLUMNS: dict[str, str] = {
    "deal_id": TEXT,
    "pipeline": TEXT,
    "stage": TEXT,
    "stage_order": NULLABLE_INT,
    "entered_at": TIMESTAMP,
    "exited_at": TIMESTAMP,
    "days_in_stage": FLOAT,
    "amount_at_entry": FLOAT,
    "expected_close_at_entry": TIMESTAMP,
    "is_backward": BOOL,
    "is_contradictory": BOOL,
    "is_current": BOOL,
}

# The segment types every analytics and forecast table is broken down by, and the deal column
# behind each (`all` is the total).
SEGMENT_COLUMNS: dict[str, str | None] = {
    "all": None,
    "pipeline": "pipeline",
    "owner": "owner",
    "team": "team",
    "product": "product",
    "region": "region",
    "lead_source": "lead_source",
    "deal_type": "deal_type",
}
UNKNOWN_SEGMENT = "(unknown)"


class SchemaError(ValueError):
    """A frame does not have the columns its canonical schema requires."""


def conform(frame: pd.DataFrame, columns: dict[str, str], name: str) -> pd.DataFrame:
    """`frame` reduced to `columns`, in that order and with those dtypes.

    Missing columns are an error (readers must fill every column, with NA where the source has
    nothing); extra columns are dropped.
    """
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SchemaError(f"{name}: missing canonical column(s) {missing}")
    out = frame.loc[:, list(columns)].copy()
    for col, dtype in columns.items():
        if str(out[col].dtype) == dtype:
            continue
        if dtype == TIMESTAMP:
            out[col] = pd.to_datetime(out[col]).astype(TIMESTAMP)
        elif dtype == FLOAT:
            out[col] = pd.to_numeric(out[col]).astype(FLOAT)
        elif dtype in (INT, BOOL) and out[col].isna().any():
            raise SchemaError(f"{name}: column {col!r} must not have missing values (dtype {dtype})")
        else:
            out[col] = out[col].astype(dtype)
    return out.reset_index(drop=True)


def empty_frame(columns: dict[str, str]) -> pd.DataFrame:
    """A zero-row frame with the canonical columns and dtypes."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in columns.items()})


def segment_values(frame: pd.DataFrame, segment_type: str) -> pd.Series:
    """The segment each row belongs to for `segment_type` (`all` for the total, `(unknown)` for blanks)."""
    column = SEGMENT_COLUMNS[segment_type]
    if column is None:
        return pd.Series("all", index=frame.index, dtype=TEXT)
    return frame[column].astype(TEXT).fillna(UNKNOWN_SEGMENT)

# A row that was not accepted: where it came from, why, and the raw record as JSON text.
# (The run adds as_of, run_id and quarantined_at when it writes the `quarantine` table.)
QUARANTINE_COLUMNS: dict[str, str] = {
    "source_file": TEXT,
    "source_row": INT,
    "reason_code": TEXT,
    "reason": TEXT,
    "column": TEXT,
    "raw_record": TEXT,
}

# The outcome of one data-quality expectation or reconciliation. (The run adds run_id, as_of and
# checked_at when it writes `data_quality_results`.)
DQ_RESULT_COLUMNS: dict[str, str] = {
    "check_name": TEXT,
    "asset": TEXT,
    "passed": BOOL,
    "severity": TEXT,  # "error" (blocks the run), "row" (rows quarantined, run goes on) or "warning"
    "observed": TEXT,
    "expected": TEXT,
    "failing_rows": INT,
}
