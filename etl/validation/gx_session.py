"""The Great Expectations session every suite runs in, and the column forms GX checks cheaply.

One ephemeral context per run (nothing written to disk, progress bars off, GX's own logging quiet
for the duration). Every failing row is listed by position (`ROW_INDEX`); a check GX could not
evaluate, or whose failing rows it counts but does not list, raises `ValidationRunError`."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import great_expectations as gx
import numpy as np
import pandas as pd
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)
from great_expectations.execution_engine import pandas_execution_engine


logger = logging.getLogger(__name__)

# GX sees each frame with a RangeIndex named `_row` (the row's position) and lists failing rows by
# it. A named index lets GX return the positions directly; listing them through a plain column
# costs GX one `DataFrame.at` lookup per failing row and column (minutes on millions of rows).
ROW_INDEX = "_row"


# Datetime columns are checked as datetime64[ns] (GX compares those vectorised); values outside
# the nanosecond range are clipped to these bounds first, which keeps them implausible.
NS_FLOOR = pd.Timestamp("1678-01-01")
NS_CEILING = pd.Timestamp("2262-01-01")


class ValidationRunError(RuntimeError):
    """Great Expectations could not evaluate a check, so the data cannot be called valid."""


# ---------------------------------------------------------------------------------------------
# Great Expectations session
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_great_expectations() -> Iterator[None]:
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


class GxSession:
    """An ephemeral GX context (nothing written to disk, progress bars off) for one run."""

    def __init__(self) -> None:
        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
            analytics_enabled=False,
        )
        self.context = gx.get_context(mode="ephemeral", project_config=config)
        # GX fingerprints every in-memory frame it is handed (pandas' hash of every row, then md5)
        # for the batch's markers, unless the frame takes HASH_THRESHOLD bytes or more. Nothing here
        # reads the markers, and they identify no batch (the batch definition does): the frames of
        # a night (millions of rows, 34 suites) are treated as GX treats its largest ones, unhashed,
        # which spares some 4 s of a million-deal night.
        pandas_execution_engine.HASH_THRESHOLD = 0
        source = self.context.data_sources.add_pandas("dealcast_crm_exports")
        # One asset and batch definition serve every frame: each suite passes its own dataframe.
        self.batch_definition = source.add_dataframe_asset("canonical_frame").add_batch_definition_whole_dataframe(
            "whole_frame"
        )

    def validate(self, suite_name: str, frame: pd.DataFrame, expectations: list[Any]) -> dict[str, Any]:
        """Run `expectations` as one suite on `frame`; results by check name (the `check_name`
        meta of each expectation). Failing rows are listed in full (`COMPLETE`) by position."""
        frame = frame.set_axis(pd.RangeIndex(len(frame), name=ROW_INDEX), axis=0)
        suite = self.context.suites.add(gx.ExpectationSuite(name=suite_name, expectations=expectations))
        batch = self.batch_definition.get_batch(batch_parameters={"dataframe": frame})
        outcome = batch.validate(
            suite,
            result_format={
                "result_format": "COMPLETE",
                "unexpected_index_column_names": [ROW_INDEX],
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


def failing_rows(result: Any, check: str) -> np.ndarray:
    """Positions of the rows a map expectation found unexpected; all of them or an error.

    GX lists them as `[{"_row": [positions...]}]` (or one dict per row in older releases)."""
    listed = result.result.get("unexpected_index_list") or []
    chunks = [np.asarray(item[ROW_INDEX], dtype=np.int64).reshape(-1) for item in listed]
    rows = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
    expected_count = int(result.result.get("unexpected_count") or 0)
    if len(rows) != expected_count:
        raise ValidationRunError(
            f"check {check!r}: great_expectations counted {expected_count:,} failing rows but listed "
            f"{len(rows):,}; refusing to let unlisted rows through"
        )
    return sorted_unique(rows)


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """Distinct int64 values, ascending (hash-based `pd.unique`, then a sort of what is left)."""
    return np.sort(pd.unique(np.asarray(values, dtype=np.int64)))


def categorical(values: pd.Series, categories: pd.Index | None = None) -> pd.Categorical:
    """Text as a categorical for GX: same values and blanks, far cheaper for GX to hash and scan.
    Columns GX compares with each other must share `categories`."""
    if categories is None:
        codes, uniques = pd.factorize(values)
        return pd.Categorical.from_codes(codes, categories=pd.Index(uniques, dtype=object))
    return pd.Categorical(values.astype(object), categories=categories)


# ---------------------------------------------------------------------------------------------
# Datetimes as GX compares them (vectorised)
# ---------------------------------------------------------------------------------------------


def checkable_datetime(values: pd.Series) -> pd.Series:
    """`values` as timezone-naive datetime64[ns] for GX; unparseable text becomes NaT."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        values = values.dt.tz_convert("UTC").dt.tz_localize(None)
    elif not pd.api.types.is_datetime64_dtype(values.dtype):
        values = pd.to_datetime(values, errors="coerce")
        if isinstance(values.dtype, pd.DatetimeTZDtype):
            values = values.dt.tz_convert("UTC").dt.tz_localize(None)
    return values.clip(lower=NS_FLOOR, upper=NS_CEILING).astype("datetime64[ns]")
