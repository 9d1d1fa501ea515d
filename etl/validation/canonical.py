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

Reason codes, and the order in which they decide `reason_code`, are listed in
`etl.validation.reason_codes`.

Warnings (reported, nothing quarantined): `deals.amount_present` (blank amounts),
`deal_history.not_before_creation` (code history_before_creation: changed_at more than one day
before the deal's created_at), `deal_history.in_time_order` (code history_out_of_order: rows of a
deal whose changed_at is earlier than the deal's previous row in reading order; history is
re-sorted by time downstream, so this is reported with its count only).

Blocking checks (severity "error"): `deals.deals_not_empty`, `deals.quarantine_share` (quarantined
share of the deal files' rows above `max_quarantine_share`; lookup files such as Account.csv and
history-only files do not count), `deal_history.quarantine_share` (the same limit over the
history-only files' rows quarantined for a defect of their own), `deals.volume_not_collapsed`
(accepted deals below (1 - `max_volume_drop_share`) x the previous published night's count) and one
`crm_exports.reconciliation[<file>]` per input file (rows read = accepted + quarantined).

File accounting (reconciliation, quarantine shares): `etl.validation.reconciliation`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
import sqlalchemy as sa
from great_expectations.expectations.row_conditions import Column as RowColumn

from etl.config import ValidationConfig
from etl.deal_ids import index_in
from etl.schema import (
    DEAL_COLUMNS,
    DEAL_HISTORY_COLUMNS,
    DQ_RESULT_COLUMNS,
    QUARANTINE_COLUMNS,
    SchemaError,
    conform,
    empty_frame,
)
from etl.stages import STATUS_LOST, STATUS_WON, STATUSES, StageCatalog
from etl.tables import TABLES
from etl.validation.gx_session import (
    GxSession,
    NS_CEILING,
    NS_FLOOR,
    categorical,
    checkable_datetime,
    failing_rows,
    quiet_great_expectations,
)
from etl.validation.outcome import (
    ASSET_DEALS,
    ASSET_HISTORY,
    SAMPLE_ROWS_KEPT,
    SEVERITY_ERROR,
    SEVERITY_ROW,
    SEVERITY_WARNING,
    ValidationOutcome,
    check_result,
    count_text,
    sample_frame,
)
from etl.validation.reason_codes import (
    AMOUNT_MISSING,
    AMOUNT_OUT_OF_RANGE,
    CLOSED_BEFORE_CREATED,
    DEAL_QUARANTINED,
    DUPLICATE_ID,
    HISTORY_BEFORE_CREATION,
    HISTORY_OUT_OF_ORDER,
    IMPLAUSIBLE_DATE,
    INVALID_STATUS,
    MISSING_CLOSE_DATE,
    MISSING_ID,
    ORPHAN_HISTORY,
    PROBABILITY_OUT_OF_RANGE,
    STATUS_STAGE_MISMATCH,
    TEXT_TOO_LONG,
    UNKNOWN_CURRENCY,
    UNKNOWN_PIPELINE,
    UNKNOWN_STAGE,
)
from etl.validation.reconciliation import (
    FileCount,
    quarantine_share_results,
    reader_result,
    reconcile,
    reconciliation_results,
)

logger = logging.getLogger(__name__)

CHECK_DEALS_NOT_EMPTY = "deals.deals_not_empty"


CHECK_VOLUME = "deals.volume_not_collapsed"


_NOT_IN_PIPELINE = "not in pipeline"
_STAGE_CATEGORIES = [*STATUSES, _NOT_IN_PIPELINE]
_DEAL_ACCEPTED, _DEAL_QUARANTINED, _DEAL_NOT_READ = "accepted", "quarantined", "not read"


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
        if not (NS_FLOOR < earliest <= latest < NS_CEILING):
            raise ValueError(
                f"[validation] earliest_date {config.earliest_date} and as_of {as_of} + latest_years_ahead "
                f"{config.latest_years_ahead} must give a window inside {NS_FLOOR.date()}..{NS_CEILING.date()}"
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
    day of creation, datetimes as ns); one row per input row, `ROW_INDEX` = position."""
    pipeline_codes, pipeline_names = pd.factorize(deals["pipeline"])
    stage_status = _stage_status(pipeline_codes, pipeline_names, deals["stage"], stages)
    status = deals["status"]
    comparable = stage_status.isin(STATUSES) & status.isin(STATUSES)
    status_values = pd.Index(pd.unique(status.dropna().astype(object)), dtype=object)
    statuses = pd.Index(list(STATUSES), dtype=object).append(status_values.difference(list(STATUSES), sort=False))
    created = checkable_datetime(deals["created_at"])
    return _frame_from(
        {
            "deal_id": categorical(deals["deal_id"]),
            "pipeline": categorical(deals["pipeline"]),
            "stage_status": stage_status,
            "status": categorical(status, statuses),
            "status_from_stage": categorical(stage_status.astype("object").where(comparable, None), statuses),
            "created_at": created,
            "created_day": created.dt.floor("D"),
            "expected_close_date": checkable_datetime(deals["expected_close_date"]),
            "closed_at": checkable_datetime(deals["closed_at"]),
            "amount": _numeric_amount(deals["amount"]),
            "amount_reporting": _numeric_amount(deals["amount_reporting"]),
            "crm_probability": _numeric_amount(deals["crm_probability"]),
            "currency": categorical(deals["currency"]),
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
# Entry point
# ---------------------------------------------------------------------------------------------


def _require_columns(frame: pd.DataFrame, columns: dict[str, str], name: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SchemaError(f"validate_crm: the {name} frame lacks canonical column(s) {missing}")
    return frame.reset_index(drop=True)


def _run_row_suite(
    session: GxSession, suite: str, work: pd.DataFrame, checks: list[_RowCheck]
) -> dict[str, np.ndarray]:
    results = session.validate(suite, work, [c.expectation for c in checks])
    return {c.name: failing_rows(results[c.name], c.name) for c in checks}


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
    `previous_deal_count` is the previous published night's accepted deal count (None before the first);
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

    with quiet_great_expectations():
        session = GxSession()

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
    reconciliation = reconcile(files, [accepted_deals, accepted_history], quarantine)

    rows = [reader_result(reader, reconciliation, details)]
    failing_by_check = {**deal_rows, **history_rows}
    for check in [*deal_checks, *history_checks]:
        failing = failing_by_check[check.name]
        observed = count_text(len(failing), len(deals) if check.asset == ASSET_DEALS else len(history))
        if check.name == "deals.deal_id_unique" and len(failing):
            observed += f" (repeated deal ids: {deals['deal_id'].iloc[failing].nunique():,})"
        rows.append(check_result(check.name, check.asset, len(failing) == 0, check.severity, observed, check.expected, len(failing)))
    rows.append(_not_empty_result(dataset[CHECK_DEALS_NOT_EMPTY].success, accepted_deals, deals, details))
    rows += quarantine_share_results(reconciliation, history, deals, files, config, quarantine, details)
    volume_passed = dataset[CHECK_VOLUME].success if volume_floor is not None else True
    rows.append(_volume_result(volume_passed, volume_floor, accepted_deals, previous_deal_count, config, details))
    rows += reconciliation_results(reconciliation, seen, details, quarantine)

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
        failures={name: sample_frame(frame) for name, frame in details.items()},
    )
    _log_summary(outcome)
    return outcome


# ---------------------------------------------------------------------------------------------
# The history suite's frame and the dataset-level results
# ---------------------------------------------------------------------------------------------


def _history_work_frame(
    history: pd.DataFrame, deals: pd.DataFrame, accepted_deals: pd.DataFrame, stages: StageCatalog
) -> pd.DataFrame:
    """The columns the history suite checks: whether the row's deal was accepted, quarantined or
    never read; its stage's status in the deal's pipeline (NA for blank stages and deals not
    accepted); the deal's created_at minus a day; the previous row's changed_at for the deal."""
    codes, ids = pd.factorize(history["deal_id"])
    ids = pd.Index(ids, dtype=object)
    id_position = index_in(ids, accepted_deals["deal_id"])
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

    created = checkable_datetime(accepted_deals["created_at"]).to_numpy()
    created_minus_day = np.append(created - np.timedelta64(1, "D"), np.datetime64("NaT", "ns"))[deal_position]

    changed = checkable_datetime(history["changed_at"])
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


def _not_empty_result(
    passed: bool, accepted_deals: pd.DataFrame, deals: pd.DataFrame, details: dict[str, pd.DataFrame]
) -> dict:
    details[CHECK_DEALS_NOT_EMPTY] = pd.DataFrame()
    return check_result(
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
    """Accepted deals against the previous published night's count (passes, saying so, before the first)."""
    details[CHECK_VOLUME] = pd.DataFrame()
    accepted = len(accepted_deals)
    if floor is None or previous_deal_count is None:
        return check_result(
            CHECK_VOLUME, ASSET_DEALS, True, SEVERITY_ERROR,
            f"{accepted:,} accepted deals; no previous published night to compare with",
            f"at least {1 - config.max_volume_drop_share:.0%} of the previous published night's deals", 0,
        )
    return check_result(
        CHECK_VOLUME, ASSET_DEALS, passed, SEVERITY_ERROR,
        f"{accepted:,} accepted deals; previous published night {previous_deal_count:,}",
        f"at least {floor:,} (a drop of at most {config.max_volume_drop_share:.0%})",
        max(floor - accepted, 0),
    )


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
