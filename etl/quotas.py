"""Quotas: the targets the forecast and coverage are measured against, from a CSV file.

Columns: quarter (e.g. `2026-Q4`, fiscal quarters as in etl.periods), segment_type (one of the
segment types in etl.schema.SEGMENT_COLUMNS; `all` for the company total), segment (the value;
`all` for the total), amount (in the reporting currency). One row per quarter and segment.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from etl.schema import SEGMENT_COLUMNS

QUOTA_COLUMNS = ["quarter", "segment_type", "segment", "amount"]
_QUARTER = re.compile(r"^\d{4}-Q[1-4]$")


class QuotaFileError(ValueError):
    """The quota file cannot be used; the message names the file, row and column."""


def empty_quotas() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="float64" if c == "amount" else "string") for c in QUOTA_COLUMNS})


def load_quotas(path: Path | None) -> pd.DataFrame:
    """Read and check a quota file; no file means no quotas (quota, gap and coverage stay empty)."""
    if path is None:
        return empty_quotas()
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise QuotaFileError(f"{path}: cannot be read as CSV ({exc})") from exc
    missing = [c for c in QUOTA_COLUMNS if c not in raw.columns]
    if missing:
        raise QuotaFileError(f"{path}: missing column(s) {missing}; expected columns {QUOTA_COLUMNS}")
    frame = raw[QUOTA_COLUMNS].copy()
    amounts = []
    for i, row in frame.iterrows():
        line = int(i) + 2  # the header is row 1
        if not _QUARTER.match(row["quarter"].strip()):
            raise QuotaFileError(f"{path}: row {line}, column quarter: expected YYYY-Qn, got {row['quarter']!r}")
        if row["segment_type"].strip() not in SEGMENT_COLUMNS:
            raise QuotaFileError(
                f"{path}: row {line}, column segment_type: expected one of {list(SEGMENT_COLUMNS)}, "
                f"got {row['segment_type']!r}"
            )
        try:
            amount = float(row["amount"].replace(",", "").replace("_", "").strip())
        except ValueError:
            raise QuotaFileError(f"{path}: row {line}, column amount: expected a number, got {row['amount']!r}") from None
        if amount < 0:
            raise QuotaFileError(f"{path}: row {line}, column amount: expected a non-negative amount, got {amount}")
        amounts.append(amount)
    frame = frame.assign(
        quarter=frame["quarter"].str.strip(),
        segment_type=frame["segment_type"].str.strip(),
        segment=frame["segment"].str.strip(),
        amount=pd.Series(amounts, index=frame.index, dtype="float64"),
    ).astype({"quarter": "string", "segment_type": "string", "segment": "string"})
    duplicated = frame.duplicated(["quarter", "segment_type", "segment"], keep=False)
    if duplicated.any():
        first = frame[duplicated].iloc[0]
        raise QuotaFileError(
            f"{path}: quarter {first['quarter']} / {first['segment_type']} {first['segment']!r} appears more than once"
        )
    return frame.reset_index(drop=True)
