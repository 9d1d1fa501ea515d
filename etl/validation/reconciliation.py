"""Accounting per input file: every row read is accepted, quarantined or left out on purpose.

Reconciliation counts source rows: a source row that feeds several records (a deals export that
also carries stage history) counts once, as quarantined if any of its records was rejected.
Deal files, for the quarantine share, are every file except lookup files and those that only feed
deal history.
Rows left out on purpose (`EXCLUDED_CODES`: `excluded_by_filter` for a mapping's filter,
`deleted_in_crm` for records deleted in the CRM, `inactive_version` for earlier versions a
warehouse loader keeps) are quarantined so that every row is accounted for, but they are no data
problem: the quarantine shares and `crm_exports.rows_parsed` leave them out of their counts and
say how many there were, and each file's reconciliation counts them (`excluded`, among the
quarantined) and reads read = accepted + quarantined + excluded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from etl.config import ValidationConfig
from etl.schema import TEXT
from etl.validation.outcome import (
    ASSET_DEALS,
    ASSET_EXPORTS,
    ASSET_HISTORY,
    CHECK_NAME_MAX,
    SAMPLE_ROWS_KEPT,
    SEVERITY_ERROR,
    SEVERITY_ROW,
    check_result,
    count_text,
)
from etl.validation.reason_codes import (
    DEAL_QUARANTINED,
    DELETED_IN_CRM,
    EXCLUDED_BY_FILTER,
    EXCLUDED_CODES,
    INACTIVE_VERSION,
    ORPHAN_HISTORY,
)

CHECK_QUARANTINE_SHARE = "deals.quarantine_share"
CHECK_HISTORY_QUARANTINE_SHARE = "deal_history.quarantine_share"


CHECK_RECONCILIATION = "crm_exports.reconciliation"  # one result per file: "<this>[<file>]"
CHECK_READER = "crm_exports.rows_parsed"

RECONCILIATION_COLUMNS: dict[str, str] = {
    "source_file": TEXT,
    "rows_read": "int64",
    "accepted": "int64",
    "quarantined": "int64",
    # Of the quarantined rows, those left out on purpose (EXCLUDED_CODES): no data defect.
    "excluded": "int64",
    "balanced": "bool",
}

NO_SOURCE_FILE = "(no source file)"


@dataclass(frozen=True)
class FileCount:
    """How many data rows the reader read from one input file; `lookup_rows` of them became lookup
    entries (owner or account names) rather than deals or history rows, and count as accepted."""

    source_file: str
    rows_read: int
    lookup_rows: int = 0
    # Canonical column -> the file's header for it (quarantine rows name the file's column).
    columns: dict[str, str] = field(default_factory=dict)
    # True for a lookup file (owners, accounts): its rows are neither deals nor history, so they
    # count in neither quarantine share.
    lookup: bool = False
    # True for a file that only holds stage history (its format says so, even when none of its rows
    # was accepted); files of other formats count as history-only when they fed no deal.
    history_only: bool = False


def source_files(values: pd.Series) -> pd.Series:
    return values.astype(TEXT).fillna(NO_SOURCE_FILE)


def reconcile(
    files: list[FileCount], accepted_parts: list[pd.DataFrame], quarantine: pd.DataFrame
) -> pd.DataFrame:
    """Per input file: rows read, distinct source rows accepted (and not quarantined), source rows
    quarantined, how many of those were left out on purpose (`excluded`), and whether
    read = accepted + quarantined. Files that rows name but the reader
    did not count get rows_read 0, so they never balance."""
    read = {f.source_file: int(f.rows_read) for f in files}
    lookups = {f.source_file: int(f.lookup_rows) for f in files}
    accepted_files = [source_files(p["source_file"]) for p in accepted_parts]
    quarantined_files = source_files(quarantine["source_file"])
    file_names = (
        pd.Index(list(read), dtype=object)
        .append([pd.Index(f.unique(), dtype=object) for f in (*accepted_files, quarantined_files)])
        .unique()
    )
    accepted_rows = [p["source_row"].to_numpy(dtype=np.int64) for p in accepted_parts]
    quarantined_rows = quarantine["source_row"].to_numpy(dtype=np.int64)
    all_rows = np.concatenate([*accepted_rows, quarantined_rows, np.zeros(1, dtype=np.int64)])
    low, stride = int(all_rows.min()), int(all_rows.max() - all_rows.min()) + 1
    if stride * max(len(file_names), 1) >= 2**62:
        raise ValueError(f"validate_crm: source_row values span {stride:,} numbers; expected row numbers within a file")

    def keys(names: pd.Series, rows: np.ndarray) -> np.ndarray:
        return file_names.get_indexer(names).astype(np.int64) * stride + (rows - low)

    accepted_keys = pd.unique(np.concatenate(
        [keys(f, r) for f, r in zip(accepted_files, accepted_rows)] or [np.zeros(0, dtype=np.int64)]
    ))
    quarantined_keys = pd.unique(keys(quarantined_files, quarantined_rows))
    left_out = quarantine["reason_code"].isin(EXCLUDED_CODES).to_numpy(dtype=bool)
    excluded_keys = pd.unique(keys(quarantined_files[left_out], quarantined_rows[left_out]))
    accepted_keys = accepted_keys[~np.isin(accepted_keys, quarantined_keys)]
    frame = pd.DataFrame(
        {
            "source_file": [str(name) for name in file_names],
            "rows_read": [read.get(name, 0) for name in file_names],
            "accepted": np.bincount(accepted_keys // stride, minlength=len(file_names))
            + np.array([lookups.get(name, 0) for name in file_names], dtype=np.int64),
            "quarantined": np.bincount(quarantined_keys // stride, minlength=len(file_names)),
            "excluded": np.bincount(excluded_keys // stride, minlength=len(file_names)),
        }
    )
    frame["balanced"] = frame["rows_read"] == frame["accepted"] + frame["quarantined"]
    return frame.astype(RECONCILIATION_COLUMNS)


def _reconciliation_check_name(source_file: str) -> str:
    name = f"{CHECK_RECONCILIATION}[{source_file}]"
    if len(name) <= CHECK_NAME_MAX:
        return name
    keep = CHECK_NAME_MAX - len(CHECK_RECONCILIATION) - len("[...]")
    return f"{CHECK_RECONCILIATION}[...{source_file[-keep:]}]"


# ---------------------------------------------------------------------------------------------
# Results per file
# ---------------------------------------------------------------------------------------------


def reader_result(reader: pd.DataFrame, reconciliation: pd.DataFrame, details: dict[str, pd.DataFrame]) -> dict:
    """The reader's own rejections (rows it could not parse), reported beside our checks; rows a
    mapping's filter left out are no rejection and only mentioned."""
    left_out = reader["reason_code"].isin(EXCLUDED_CODES).to_numpy(dtype=bool)
    rejected = reader.loc[~left_out]
    details[CHECK_READER] = rejected.head(SAMPLE_ROWS_KEPT)
    total_read = int(reconciliation["rows_read"].sum())
    observed = count_text(len(rejected), total_read, "rows read could not be parsed")
    if left_out.any():
        observed += f"; {int(left_out.sum()):,} {_left_out(reader.loc[left_out])}"
    return check_result(
        CHECK_READER, ASSET_EXPORTS, rejected.empty, SEVERITY_ROW, observed, "every row parsed", len(rejected),
    )


_LEFT_OUT_WORDS = {
    EXCLUDED_BY_FILTER: "by a mapping's filter",
    DELETED_IN_CRM: "as deleted in the CRM",
    INACTIVE_VERSION: "as earlier versions of a record",
}


def _left_out(rows: pd.DataFrame) -> str:
    """Why `rows` (quarantine rows left out on purpose) were left out, after their count: "left out
    by a mapping's filter", or with several reasons "left out (2 by ..., 1 as ...)"."""
    counts = rows["reason_code"].value_counts()
    kinds = [code for code in EXCLUDED_CODES if code in counts]
    if len(kinds) == 1:
        return f"left out {_LEFT_OUT_WORDS[kinds[0]]}"
    return "left out (" + ", ".join(f"{int(counts[code]):,} {_LEFT_OUT_WORDS[code]}" for code in kinds) + ")"


def reconciliation_results(
    reconciliation: pd.DataFrame,
    counted_files: set[str],
    details: dict[str, pd.DataFrame],
    quarantine: pd.DataFrame | None = None,
) -> list[dict]:
    """One blocking result per file: rows read = accepted + quarantined, where the quarantined rows
    include those left out on purpose (`EXCLUDED_CODES`), said apart: read = accepted + quarantined
    as defects + excluded."""
    out = []
    excluded_by_file: dict[str, pd.DataFrame] = {}
    if quarantine is not None and not quarantine.empty:
        left_out = quarantine.loc[quarantine["reason_code"].isin(EXCLUDED_CODES).to_numpy(dtype=bool)]
        excluded_by_file = {str(k): v for k, v in left_out.groupby(source_files(left_out["source_file"]), sort=False)}
    for rec in reconciliation.itertuples(index=False):
        name = _reconciliation_check_name(rec.source_file)
        accounted = rec.accepted + rec.quarantined
        note = "" if rec.source_file in counted_files else " (file not in the reader's file counts)"
        quarantined = f"quarantined {rec.quarantined:,}"
        if rec.excluded:
            why = _left_out(excluded_by_file[str(rec.source_file)].drop_duplicates("source_row"))
            quarantined = f"quarantined {rec.quarantined - rec.excluded:,} + excluded {rec.excluded:,} ({why})"
        out.append(
            check_result(
                name, ASSET_EXPORTS, rec.balanced, SEVERITY_ERROR,
                f"read {rec.rows_read:,}; accepted {rec.accepted:,} + {quarantined} = {accounted:,}{note}",
                "rows read = accepted + quarantined", abs(rec.rows_read - accounted),
            )
        )
        details[name] = pd.DataFrame([rec._asdict()]) if not rec.balanced else pd.DataFrame()
    return out


def quarantine_share_results(
    reconciliation: pd.DataFrame,
    history: pd.DataFrame,
    deals: pd.DataFrame,
    files: list[FileCount],
    config: ValidationConfig,
    quarantine: pd.DataFrame,
    details: dict[str, pd.DataFrame],
) -> list[dict]:
    """Two blocking shares, each over its own rows, so a large lookup file cannot dilute them:

    - deals: quarantined rows of the deal files (every file that is neither a lookup file nor
      one that only feeds history) over the rows read from them;
    - history: rows of the history-only files quarantined for a defect of their own, over the rows
      read from them. Rows that follow their quarantined deal (deal_quarantined) or name a deal the
      export does not hold (orphan_history: deleted or filtered-out deals) are judged with the
      deals, not counted again here.

    Rows left out on purpose (`EXCLUDED_CODES`: a mapping's filter, records deleted in the CRM,
    earlier versions of a record) are no problem: they count in neither part of a share, and the
    message says how many there were."""
    lookups = {f.source_file for f in files if f.lookup}
    history_only = set(source_files(history["source_file"]).unique()) - set(source_files(deals["source_file"]).unique())
    history_only = (history_only - lookups) | {f.source_file for f in files if f.history_only}
    files_of = reconciliation["source_file"]
    deal_files = reconciliation.loc[~files_of.isin(history_only | lookups)]
    history_files = reconciliation.loc[files_of.isin(history_only)]
    source = source_files(quarantine["source_file"])
    filtered = quarantine["reason_code"].isin(EXCLUDED_CODES).to_numpy(dtype=bool)
    in_deal_files = source.isin(set(deal_files["source_file"])).to_numpy(dtype=bool)
    own_defect = ~quarantine["reason_code"].isin([DEAL_QUARANTINED, ORPHAN_HISTORY]).to_numpy(dtype=bool)
    in_history_files = source.isin(history_only).to_numpy(dtype=bool)
    results = []
    for check, asset, part, unit, rows, counted in (
        (CHECK_QUARANTINE_SHARE, ASSET_DEALS, deal_files, "deal rows", in_deal_files, in_deal_files),
        (CHECK_HISTORY_QUARANTINE_SHARE, ASSET_HISTORY, history_files, "history rows", in_history_files,
         in_history_files & own_defect),
    ):
        excluded = int((rows & filtered).sum())
        total = int(part["rows_read"].sum()) - excluded
        mask = counted & ~filtered
        quarantined = int(mask.sum())
        share = quarantined / total if total else 0.0
        passed = share <= config.max_quarantine_share
        details[check] = quarantine.loc[mask].head(SAMPLE_ROWS_KEPT)
        scope = "" if check == CHECK_QUARANTINE_SHARE else " for a defect of their own"
        left_out = f"; {excluded:,} more {_left_out(quarantine.loc[rows & filtered])}" if excluded else ""
        results.append(
            check_result(
                check, asset, passed, SEVERITY_ERROR,
                f"{share:.2%} ({count_text(quarantined, total, unit)} quarantined{scope}{left_out})",
                f"at most {config.max_quarantine_share:.2%} of {unit} quarantined{scope}",
                quarantined if not passed else 0,
            )
        )
    return results
