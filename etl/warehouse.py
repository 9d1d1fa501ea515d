"""The SQL warehouse that finance and BI tools read: one class that creates the tables, writes a
run's frames atomically and idempotently, and reads them back.

Every write follows the same five steps inside ONE database transaction, so a failed or repeated
run never leaves a half-written or duplicated table:

1. lock the as_of, so two runs for the same date cannot interleave their writes
   (PostgreSQL: `pg_advisory_xact_lock(advisory_lock_key(as_of))`; SQLite: `BEGIN IMMEDIATE`,
   which takes the database's single write lock up front; concurrent writers wait for it);
2. fence: the `run_claims` row of the as_of must name this run and not have been released
   (otherwise `StaleRunError`); the run's lease is renewed in the same transaction;
3. delete the rows the frame replaces (its as_of, every row, or the rows with its keys, per the
   table's `TableSpec.replace`); a current-state (`whole`) table that already holds a newer night
   keeps it (a backfilled older night is counted in `night_writes` but does not turn it back);
4. bulk insert (PostgreSQL: psycopg 3 `COPY ... FROM STDIN` of CSV built by Arrow; SQLite file,
   frames of `SQLITE_STAGED_ROWS` or more: `INSERT INTO t SELECT * FROM staging.t` from staging
   files written before the transaction from Arrow by the ADBC SQLite driver (`Warehouse._staged`);
   other SQLite frames: `executemany` per batch of rows, the next batch converted to Python values
   on a second thread while SQLite inserts the current one), and note the table in `night_writes`;
5. commit; any error rolls back everything written in that call.

Run fencing lives here, in the warehouse, not in one Dagster instance's run list: a run claims its
as_of with a lease (`claim`), keeps it alive with `heartbeat` while it works, and gives it up when
its night is published (`publish_night`) or an operator releases it (`release`, the
`dealcast release --as-of` command). While a claim's lease is live, any other run's claim is
refused with `ClaimRefusedError`, whichever Dagster instance it comes from; a killed run's claim
expires when its lease runs out (`DEFAULT_LEASE_SECONDS` unless the run asked for another).

`latest_*` views show the newest night in `published_nights`: a night becomes visible in all of
them together, when `publish_night` has checked in one transaction that every table of the night
was written; a killed night leaves them on the previous complete night.

The URL's password never appears in logs, metadata or error messages: only `safe_url` is shown and
every database error is re-raised as `WarehouseError` with the password masked.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import os
import re
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url

from etl.tables import ID, TABLES, TS, TableSpec, metadata, published_nights

log = logging.getLogger(__name__)

MASK = "***"
LOCK_NAMESPACE = "dealcast"
# The lock every write of a current-state (`whole`) table takes after its as_of lock (PostgreSQL).
CURRENT_STATE_LOCK = "current-state tables"
# How long a SQLite writer waits for another writer's transaction before giving up.
SQLITE_BUSY_TIMEOUT_MS = 120_000
# Rows per COPY/executemany batch handed to the driver (bounds memory on very large frames).
BATCH_ROWS = 200_000
# SQLite's page cache per connection, in KiB (its default is 2,000 KiB). A night's insert of millions
# of history rows otherwise evicts, and writes to the WAL again and again, the same index pages.
SQLITE_CACHE_KIB = 262_144
# The page size of a new SQLite warehouse, in bytes (SQLite's default is 4,096). A night rewrites
# millions of rows of deals, history and stage events in one transaction; with 16 KiB pages SQLite
# keeps a quarter of the pages and of their WAL frames (the 4.5M-row history of a million deals:
# insert and commit 17.5 s instead of 23 s).
SQLITE_PAGE_BYTES = 16_384
# Frames of at least this many rows reach a SQLite warehouse file through a staging file (see
# `Warehouse._staged`): Arrow batches are bound to SQLite in C there, about 2 us a row where
# `executemany` of Python values takes about 5, and the warehouse transaction copies the rows over.
SQLITE_STAGED_ROWS = 100_000
# How many staging files are written at the same time (one thread each, one per core here).
SQLITE_STAGING_FILES = 2
# SQLite's own automatic checkpoint threshold, in WAL pages: what a write connection is set back to
# after a staged write, which checkpoints itself (see `Warehouse.write_many`).
SQLITE_WAL_AUTOCHECKPOINT_PAGES = 1_000
# The names the staging files are attached under (with _0, _1, ...) in the write transaction's connection.
_STAGING_SCHEMA = "dealcast_staging"
# How long a run's claim on its as_of stays live without a write or heartbeat. A running pipeline
# renews it every lease/4 (see assets.resources); a killed run's claim expires after this.
DEFAULT_LEASE_SECONDS = 600.0
_BEGIN_OPTION = "dealcast_sqlite_begin"

# Which run currently owns writes for each as_of. Kept outside `etl.tables.metadata` because it is
# the warehouse's own bookkeeping, not a table finance or BI read.
claims_metadata = sa.MetaData()
run_claims = sa.Table(
    "run_claims",
    claims_metadata,
    sa.Column("as_of", sa.Date, primary_key=True, comment="The run date whose writes are owned."),
    sa.Column("run_id", ID, nullable=False, comment="The run that owns writes for this as_of (the latest claim)."),
    sa.Column("claimed_at", TS, nullable=False, comment="When that run claimed the as_of (UTC)."),
    sa.Column("lease_seconds", sa.Float, comment="How long the claim stays live after each write or heartbeat."),
    sa.Column("lease_expires_at", TS, comment="When the claim lapses unless renewed (UTC); NULL: lapsed."),
    sa.Column("released_at", TS, comment="When the run gave the as_of up (night published, or released by an operator); NULL while held."),
    comment="Which pipeline run owns writes for each as_of; writes of any other run are refused.",
)
night_writes = sa.Table(
    "night_writes",
    claims_metadata,
    sa.Column("as_of", sa.Date, primary_key=True, comment="The run date written."),
    sa.Column("table_name", sa.String(64), primary_key=True, comment="A table written for that as_of."),
    sa.Column("run_id", ID, nullable=False, comment="The run that last wrote it."),
    sa.Column("row_count", sa.BigInteger, nullable=False, comment="How many rows that write held."),
    sa.Column("written_at", TS, nullable=False, comment="When it was written (UTC)."),
    comment="Which tables have been written for each as_of, by which run: what publish_night verifies.",
)


class WarehouseError(RuntimeError):
    """A warehouse operation failed. The message names the table, column or rows at fault and the
    warehouse's URL with its password masked; it never contains the password."""


class StaleRunError(WarehouseError):
    """This run no longer owns the as_of: a newer run claimed it, so this run's writes are refused."""


class ClaimRefusedError(WarehouseError):
    """Another run holds a live claim on the as_of; this run may not write it until that claim is
    released or its lease lapses."""


@dataclass(frozen=True)
class Claim:
    """The `run_claims` row of one as_of."""

    as_of: dt.date
    run_id: str
    claimed_at: dt.datetime
    lease_expires_at: dt.datetime | None
    released_at: dt.datetime | None
    lease_seconds: float | None = None

    def live(self, now: dt.datetime) -> bool:
        """Held and within its lease."""
        return self.released_at is None and self.lease_expires_at is not None and self.lease_expires_at > now


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _as_datetime(value) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite without type information (raw SQL)
        return dt.datetime.fromisoformat(value)
    return value


# --------------------------------------------------------------------------------------------
# Passwords


# Query keys whose value is a credential: libpq/psycopg's password and sslpassword, the
# passwd/pwd spellings of other drivers, and tokens, secrets and private-key passphrases
# (cloud warehouses' connectors). Matched anywhere in the key, without case; masking a key
# that only names a file (sslkey) costs nothing.
_CREDENTIAL_KEY = re.compile(r"pass|pwd|secret|token|credential|key|auth", re.IGNORECASE)
_QUERY_PAIR = re.compile(r"(?P<lead>[?&;])(?P<key>[^=&;?#]+)=(?P<value>[^&;#]*)")
# What may follow the "@" that ends the credentials: host(s), port, then a path, a query or nothing.
_AFTER_CREDENTIALS = re.compile(r"^[\w.\-\[\]:%,~]*(?=[/?#]|$)")


@dataclass(frozen=True)
class _UrlCredentials:
    """A URL with every credential masked, and the credentials it held (as written)."""

    masked: str
    secrets: tuple[str, ...]


def _parse_credentials(url: str) -> _UrlCredentials:
    """Find a URL's credentials by parsing it the way a person writes it, not the way SQLAlchemy
    does: the password runs from the first ":" after "scheme://" to the LAST "@" that a host
    follows (so an unencoded "@" in a password stays masked whole), and every query value whose key
    names a credential (password, sslpassword, passwd, pwd, token, secret, ...) is masked too.
    When in doubt more is masked, never less."""
    secrets: list[str] = []

    def mask_pair(match: re.Match) -> str:
        if not _CREDENTIAL_KEY.search(urllib.parse.unquote_plus(match["key"])):
            return match.group(0)
        if match["value"]:
            secrets.append(match["value"])
        return f"{match['lead']}{match['key']}={MASK}"

    head, sep, rest = url.partition("://")
    if not sep:
        return _UrlCredentials(url, ())
    at = None
    for position in reversed([i for i, c in enumerate(rest) if c == "@"]):
        if _AFTER_CREDENTIALS.match(rest[position + 1 :]):
            at = position
            break
    if at is None:
        userinfo, after = "", rest
    else:
        userinfo, after = rest[:at], rest[at + 1 :]
    # A query value holding a credential may itself contain "@": mask the query first.
    masked_after = _QUERY_PAIR.sub(mask_pair, after)
    if at is None:
        return _UrlCredentials(f"{head}://{masked_after}", tuple(secrets))
    user, colon, password = userinfo.partition(":")
    if colon and password:
        secrets.append(password)
    shown_user = f"{user}:{MASK}" if colon else user
    return _UrlCredentials(f"{head}://{shown_user}@{masked_after}", tuple(secrets))


def redact_url(url: str) -> str:
    """`url` with its password and every credential-bearing query value replaced by `***`."""
    return _parse_credentials(url).masked


def _secrets_in(url: str) -> list[str]:
    """Every spelling of the URL's credentials that could show up in a driver's message."""
    raw = list(_parse_credentials(url).secrets)
    try:  # also what SQLAlchemy itself takes for the password, in case it reads the URL otherwise
        parsed = make_url(url)
        raw.append(parsed.password or "")
    except (sa.exc.ArgumentError, ValueError):
        pass
    # A parser that splits at the first "@" of a password shows its tail as the host
    # ("failed to resolve host 'PW!@127.0.0.1'"): every piece between "@"s is masked as well.
    raw += [piece for secret in list(raw) if "@" in (secret or "") for piece in secret.split("@")]
    spellings: set[str] = set()
    for secret in raw:
        if secret:
            decoded = urllib.parse.unquote_plus(secret)
            spellings.update({secret, decoded, urllib.parse.quote(decoded, safe=""), urllib.parse.quote_plus(decoded)})
    # Longest first, so a password that contains another spelling is masked whole.
    return sorted(spellings, key=len, reverse=True)


def _chain_text(exc: BaseException | None) -> str:
    """The text of an exception and of every exception it was raised from."""
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(f"{exc!s} {exc!r}")
        exc = exc.__cause__ or exc.__context__
    return " ".join(parts)


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


# --------------------------------------------------------------------------------------------
# Locks


def advisory_lock_key(as_of: dt.date) -> int:
    """The 64-bit PostgreSQL advisory-lock key of an as_of: the first 8 bytes (big-endian, signed) of
    BLAKE2b("dealcast:<YYYY-MM-DD>"). Stable across processes and Python versions, so any tool can
    take the same lock to pause Dealcast's writes for a date."""
    return _lock_key(as_of.isoformat())


def _lock_key(name: str) -> int:
    digest = hashlib.blake2b(f"{LOCK_NAMESPACE}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _as_date(value: dt.date, what: str = "as_of") -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    raise WarehouseError(f"{what} must be a datetime.date, got {value!r} ({type(value).__name__})")


def _check_run_id(run_id: str) -> str:
    limit = run_claims.c.run_id.type.length
    if not isinstance(run_id, str) or not run_id.strip() or len(run_id) > limit:
        raise WarehouseError(f"run_id must be a non-empty text of at most {limit} characters, got {run_id!r}")
    return run_id


# --------------------------------------------------------------------------------------------
# Frames -> database values


def _kind(column: sa.Column) -> str:
    """How a column's values are converted: date, timestamp, bool, int, float, decimal or text."""
    kind_of = column.type
    if isinstance(kind_of, sa.Boolean):
        return "bool"
    if isinstance(kind_of, sa.DateTime):
        return "timestamp"
    if isinstance(kind_of, sa.Date):
        return "date"
    if isinstance(kind_of, sa.Integer):
        return "int"
    if isinstance(kind_of, sa.Float):
        return "float"
    if isinstance(kind_of, sa.Numeric):
        return "decimal"
    if isinstance(kind_of, sa.String):
        return "text"
    raise WarehouseError(f"{column.table.name}.{column.name}: column type {kind_of!r} is not supported by the warehouse")


def _rows_named(mask: pd.Series, limit: int = 5) -> str:
    labels = mask.index[mask.to_numpy()].tolist()
    shown = ", ".join(repr(label) for label in labels[:limit])
    more = f" and {len(labels) - limit} more" if len(labels) > limit else ""
    return f"row(s) {shown}{more}"


def _to_timestamps(series: pd.Series, where: str) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        out = series
    else:
        try:
            out = pd.to_datetime(series, errors="raise")
        except (ValueError, TypeError, OverflowError) as exc:
            raise WarehouseError(f"{where}: expected dates or timestamps ({exc})") from exc
    if getattr(out.dt, "tz", None) is not None:
        out = out.dt.tz_convert("UTC").dt.tz_localize(None)
    return out.astype("datetime64[us]")


def _to_floats(series: pd.Series, where: str) -> pd.Series:
    if pd.api.types.is_bool_dtype(series.dtype):
        return series.astype("Float64").astype("float64")
    if pd.api.types.is_numeric_dtype(series.dtype):
        return series.astype("float64")
    try:
        return pd.to_numeric(series, errors="raise").astype("float64")
    except (ValueError, TypeError) as exc:
        raise WarehouseError(f"{where}: expected numbers ({exc})") from exc


def _convert(series: pd.Series, column: sa.Column, kind: str) -> pd.Series:
    """One frame column in the dtype its database column needs, or a WarehouseError naming the rows."""
    where = f"table {column.table.name}, column {column.name}"
    if kind == "timestamp":
        return _to_timestamps(series, where)
    if kind == "date":
        return _to_timestamps(series, where).dt.normalize()
    if kind == "bool":
        if not pd.api.types.is_bool_dtype(series.dtype):
            inferred = pd.api.types.infer_dtype(series, skipna=True)
            if inferred in ("integer", "floating", "mixed-integer-float"):
                numbers = _to_floats(series, where)
                bad = numbers.notna() & ~numbers.isin([0.0, 1.0])
                if bad.any():
                    raise WarehouseError(f"{where}: expected booleans (or 0/1), {_rows_named(bad)} hold other numbers")
                return numbers.astype("boolean")
            if inferred not in ("boolean", "empty"):
                raise WarehouseError(f"{where}: expected booleans, found {inferred} values")
        return series.astype("boolean")
    if kind == "int" and (
        pd.api.types.is_integer_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype)
    ):
        return series.astype("Int64")  # exact, even beyond float precision
    if kind in ("int", "float", "decimal"):
        numbers = _to_floats(series, where)
        if kind == "int":
            fractional = numbers.notna() & (numbers != np.floor(numbers))
            if fractional.any():
                raise WarehouseError(f"{where}: expected whole numbers, {_rows_named(fractional)} are not")
            return numbers.astype("Int64")
        if kind == "decimal":
            infinite = np.isinf(numbers)
            if infinite.any():
                raise WarehouseError(f"{where}: expected finite amounts, {_rows_named(infinite)} are infinite")
            return numbers.round(column.type.scale or 0)
        return numbers
    # text
    inferred = pd.api.types.infer_dtype(series, skipna=True)
    if inferred not in ("string", "empty", "integer", "floating", "mixed-integer-float", "boolean", "decimal"):
        raise WarehouseError(
            f"{where}: expected text, found {inferred} values (serialise structured values to JSON text first)"
        )
    out = series.astype("string")
    length = getattr(column.type, "length", None)
    if length:
        too_long = out.str.len().fillna(0) > length
        if too_long.any():
            raise WarehouseError(f"{where}: text longer than {length} characters in {_rows_named(too_long)}")
    return out


def _python_values(series: pd.Series, kind: str, style: str) -> np.ndarray:
    """A column as an object array of driver-ready values (None for NULL). Dates and timestamps are
    converted once per distinct value (a run's rows share a handful of dates)."""
    if kind not in ("date", "timestamp"):
        values = np.array(series.to_numpy(dtype=object, na_value=None), dtype=object, copy=True)
        values[series.isna().to_numpy()] = None
        return values
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    raw = np.asarray(uniques, dtype="datetime64[us]")
    if kind == "date":
        raw = raw.astype("datetime64[D]")
    if len(raw) == 0:
        converted = np.empty(0, dtype=object)
    elif style == "sqlite":
        # Arrow's cast writes YYYY-MM-DD and YYYY-MM-DD HH:MM:SS.ffffff, the text SQLAlchemy's
        # SQLite types store, about five times faster than numpy's datetime_as_string (4.2 million
        # distinct change times of a million-deal history: 0.9 s against 4.4 s).
        converted = pa.array(raw).cast(pa.string()).to_numpy(zero_copy_only=False).astype(object)
    else:
        converted = raw.astype(object)
    # Code -1 (missing) picks the None appended at the end.
    return np.append(converted, None).astype(object)[codes]


@dataclass(frozen=True)
class PreparedFrame:
    """A frame checked against its table and converted to the column types, ready to write."""

    spec: TableSpec
    data: pd.DataFrame
    kinds: dict[str, str]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def rows(self) -> int:
        return len(self.data)

    def values(self, style: str, start: int = 0, stop: int | None = None) -> list[np.ndarray]:
        """One object array per column for rows start..stop (default all), NULL as None. `style`
        "sqlite" renders dates and timestamps as the text SQLAlchemy's SQLite types store; "python"
        gives date/datetime objects."""
        rows = self.data.iloc[start:stop]
        return [_python_values(rows[column], kind, style) for column, kind in self.kinds.items()]

    def batches(self, style: str) -> Iterator[list[tuple]]:
        """The rows as driver-ready tuples, `BATCH_ROWS` at a time: only one batch is ever converted
        to Python objects (4.5M history rows at once took GBs)."""
        for start in range(0, self.rows, BATCH_ROWS):
            yield list(zip(*self.values(style, start, start + BATCH_ROWS)))

    def sqlite_batch(self, start: int, stop: int) -> pa.Table:
        """Rows start..stop as an Arrow table of exactly the values `values("sqlite")` gives, NULL as
        null: text as strings, dates as YYYY-MM-DD and timestamps as YYYY-MM-DD HH:MM:SS.ffffff
        text, booleans as 0/1, integers as int64, numbers as float64."""
        rows = self.data.iloc[start:stop]
        arrays = []
        for column, kind in self.kinds.items():
            series = rows[column]
            if kind in ("date", "timestamp"):
                raw = series.to_numpy(dtype="datetime64[us]")
                if kind == "date":
                    raw = raw.astype("datetime64[D]")
                array = pa.array(raw, from_pandas=True).cast(pa.string())
            elif kind == "bool":
                array = pa.array(series, type=pa.bool_(), from_pandas=True).cast(pa.int64())
            elif kind == "int":
                array = pa.array(series, type=pa.int64(), from_pandas=True)
            elif kind in ("float", "decimal"):
                array = pa.array(series.to_numpy(dtype="float64", na_value=np.nan), type=pa.float64(), from_pandas=True)
            else:
                array = pa.array(series, type=pa.large_string(), from_pandas=True)
            arrays.append(array)
        # Arrow-backed text may come in several chunks: a table takes either.
        return pa.Table.from_arrays(arrays, names=list(self.kinds))

    def csv_block(self, start: int, stop: int) -> bytes:
        """Rows start..stop as PostgreSQL COPY CSV, written by Arrow's C++ CSV writer: every value
        quoted, NULL as an unquoted empty field (so an empty text stays distinct from NULL), dates
        as YYYY-MM-DD, timestamps as YYYY-MM-DD HH:MM:SS.ffffff, booleans as true/false."""
        block = pa.Table.from_pandas(self.data.iloc[start:stop], preserve_index=False)
        for name, kind in self.kinds.items():
            if kind == "date":
                index = block.schema.get_field_index(name)
                block = block.set_column(index, name, block.column(name).cast(pa.date32()))
        buffer = io.BytesIO()
        pa_csv.write_csv(block, buffer, pa_csv.WriteOptions(include_header=False, quoting_style="all_valid"))
        return buffer.getvalue()

    def duplicate_keys(self) -> str:
        """The rows that share a primary key, for error messages ("" when there are none)."""
        key = [c.name for c in self.spec.table.primary_key.columns]
        if not key or self.data.empty:
            return ""
        duplicated = self.data.duplicated(subset=key, keep=False)
        if not duplicated.any():
            return ""
        first = self.data.loc[duplicated, key].iloc[0].tolist()
        return (
            f"; {self.name} has {int(duplicated.sum())} rows sharing a primary key ({', '.join(key)}), "
            f"{_rows_named(duplicated)}, e.g. key {first}"
        )


def prepare_frame(spec: TableSpec, frame: pd.DataFrame, as_of: dt.date) -> PreparedFrame:
    """Check `frame` against `spec`'s table and convert it: exactly the table's columns (order free;
    a missing `as_of` is filled), values of the right type, no NULL in NOT NULL columns, and (for
    `as_of`/`whole` tables) every as_of equal to the run's."""
    if not isinstance(frame, pd.DataFrame):
        raise WarehouseError(f"table {spec.name}: expected a pandas DataFrame, got {type(frame).__name__}")
    columns = spec.columns
    repeated = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if repeated:
        raise WarehouseError(f"table {spec.name}: the frame repeats column(s) {repeated}")
    if "as_of" in columns and "as_of" not in frame.columns:
        frame = frame.assign(as_of=pd.Series(pd.Timestamp(as_of), index=frame.index, dtype="datetime64[us]"))
    missing = [c for c in columns if c not in frame.columns]
    extra = [c for c in frame.columns if c not in columns]
    if missing or extra:
        raise WarehouseError(
            f"table {spec.name}: the frame's columns do not match the table: missing {missing}, "
            f"unexpected {extra} (expected exactly {columns})"
        )
    kinds = {c: _kind(spec.table.c[c]) for c in columns}
    data = pd.DataFrame({c: _convert(frame[c], spec.table.c[c], kinds[c]) for c in columns}, index=frame.index)
    for column in spec.table.columns:
        if not column.nullable:
            nulls = data[column.name].isna()
            if nulls.any():
                raise WarehouseError(
                    f"table {spec.name}, column {column.name}: a value is required (NOT NULL) but "
                    f"{_rows_named(nulls)} are empty"
                )
    if "as_of" in columns and spec.replace in ("as_of", "whole"):
        other = data["as_of"] != pd.Timestamp(as_of)
        if other.any():
            found = sorted({str(v.date()) for v in data.loc[other, "as_of"].dropna()})
            raise WarehouseError(
                f"table {spec.name}, column as_of: every row must be for as_of {as_of}, but "
                f"{_rows_named(other)} hold {found}"
            )
    return PreparedFrame(spec=spec, data=data, kinds=kinds)


# --------------------------------------------------------------------------------------------
# Database values -> frames


def _frame_from_rows(table: sa.Table, rows: Sequence[Sequence]) -> pd.DataFrame:
    """Typed columns whatever the database: DATE and TIMESTAMP as datetime64[us] (DATE at midnight,
    the canonical frames' convention), NUMERIC and floats as float64, booleans as bool (nullable:
    "boolean"), integers as int64 (nullable: "Int64"), text as pandas "string"."""
    by_column = list(zip(*rows)) if rows else [() for _ in table.columns]
    out = {}
    for column, values in zip(table.columns, by_column):
        raw = pd.Series(list(values), dtype=object)
        kind = _kind(column)
        if kind in ("date", "timestamp"):
            out[column.name] = pd.to_datetime(raw).astype("datetime64[us]")
        elif kind in ("float", "decimal"):
            out[column.name] = pd.to_numeric(raw).astype("float64")
        elif kind == "bool":
            out[column.name] = raw.astype("boolean" if column.nullable else "bool")
        elif kind == "int":
            out[column.name] = raw.astype("Int64" if column.nullable else "int64")
        else:
            out[column.name] = raw.astype("string")
    return pd.DataFrame(out)


# --------------------------------------------------------------------------------------------
# The warehouse


class Warehouse:
    """Dealcast's tables in any SQLAlchemy database (SQLite file by default, PostgreSQL in production)."""

    def __init__(self, url: str, schema: str | None = "dealcast", echo: bool = False) -> None:
        self.safe_url = redact_url(url)
        self._secrets = _secrets_in(url)
        try:
            parsed = make_url(url)
        except (sa.exc.ArgumentError, ValueError) as exc:
            raise WarehouseError(
                f"not a SQLAlchemy database URL: {self.safe_url} ({_scrub(str(exc), self._secrets)})"
            ) from None
        self.dialect = parsed.get_backend_name()
        self.schema = schema if self.dialect == "postgresql" and schema else None
        self._sqlite_file = (
            Path(parsed.database)
            if self.dialect == "sqlite" and parsed.database and parsed.database != ":memory:"
            and not parsed.database.startswith("file:")
            else None
        )
        options = {"schema_translate_map": {None: self.schema}} if self.schema else {}
        try:
            self.engine = sa.create_engine(url, echo=echo, pool_pre_ping=True, execution_options=options)
        except (sa.exc.SQLAlchemyError, ImportError, TypeError, ValueError) as exc:
            raise self._error("opening the warehouse", exc) from None
        if self.dialect == "sqlite":
            self._install_sqlite_transaction_control()
        self._copy = self.dialect == "postgresql" and self.engine.dialect.driver == "psycopg"
        self._dbapi_error: type[Exception] = getattr(self.engine.dialect.loaded_dbapi, "Error", sa.exc.DBAPIError)
        self._quote = self.engine.dialect.identifier_preparer.quote
        log.debug("warehouse %s (dialect %s, schema %s)", self.safe_url, self.dialect, self.schema)

    def __repr__(self) -> str:
        return f"Warehouse({self.safe_url!r}, schema={self.schema!r})"

    # -- engine set-up ----------------------------------------------------------------------

    def _install_sqlite_transaction_control(self) -> None:
        """SQLAlchemy's documented recipe for real SQLite transactions with the sqlite3 driver: the
        driver stops emitting BEGIN itself, and SQLAlchemy emits it (`BEGIN IMMEDIATE` for writes,
        so a writer takes the database's write lock before it reads the run claim)."""

        @event.listens_for(self.engine, "connect")
        def _on_connect(dbapi_connection, connection_record):
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
                # Takes effect only while the file is still empty (a new warehouse); an existing one
                # keeps the page size it was created with.
                cursor.execute(f"PRAGMA page_size = {SQLITE_PAGE_BYTES}")
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
            finally:
                cursor.close()

        @event.listens_for(self.engine, "begin")
        def _on_begin(connection):
            connection.exec_driver_sql(connection.get_execution_options().get(_BEGIN_OPTION, "BEGIN"))

    def _error(self, action: str, exc: BaseException) -> WarehouseError:
        message = _scrub(f"{action} failed on {self.safe_url}: {type(exc).__name__}: {exc}", self._secrets)
        return WarehouseError(message)

    def _raise_from(self, action: str, exc: BaseException, extra: str = "") -> None:
        error = self._error(action, exc)
        if extra:
            error = WarehouseError(_scrub(f"{error}{extra}", self._secrets))
        chain_text = _chain_text(exc)
        leaks = any(secret in chain_text for secret in self._secrets)
        # The original error stays attached for debugging unless its text (or its causes') carries
        # the password; then it is dropped, and tracebacks show only the masked message.
        raise error from (None if leaks else exc)

    @contextmanager
    def _database_errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except WarehouseError:
            raise
        except (sa.exc.SQLAlchemyError, self._dbapi_error, OSError) as exc:
            self._raise_from(action, exc)

    @contextmanager
    def _locked_transaction(
        self, lock_name: str | None, as_of: dt.date | None = None, attach: Mapping[str, Path] | None = None
    ) -> Iterator[sa.Connection]:
        """A write transaction holding the lock for `as_of` (or for `lock_name`, e.g. schema creation).
        SQLite: each file of `attach` (staging files, by schema name) is attached for the
        transaction; SQLite attaches only outside a transaction, so before BEGIN, and detaches after
        it ends. A transaction with staging files does not checkpoint the WAL when it commits: its
        caller does, once the staging files are gone (`write_many`)."""
        attach = attach or {}
        with self.engine.connect() as conn:
            if self.dialect == "sqlite":
                conn.execution_options(**{_BEGIN_OPTION: "BEGIN IMMEDIATE"})
            attached = []
            driver = conn.connection.driver_connection if attach else None
            try:
                if driver is not None:
                    driver.execute("PRAGMA wal_autocheckpoint = 0")
                for schema, path in attach.items():
                    driver.execute(f"ATTACH DATABASE ? AS {schema}", (str(path),))
                    attached.append(schema)
                with conn.begin():
                    if self.dialect == "postgresql":
                        key = advisory_lock_key(as_of) if as_of is not None else _lock_key(lock_name or "")
                        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
                    yield conn
            finally:
                for schema in attached:
                    driver.execute(f"DETACH DATABASE {schema}")
                if driver is not None:
                    driver.execute(f"PRAGMA wal_autocheckpoint = {SQLITE_WAL_AUTOCHECKPOINT_PAGES}")

    def _qualified(self, name: str) -> str:
        quoted = self._quote(name)
        if self.schema:
            return f"{self.engine.dialect.identifier_preparer.quote_schema(self.schema)}.{quoted}"
        return quoted

    def _spec(self, table: str) -> TableSpec:
        try:
            return TABLES[table]
        except KeyError:
            raise WarehouseError(f"unknown warehouse table {table!r}; the tables are {sorted(TABLES)}") from None

    # -- schema -----------------------------------------------------------------------------

    def create_all(self) -> None:
        """Create the schema (PostgreSQL), every table, `run_claims` and the `latest_*` views, if they
        do not exist yet; existing tables and their rows are left as they are. Safe to call from
        several processes at once."""
        if self._sqlite_file is not None:
            try:
                self._sqlite_file.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                self._raise_from(f"creating the folder of {self._sqlite_file}", exc)
        with self._database_errors("creating the warehouse tables"):
            with self._locked_transaction(f"create_all:{self.schema or ''}") as conn:
                if self.schema:
                    conn.execute(sa.schema.CreateSchema(self.schema, if_not_exists=True))
                metadata.create_all(conn, checkfirst=True)
                claims_metadata.create_all(conn, checkfirst=True)
                self._upgrade_tables(conn)
                self._check_columns(conn)
                for spec in TABLES.values():
                    if spec.replace == "as_of":
                        self._create_latest_view(conn, spec)
        log.info("warehouse tables and latest_* views ready on %s", self.safe_url)

    def _upgrade_tables(self, conn: sa.Connection) -> None:
        """A warehouse created by an older Dealcast lacks the columns added since. Nullable columns are
        added here (their rows from older nights read NULL, which the column comments in
        docs/warehouse.md allow); a missing NOT NULL column cannot be filled for old rows, so
        `_check_columns` names it instead."""
        inspector = sa.inspect(conn)
        for table in [*metadata.tables.values(), *claims_metadata.tables.values()]:
            present = {c["name"] for c in inspector.get_columns(table.name, schema=self.schema)}
            for column in table.columns:
                if column.name in present or not column.nullable:
                    continue
                kind = column.type.compile(dialect=conn.dialect)
                conn.exec_driver_sql(
                    f"ALTER TABLE {self._qualified(table.name)} ADD COLUMN {self._quote(column.name)} {kind}"
                )
                log.info("added column %s.%s on %s", table.name, column.name, self.safe_url)

    def _check_columns(self, conn: sa.Connection) -> None:
        """Tables created by an older Dealcast may lack columns added since; say which, clearly."""
        inspector = sa.inspect(conn)
        for table in [*metadata.tables.values(), *claims_metadata.tables.values()]:
            present = {c["name"] for c in inspector.get_columns(table.name, schema=self.schema)}
            absent = [c.name for c in table.columns if c.name not in present]
            if absent:
                raise WarehouseError(
                    f"table {self._qualified(table.name)} on {self.safe_url} lacks column(s) {absent}: it was "
                    "created by an older Dealcast; add them (ALTER TABLE ... ADD COLUMN, types in docs/warehouse.md)"
                )

    def _create_latest_view(self, conn: sa.Connection, spec: TableSpec) -> None:
        table = self._qualified(spec.name)
        view = self._qualified(f"latest_{spec.name}")
        columns = ", ".join(self._quote(c) for c in spec.columns)
        as_of = self._quote("as_of")
        manifest = self._qualified(published_nights.name)
        select = f"SELECT {columns} FROM {table} WHERE {as_of} = (SELECT MAX({as_of}) FROM {manifest})"
        if self.dialect == "sqlite":
            # Replaced, not kept: a view of an older Dealcast showed the newest as_of written.
            conn.exec_driver_sql(f"DROP VIEW IF EXISTS {view}")
            conn.exec_driver_sql(f"CREATE VIEW {view} AS {select}")
        elif self.dialect == "postgresql":
            existing = sa.inspect(conn).get_view_names(schema=self.schema)
            if f"latest_{spec.name}" in existing:
                shown = [c["name"] for c in sa.inspect(conn).get_columns(f"latest_{spec.name}", schema=self.schema)]
                if shown != list(spec.columns):
                    # A column added to the table changes the view's column list, which CREATE OR
                    # REPLACE cannot do in the middle; the view is rebuilt in this transaction.
                    conn.exec_driver_sql(f"DROP VIEW {view}")
            conn.exec_driver_sql(f"CREATE OR REPLACE VIEW {view} AS {select}")
            comment = f"Rows of {spec.name} for the newest published night (published_nights)."
            conn.exec_driver_sql(f"COMMENT ON VIEW {view} IS {_sql_string(comment)}")
        elif f"latest_{spec.name}" not in sa.inspect(conn).get_view_names(schema=self.schema):
            conn.exec_driver_sql(f"CREATE VIEW {view} AS {select}")

    # -- run ownership ----------------------------------------------------------------------

    def claim(
        self,
        as_of: dt.date,
        run_id: str,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        supersede: str | None = None,
    ) -> None:
        """Make `run_id` the owner of writes for `as_of`, with a lease of `lease_seconds`.

        Granted when nobody holds the as_of, when `run_id` already does (the lease is renewed), when
        the holder released it or its lease lapsed, or when the holder is `supersede` (a run the
        caller knows has finished). Otherwise `ClaimRefusedError` names the holder, its lease and
        how to clear a stuck claim. Waits for a write already in progress for that as_of."""
        as_of = _as_date(as_of)
        run_id = _check_run_id(run_id)
        if not lease_seconds > 0:
            raise WarehouseError(f"lease_seconds must be positive, got {lease_seconds!r}")
        now = _utcnow()
        expires = now + dt.timedelta(seconds=lease_seconds)
        values = dict(run_id=run_id, lease_seconds=float(lease_seconds), lease_expires_at=expires, released_at=None)
        with self._database_errors(f"claiming as_of {as_of} for run {run_id}"):
            with self._locked_transaction(None, as_of) as conn:
                previous = self._claim_row(conn, as_of)
                if previous is None:
                    conn.execute(run_claims.insert().values(as_of=as_of, claimed_at=now, **values))
                elif previous.run_id == run_id:
                    conn.execute(run_claims.update().where(run_claims.c.as_of == as_of).values(**values))
                elif not previous.live(now) or previous.run_id == supersede:
                    conn.execute(
                        run_claims.update().where(run_claims.c.as_of == as_of).values(claimed_at=now, **values)
                    )
                else:
                    raise ClaimRefusedError(
                        f"as_of {as_of} on {self.safe_url} is being written by run {previous.run_id} (claimed "
                        f"{previous.claimed_at:%Y-%m-%d %H:%M:%S} UTC, lease live until "
                        f"{previous.lease_expires_at:%Y-%m-%d %H:%M:%S} UTC); run {run_id} stops so the two cannot "
                        "interleave their writes. If that run is dead, wait for its lease to lapse or clear it "
                        f"with `dealcast release --as-of {as_of}`."
                    )
        if previous is not None and previous.run_id != run_id:
            log.info("run %s took over as_of %s from run %s on %s", run_id, as_of, previous.run_id, self.safe_url)
        elif previous is None:
            log.info("run %s claimed as_of %s on %s", run_id, as_of, self.safe_url)

    def claim_of(self, as_of: dt.date) -> Claim | None:
        """The claim on `as_of`, or None if no run has claimed it."""
        as_of = _as_date(as_of)
        with self._database_errors(f"reading the claim of as_of {as_of}"):
            with self.engine.connect() as conn:
                return self._claim_row(conn, as_of, for_update=False)

    def claimant(self, as_of: dt.date) -> str | None:
        """The run that currently owns writes for `as_of`, or None if no run has claimed it."""
        claim = self.claim_of(as_of)
        return claim.run_id if claim is not None else None

    def heartbeat(self, run_id: str) -> list[dt.date]:
        """Renew the lease of every as_of `run_id` holds (a running pipeline calls this every few
        minutes, so that only a dead run's claim lapses). Returns the as_ofs renewed."""
        run_id = _check_run_id(run_id)
        now = _utcnow()
        with self._database_errors(f"renewing the claims of run {run_id}"):
            with self._locked_transaction(f"heartbeat:{run_id}") as conn:
                held = conn.execute(
                    sa.select(run_claims.c.as_of, run_claims.c.lease_seconds).where(
                        run_claims.c.run_id == run_id, run_claims.c.released_at.is_(None)
                    )
                ).fetchall()
                for as_of, lease in held:
                    expires = now + dt.timedelta(seconds=lease or DEFAULT_LEASE_SECONDS)
                    conn.execute(
                        run_claims.update()
                        .where(run_claims.c.as_of == as_of, run_claims.c.run_id == run_id, run_claims.c.released_at.is_(None))
                        .values(lease_expires_at=expires)
                    )
        return [_as_date(a) for a, _ in held]

    def release(self, as_of: dt.date, run_id: str | None = None) -> Claim | None:
        """Give up the claim on `as_of` (only if `run_id` holds it, when given): the way to clear the
        claim of a run that died without publishing its night (`dealcast release --as-of`). The
        released run's later writes are refused. Returns the claim as it was, None if none."""
        as_of = _as_date(as_of)
        with self._database_errors(f"releasing the claim of as_of {as_of}"):
            with self._locked_transaction(None, as_of) as conn:
                claim = self._claim_row(conn, as_of)
                if claim is None or claim.released_at is not None:
                    return claim
                if run_id is not None and claim.run_id != run_id:
                    raise StaleRunError(f"run {run_id} does not hold as_of {as_of} on {self.safe_url}; run {claim.run_id} does")
                conn.execute(run_claims.update().where(run_claims.c.as_of == as_of).values(released_at=_utcnow()))
        log.info("claim of run %s on as_of %s released on %s", claim.run_id, as_of, self.safe_url)
        return claim

    def _claim_row(self, conn: sa.Connection, as_of: dt.date, for_update: bool = True) -> Claim | None:
        query = sa.select(
            run_claims.c.run_id, run_claims.c.claimed_at, run_claims.c.lease_expires_at, run_claims.c.released_at,
            run_claims.c.lease_seconds,
        ).where(run_claims.c.as_of == as_of)
        if for_update and self.dialect not in ("sqlite", "postgresql"):
            query = query.with_for_update()  # other databases: the row lock serialises the writers
        row = conn.execute(query).first()
        if row is None:
            return None
        return Claim(as_of, row[0], _as_datetime(row[1]), _as_datetime(row[2]), _as_datetime(row[3]), row[4])

    def _fence(self, conn: sa.Connection, as_of: dt.date, run_id: str) -> None:
        """Inside a write transaction: this run must hold the as_of; its lease is renewed."""
        claim = self._claim_row(conn, as_of)
        if claim is None:
            raise WarehouseError(
                f"run {run_id} has not claimed as_of {as_of} on {self.safe_url}: "
                "call Warehouse.claim(as_of, run_id) before writing"
            )
        if claim.run_id != run_id:
            raise StaleRunError(
                f"run {run_id} no longer owns as_of {as_of} on {self.safe_url}: run {claim.run_id} claimed it "
                f"later, so run {run_id}'s writes are refused (they would overwrite the newer run's rows)"
            )
        if claim.released_at is not None:
            raise StaleRunError(
                f"run {run_id}'s claim on as_of {as_of} on {self.safe_url} was released at "
                f"{claim.released_at:%Y-%m-%d %H:%M:%S} UTC (night published, or cleared by an operator), "
                f"so run {run_id}'s writes are refused; claim the as_of again to write it"
            )
        conn.execute(
            run_claims.update()
            .where(run_claims.c.as_of == as_of)
            .values(lease_expires_at=_utcnow() + dt.timedelta(seconds=claim.lease_seconds or DEFAULT_LEASE_SECONDS))
        )

    # -- publishing -------------------------------------------------------------------------

    def publish_night(self, as_of: dt.date, run_id: str, required: Sequence[str] | None = None) -> dict[str, int]:
        """Publish the night of `as_of`: in ONE transaction, check that this run holds the as_of and
        that every table of `required` (default: `night_tables()`) has been written for it, record
        the night in `published_nights` (the `latest_*` views then show it, all tables together) and
        release the claim. Raises `WarehouseError` naming the tables not written, leaving the views on
        the previous published night. Returns each table's row count."""
        as_of = _as_date(as_of)
        run_id = _check_run_id(run_id)
        required = list(night_tables() if required is None else required)
        with self._database_errors(f"publishing the night of as_of {as_of} (run {run_id})"):
            with self._locked_transaction(None, as_of) as conn:
                self._fence(conn, as_of, run_id)
                rows = conn.execute(
                    sa.select(night_writes.c.table_name, night_writes.c.row_count).where(night_writes.c.as_of == as_of)
                ).fetchall()
                written = {name: int(count) for name, count in rows}
                missing = [name for name in required if name not in written]
                if missing:
                    previous = conn.execute(sa.select(sa.func.max(published_nights.c.as_of))).scalar()
                    raise WarehouseError(
                        f"the night of as_of {as_of} is not published on {self.safe_url}: table(s) "
                        f"{', '.join(missing)} were not written for it; the latest_* views keep showing "
                        f"{'the night of ' + str(_as_date(previous)) if previous else 'no night'}"
                    )
                now = _utcnow()
                conn.execute(published_nights.delete().where(published_nights.c.as_of == as_of))
                conn.execute(
                    published_nights.insert().values(
                        as_of=as_of, run_id=run_id, published_at=now,
                        tables=json.dumps({name: written[name] for name in sorted(written)}),
                    )
                )
                conn.execute(run_claims.update().where(run_claims.c.as_of == as_of).values(released_at=now))
        log.info("published the night of as_of %s (run %s, %d tables) on %s", as_of, run_id, len(written), self.safe_url)
        return written

    def published_as_of(self, before: dt.date | None = None) -> dt.date | None:
        """The newest published night (what the `latest_*` views show), or the newest one earlier than
        `before`; None when there is none."""
        query = sa.select(sa.func.max(published_nights.c.as_of))
        if before is not None:
            query = query.where(published_nights.c.as_of < _as_date(before))
        with self._database_errors("reading the published nights"):
            with self.engine.connect() as conn:
                value = conn.execute(query).scalar()
        return _as_date(value) if value is not None else None

    def _note_writes(self, conn: sa.Connection, prepared: Sequence["PreparedFrame"], as_of: dt.date, run_id: str) -> None:
        names = [p.name for p in prepared if p.spec.replace in ("as_of", "whole")]
        if not names:
            return
        now = _utcnow()
        conn.execute(night_writes.delete().where(night_writes.c.as_of == as_of, night_writes.c.table_name.in_(names)))
        conn.execute(
            night_writes.insert(),
            [
                {"as_of": as_of, "table_name": p.name, "run_id": run_id, "row_count": p.rows, "written_at": now}
                for p in prepared
                if p.name in names
            ],
        )

    # -- writing ----------------------------------------------------------------------------

    def write(self, table: str, frame: pd.DataFrame, *, as_of: dt.date, run_id: str) -> int:
        """Replace `table`'s rows for this run with `frame` in one transaction; returns the rows written."""
        return self.write_many({table: frame}, as_of=as_of, run_id=run_id)[table]

    def write_many(self, frames: Mapping[str, pd.DataFrame], *, as_of: dt.date, run_id: str) -> dict[str, int]:
        """Replace several tables' rows in ONE transaction: either every table is written or none is."""
        as_of = _as_date(as_of)
        run_id = _check_run_id(run_id)
        prepared = [prepare_frame(self._spec(name), frame, as_of) for name, frame in frames.items()]
        if not prepared:
            return {}
        names = ", ".join(p.name for p in prepared)
        action = f"writing {names} for as_of {as_of} (run {run_id})"
        _pause_for_tests(names, "before")
        started = time.perf_counter()
        try:
            with self._staged(prepared) as (staged, files), self._locked_transaction(None, as_of, attach=files) as conn:
                self._fence(conn, as_of, run_id)
                if self.dialect == "postgresql":
                    # Registry tables are shared by every night: runs of different as_of (a
                    # parallel backfill) replacing the same keys take turns, after their as_of lock.
                    for name in sorted(p.name for p in prepared if p.spec.replace == "key"):
                        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(f"table:{name}")})
                kept = self._newer_current_state(conn, prepared, as_of)
                for item in prepared:
                    if item.name in kept:
                        continue
                    self._delete(conn, item, as_of)
                    self._insert(conn, item, staged_in=staged.get(item.name))
                self._note_writes(conn, prepared, as_of, run_id)
                _pause_for_tests(names, "inside")
        except WarehouseError:
            raise
        except (sa.exc.SQLAlchemyError, self._dbapi_error, pa.ArrowException, OSError, *_adbc_errors()) as exc:
            self._raise_from(action, exc, "".join(p.duplicate_keys() for p in prepared))
        if staged:
            self._checkpoint()
        for name, newer in kept.items():
            log.info(
                "%s keeps the rows of the night of %s: as_of %s is older, so its %d rows were counted for the "
                "night but not written (current-state tables show the newest night written)", name, newer, as_of,
                next(p.rows for p in prepared if p.name == name),
            )
        elapsed = max(time.perf_counter() - started, 1e-9)
        total = sum(p.rows for p in prepared)
        log.info(
            "wrote %d rows (%s) for as_of %s, run %s, to %s in %.2f s (%.0f rows/s)",
            total, ", ".join(f"{p.name}={p.rows}" for p in prepared), as_of, run_id, self.safe_url,
            elapsed, total / elapsed,
        )
        return {p.name: p.rows for p in prepared}

    def _newer_current_state(
        self, conn: sa.Connection, prepared: Sequence[PreparedFrame], as_of: dt.date
    ) -> dict[str, dt.date]:
        """The current-state (`whole`) tables among `prepared` that already hold a newer night than
        `as_of`, with that night: a backfilled or re-run older night must not turn them back in time,
        so they keep their rows. Writers of different nights take one more lock here (PostgreSQL), so
        two nights never replace a current-state table at the same time."""
        whole = [item for item in prepared if item.spec.replace == "whole"]
        if not whole:
            return {}
        if self.dialect == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(CURRENT_STATE_LOCK)})
        kept = {}
        for item in whole:
            newest = conn.execute(sa.select(sa.func.max(self._as_of_column(item.spec)))).scalar()
            if newest is not None and _as_date(newest) > as_of:
                kept[item.name] = _as_date(newest)
        return kept

    def _delete(self, conn: sa.Connection, item: PreparedFrame, as_of: dt.date) -> None:
        table = item.spec.table
        if item.spec.replace == "as_of":
            conn.execute(table.delete().where(table.c.as_of == as_of))
        elif item.spec.replace == "whole":
            conn.execute(table.delete())
        elif item.spec.replace == "key":
            key = list(item.spec.key) or [c.name for c in table.primary_key.columns]
            if item.rows == 0:
                return
            unique = PreparedFrame(item.spec, item.data[key].drop_duplicates(), {k: item.kinds[k] for k in key})
            condition = sa.and_(*(table.c[k] == sa.bindparam(f"key_{k}") for k in key))
            values = unique.values("python")
            conn.execute(table.delete().where(condition), [
                {f"key_{k}": v for k, v in zip(key, row)} for row in zip(*values)
            ])
        else:
            raise WarehouseError(f"table {item.name}: unknown replace mode {item.spec.replace!r}")

    def _checkpoint(self) -> None:
        """Copy a SQLite warehouse's write-ahead log into the database file after a staged write
        (PASSIVE: as far as no reader still needs the log's older pages, never waiting for one).

        A staged write commits gigabytes of WAL at 1M deals. SQLite would checkpoint them inside
        the commit, while the staging files (as large, about to be deleted) still wait to be
        written back by the kernel: measured at 1M deals, the write took 32-37 s that way, and
        23-25 s plus a 2 s checkpoint once the staging files were gone. The rows are committed
        either way; a checkpoint that fails leaves them in the log, which SQLite reads and
        checkpoints at the next write, so it is reported, not raised."""
        started = time.perf_counter()
        try:
            with self.engine.connect() as conn:
                _, frames, copied = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
        except (sa.exc.SQLAlchemyError, self._dbapi_error) as exc:
            log.warning(
                "the write is committed, but copying the write-ahead log into %s failed (%s); "
                "SQLite will copy it at a later write", self.safe_url, _scrub(str(exc), self._secrets),
            )
            return
        log.info(
            "checkpointed %s: %d of %d WAL pages copied into the database file in %.2f s",
            self.safe_url, copied, frames, time.perf_counter() - started,
        )

    def _staged_frames(self, prepared: Sequence[PreparedFrame]) -> dict[str, str]:
        """The frames that reach this warehouse through a staging file (SQLite files only, frames of
        at least `SQLITE_STAGED_ROWS` rows), each with the schema its staging file is attached as:
        the largest frames first, each to the file with the fewest rows so far."""
        if self.dialect != "sqlite" or self._sqlite_file is None:
            return {}
        large = sorted((item for item in prepared if item.rows >= SQLITE_STAGED_ROWS), key=lambda i: -i.rows)
        rows = [0] * SQLITE_STAGING_FILES
        placed = {}
        for item in large:
            slot = rows.index(min(rows))
            rows[slot] += item.rows
            placed[item.name] = f"{_STAGING_SCHEMA}_{slot}"
        return placed

    @contextmanager
    def _staged(self, prepared: Sequence[PreparedFrame]) -> Iterator[tuple[dict[str, str], dict[str, Path]]]:
        """A SQLite warehouse's large frames written, before the write transaction, to staging files
        beside the warehouse (`SQLITE_STAGING_FILES` at most, written at the same time); yields
        (`_staged_frames`: each staged frame's schema, each file by the schema it is to be attached
        as), and removes the files afterwards.

        Each staged table is created there with the warehouse table's own definition (its CREATE
        TABLE and CREATE INDEX statements as the warehouse stores them), and its rows are bound from
        Arrow batches in C by the ADBC SQLite driver, with the same types and text that
        `values("sqlite")` gives `executemany`. In the write transaction `_insert` copies them with
        `INSERT INTO t SELECT * FROM staging.t`: the warehouse stores the same rows in the same
        order, and SQLite copies the records of two identical tables as they are into an emptied
        one. A staging file is scratch, never the copy of record: it is written without a journal or
        syncs. The warehouse's own transaction, journal and syncs are unchanged."""
        placed = self._staged_frames(prepared)
        if not placed:
            yield {}, {}
            return
        import adbc_driver_sqlite.dbapi as adbc_sqlite

        with self.engine.connect() as conn:
            raw = conn.connection.driver_connection
            definitions = {
                name: [
                    sql for (sql,) in raw.execute(
                        "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL "
                        "ORDER BY type = 'table' DESC, name",
                        (name,),
                    )
                ]
                for name in placed
            }
        by_name = {item.name: item for item in prepared}

        def stage(path: Path, items: list[PreparedFrame]) -> None:
            with adbc_sqlite.connect(str(path), autocommit=True) as staging, staging.cursor() as cursor:
                cursor.execute(f"PRAGMA page_size = {SQLITE_PAGE_BYTES}")
                cursor.execute("PRAGMA journal_mode = OFF")
                cursor.execute("PRAGMA synchronous = OFF")
                cursor.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
                cursor.execute("BEGIN")
                for item in items:
                    for statement in definitions[item.name]:
                        cursor.execute(statement)
                    for start in range(0, item.rows, BATCH_ROWS):
                        # The driver binds the batch with the GIL released: the other file is
                        # written meanwhile, on the other core.
                        cursor.adbc_ingest(item.name, item.sqlite_batch(start, start + BATCH_ROWS), mode="append")
                cursor.execute("COMMIT")

        with tempfile.TemporaryDirectory(prefix=".dealcast-staging-", dir=self._sqlite_file.parent) as folder:
            files = {schema: Path(folder) / f"{schema}.sqlite" for schema in sorted(set(placed.values()))}
            with ThreadPoolExecutor(max_workers=len(files)) as workers:
                jobs = [
                    workers.submit(stage, path, [by_name[name] for name, s in placed.items() if s == schema])
                    for schema, path in files.items()
                ]
                for job in jobs:
                    job.result()
            yield placed, files

    def _insert(self, conn: sa.Connection, item: PreparedFrame, staged_in: str | None = None) -> None:
        if item.rows == 0:
            return
        columns = list(item.kinds)
        if staged_in is not None:
            name = self._quote(item.name)
            conn.exec_driver_sql(f"INSERT INTO main.{name} SELECT * FROM {staged_in}.{name}")
        elif self._copy:
            target = f"{self._qualified(item.name)} ({', '.join(self._quote(c) for c in columns)})"
            driver_connection = conn.connection.driver_connection
            with driver_connection.cursor() as cursor:
                with cursor.copy(f"COPY {target} FROM STDIN (FORMAT csv)") as copy:
                    for start in range(0, item.rows, BATCH_ROWS):
                        copy.write(item.csv_block(start, start + BATCH_ROWS))
        elif self.dialect == "sqlite":
            statement = (
                f"INSERT INTO {self._qualified(item.name)} ({', '.join(self._quote(c) for c in columns)}) "
                f"VALUES ({', '.join('?' for _ in columns)})"
            )
            # sqlite3 lets other threads run while SQLite inserts a batch: the next batch's Python
            # values are made meanwhile, on the other core. Batches are still inserted in order, in
            # this transaction, on this connection.
            batches = item.batches("sqlite")
            with ThreadPoolExecutor(max_workers=1) as converter:
                pending = converter.submit(next, batches, None)
                while (batch := pending.result()) is not None:
                    pending = converter.submit(next, batches, None)
                    conn.exec_driver_sql(statement, batch)
        else:
            for batch in item.batches("python"):
                conn.execute(item.spec.table.insert(), [dict(zip(columns, row)) for row in batch])

    # -- reading ----------------------------------------------------------------------------

    def read(self, table: str, as_of: dt.date | None = None) -> pd.DataFrame:
        """`table`'s rows (only those of `as_of` if given), ordered by the table's key, with typed
        columns: DATE/TIMESTAMP as datetime64[us], money and rates as float64, booleans as bool,
        integers as int64 (nullable columns: "boolean"/"Int64"), text as "string"."""
        spec = self._spec(table)
        query = sa.select(spec.table)
        if as_of is not None:
            query = query.where(self._as_of_column(spec) == _as_date(as_of))
        query = query.order_by(*spec.table.primary_key.columns)
        with self._database_errors(f"reading {table}"):
            with self.engine.connect() as conn:
                rows = conn.execute(query).fetchall()
        return _frame_from_rows(spec.table, rows)

    def latest_as_of(self, table: str) -> dt.date | None:
        """The newest as_of in `table`, or None when it is empty."""
        spec = self._spec(table)
        with self._database_errors(f"reading the latest as_of of {table}"):
            with self.engine.connect() as conn:
                value = conn.execute(sa.select(sa.func.max(self._as_of_column(spec)))).scalar()
        return _as_date(value) if value is not None else None

    def row_count(self, table: str, as_of: dt.date | None = None) -> int:
        """How many rows `table` holds (for `as_of` only, if given)."""
        spec = self._spec(table)
        query = sa.select(sa.func.count()).select_from(spec.table)
        if as_of is not None:
            query = query.where(self._as_of_column(spec) == _as_date(as_of))
        with self._database_errors(f"counting the rows of {table}"):
            with self.engine.connect() as conn:
                return int(conn.execute(query).scalar_one())

    def table_names(self) -> set[str]:
        """The tables (and views) that exist in the warehouse, so that a reader can tell an empty or
        foreign database from a Dealcast warehouse before it queries anything."""
        with self._database_errors("listing the warehouse tables"):
            with self.engine.connect() as conn:
                inspector = sa.inspect(conn)
                return set(inspector.get_table_names(schema=self.schema)) | set(inspector.get_view_names(schema=self.schema))

    def claims(self) -> pd.DataFrame:
        """Every run claim (`run_claims`: as_of, run_id, claimed_at), newest as_of first: which run
        last started writing each as_of, whether or not it finished."""
        with self._database_errors("reading the run claims"):
            with self.engine.connect() as conn:
                rows = conn.execute(sa.select(run_claims).order_by(run_claims.c.as_of.desc())).fetchall()
        return _frame_from_rows(run_claims, rows)

    def _as_of_column(self, spec: TableSpec) -> sa.Column:
        if "as_of" not in spec.table.c:
            raise WarehouseError(f"table {spec.name} has no as_of column")
        return spec.table.c.as_of

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def _adbc_errors() -> tuple[type[Exception], ...]:
    """The ADBC driver manager's error class, once a staged write has loaded it."""
    module = sys.modules.get("adbc_driver_manager")
    return (module.Error,) if module is not None else ()


def night_tables() -> list[str]:
    """The tables a night must have written before it is published: every table replaced per
    as_of or whole (registry tables such as model_runs are not per night)."""
    return [name for name, spec in TABLES.items() if spec.replace in ("as_of", "whole")]


# Fault tests only: DEALCAST_TEST_PAUSE_IN_WRITE="<table>:<seconds>[:before]" makes a write that
# includes <table> wait, inside its transaction after its rows are inserted and before the commit
# (or, with ":before", before the transaction starts, holding only the run's claim), so a test can
# kill the process mid-write or start a rival run meanwhile. The wait ends after <seconds> or as
# soon as the file DEALCAST_TEST_PAUSE_IN_WRITE_RESUME names exists; on arrival the file
# DEALCAST_TEST_PAUSE_IN_WRITE_MARKER names is written. Unset in every real deployment.
_PAUSE_ENV = "DEALCAST_TEST_PAUSE_IN_WRITE"


def _pause_for_tests(names: str, where: str) -> None:
    setting = os.environ.get(_PAUSE_ENV)
    if not setting:
        return
    table, _, rest = setting.partition(":")
    seconds, _, place = rest.partition(":")
    if table not in [n.strip() for n in names.split(",")] or (place or "inside") != where:
        return
    marker = os.environ.get(_PAUSE_ENV + "_MARKER")
    if marker:
        Path(marker).write_text(table, encoding="utf-8")
    resume = os.environ.get(_PAUSE_ENV + "_RESUME")
    log.warning("pausing up to %s s %s the write of %s (%s is set)", seconds, where, names, _PAUSE_ENV)
    deadline = time.monotonic() + float(seconds or 60)
    while time.monotonic() < deadline and not (resume and Path(resume).exists()):
        time.sleep(0.1)


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
