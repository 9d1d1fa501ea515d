"""Data validation of the canonical CRM frames with Great Expectations, before anything is computed
or written: bad data never flows silently into a forecast, and a bad row never silently disappears.

`validate_crm` takes the reader's `deals`, `deal_history`, its own `quarantine` (rows it could not
parse) and how many rows it read from each file, and returns the accepted frames, every rejected
row with its reason, one result per check, and the per-file reconciliation.

Two kinds of problem:
- Row-level: the row goes to quarantine with its reason and the run goes on. One quarantine row per
  source row: `reason_code` is the first failing check in the order below, `reason` lists every
  failing check with the offending value, `raw_record` holds the row's values as JSON (text is
  stored exactly as read: a deal name such as `=HYPERLINK(...)` is data, never evaluated or
  stripped).
- Dataset-level (severity "error", blocking): the run must stop before any table is written.

Reason codes (the `quarantine.reason_code` contract: stable, add new ones, never rename). Deals,
in the order that decides `reason_code`:
  missing_id              deal_id is blank
  duplicate_id            deal_id repeats: identical copies keep the first copy in reading order
                          and quarantine the others; copies that differ are all quarantined
  unknown_pipeline        pipeline blank or not in the stage catalogue
  unknown_stage           stage blank or not a stage of the deal's pipeline
  invalid_status          status blank or not one of open / won / lost
  status_stage_mismatch   status disagrees with the stage (an open deal in "Closed Won")
  missing_close_date      a won or lost deal without closed_at
  implausible_date        created_at blank, or created_at / expected_close_date / closed_at before
                          `earliest_date` or after as_of + `latest_years_ahead` years
  closed_before_created   closed_at earlier than the day of created_at (a close date carries no
                          time, so a deal created and closed the same day is fine)
  amount_out_of_range     amount or amount_reporting (the amount converted into the reporting
                          currency) outside [min_amount, max_amount], or not a number (a blank
                          amount is accepted and counted by the warning `deals.amount_present`)
  unknown_currency        currency neither the reporting currency nor one of the rates file's
  probability_out_of_range  crm_probability outside 0-1 (the CRM's 0-100 %): never clipped
  text_too_long           a text value longer than its warehouse column holds (deal_id 64
                          characters, names 255: `etl.tables`); deal_id is checked right after
                          missing_id, the other columns last
Deal history, in order:
  missing_id              deal_id is blank
  text_too_long           deal_id longer than its warehouse column holds
  orphan_history          the deal is not among the deals read
  deal_quarantined        the deal was read but quarantined (its history goes with it)
  implausible_date        changed_at blank or outside the plausible window
  unknown_stage           stage not a stage of the deal's pipeline (a blank stage is fine)
  amount_out_of_range     amount or amount_reporting outside [min_amount, max_amount]
  probability_out_of_range  crm_probability outside 0-1
  text_too_long           another text value longer than its warehouse column holds
The reader's own codes (rows it could not parse) pass through unchanged, and so do the codes of
the ingest step: `duplicate_id` (a later copy of a deal id within one CRM), `unknown_currency` (no
rate for the deal's currency in the rates file), `no_rate_for_date` (the deal's date is before the
currency's first rate) and `deal_quarantined` (history of a deal quarantined by ingest).

Warnings (reported, nothing quarantined): `deals.amount_present` (blank amounts),
`deal_history.not_before_creation` (code history_before_creation: changed_at more than one day
before the deal's created_at), `deal_history.in_time_order` (code history_out_of_order: rows of a
deal whose changed_at is earlier than the deal's previous row in reading order; history is
re-sorted by time downstream, so this is reported with its count only).

Blocking checks (severity "error"): `deals.deals_not_empty`, `deals.quarantine_share` (quarantined
share of the deal files' rows above `max_quarantine_share`; lookup files such as Account.csv and
history-only files do not count), `deal_history.quarantine_share` (the same limit over the
history-only files' rows quarantined for a defect of their own), `deals.volume_not_collapsed`
(accepted deals below (1 - `max_volume_drop_share`) x the previous run's count) and one
`crm_exports.reconciliation[<file>]` per input file (rows read = accepted + quarantined).

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

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)
from great_expectations.expectations.row_conditions import Column as RowColumn

from etl.config import ValidationConfig
from etl.schema import (
    DEAL_COLUMNS,
    DEAL_HISTORY_COLUMNS,
    DQ_RESULT_COLUMNS,
    QUARANTINE_COLUMNS,
    TEXT,
    SchemaError,
    conform,
    empty_frame,
)
from etl.stages import STATUS_LOST, STATUS_WON, STATUSES, StageCatalog
from etl.tables import TABLES

logger = logging.getLogger(__name__)

ASSET_DEALS = "deals"
ASSET_HISTORY = "deal_history"
ASSET_EXPORTS = "crm_exports"

SEVERITY_ERROR = "error"
SEVERITY_ROW = "row"
SEVERITY_WARNING = "warning"

MISSING_ID = "missing_id"
DUPLICATE_ID = "duplicate_id"
UNKNOWN_PIPELINE = "unknown_pipeline"
UNKNOWN_STAGE = "unknown_stage"
INVALID_STATUS = "invalid_status"
STATUS_STAGE_MISMATCH = "status_stage_mismatch"
MISSING_CLOSE_DATE = "missing_close_date"
IMPLAUSIBLE_DATE = "implausible_date"
CLOSED_BEFORE_CREATED = "closed_before_created"
AMOUNT_OUT_OF_RANGE = "amount_out_of_range"
ORPHAN_HISTORY = "orphan_history"
DEAL_QUARANTINED = "deal_quarantined"
AMOUNT_MISSING = "amount_missing"
HISTORY_BEFORE_CREATION = "history_before_creation"
HISTORY_OUT_OF_ORDER = "history_out_of_order"
UNKNOWN_CURRENCY = "unknown_currency"
PROBABILITY_OUT_OF_RANGE = "probability_out_of_range"
TEXT_TOO_LONG = "text_too_long"

CHECK_DEALS_NOT_EMPTY = "deals.deals_not_empty"
CHECK_QUARANTINE_SHARE = "deals.quarantine_share"
CHECK_HISTORY_QUARANTINE_SHARE = "deal_history.quarantine_share"
# The reason code of rows a mapping's [filter] leaves out (etl.readers.mapped): not a problem.
EXCLUDED_BY_FILTER = "excluded_by_filter"
# Records deleted in the CRM (Salesforce IsDeleted, a loader's _fivetran_deleted, Pipedrive's
# deleted status) and earlier versions of a record kept by a loader's history mode.
DELETED_IN_CRM = "deleted_in_crm"
INACTIVE_VERSION = "inactive_version"
# Rows left out on purpose: quarantined so that every row is accounted for, but no data defect.
EXCLUDED_CODES = (EXCLUDED_BY_FILTER, DELETED_IN_CRM, INACTIVE_VERSION)
CHECK_VOLUME = "deals.volume_not_collapsed"
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
CHECK_NAME_MAX = 255  # data_quality_results.check_name is VARCHAR(255)

# GX sees each frame with a RangeIndex named `_row` (the row's position) and lists failing rows by
# it. A named index lets GX return the positions directly; listing them through a plain column
# costs GX one `DataFrame.at` lookup per failing row and column (minutes on millions of rows).
_ROW = "_row"
SAMPLE_ROWS_KEPT = 100  # failing rows kept per check for `sample_rows`
_NOT_IN_PIPELINE = "not in pipeline"
_STAGE_CATEGORIES = [*STATUSES, _NOT_IN_PIPELINE]
_DEAL_ACCEPTED, _DEAL_QUARANTINED, _DEAL_NOT_READ = "accepted", "quarantined", "not read"
# Datetime columns are checked as datetime64[ns] (GX compares those vectorised); values outside
# the nanosecond range are clipped to these bounds first, which keeps them implausible.
_NS_FLOOR = pd.Timestamp("1678-01-01")
_NS_CEILING = pd.Timestamp("2262-01-01")


class ValidationRunError(RuntimeError):
    """Great Expectations could not evaluate a check, so the data cannot be called valid."""


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


@dataclass(frozen=True)
class _RowCheck:
    """One GX expectation on a frame's rows, the reason code it quarantines with (or the warning
    it raises) and how a failing row is described to the people fixing the export."""

    name: str
    asset: str
    severity: str  # SEVERITY_ROW (quarantines) or SEVERITY_WARNING
    code: str
    column: str
    expected: str
    expectation: Any
    describe: Callable[[pd.DataFrame, pd.DataFrame], pd.Series]  # (source rows, checked rows) -> text
    # A work-frame column naming each failing row's own column, for checks that cover several
    # columns at once (quarantine.column then names it instead of `column`).
    column_of: str | None = None


@dataclass
class ValidationOutcome:
    """What validation accepted, what it quarantined and why, and every check's result."""

    deals: pd.DataFrame
    history: pd.DataFrame
    quarantine: pd.DataFrame
    results: pd.DataFrame
    reconciliation: pd.DataFrame
    as_of: dt.date | None = None  # the run's date, shown in the report
    # Per check, its first failing rows (up to SAMPLE_ROWS_KEPT), served by `sample_rows`.
    failures: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    @property
    def blocking_failures(self) -> pd.DataFrame:
        """Result rows that must stop the run: severity "error" and not passed."""
        failed = (self.results["severity"] == SEVERITY_ERROR) & ~self.results["passed"]
        return self.results.loc[failed].reset_index(drop=True)

    def sample_rows(self, check_name: str, n: int = 5) -> list[dict]:
        """Up to `n` rows that failed `check_name` (source file and row, deal id, the offending
        value and why), as plain values for run metadata. Checks without rows give []."""
        if check_name not in set(self.results["check_name"]):
            raise KeyError(f"no check named {check_name!r}; known checks: {sorted(self.results['check_name'])}")
        rows = self.failures.get(check_name)
        if rows is None or rows.empty or n <= 0:
            return []
        return json.loads(rows.head(n).to_json(orient="records", date_format="iso", date_unit="s"))

    def add_results(self, results: pd.DataFrame, failures: dict[str, pd.DataFrame]) -> None:
        """Append the results (and failing-row samples) of a suite run after `validate_crm`."""
        self.results = pd.concat([self.results, results], ignore_index=True)
        self.failures.update({name: _sample_frame(frame) for name, frame in failures.items()})

    def report_markdown(self) -> str:
        """A readable summary: blocking failures, every check, quarantined rows per reason and the
        per-file reconciliation."""
        results = self.results
        blocking = self.blocking_failures
        title = "## CRM data validation" + (f" (as of {self.as_of.isoformat()})" if self.as_of else "")
        lines = [title, ""]
        if blocking.empty:
            lines.append("All blocking checks passed.")
        else:
            names = ", ".join(f"`{name}`" for name in blocking["check_name"])
            lines.append(f"**{len(blocking)} blocking check(s) failed:** {names}.")
        lines += [
            "",
            f"Accepted {len(self.deals):,} deals and {len(self.history):,} history rows; "
            f"quarantined {len(self.quarantine):,} source rows.",
            "",
            "### Checks",
            "",
            "| check | asset | severity | result | observed | expected |",
            "|---|---|---|---|---|---|",
        ]
        for row in results.itertuples(index=False):
            verdict = "passed" if row.passed else "FAILED"
            lines.append(
                f"| {_md(row.check_name)} | {row.asset} | {row.severity} | {verdict} | "
                f"{_md(row.observed)} | {_md(row.expected)} |"
            )
        lines += ["", "### Quarantined rows by reason", ""]
        if self.quarantine.empty:
            lines.append("No rows quarantined.")
        else:
            counts = self.quarantine["reason_code"].fillna("(none)").value_counts().sort_index()
            lines += ["| reason_code | rows |", "|---|---:|"]
            lines += [f"| {_md(code)} | {count:,} |" for code, count in counts.items()]
        lines += [
            "",
            "### Reconciliation (rows read = accepted + quarantined)",
            "",
            "| file | read | accepted | quarantined | balanced |",
            "|---|---:|---:|---:|---|",
        ]
        for rec in self.reconciliation.itertuples(index=False):
            lines.append(
                f"| {_md(rec.source_file)} | {rec.rows_read:,} | {rec.accepted:,} | "
                f"{rec.quarantined:,} | {'yes' if rec.balanced else 'NO'} |"
            )
        return "\n".join(lines) + "\n"


def _md(text: object) -> str:
    """A value safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


# ---------------------------------------------------------------------------------------------
# Great Expectations session
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_great_expectations() -> Iterator[None]:
    """Silence GX's INFO logging and warnings for the duration of one validation only (some GX
    modules set their own logger level, so each of those is quieted and restored too)."""
    names = ["great_expectations"] + [
        name for name in list(logging.Logger.manager.loggerDict) if name.startswith("great_expectations.")
    ]
    loggers = [logging.getLogger(name) for name in names]
    previous = [lg.level for lg in loggers]
    for lg in loggers:
        if lg.name == "great_expectations" or lg.level != logging.NOTSET:
            lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="great_expectations")
            yield
    finally:
        for lg, level in zip(loggers, previous):
            lg.setLevel(level)


class _GxSession:
    """An ephemeral GX context (nothing written to disk, progress bars off) for one run."""

    def __init__(self) -> None:
        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
            analytics_enabled=False,
        )
        self.context = gx.get_context(mode="ephemeral", project_config=config)
        source = self.context.data_sources.add_pandas("dealcast_crm_exports")
        # One asset and batch definition serve every frame: each suite passes its own dataframe.
        self.batch_definition = source.add_dataframe_asset("canonical_frame").add_batch_definition_whole_dataframe(
            "whole_frame"
        )

    def validate(self, suite_name: str, frame: pd.DataFrame, expectations: list[Any]) -> dict[str, Any]:
        """Run `expectations` as one suite on `frame`; results by check name (the `check_name`
        meta of each expectation). Failing rows are listed in full (`COMPLETE`) by position."""
        frame = frame.set_axis(pd.RangeIndex(len(frame), name=_ROW), axis=0)
        suite = self.context.suites.add(gx.ExpectationSuite(name=suite_name, expectations=expectations))
        batch = self.batch_definition.get_batch(batch_parameters={"dataframe": frame})
        outcome = batch.validate(
            suite,
            result_format={
                "result_format": "COMPLETE",
                "unexpected_index_column_names": [_ROW],
                "exclude_unexpected_values": True,
            },
        )
        results: dict[str, Any] = {}
        for result in outcome.results:
            name = result.expectation_config.meta["check_name"]
            problem = _raised_exception(result.exception_info)
            if problem:
                raise ValidationRunError(
                    f"great_expectations could not evaluate check {name!r} on {suite_name} "
                    f"({len(frame):,} rows): {problem}"
                )
            results[name] = result
        missing = [e.meta["check_name"] for e in expectations if e.meta["check_name"] not in results]
        if missing:
            raise ValidationRunError(f"great_expectations returned no result for check(s) {missing} on {suite_name}")
        return results


def _raised_exception(info: Any) -> str | None:
    """The error message GX recorded for an expectation, if evaluating it raised."""
    if not isinstance(info, dict):
        return None
    if "raised_exception" in info:
        return str(info.get("exception_message")) if info.get("raised_exception") else None
    for nested in info.values():
        message = _raised_exception(nested)
        if message:
            return message
    return None


def _failing_rows(result: Any, check: str) -> np.ndarray:
    """Positions of the rows a map expectation found unexpected; all of them or an error.

    GX lists them as `[{"_row": [positions...]}]` (or one dict per row in older releases)."""
    listed = result.result.get("unexpected_index_list") or []
    chunks = [np.asarray(item[_ROW], dtype=np.int64).reshape(-1) for item in listed]
    rows = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
    expected_count = int(result.result.get("unexpected_count") or 0)
    if len(rows) != expected_count:
        raise ValidationRunError(
            f"check {check!r}: great_expectations counted {expected_count:,} failing rows but listed "
            f"{len(rows):,}; refusing to let unlisted rows through"
        )
    return _sorted_unique(rows)


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """Distinct int64 values, ascending (hash-based `pd.unique`, then a sort of what is left)."""
    return np.sort(pd.unique(np.asarray(values, dtype=np.int64)))


def _categorical(values: pd.Series, categories: pd.Index | None = None) -> pd.Categorical:
    """Text as a categorical for GX: same values and blanks, far cheaper for GX to hash and scan.
    Columns GX compares with each other must share `categories`."""
    if categories is None:
        codes, uniques = pd.factorize(values)
        return pd.Categorical.from_codes(codes, categories=pd.Index(uniques, dtype=object))
    return pd.Categorical(values.astype(object), categories=categories)


# ---------------------------------------------------------------------------------------------
# Derived columns and text helpers (vectorised)
# ---------------------------------------------------------------------------------------------


def _checkable_datetime(values: pd.Series) -> pd.Series:
    """`values` as timezone-naive datetime64[ns] for GX; unparseable text becomes NaT."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        values = values.dt.tz_convert("UTC").dt.tz_localize(None)
    elif not pd.api.types.is_datetime64_dtype(values.dtype):
        values = pd.to_datetime(values, errors="coerce")
        if isinstance(values.dtype, pd.DatetimeTZDtype):
            values = values.dt.tz_convert("UTC").dt.tz_localize(None)
    return values.clip(lower=_NS_FLOOR, upper=_NS_CEILING).astype("datetime64[ns]")


def _numeric_amount(values: pd.Series) -> np.ndarray:
    """Amounts as float64; text that is not a number becomes +inf so the range check rejects it
    (a blank stays NaN: accepted, counted as a warning)."""
    numbers = pd.to_numeric(values, errors="coerce")
    out = np.array(numbers.to_numpy(dtype="float64", na_value=np.nan), dtype="float64", copy=True)
    not_a_number = values.notna().to_numpy() & np.isnan(out)
    out[not_a_number] = np.inf
    return out


def _stage_status(
    pipeline_codes: np.ndarray, pipeline_names: pd.Index, stage: pd.Series, stages: StageCatalog
) -> pd.Series:
    """Per row, what the stage catalogue says the row's stage means in its pipeline: open, won or
    lost; "not in pipeline" for a stage the pipeline does not have (or a blank one); NA where the
    pipeline itself is unknown (`pipeline_codes` index `pipeline_names`, -1 for blank)."""
    stage_codes, stage_names = pd.factorize(stage)
    codes = np.full(len(stage), -1, dtype=np.int8)
    not_in_pipeline = _STAGE_CATEGORIES.index(_NOT_IN_PIPELINE)
    for pipeline in stages:
        if pipeline.name not in pipeline_names:
            continue
        position = pipeline_names.get_loc(pipeline.name)
        # One entry per distinct stage name, plus a last one for blank stages (code -1).
        table = np.array(
            [_STAGE_CATEGORIES.index(pipeline.status_of(name) or _NOT_IN_PIPELINE) for name in stage_names]
            + [not_in_pipeline],
            dtype=np.int8,
        )
        rows = pipeline_codes == position
        codes[rows] = table[stage_codes[rows]]
    return pd.Series(pd.Categorical.from_codes(codes, categories=_STAGE_CATEGORIES), index=stage.index)


def _quoted(values: pd.Series, blank: str = "blank") -> pd.Series:
    """'value' for present values, `blank` for missing ones."""
    text = values.astype("object")
    present = values.notna()
    return ("'" + text.where(present, "").astype(str) + "'").where(present, blank)


def _date_text(values: pd.Series) -> pd.Series:
    text = values.astype(str)
    return text.where(values.notna(), "blank")


def _plain(values: pd.Series) -> pd.Series:
    return values.astype("object").where(values.notna(), "blank").astype(str)


def _fixed(message: str) -> Callable[[pd.DataFrame, pd.DataFrame], pd.Series]:
    return lambda src, work: pd.Series(message, index=src.index, dtype=object)


def _count_text(count: int, total: int, unit: str = "rows") -> str:
    return f"{count:,} of {total:,} {unit}"


def _frame_from(columns: dict[str, Any], index: pd.Index) -> pd.DataFrame:
    return pd.DataFrame(columns, index=index)


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Window:
    """The plausible date window: [earliest, latest], latest = end of as_of + N years."""

    earliest: pd.Timestamp
    latest: pd.Timestamp

    @classmethod
    def for_run(cls, config: ValidationConfig, as_of: dt.date) -> "_Window":
        earliest = pd.Timestamp(config.earliest_date)
        latest = (
            pd.Timestamp(as_of).normalize()
            + pd.DateOffset(years=config.latest_years_ahead)
            + pd.Timedelta(days=1)
            - pd.Timedelta(microseconds=1)
        )
        if not (_NS_FLOOR < earliest <= latest < _NS_CEILING):
            raise ValueError(
                f"[validation] earliest_date {config.earliest_date} and as_of {as_of} + latest_years_ahead "
                f"{config.latest_years_ahead} must give a window inside {_NS_FLOOR.date()}..{_NS_CEILING.date()}"
            )
        return cls(earliest, latest)

    @property
    def text(self) -> str:
        return f"[{self.earliest.date()}, {self.latest.date()}]"

    def expectation(self, column: str, check: str) -> Any:
        return gxe.ExpectColumnValuesToBeBetween(
            column=column,
            min_value=self.earliest.to_pydatetime(),
            max_value=self.latest.to_pydatetime(),
            meta={"check_name": check},
        )

    def describe(self, column: str) -> Callable[[pd.DataFrame, pd.DataFrame], pd.Series]:
        def describe(src: pd.DataFrame, work: pd.DataFrame) -> pd.Series:
            return f"{column} " + _date_text(src[column]) + f" is outside {self.text}"

        return describe


def _deal_checks(
    stages: StageCatalog, config: ValidationConfig, window: _Window, currencies: list[str] | None = None
) -> list[_RowCheck]:
    """The deals suite, in the order that decides a quarantined row's reason_code. With
    `currencies` (the reporting currency and those of the rates file), a deal in any other currency
    is quarantined as unknown_currency."""
    statuses = list(STATUSES)
    pipelines = stages.names
    amount_range = f"[{config.min_amount:,.2f}, {config.max_amount:,.2f}]"

    def meta(name: str) -> dict[str, str]:
        return {"check_name": name}

    def duplicate_text(src: pd.DataFrame, work: pd.DataFrame) -> pd.Series:
        return "deal_id " + _quoted(src["deal_id"]) + " " + work["duplicate_note"].astype(str)

    def stage_text(src: pd.DataFrame, work: pd.DataFrame) -> pd.Series:
        unknown = "stage " + _quoted(src["stage"]) + " is not a stage of pipeline " + _quoted(src["pipeline"])
        return unknown.where(src["stage"].notna(), "stage is blank")

    def mismatch_text(src: pd.DataFrame, work: pd.DataFrame) -> pd.Series:
        return (
            "status " + _quoted(src["status"]) + " but stage " + _quoted(src["stage"]) + " means "
            + _quoted(work["status_from_stage"]) + " in pipeline " + _quoted(src["pipeline"])
        )

    def closed_text(src: pd.DataFrame, work: pd.DataFrame) -> pd.Series:
        return "closed_at " + _date_text(src["closed_at"]) + " is before created_at " + _date_text(src["created_at"])

    def amount_text(src: pd.DataFrame, work: pd.DataFrame) -> pd.Series:
        not_number = np.isinf(work["amount"].to_numpy()) & pd.to_numeric(src["amount"], errors="coerce").isna().to_numpy()
        out_of_range = "amount " + _plain(src["amount"]) + f" is outside {amount_range}"
        return out_of_range.where(~not_number, "amount " + _quoted(src["amount"]) + " is not a number")

    d = ASSET_DEALS
    id_fits, other_fits = _length_checks(d, "deals", "deal_id")
    return [
        _RowCheck("deals.deal_id_not_null", d, SEVERITY_ROW, MISSING_ID, "deal_id", "deal_id not blank",
                  gxe.ExpectColumnValuesToNotBeNull(column="deal_id", meta=meta("deals.deal_id_not_null")),
                  _fixed("deal_id is blank")),
        *id_fits,
        _RowCheck("deals.deal_id_unique", d, SEVERITY_ROW, DUPLICATE_ID, "deal_id",
                  "deal_id unique (identical repeated rows: first copy kept)",
                  gxe.ExpectColumnValuesToBeUnique(column="deal_id", meta=meta("deals.deal_id_unique")),
                  duplicate_text),
        _RowCheck("deals.pipeline_not_null", d, SEVERITY_ROW, UNKNOWN_PIPELINE, "pipeline", "pipeline not blank",
                  gxe.ExpectColumnValuesToNotBeNull(column="pipeline", meta=meta("deals.pipeline_not_null")),
                  _fixed("pipeline is blank")),
        _RowCheck("deals.pipeline_known", d, SEVERITY_ROW, UNKNOWN_PIPELINE, "pipeline",
                  f"pipeline one of {pipelines}",
                  gxe.ExpectColumnValuesToBeInSet(column="pipeline", value_set=pipelines, meta=meta("deals.pipeline_known")),
                  lambda src, work: "pipeline " + _quoted(src["pipeline"]) + f" is not configured (known: {', '.join(pipelines)})"),
        _RowCheck("deals.stage_known", d, SEVERITY_ROW, UNKNOWN_STAGE, "stage", "stage is a stage of the deal's pipeline",
                  gxe.ExpectColumnValuesToBeInSet(column="stage_status", value_set=statuses, meta=meta("deals.stage_known")),
                  stage_text),
        _RowCheck("deals.status_not_null", d, SEVERITY_ROW, INVALID_STATUS, "status", "status not blank",
                  gxe.ExpectColumnValuesToNotBeNull(column="status", meta=meta("deals.status_not_null")),
                  _fixed("status is blank")),
        _RowCheck("deals.status_in_set", d, SEVERITY_ROW, INVALID_STATUS, "status", f"status one of {statuses}",
                  gxe.ExpectColumnValuesToBeInSet(column="status", value_set=statuses, meta=meta("deals.status_in_set")),
                  lambda src, work: "status " + _quoted(src["status"]) + " is not one of open/won/lost"),
        _RowCheck("deals.status_matches_stage", d, SEVERITY_ROW, STATUS_STAGE_MISMATCH, "status",
                  "status equals the status the stage catalogue gives the stage",
                  gxe.ExpectColumnPairValuesToBeEqual(column_A="status", column_B="status_from_stage",
                                                      ignore_row_if="either_value_is_missing",
                                                      meta=meta("deals.status_matches_stage")),
                  mismatch_text),
        _RowCheck("deals.closed_at_when_closed", d, SEVERITY_ROW, MISSING_CLOSE_DATE, "closed_at",
                  "won and lost deals have closed_at",
                  gxe.ExpectColumnValuesToNotBeNull(column="closed_at",
                                                    row_condition=RowColumn("status").is_in([STATUS_WON, STATUS_LOST]),
                                                    meta=meta("deals.closed_at_when_closed")),
                  lambda src, work: "status " + _quoted(src["status"]) + " but closed_at is blank"),
        _RowCheck("deals.created_at_not_null", d, SEVERITY_ROW, IMPLAUSIBLE_DATE, "created_at", "created_at not blank",
                  gxe.ExpectColumnValuesToNotBeNull(column="created_at", meta=meta("deals.created_at_not_null")),
                  lambda src, work: ("created_at " + _quoted(src["created_at"]) + " is not a date").where(
                      src["created_at"].notna(), "created_at is blank")),
        _RowCheck("deals.created_at_plausible", d, SEVERITY_ROW, IMPLAUSIBLE_DATE, "created_at",
                  f"created_at within {window.text}",
                  window.expectation("created_at", "deals.created_at_plausible"), window.describe("created_at")),
        _RowCheck("deals.expected_close_date_plausible", d, SEVERITY_ROW, IMPLAUSIBLE_DATE, "expected_close_date",
                  f"expected_close_date blank or within {window.text}",
                  window.expectation("expected_close_date", "deals.expected_close_date_plausible"),
                  window.describe("expected_close_date")),
        _RowCheck("deals.closed_at_plausible", d, SEVERITY_ROW, IMPLAUSIBLE_DATE, "closed_at",
                  f"closed_at blank or within {window.text}",
                  window.expectation("closed_at", "deals.closed_at_plausible"), window.describe("closed_at")),
        _RowCheck("deals.closed_not_before_created", d, SEVERITY_ROW, CLOSED_BEFORE_CREATED, "closed_at",
                  "closed_at on or after the day of created_at",
                  gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="closed_at", column_B="created_day", or_equal=True,
                                                              ignore_row_if="either_value_is_missing",
                                                              meta=meta("deals.closed_not_before_created")),
                  closed_text),
        _RowCheck("deals.amount_in_range", d, SEVERITY_ROW, AMOUNT_OUT_OF_RANGE, "amount",
                  f"amount blank or a number within {amount_range}",
                  gxe.ExpectColumnValuesToBeBetween(column="amount", min_value=config.min_amount,
                                                    max_value=config.max_amount, meta=meta("deals.amount_in_range")),
                  amount_text),
        _amount_reporting_check(d, config),
        *([_RowCheck("deals.currency_known", d, SEVERITY_ROW, UNKNOWN_CURRENCY, "currency",
                     f"currency blank or one of {', '.join(currencies)} (the reporting currency and the rates file's)",
                     gxe.ExpectColumnValuesToBeInSet(column="currency", value_set=list(currencies),
                                                     meta=meta("deals.currency_known")),
                     lambda src, work: "currency " + _quoted(src["currency"]) + " has no exchange rate into the "
                     f"reporting currency (known: {', '.join(currencies)})")] if currencies else []),
        _probability_check(d),
        *other_fits,
        _RowCheck("deals.amount_present", d, SEVERITY_WARNING, AMOUNT_MISSING, "amount",
                  "amount not blank (blank amounts are accepted)",
                  gxe.ExpectColumnValuesToNotBeNull(column="amount", meta=meta("deals.amount_present")),
                  _fixed("amount is blank")),
    ]


def _history_checks(window: _Window, config: ValidationConfig | None = None) -> list[_RowCheck]:
    """The deal history suite, in the order that decides a quarantined row's reason_code."""
    statuses = list(STATUSES)

    def meta(name: str) -> dict[str, str]:
        return {"check_name": name}

    h = ASSET_HISTORY
    id_fits, other_fits = _length_checks(h, "deal_history", "deal_id")
    value_checks = (
        [_amount_check(h, config, "amount"), _amount_reporting_check(h, config)] if config is not None else []
    )
    return [
        _RowCheck("deal_history.deal_id_not_null", h, SEVERITY_ROW, MISSING_ID, "deal_id", "deal_id not blank",
                  gxe.ExpectColumnValuesToNotBeNull(column="deal_id", meta=meta("deal_history.deal_id_not_null")),
                  _fixed("deal_id is blank")),
        *id_fits,
        _RowCheck("deal_history.deal_known", h, SEVERITY_ROW, ORPHAN_HISTORY, "deal_id", "deal_id among the deals read",
                  gxe.ExpectColumnValuesToNotBeInSet(column="deal_in_run", value_set=[_DEAL_NOT_READ],
                                                     meta=meta("deal_history.deal_known")),
                  lambda src, work: "deal_id " + _quoted(src["deal_id"]) + " is not among the deals read"),
        _RowCheck("deal_history.deal_not_quarantined", h, SEVERITY_ROW, DEAL_QUARANTINED, "deal_id",
                  "the deal was accepted",
                  gxe.ExpectColumnValuesToNotBeInSet(column="deal_in_run", value_set=[_DEAL_QUARANTINED],
                                                     meta=meta("deal_history.deal_not_quarantined")),
                  lambda src, work: "deal " + _quoted(src["deal_id"]) + " was quarantined"),
        _RowCheck("deal_history.changed_at_not_null", h, SEVERITY_ROW, IMPLAUSIBLE_DATE, "changed_at",
                  "changed_at not blank",
                  gxe.ExpectColumnValuesToNotBeNull(column="changed_at", meta=meta("deal_history.changed_at_not_null")),
                  lambda src, work: ("changed_at " + _quoted(src["changed_at"]) + " is not a date").where(
                      src["changed_at"].notna(), "changed_at is blank")),
        _RowCheck("deal_history.changed_at_plausible", h, SEVERITY_ROW, IMPLAUSIBLE_DATE, "changed_at",
                  f"changed_at within {window.text}",
                  window.expectation("changed_at", "deal_history.changed_at_plausible"), window.describe("changed_at")),
        _RowCheck("deal_history.stage_known", h, SEVERITY_ROW, UNKNOWN_STAGE, "stage",
                  "stage blank or a stage of the deal's pipeline",
                  gxe.ExpectColumnValuesToBeInSet(column="stage_status", value_set=statuses,
                                                  meta=meta("deal_history.stage_known")),
                  lambda src, work: "stage " + _quoted(src["stage"]) + " is not a stage of pipeline "
                  + _quoted(work["pipeline"])),
        *value_checks,
        _probability_check(h),
        *other_fits,
        _RowCheck("deal_history.not_before_creation", h, SEVERITY_WARNING, HISTORY_BEFORE_CREATION, "changed_at",
                  "changed_at not earlier than the deal's created_at minus one day",
                  gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="changed_at", column_B="deal_created_at_minus_1d",
                                                              or_equal=True, ignore_row_if="either_value_is_missing",
                                                              meta=meta("deal_history.not_before_creation")),
                  lambda src, work: "changed_at " + _date_text(src["changed_at"])
                  + " is more than a day before the deal's created_at"),
        _RowCheck("deal_history.in_time_order", h, SEVERITY_WARNING, HISTORY_OUT_OF_ORDER, "changed_at",
                  "each deal's rows in time order (they are re-sorted downstream)",
                  gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="changed_at", column_B="previous_changed_at",
                                                              or_equal=True, ignore_row_if="either_value_is_missing",
                                                              meta=meta("deal_history.in_time_order")),
                  lambda src, work: "changed_at " + _date_text(src["changed_at"])
                  + " is earlier than the deal's previous row (" + _date_text(work["previous_changed_at"]) + ")"),
    ]


_TOO_LONG = "text_too_long_column"
_TOO_LONG_ID = "deal_id_too_long"


def _bounded_text(table: str) -> dict[str, int]:
    """The text columns of warehouse table `table` with a length limit, and that limit."""
    return {
        c.name: c.type.length
        for c in TABLES[table].table.columns
        if isinstance(c.type, sa.String) and not isinstance(c.type, sa.Text) and c.type.length
    }


def _length_checks(asset: str, table: str, first: str) -> tuple[list[_RowCheck], list[_RowCheck]]:
    """text_too_long checks (the warehouse would refuse such a value at write time and fail the
    whole run): one for `first` (deal_id), checked early, and one for every other bounded text
    column of `table` at once, naming each row's first column that is too long."""
    limits = _bounded_text(table)

    def describe_first(src: pd.DataFrame, work: pd.DataFrame) -> pd.Series:
        lengths = src[first].astype("string").str.len().astype("Int64").astype(str)
        return first + " is " + lengths + f" characters long; the warehouse holds at most {limits[first]}"

    def describe_other(src: pd.DataFrame, work: pd.DataFrame) -> pd.Series:
        names = work[_TOO_LONG].astype(object)
        texts = [
            f"{name} is {len(str(src[name].iloc[i]))} characters long; the warehouse holds at most {limits[name]}"
            for i, name in enumerate(names)
        ]
        return pd.Series(texts, index=src.index, dtype=object)

    first_name, other_name = f"{asset}.{first}_fits", f"{asset}.text_fits"
    return (
        [_RowCheck(first_name, asset, SEVERITY_ROW, TEXT_TOO_LONG, first, f"{first} at most {limits[first]} characters",
                   gxe.ExpectColumnValuesToBeNull(column=_TOO_LONG_ID, meta={"check_name": first_name}), describe_first)],
        [_RowCheck(other_name, asset, SEVERITY_ROW, TEXT_TOO_LONG, "text",
                   "every text value within its warehouse column's length",
                   gxe.ExpectColumnValuesToBeNull(column=_TOO_LONG, meta={"check_name": other_name}), describe_other,
                   column_of=_TOO_LONG)],
    )


def _text_lengths(frame: pd.DataFrame, table: str, first: str = "deal_id") -> dict[str, pd.Series]:
    """Work-frame columns: whether `first` is too long (1.0, else NULL), and the name of each row's
    first other bounded text column whose value is too long (NULL when every value fits)."""
    limits = {c: n for c, n in _bounded_text(table).items() if c in frame.columns}
    too_long = pd.Series(None, index=frame.index, dtype=object)
    first_too_long = pd.Series(np.nan, index=frame.index)
    for column, limit in limits.items():
        over = (frame[column].astype("string").str.len() > limit).fillna(False).to_numpy(dtype=bool)
        if not over.any():
            continue
        if column == first:
            first_too_long[over] = 1.0
        else:
            too_long[over & too_long.isna().to_numpy()] = column
    return {_TOO_LONG_ID: first_too_long, _TOO_LONG: too_long}


def _amount_check(asset: str, config: ValidationConfig, column: str) -> _RowCheck:
    amount_range = f"[{config.min_amount:,.2f}, {config.max_amount:,.2f}]"
    name = f"{asset}.{column}_in_range"
    return _RowCheck(
        name, asset, SEVERITY_ROW, AMOUNT_OUT_OF_RANGE, column, f"{column} blank or within {amount_range}",
        gxe.ExpectColumnValuesToBeBetween(column=column, min_value=config.min_amount, max_value=config.max_amount,
                                          meta={"check_name": name}),
        lambda src, work: column + " " + _plain(src[column]) + f" is outside {amount_range}",
    )


def _amount_reporting_check(asset: str, config: ValidationConfig) -> _RowCheck:
    """amount_reporting bounded like amount: a wild exchange rate (1e12) must not publish a
    5,100 GBP deal as 5.1e15 in the reporting currency."""
    check = _amount_check(asset, config, "amount_reporting")
    amount_range = f"[{config.min_amount:,.2f}, {config.max_amount:,.2f}]"
    return dataclasses.replace(
        check,
        expected=f"amount_reporting (the amount in the reporting currency) blank or within {amount_range}",
        describe=lambda src, work: (
            "amount_reporting " + _plain(src["amount_reporting"]) + f" is outside {amount_range} (amount "
            + _plain(src["amount"]) + " converted into the reporting currency: check the exchange rate of the "
            "deal's currency and date)"
        ),
    )


def _probability_check(asset: str) -> _RowCheck:
    """The CRM's probability within 0-100 %: a 150 or -20 is quarantined, never clipped."""
    name = f"{asset}.crm_probability_in_range"

    def describe(src: pd.DataFrame, work: pd.DataFrame) -> pd.Series:
        percent = (pd.to_numeric(src["crm_probability"], errors="coerce") * 100).round(6)
        return "crm_probability " + percent.astype(str) + "% is outside 0-100%"

    return _RowCheck(
        name, asset, SEVERITY_ROW, PROBABILITY_OUT_OF_RANGE, "crm_probability", "crm_probability blank or within 0-1",
        gxe.ExpectColumnValuesToBeBetween(column="crm_probability", min_value=0.0, max_value=1.0,
                                          meta={"check_name": name}),
        describe,
    )


# ---------------------------------------------------------------------------------------------
# Frames GX checks
# ---------------------------------------------------------------------------------------------


def _deal_work_frame(deals: pd.DataFrame, stages: StageCatalog) -> pd.DataFrame:
    """The columns the deals suite checks, some derived (stage status from the catalogue, the
    day of creation, datetimes as ns); one row per input row, `_ROW` = position."""
    pipeline_codes, pipeline_names = pd.factorize(deals["pipeline"])
    stage_status = _stage_status(pipeline_codes, pipeline_names, deals["stage"], stages)
    status = deals["status"]
    comparable = stage_status.isin(STATUSES) & status.isin(STATUSES)
    status_values = pd.Index(pd.unique(status.dropna().astype(object)), dtype=object)
    statuses = pd.Index(list(STATUSES), dtype=object).append(status_values.difference(list(STATUSES), sort=False))
    created = _checkable_datetime(deals["created_at"])
    return _frame_from(
        {
            "deal_id": _categorical(deals["deal_id"]),
            "pipeline": _categorical(deals["pipeline"]),
            "stage_status": stage_status,
            "status": _categorical(status, statuses),
            "status_from_stage": _categorical(stage_status.astype("object").where(comparable, None), statuses),
            "created_at": created,
            "created_day": created.dt.floor("D"),
            "expected_close_date": _checkable_datetime(deals["expected_close_date"]),
            "closed_at": _checkable_datetime(deals["closed_at"]),
            "amount": _numeric_amount(deals["amount"]),
            "amount_reporting": _numeric_amount(deals["amount_reporting"]),
            "crm_probability": _numeric_amount(deals["crm_probability"]),
            "currency": _categorical(deals["currency"]),
            **_text_lengths(deals, "deals"),
        },
        deals.index,
    )


def _duplicate_rows(deals: pd.DataFrame, flagged: np.ndarray) -> tuple[np.ndarray, pd.Series]:
    """Of the rows sharing a deal_id (`flagged` by GX), the ones to quarantine, and a note per
    flagged row: identical copies keep the first one in reading order, differing copies all go."""
    notes = pd.Series(pd.NA, index=deals.index, dtype=object)
    if len(flagged) == 0:
        return flagged, notes
    content = [c for c in deals.columns if c not in ("source_file", "source_row")]
    copies = deals.iloc[flagged]
    fingerprint = pd.util.hash_pandas_object(copies[content], index=False)
    ids = copies["deal_id"]
    versions = fingerprint.groupby(ids, sort=False).transform("nunique")
    copies_per_id = ids.groupby(ids, sort=False).transform("size")
    identical = versions.eq(1)
    first = ~ids.duplicated(keep="first")
    first_row = copies["source_row"].groupby(ids, sort=False).transform("first")
    quarantine = ~(identical & first)
    note = pd.Series(
        np.where(
            identical,
            "repeats an identical earlier row (source_row " + first_row.astype(str) + "), which is kept",
            "appears in " + copies_per_id.astype(str) + " rows with different content; every copy is quarantined",
        ),
        index=copies.index,
    )
    notes.loc[copies.index] = note
    return flagged[quarantine.to_numpy()], notes


# ---------------------------------------------------------------------------------------------
# Row failures -> quarantine
# ---------------------------------------------------------------------------------------------


@dataclass
class _Failures:
    """Failing row positions per check of one frame (checks in reason_code order)."""

    checks: list[_RowCheck]
    rows: dict[str, np.ndarray]

    def rejected(self, length: int) -> np.ndarray:
        mask = np.zeros(length, dtype=bool)
        for check in self.checks:
            if check.severity == SEVERITY_ROW:
                mask[self.rows[check.name]] = True
        return mask

    def sample(self, check: _RowCheck, src: pd.DataFrame, work: pd.DataFrame) -> pd.DataFrame:
        """The first failing rows of `check`: where they come from and what is wrong with them."""
        positions = self.rows[check.name][:SAMPLE_ROWS_KEPT]
        if len(positions) == 0:
            return pd.DataFrame()
        src_rows = src.iloc[positions]
        if check.column_of:
            columns = work[check.column_of].iloc[positions].to_numpy(dtype=object)
            values = [str(src_rows[c].iloc[i]) for i, c in enumerate(columns)]
        else:
            columns, values = check.column, _plain(src_rows[check.column]).to_numpy()
        return pd.DataFrame(
            {
                "source_file": src_rows["source_file"].to_numpy(),
                "source_row": src_rows["source_row"].to_numpy(),
                "deal_id": src_rows["deal_id"].to_numpy(),
                "column": columns,
                "value": values,
                "reason": check.describe(src_rows, work.iloc[positions]).to_numpy(),
            }
        )

    def quarantine(self, src: pd.DataFrame, work: pd.DataFrame) -> pd.DataFrame:
        """One quarantine row per rejected row: the first failing check's code and column, every
        failing check (with the offending value) in `reason`, and the row's values as JSON."""
        row_checks = [c for c in self.checks if c.severity == SEVERITY_ROW and len(self.rows[c.name])]
        if not row_checks:
            return empty_frame(QUARANTINE_COLUMNS)
        positions = np.unique(np.concatenate([self.rows[c.name] for c in row_checks]))
        code = np.full(len(positions), None, dtype=object)
        column = np.full(len(positions), None, dtype=object)
        reason = np.full(len(positions), None, dtype=object)
        for check in row_checks:
            failing = self.rows[check.name]
            at = np.searchsorted(positions, failing)
            message = check.describe(src.iloc[failing], work.iloc[failing])
            text = (check.code + ": " + message.astype(str)).to_numpy(dtype=object)
            first = pd.isna(code[at])
            code[at[first]] = check.code
            column[at[first]] = (
                work[check.column_of].iloc[failing].to_numpy(dtype=object)[first]
                if check.column_of else check.column
            )
            earlier = reason[at]
            known = ~pd.isna(earlier)
            text[known] = earlier[known] + "; " + text[known]
            reason[at] = text
        rows = src.iloc[positions]
        raw = rows.to_json(orient="records", lines=True, date_format="iso", date_unit="us")
        out = pd.DataFrame(
            {
                "source_file": rows["source_file"].to_numpy(),
                "source_row": rows["source_row"].to_numpy(),
                "reason_code": code,
                "reason": reason,
                "column": column,
                "raw_record": raw.split("\n")[: len(rows)],
            }
        )
        return conform(out, QUARANTINE_COLUMNS, "quarantine")


def _file_column_names(quarantine: pd.DataFrame, files: list[FileCount]) -> pd.DataFrame:
    """Quarantine rows whose column is a canonical name, renamed to the header of their file."""
    pairs = [(f.source_file, canonical, header) for f in files for canonical, header in f.columns.items()]
    if not pairs or quarantine.empty:
        return quarantine
    names = pd.DataFrame(pairs, columns=["source_file", "column", "header"]).astype("object")
    keys = quarantine[["source_file", "column"]].astype("object")
    header = keys.merge(names, on=["source_file", "column"], how="left")["header"].to_numpy()
    renamed = quarantine.copy()
    renamed["column"] = pd.Series(np.where(pd.isna(header), keys["column"].to_numpy(), header), index=quarantine.index).astype(
        quarantine["column"].dtype
    )
    return renamed


def _merge_quarantines(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Reader, deal and history rejections as one row per source row (earlier frames' code first)."""
    combined = pd.concat([f for f in frames if not f.empty] or [empty_frame(QUARANTINE_COLUMNS)], ignore_index=True)
    combined = conform(combined, QUARANTINE_COLUMNS, "quarantine")
    key = ["source_file", "source_row"]
    repeated = combined.duplicated(key, keep=False)
    if not repeated.any():
        return combined
    shared = combined.loc[repeated]
    grouped = shared.groupby(key, sort=False, dropna=False)
    merged = grouped.first().reset_index()
    merged["reason"] = grouped["reason"].agg(lambda texts: "; ".join(texts.fillna(""))).to_numpy()
    out = pd.concat([combined.loc[~repeated], merged], ignore_index=True)
    return conform(out, QUARANTINE_COLUMNS, "quarantine")


# ---------------------------------------------------------------------------------------------
# Reconciliation
# ---------------------------------------------------------------------------------------------


def _source_files(values: pd.Series) -> pd.Series:
    return values.astype(TEXT).fillna(NO_SOURCE_FILE)


def _reconcile(
    files: list[FileCount], accepted_parts: list[pd.DataFrame], quarantine: pd.DataFrame
) -> pd.DataFrame:
    """Per input file: rows read, distinct source rows accepted (and not quarantined), source rows
    quarantined, how many of those were left out on purpose (`excluded`), and whether
    read = accepted + quarantined. Files that rows name but the reader
    did not count get rows_read 0, so they never balance."""
    read = {f.source_file: int(f.rows_read) for f in files}
    lookups = {f.source_file: int(f.lookup_rows) for f in files}
    accepted_files = [_source_files(p["source_file"]) for p in accepted_parts]
    quarantined_files = _source_files(quarantine["source_file"])
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
# Entry point
# ---------------------------------------------------------------------------------------------


def _require_columns(frame: pd.DataFrame, columns: dict[str, str], name: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SchemaError(f"validate_crm: the {name} frame lacks canonical column(s) {missing}")
    return frame.reset_index(drop=True)


def _result(check: str, asset: str, passed: bool, severity: str, observed: str, expected: str, failing: int) -> dict:
    return {
        "check_name": check,
        "asset": asset,
        "passed": bool(passed),
        "severity": severity,
        "observed": observed,
        "expected": expected,
        "failing_rows": int(failing),
    }


def _run_row_suite(
    session: _GxSession, suite: str, work: pd.DataFrame, checks: list[_RowCheck]
) -> dict[str, np.ndarray]:
    results = session.validate(suite, work, [c.expectation for c in checks])
    return {c.name: _failing_rows(results[c.name], c.name) for c in checks}


def validate_crm(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    reader_quarantine: pd.DataFrame,
    files: list[FileCount],
    stages: StageCatalog,
    config: ValidationConfig,
    as_of: dt.date,
    previous_deal_count: int | None = None,
    raw_results: pd.DataFrame | None = None,
    currencies: list[str] | None = None,
) -> ValidationOutcome:
    """Validate one run's canonical CRM frames (see the module docstring for every check).

    Accepted rows are returned unchanged (same columns, dtypes and values as read). Row-level
    problems quarantine the row; dataset-level problems show up in `blocking_failures`.
    `previous_deal_count` is the previous run's accepted deal count (None on a first run);
    `raw_results` are the results of the readers' raw suites (`validate_raw_rows`), reported first;
    `currencies` the currencies amounts may be in (None: not checked).
    """
    deals = _require_columns(deals, DEAL_COLUMNS, "deals")
    history = _require_columns(history, DEAL_HISTORY_COLUMNS, "deal_history")
    reader_quarantine = _require_columns(reader_quarantine, QUARANTINE_COLUMNS, "reader quarantine")
    seen: set[str] = set()
    for f in files:
        if f.source_file in seen:
            raise ValueError(f"validate_crm: file {f.source_file!r} is listed twice in the reader's file counts")
        seen.add(f.source_file)
    window = _Window.for_run(config, as_of)
    deal_checks = _deal_checks(stages, config, window, currencies)
    history_checks = _history_checks(window, config)

    with _quiet_great_expectations():
        session = _GxSession()

        # Deals.
        deal_work = _deal_work_frame(deals, stages)
        deal_rows = _run_row_suite(session, "deals", deal_work, deal_checks)
        deal_rows["deals.deal_id_unique"], duplicate_notes = _duplicate_rows(deals, deal_rows["deals.deal_id_unique"])
        deal_work["duplicate_note"] = duplicate_notes
        deal_failures = _Failures(deal_checks, deal_rows)
        deal_rejected = deal_failures.rejected(len(deals))
        accepted_deals = deals.loc[~deal_rejected].reset_index(drop=True)

        # History, against the accepted deals.
        history_work = _history_work_frame(history, deals, accepted_deals, stages)
        history_rows = _run_row_suite(session, "deal_history", history_work, history_checks)
        history_failures = _Failures(history_checks, history_rows)
        history_rejected = history_failures.rejected(len(history))
        accepted_history = history.loc[~history_rejected].reset_index(drop=True)

        # Dataset level: row counts of the accepted deals.
        dataset_expectations = [gxe.ExpectTableRowCountToBeBetween(min_value=1, meta={"check_name": CHECK_DEALS_NOT_EMPTY})]
        volume_floor = None
        if previous_deal_count is not None:
            volume_floor = math.ceil(round((1.0 - config.max_volume_drop_share) * previous_deal_count, 9))
            dataset_expectations.append(
                gxe.ExpectTableRowCountToBeBetween(min_value=volume_floor, meta={"check_name": CHECK_VOLUME})
            )
        accepted_ids = pd.DataFrame({"deal_id": accepted_deals["deal_id"]})
        dataset = session.validate("accepted_deals", accepted_ids, dataset_expectations)

    details: dict[str, pd.DataFrame] = {}
    for check in deal_checks:
        details[check.name] = deal_failures.sample(check, deals, deal_work)
    for check in history_checks:
        details[check.name] = history_failures.sample(check, history, history_work)

    reader = conform(reader_quarantine, QUARANTINE_COLUMNS, "reader quarantine")
    quarantine = _merge_quarantines(
        [reader, deal_failures.quarantine(deals, deal_work), history_failures.quarantine(history, history_work)]
    )
    quarantine = _file_column_names(quarantine, files)
    reconciliation = _reconcile(files, [accepted_deals, accepted_history], quarantine)

    rows = [_reader_result(reader, reconciliation, details)]
    failing_by_check = {**deal_rows, **history_rows}
    for check in [*deal_checks, *history_checks]:
        failing = failing_by_check[check.name]
        observed = _count_text(len(failing), len(deals) if check.asset == ASSET_DEALS else len(history))
        if check.name == "deals.deal_id_unique" and len(failing):
            observed += f" (repeated deal ids: {deals['deal_id'].iloc[failing].nunique():,})"
        rows.append(_result(check.name, check.asset, len(failing) == 0, check.severity, observed, check.expected, len(failing)))
    rows.append(_not_empty_result(dataset[CHECK_DEALS_NOT_EMPTY].success, accepted_deals, deals, details))
    rows += _quarantine_share_results(reconciliation, history, deals, files, config, quarantine, details)
    volume_passed = dataset[CHECK_VOLUME].success if volume_floor is not None else True
    rows.append(_volume_result(volume_passed, volume_floor, accepted_deals, previous_deal_count, config, details))
    rows += _reconciliation_results(reconciliation, seen, details, quarantine)

    results = conform(pd.DataFrame(rows, columns=list(DQ_RESULT_COLUMNS)), DQ_RESULT_COLUMNS, "data_quality_results")
    if raw_results is not None and not raw_results.empty:
        raw = conform(raw_results, DQ_RESULT_COLUMNS, "raw suite results")
        results = pd.concat([raw, results], ignore_index=True)
    outcome = ValidationOutcome(
        deals=accepted_deals,
        history=accepted_history,
        quarantine=quarantine,
        results=results,
        reconciliation=reconciliation,
        as_of=as_of,
        failures={name: _sample_frame(frame) for name, frame in details.items()},
    )
    _log_summary(outcome)
    return outcome


# ---------------------------------------------------------------------------------------------
# Raw source suites: each export file's columns as written, before any parsing
# ---------------------------------------------------------------------------------------------

# How a value must be written to parse (etl.readers.csvfiles.parse_numbers / parse_timestamps /
# parse_booleans); blank values are not checked here (each reader says which columns need one).
NUMBER_FORM = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
DATE_FORM = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}(:?\d{2})?)?$"
BOOLEAN_FORM = r"^([01]|[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])$"
RAW_CHECK_PREFIX = "raw"


@dataclass(frozen=True)
class RawForm:
    """A column whose non-blank values must match `pattern` (a regular expression)."""

    column: str
    kind: str  # number, date, boolean, ...: names the check
    pattern: str
    reason_code: str  # the code the reader quarantines a value that does not parse with
    digit_blind: bool = True  # the pattern treats every digit alike (checked on shapes, see below)


@dataclass(frozen=True)
class RawRules:
    """What a reader expects of the columns of one export format, checked with Great
    Expectations on the text as written. Column names are the reader's working-frame names;
    a column the file does not have is skipped."""

    not_blank: tuple[str, ...] = ()
    unique: tuple[str, ...] = ()
    forms: tuple[RawForm, ...] = ()

    @classmethod
    def standard(
        cls,
        not_blank: tuple[str, ...] = (),
        unique: tuple[str, ...] = (),
        numbers: tuple[str, ...] = (),
        dates: tuple[str, ...] = (),
        booleans: tuple[str, ...] = (),
        number_code: str = "unparseable_number",
        date_code: str = "unparseable_date",
        boolean_code: str = "unparseable_boolean",
        amounts: tuple[str, ...] = (),
    ) -> "RawRules":
        """Rules for columns parsed with the standard parsers (plain numbers, ISO dates, 0/1/true/false)."""
        forms = [RawForm(c, "number", NUMBER_FORM, "unparseable_amount") for c in amounts]
        forms += [RawForm(c, "number", NUMBER_FORM, number_code) for c in numbers]
        forms += [RawForm(c, "date", DATE_FORM, date_code) for c in dates]
        forms += [RawForm(c, "boolean", BOOLEAN_FORM, boolean_code, digit_blind=False) for c in booleans]
        return cls(not_blank=not_blank, unique=unique, forms=tuple(forms))


def _raw_check_name(source_file: str, label: str, kind: str) -> str:
    name = f"{RAW_CHECK_PREFIX}[{Path(source_file).name}].{label}.{kind}"
    return name if len(name) <= CHECK_NAME_MAX else name[: CHECK_NAME_MAX - 3] + "..."


def _text_array(values: pd.Series) -> pa.LargeStringArray:
    text = pa.array(values, type=pa.large_string())
    return text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text


def _shapes(text: pa.LargeStringArray) -> pa.LargeStringArray:
    """Each value with every digit written as 9 ("2024-01-31" and "1999-12-01" share a shape):
    one pass over the column's bytes (digits are single bytes in UTF-8)."""
    validity, offsets, data = text.buffers()
    if data is None or data.size == 0:
        return text
    raw = np.frombuffer(data, dtype=np.uint8)
    shaped = np.where((raw >= 48) & (raw <= 57), np.uint8(57), raw).astype(np.uint8)
    return pa.LargeStringArray.from_buffers(
        len(text), offsets, pa.py_buffer(shaped), validity, text.null_count, text.offset
    )


def _distinct(values: pd.Series, digit_blind: bool) -> tuple[np.ndarray, pa.Array]:
    """Each row's code into the column's distinct written values, or their shapes when
    `digit_blind` (-1 for blank), and those distinct values."""
    text = _text_array(values)
    if digit_blind:
        text = _shapes(text)
    encoded = pc.dictionary_encode(text)
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    dictionary = encoded.dictionary
    blank = pc.equal(pc.utf8_length(dictionary), 0).to_numpy(zero_copy_only=False)
    if blank.any():
        codes[np.append(blank, False)[codes]] = -1
    return codes, dictionary


def _rows_with(codes: np.ndarray, bad_values: np.ndarray, n_values: int) -> np.ndarray:
    """Positions of the rows whose code is one of `bad_values` (code -1, blank, never is)."""
    if len(bad_values) == 0:
        return np.zeros(0, dtype=np.int64)
    bad = np.zeros(n_values + 1, dtype=bool)
    bad[bad_values] = True
    return np.flatnonzero(bad[codes])


def validate_raw_rows(
    frame: pd.DataFrame,
    files: dict[int, str],
    rules: RawRules,
    label: Callable[[int, str], str],
    format_label: str,
) -> pd.DataFrame:
    """Run the raw suite of one export format on a reader's working frame: text columns as
    written ("" for blank) plus `_file` (the file key of each row, a key of `files`). Returns one
    `data_quality_results` row per file and check (asset crm_exports, severity "row": the reader
    quarantines each failing row with the check's reason code). `label(file_key, column)` is the
    column's header in that file.

    Great Expectations sees each column as a categorical of its distinct written values (cheap to
    hash and scan). A form check runs on the distinct shapes of the values (every digit written
    as 9, when the form treats all digits alike), so five million timestamps cost a few dozen
    regular-expression matches; a failing shape fails every row written in it."""
    cache: dict[tuple[str, bool], tuple[np.ndarray, pa.Array]] = {}

    def distinct(column: str, digit_blind: bool) -> tuple[np.ndarray, pa.Array]:
        if (column, digit_blind) not in cache:
            cache[(column, digit_blind)] = _distinct(frame[column], digit_blind)
        return cache[(column, digit_blind)]

    expectations: list[Any] = []
    described: dict[str, tuple[str, str, str]] = {}
    work = pd.DataFrame(index=pd.RangeIndex(len(frame)))
    for column in rules.not_blank:
        if column in frame:
            name = f"{column}.not_blank"
            codes, values = distinct(column, True)
            work[name] = pd.Categorical.from_codes(codes, categories=pd.Index(np.arange(len(values))))
            expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=name, meta={"check_name": name}))
            described[name] = (column, "not_blank", "a value in every row (blank rows are quarantined)")
    for column in rules.unique:
        if column in frame:
            name = f"{column}.unique"
            codes, values = distinct(column, False)
            work[name] = pd.Categorical.from_codes(codes, categories=pd.Index(np.arange(len(values))))
            expectations.append(gxe.ExpectColumnValuesToBeUnique(column=name, meta={"check_name": name}))
            described[name] = (column, "unique", "each value once (later repeats are quarantined as duplicate_id)")
    failing: dict[str, np.ndarray] = {}
    with _quiet_great_expectations():
        session = _GxSession()
        if expectations:
            results = session.validate(f"raw {format_label}", work, expectations)
            failing = {name: _failing_rows(results[name], name) for name in results}
        for form in rules.forms:
            if form.column not in frame:
                continue
            name = f"{form.column}.{form.kind}"
            codes, values = distinct(form.column, form.digit_blind)
            check = gxe.ExpectColumnValuesToMatchRegex(column="value", regex=form.pattern, meta={"check_name": name})
            checked = pd.DataFrame({"value": pd.Series(values.to_pylist(), dtype=object)})
            bad_values = _failing_rows(session.validate(f"raw {format_label} {name}", checked, [check])[name], name)
            failing[name] = _rows_with(codes, bad_values, len(values))
            described[name] = (
                form.column, form.kind,
                f"blank or written as a {form.kind} (others are quarantined as {form.reason_code})",
            )
    file_keys = frame["_file"].to_numpy(dtype=np.int64)
    rows_per_file = pd.Series(file_keys).value_counts()
    out = []
    for name, (column, kind, expected) in described.items():
        failing_per_file = pd.Series(file_keys[failing[name]]).value_counts()
        for key, path in files.items():
            total = int(rows_per_file.get(key, 0))
            count = int(failing_per_file.get(key, 0))
            header = label(key, column)
            out.append(
                _result(
                    _raw_check_name(path, header, kind), ASSET_EXPORTS, count == 0, SEVERITY_ROW,
                    _count_text(count, total), f"{header}: {expected}", count,
                )
            )
    if not out:
        return empty_frame(DQ_RESULT_COLUMNS)
    return conform(pd.DataFrame(out, columns=list(DQ_RESULT_COLUMNS)), DQ_RESULT_COLUMNS, "data_quality_results")


# ---------------------------------------------------------------------------------------------
# Stage events: the rebuilt stays in each stage, checked before they are published
# ---------------------------------------------------------------------------------------------

ASSET_STAGE_EVENTS = "stage_events"
CHECK_EVENTS_DEAL_KNOWN = "stage_events.deal_known"
CHECK_EVENTS_STAGE_KNOWN = "stage_events.stage_known"
CHECK_EVENTS_TIME_ORDER = "stage_events.entered_in_time_order"
CHECK_EVENTS_EXIT_AFTER_ENTRY = "stage_events.exited_not_before_entered"
CHECK_EVENTS_DAYS = "stage_events.days_in_stage_not_negative"
CHECK_EVENTS_NOT_FUTURE = "stage_events.entered_by_as_of"


def validate_stage_events(
    events: pd.DataFrame, deals: pd.DataFrame, as_of_end: pd.Timestamp
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The `stage_events` suite (blocking: stage events are rebuilt from accepted history, so a
    failure means the rebuild itself is wrong and nothing may be published): every event belongs to
    an accepted deal and to a stage of its pipeline; a deal's events are in time order; no stay ends
    before it begins or lasts a negative number of days; nothing is dated after the end of as_of.

    `events` is `etl.pipeline_state.stage_events` output (sorted by deal, then time). Returns the
    `data_quality_results` rows and, per check, its first failing events."""
    deal_codes, _ = pd.factorize(events["deal_id"])
    entered = _checkable_datetime(events["entered_at"])
    previous = entered.groupby(deal_codes).shift(1)
    work = pd.DataFrame(
        {
            "deal_known": pd.Index(deals["deal_id"]).get_indexer(events["deal_id"]) >= 0,
            "stage_order": events["stage_order"].astype("Float64").astype("float64"),
            "entered_at": entered,
            "previous_entered_at": previous,
            "exited_at": _checkable_datetime(events["exited_at"]),
            "days_in_stage": events["days_in_stage"].astype("float64"),
        }
    )

    def meta(name: str) -> dict:
        return {"check_name": name}

    checks = {
        CHECK_EVENTS_DEAL_KNOWN: (
            "every event belongs to an accepted deal",
            gxe.ExpectColumnValuesToBeInSet(column="deal_known", value_set=[True], meta=meta(CHECK_EVENTS_DEAL_KNOWN)),
        ),
        CHECK_EVENTS_STAGE_KNOWN: (
            "every event's stage is a stage of its pipeline",
            gxe.ExpectColumnValuesToNotBeNull(column="stage_order", meta=meta(CHECK_EVENTS_STAGE_KNOWN)),
        ),
        CHECK_EVENTS_TIME_ORDER: (
            "each deal's events in time order (entered_at never before the previous event's)",
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="entered_at", column_B="previous_entered_at", or_equal=True,
                ignore_row_if="either_value_is_missing", meta=meta(CHECK_EVENTS_TIME_ORDER),
            ),
        ),
        CHECK_EVENTS_EXIT_AFTER_ENTRY: (
            "exited_at on or after entered_at",
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="exited_at", column_B="entered_at", or_equal=True,
                ignore_row_if="either_value_is_missing", meta=meta(CHECK_EVENTS_EXIT_AFTER_ENTRY),
            ),
        ),
        CHECK_EVENTS_DAYS: (
            "days_in_stage blank or at least 0",
            gxe.ExpectColumnValuesToBeBetween(column="days_in_stage", min_value=0, meta=meta(CHECK_EVENTS_DAYS)),
        ),
        CHECK_EVENTS_NOT_FUTURE: (
            f"entered_at at or before the end of as_of ({as_of_end})",
            gxe.ExpectColumnValuesToBeBetween(
                column="entered_at", max_value=as_of_end.to_pydatetime(), meta=meta(CHECK_EVENTS_NOT_FUTURE)
            ),
        ),
    }
    with _quiet_great_expectations():
        results = _GxSession().validate("stage_events", work, [expectation for _, expectation in checks.values()])
    rows, failures = [], {}
    for name, (expected, _) in checks.items():
        failing = _failing_rows(results[name], name)
        failures[name] = events.iloc[failing[:SAMPLE_ROWS_KEPT]][
            ["deal_id", "stage", "entered_at", "exited_at", "days_in_stage"]
        ].reset_index(drop=True)
        rows.append(
            _result(name, ASSET_STAGE_EVENTS, len(failing) == 0, SEVERITY_ERROR,
                    _count_text(len(failing), len(events), "events"), expected, len(failing))
        )
    frame = conform(pd.DataFrame(rows, columns=list(DQ_RESULT_COLUMNS)), DQ_RESULT_COLUMNS, "data_quality_results")
    return frame, failures


def _history_work_frame(
    history: pd.DataFrame, deals: pd.DataFrame, accepted_deals: pd.DataFrame, stages: StageCatalog
) -> pd.DataFrame:
    """The columns the history suite checks: whether the row's deal was accepted, quarantined or
    never read; its stage's status in the deal's pipeline (NA for blank stages and deals not
    accepted); the deal's created_at minus a day; the previous row's changed_at for the deal."""
    codes, ids = pd.factorize(history["deal_id"])
    ids = pd.Index(ids, dtype=object)
    id_position = pd.Index(accepted_deals["deal_id"], dtype=object).get_indexer(ids)
    deal_position = np.append(id_position, -1)[codes]  # -1: not accepted or blank id
    accepted = deal_position >= 0
    # Of the ids not accepted (usually few), which were read and quarantined.
    unaccepted = ids[id_position < 0]
    quarantined_ids = deals["deal_id"].loc[deals["deal_id"].isin(unaccepted)].unique()
    was_read = np.zeros(len(ids) + 1, dtype=bool)
    was_read[np.flatnonzero(id_position < 0)[unaccepted.isin(quarantined_ids)]] = True
    state = np.where(accepted, 0, np.where(was_read[codes], 1, 2)).astype(np.int8)
    state[codes < 0] = -1
    deal_in_run = pd.Categorical.from_codes(state, categories=[_DEAL_ACCEPTED, _DEAL_QUARANTINED, _DEAL_NOT_READ])

    pipeline_codes_of_deal, pipeline_names = pd.factorize(accepted_deals["pipeline"])
    pipeline_codes = np.append(pipeline_codes_of_deal, -1)[deal_position]
    stage_status = _stage_status(pipeline_codes, pipeline_names, history["stage"], stages)
    stage_status = stage_status.where(history["stage"].notna().to_numpy() & accepted)

    created = _checkable_datetime(accepted_deals["created_at"]).to_numpy()
    created_minus_day = np.append(created - np.timedelta64(1, "D"), np.datetime64("NaT", "ns"))[deal_position]

    changed = _checkable_datetime(history["changed_at"])
    previous = changed.groupby(codes, sort=False).shift(1)
    previous = previous.where(codes >= 0)
    pipelines = pd.Categorical.from_codes(pipeline_codes, categories=pipeline_names)
    return _frame_from(
        {
            "deal_id": pd.Categorical.from_codes(codes, categories=ids),
            "deal_in_run": deal_in_run,
            "changed_at": changed,
            "stage_status": stage_status,
            "pipeline": pipelines,
            "deal_created_at_minus_1d": created_minus_day,
            "previous_changed_at": previous,
            "amount": _numeric_amount(history["amount"]),
            "amount_reporting": _numeric_amount(history["amount_reporting"]),
            "crm_probability": _numeric_amount(history["crm_probability"]),
            **_text_lengths(history, "deal_history"),
        },
        history.index,
    )


def _reader_result(reader: pd.DataFrame, reconciliation: pd.DataFrame, details: dict[str, pd.DataFrame]) -> dict:
    """The reader's own rejections (rows it could not parse), reported beside our checks; rows a
    mapping's filter left out are no rejection and only mentioned."""
    left_out = reader["reason_code"].isin(EXCLUDED_CODES).to_numpy(dtype=bool)
    rejected = reader.loc[~left_out]
    details[CHECK_READER] = rejected.head(SAMPLE_ROWS_KEPT)
    total_read = int(reconciliation["rows_read"].sum())
    observed = _count_text(len(rejected), total_read, "rows read could not be parsed")
    if left_out.any():
        observed += f"; {int(left_out.sum()):,} {_left_out(reader.loc[left_out])}"
    return _result(
        CHECK_READER, ASSET_EXPORTS, rejected.empty, SEVERITY_ROW, observed, "every row parsed", len(rejected),
    )


def _not_empty_result(
    passed: bool, accepted_deals: pd.DataFrame, deals: pd.DataFrame, details: dict[str, pd.DataFrame]
) -> dict:
    details[CHECK_DEALS_NOT_EMPTY] = pd.DataFrame()
    return _result(
        CHECK_DEALS_NOT_EMPTY, ASSET_DEALS, passed, SEVERITY_ERROR,
        f"{len(accepted_deals):,} accepted deals ({len(deals):,} deal rows read)",
        "at least 1 accepted deal", 0 if passed else len(deals),
    )


def _volume_result(
    passed: bool,
    floor: int | None,
    accepted_deals: pd.DataFrame,
    previous_deal_count: int | None,
    config: ValidationConfig,
    details: dict[str, pd.DataFrame],
) -> dict:
    """Accepted deals against the previous run's count (passes, saying so, on a first run)."""
    details[CHECK_VOLUME] = pd.DataFrame()
    accepted = len(accepted_deals)
    if floor is None or previous_deal_count is None:
        return _result(
            CHECK_VOLUME, ASSET_DEALS, True, SEVERITY_ERROR,
            f"{accepted:,} accepted deals; no previous run to compare with",
            f"at least {1 - config.max_volume_drop_share:.0%} of the previous run's deals", 0,
        )
    return _result(
        CHECK_VOLUME, ASSET_DEALS, passed, SEVERITY_ERROR,
        f"{accepted:,} accepted deals; previous run {previous_deal_count:,}",
        f"at least {floor:,} (a drop of at most {config.max_volume_drop_share:.0%})",
        max(floor - accepted, 0),
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


def _reconciliation_results(
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
        excluded_by_file = {str(k): v for k, v in left_out.groupby(_source_files(left_out["source_file"]), sort=False)}
    for rec in reconciliation.itertuples(index=False):
        name = _reconciliation_check_name(rec.source_file)
        accounted = rec.accepted + rec.quarantined
        note = "" if rec.source_file in counted_files else " (file not in the reader's file counts)"
        quarantined = f"quarantined {rec.quarantined:,}"
        if rec.excluded:
            why = _left_out(excluded_by_file[str(rec.source_file)].drop_duplicates("source_row"))
            quarantined = f"quarantined {rec.quarantined - rec.excluded:,} + excluded {rec.excluded:,} ({why})"
        out.append(
            _result(
                name, ASSET_EXPORTS, rec.balanced, SEVERITY_ERROR,
                f"read {rec.rows_read:,}; accepted {rec.accepted:,} + {quarantined} = {accounted:,}{note}",
                "rows read = accepted + quarantined", abs(rec.rows_read - accounted),
            )
        )
        details[name] = pd.DataFrame([rec._asdict()]) if not rec.balanced else pd.DataFrame()
    return out


def _quarantine_share_results(
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
    history_only = set(_source_files(history["source_file"]).unique()) - set(_source_files(deals["source_file"]).unique())
    history_only = (history_only - lookups) | {f.source_file for f in files if f.history_only}
    files_of = reconciliation["source_file"]
    deal_files = reconciliation.loc[~files_of.isin(history_only | lookups)]
    history_files = reconciliation.loc[files_of.isin(history_only)]
    source = _source_files(quarantine["source_file"])
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
            _result(
                check, asset, passed, SEVERITY_ERROR,
                f"{share:.2%} ({_count_text(quarantined, total, unit)} quarantined{scope}{left_out})",
                f"at most {config.max_quarantine_share:.2%} of {unit} quarantined{scope}",
                quarantined if not passed else 0,
            )
        )
    return results


def _sample_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The columns of failing rows worth showing in run metadata (no raw record, no position)."""
    return frame.drop(columns=[c for c in ("position", "raw_record") if c in frame.columns])


def _log_summary(outcome: ValidationOutcome) -> None:
    results = outcome.results
    blocking = outcome.blocking_failures
    logger.info(
        "validated CRM exports: %d deals and %d history rows accepted, %d source rows quarantined, "
        "%d of %d checks passed",
        len(outcome.deals), len(outcome.history), len(outcome.quarantine), int(results["passed"].sum()), len(results),
    )
    for row in blocking.itertuples(index=False):
        logger.warning("blocking check %s failed: %s (expected %s)", row.check_name, row.observed, row.expected)
