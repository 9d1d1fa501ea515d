"""The CRM read straight from the warehouse it is already in: the tables Fivetran (or Airbyte)
lands from Salesforce or HubSpot, in one schema, read through SQLAlchemy.

dealcast.toml:

    [sources.warehouse]
    url = "postgresql+psycopg://reader:secret@db.example.com:5432/analytics"
    schema = "salesforce"
    crm = "salesforce"            # or "hubspot": deal, deal_stage, deal_pipeline, deal_pipeline_stage
    # tables = { opportunity = "opportunity", opportunity_history = "opportunity_history",
    #            user = "user", account = "account" }

`DEALCAST_SOURCE_URL` overrides `url` (so the password can stay out of the file); the password is
handled as the warehouse's is: never in logs, metadata or errors (`etl.warehouse.redact_url`).

A run unloads each table into a private folder as CSV (one consistent snapshot: PostgreSQL reads
every table in one REPEATABLE READ, read-only transaction), rows in id order (`ORDER_COLUMNS`), and reads that
folder with the same reader as file exports, so every rule holds alike: deleted and
superseded rows are left out and counted, bad rows quarantined with their reason. The rows then
name their table as `<schema>.<table>` (`salesforce.opportunity`), and `source_row` is the row's
place in `id` order (then sync time) counted as a spreadsheet does (the first row is 2). The
folder is removed after the read.

`fingerprint` is what the exports sensor compares between ticks: per table, its row count and its
latest `_fivetran_synced` (or `_airbyte_extracted_at`), so a sync that changed anything starts a run.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import decimal
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from etl.config import ConfigError, ProjectConfig
from etl.ingest.readers import ExportFormatError

log = logging.getLogger(__name__)

ENV_SOURCE_URL = "DEALCAST_SOURCE_URL"
SECTION = "warehouse"
# The CRMs whose warehouse tables Dealcast reads, with their tables: role -> default table name
# (the names Fivetran gives them). The first role is required; the others are read when present.
CRM_TABLES: dict[str, dict[str, str]] = {
    "salesforce": {
        "opportunity": "opportunity",
        "opportunity_history": "opportunity_history",
        "user": "user",
        "account": "account",
    },
    "hubspot": {
        "deal": "deal",
        "deal_stage": "deal_stage",
        "deal_pipeline": "deal_pipeline",
        "deal_pipeline_stage": "deal_pipeline_stage",
    },
}
# The format each table is read as (etl.ingest.readers.salesforce, etl.ingest.readers.hubspot_tables).
TABLE_FORMATS = {
    "opportunity": "salesforce_opportunity", "opportunity_history": "salesforce_history",
    "user": "salesforce_user", "account": "salesforce_account",
    "deal": "hubspot_deal_table", "deal_stage": "hubspot_deal_stage_table",
    "deal_pipeline": "hubspot_deal_pipeline_table", "deal_pipeline_stage": "hubspot_deal_pipeline_stage_table",
}  # fmt: skip
# Columns that put a table's rows in a repeatable order, in this order of preference.
ORDER_COLUMNS = ("id", "deal_id", "pipeline_id", "stage_id", "date_entered")
# The bookkeeping column holding when a loader last wrote a row, by loader.
SYNCED_COLUMNS = ("_fivetran_synced", "_airbyte_extracted_at", "_airbyte_emitted_at")
_CHUNK_ROWS = 50_000


class SourceError(ExportFormatError):
    """The warehouse source cannot be read: unreachable, a table missing, a query refused. The
    message names the (redacted) URL, the schema and the table."""


@dataclass(frozen=True)
class WarehouseSource:
    """Where the CRM's tables are: `url` (with its password), `schema`, `crm` and its tables."""

    url: str
    schema: str | None
    crm: str
    tables: dict[str, str]

    @property
    def safe_url(self) -> str:
        from etl.warehouse import redact_url

        return redact_url(self.url)

    def label(self, table: str) -> str:
        """How rows name the table they come from: `<schema>.<table>`."""
        return f"{self.schema}.{table}" if self.schema else table

    def __repr__(self) -> str:
        return f"WarehouseSource({self.safe_url!r}, schema={self.schema!r}, crm={self.crm!r})"


def warehouse_source(project: ProjectConfig) -> WarehouseSource | None:
    """The `[sources.warehouse]` source of `project` (with `DEALCAST_SOURCE_URL` over its `url`),
    or None when neither is set. `ConfigError` for a setting Dealcast cannot use."""
    section: Mapping[str, Any] = project.sources.get(SECTION, {})
    env_url = os.environ.get(ENV_SOURCE_URL, "").strip()
    if not section and not env_url:
        return None
    where = f"{project.path}: [sources.{SECTION}]"
    unknown = sorted(set(section) - {"url", "schema", "crm", "tables"})
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {unknown}; expected url, schema, crm, tables")
    url = env_url or str(section.get("url", "")).strip()
    if not url:
        raise ConfigError(f"{where}: no url; set url (a SQLAlchemy URL) or {ENV_SOURCE_URL}")
    crm = str(section.get("crm", "salesforce")).strip().lower()
    if crm not in CRM_TABLES:
        raise ConfigError(f"{where}: crm = {crm!r} is not read from a warehouse; expected one of {sorted(CRM_TABLES)}")
    tables = dict(CRM_TABLES[crm])
    given = section.get("tables", {})
    if not isinstance(given, dict) or not all(isinstance(v, str) and v for v in given.values()):
        raise ConfigError(f"{where}: tables must map table roles to table names, e.g. {{ opportunity = \"opportunity\" }}")
    wrong = sorted(set(given) - set(tables))
    if wrong:
        raise ConfigError(f"{where}: tables names unknown role(s) {wrong}; the {crm} roles are {sorted(tables)}")
    tables.update(given)
    schema = section.get("schema")
    if schema is not None and (not isinstance(schema, str) or not schema.strip()):
        raise ConfigError(f"{where}: schema must be a schema name, got {schema!r}")
    try:
        make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        # Not shown: text that is no URL cannot be told apart from its password.
        raise ConfigError(
            f"{where}: url is not a SQLAlchemy database URL; expected dialect+driver://user:password@host:port/database"
        ) from None
    return WarehouseSource(url=url, schema=schema.strip() if schema else None, crm=crm, tables=tables)


# --------------------------------------------------------------------------------------------
# Reading


def _text(value: Any) -> str:
    """A database value as the CSV text the export readers parse."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, (dt.date, decimal.Decimal)):
        return str(value)
    return str(value)


class _Connection:
    """One read-only connection to the source, its errors with the password masked."""

    def __init__(self, source: WarehouseSource) -> None:
        from etl.warehouse import _secrets_in

        self.source = source
        self._secrets = _secrets_in(source.url)
        try:
            self.engine = sa.create_engine(source.url)
        except (sa.exc.SQLAlchemyError, ImportError, TypeError, ValueError) as exc:
            raise self.error("opening", None, exc) from None

    def error(self, action: str, table: str | None, exc: BaseException) -> SourceError:
        from etl.warehouse import _scrub

        what = f" table {self.source.label(table)}" if table else f" schema {self.source.schema}" if self.source.schema else ""
        text = _scrub(f"{type(exc).__name__}: {exc}".splitlines()[0], self._secrets)
        return SourceError(f"CRM source {self.source.safe_url}{what}: {action} failed ({text})")

    def __enter__(self) -> sa.Connection:
        try:
            options = {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
            engine = self.engine.execution_options(**options) if self.engine.dialect.name == "postgresql" else self.engine
            self.conn = engine.connect()
            self.conn.begin()
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            self.engine.dispose()
            raise self.error("connecting", None, exc) from None
        return self.conn

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.conn.rollback()
            self.conn.close()
        finally:
            self.engine.dispose()


def _present_tables(conn: sa.Connection, source: WarehouseSource, guard: _Connection) -> dict[str, sa.Table]:
    """The source's tables that exist, reflected, by role; `SourceError` when the first (required)
    role's table is missing."""
    try:
        names = set(sa.inspect(conn).get_table_names(schema=source.schema))
    except sa.exc.SQLAlchemyError as exc:
        raise guard.error("listing the tables", None, exc) from None
    folded = {n.casefold(): n for n in names}
    found: dict[str, sa.Table] = {}
    for i, (role, name) in enumerate(source.tables.items()):
        actual = name if name in names else folded.get(name.casefold())
        if actual is None:
            if i == 0:
                raise SourceError(
                    f"CRM source {source.safe_url}: table {source.label(name)} not found"
                    f"{' in schema ' + source.schema if source.schema else ''} (tables there: "
                    f"{', '.join(sorted(names)) or 'none'}); expected the {source.crm} {role} table as a loader "
                    f"lands it, or its name under [sources.{SECTION}] tables"
                )
            log.info("CRM source %s: no %s table %s; read without it", source.safe_url, role, source.label(name))
            continue
        try:
            found[role] = sa.Table(actual, sa.MetaData(), schema=source.schema, autoload_with=conn)
        except sa.exc.SQLAlchemyError as exc:
            raise guard.error("reading the columns of", actual, exc) from None
    return found


def _ordered(table: sa.Table) -> sa.Select:
    """All rows in a repeatable order: by their ids (`ORDER_COLUMNS`), then by sync time (a
    history-mode table holds several versions of an id), then by primary key."""
    by_name = {c.name.casefold(): c for c in table.columns}
    keys = [by_name[name] for name in ORDER_COLUMNS if name in by_name]
    keys += [c for c in table.columns if c.name.casefold() in SYNCED_COLUMNS]
    keys += [c for c in table.primary_key.columns if c not in keys]
    return sa.select(table).order_by(*keys) if keys else sa.select(table)


def unload(source: WarehouseSource, folder: Path) -> dict[Path, str]:
    """Write each of the source's tables into `folder` as `<role>.csv` (the file names the readers
    know), all from one snapshot. Returns each file with the `<schema>.<table>` label its
    rows are to carry. A table with no rows is written with its header only when it is the required
    one (the reader then says it is empty); other empty tables are left out."""
    folder.mkdir(parents=True, exist_ok=True)
    guard = _Connection(source)
    written: dict[Path, str] = {}
    required = next(iter(source.tables))
    with guard as conn:
        tables = _present_tables(conn, source, guard)
        for role, table in tables.items():
            path = folder / f"{role}.csv"
            rows = 0
            try:
                result = conn.execution_options(stream_results=True, yield_per=_CHUNK_ROWS).execute(_ordered(table))
                with open(path, "w", encoding="utf-8", newline="") as handle:
                    writer = csv.writer(handle, lineterminator="\n")
                    writer.writerow([c.name for c in table.columns])
                    for chunk in result.partitions(_CHUNK_ROWS):
                        writer.writerows([_text(v) for v in row] for row in chunk)
                        rows += len(chunk)
            except (sa.exc.SQLAlchemyError, OSError) as exc:
                raise guard.error("reading", table.name, exc) from None
            if rows == 0 and role != required:
                path.unlink()
                log.info("CRM source %s: table %s is empty; read without it", source.safe_url, source.label(table.name))
                continue
            log.info("CRM source %s: %d rows from %s", source.safe_url, rows, source.label(table.name))
            written[path] = source.label(table.name)
    return written


def fingerprint(source: WarehouseSource) -> list[dict[str, Any]]:
    """Per table of the source that exists: its label, row count and latest sync time (the loader's
    bookkeeping column, None without one). What the exports sensor compares between ticks."""
    guard = _Connection(source)
    out = []
    with guard as conn:
        for role, table in _present_tables(conn, source, guard).items():
            synced = next((c for c in table.columns if c.name.casefold() in SYNCED_COLUMNS), None)
            columns = [sa.func.count()] + ([sa.func.max(synced)] if synced is not None else [])
            try:
                row = conn.execute(sa.select(*columns).select_from(table)).one()
            except sa.exc.SQLAlchemyError as exc:
                raise guard.error("counting the rows of", table.name, exc) from None
            latest = row[1] if synced is not None else None
            out.append({
                "table": source.label(table.name), "role": role, "rows": int(row[0]),
                "synced": _text(latest) if latest is not None else None,
            })  # fmt: skip
    return out


def describe_source(source: WarehouseSource) -> pd.DataFrame:
    """The source's tables as the exports listing shows files: `file` is `<schema>.<table>`,
    `format` the format it is read as, `rows` and `modified_at` (latest sync)."""
    rows = [
        {
            "file": t["table"], "format": TABLE_FORMATS.get(t["role"]), "rows": t["rows"],
            "modified_at": _utc_naive(t["synced"]), "source": source.safe_url,
        }
        for t in fingerprint(source)
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["file", "format", "rows", "modified_at", "source"])


def _utc_naive(text: str | None) -> pd.Timestamp:
    if not text:
        return pd.NaT
    stamp = pd.Timestamp(text)
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo else stamp


@dataclasses.dataclass
class _Relabel:
    names: dict[str, str]

    def series(self, values: pd.Series) -> pd.Series:
        return values.astype("object").map(lambda v: self.names.get(str(v), v)).astype(values.dtype)


def relabel(ingest: Any, names: Mapping[Path, str]) -> Any:
    """`ingest` (an `etl.ingest.exports.IngestResult` read from the unloaded folder) with every file path
    replaced by its table's label, in the frames and the file reports alike."""
    by_text = _Relabel({str(path): label for path, label in names.items()})
    for attribute in ("deals", "history", "quarantine", "history_gaps", "normalised"):
        frame = getattr(ingest, attribute)
        if frame is not None and "source_file" in frame.columns and not frame.empty:
            setattr(ingest, attribute, frame.assign(source_file=by_text.series(frame["source_file"])))
    ingest.files = [dataclasses.replace(f, path=Path(by_text.names.get(str(f.path), str(f.path)))) for f in ingest.files]
    if ingest.raw_checks is not None and not ingest.raw_checks.empty:
        # The raw suites name a file by its name: `raw[opportunity.csv]...` becomes `raw[<schema>.<table>]...`.
        names = ingest.raw_checks["check_name"].astype("str")
        for path, label in by_text.names.items():
            names = names.str.replace(f"[{Path(path).name}]", f"[{label}]", regex=False)
        ingest.raw_checks = ingest.raw_checks.assign(check_name=names)
    return ingest


@dataclass
class Unloaded:
    """A folder holding the source's tables as CSV, removed on exit."""

    source: WarehouseSource
    folder: Path | None = None
    labels: dict[Path, str] = dataclasses.field(default_factory=dict)

    def __enter__(self) -> "Unloaded":
        self.folder = Path(tempfile.mkdtemp(prefix="dealcast-source-"))
        try:
            self.labels = unload(self.source, self.folder)
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def read_source(source: WarehouseSource, project: ProjectConfig, as_of: dt.date) -> Any:
    """The source's tables read like an exports folder (`etl.ingest.exports.read_exports`), rows naming
    their tables."""
    from etl.ingest.exports import read_exports

    with Unloaded(source) as unloaded:
        assert unloaded.folder is not None
        ingest = read_exports(unloaded.folder, project, as_of=as_of)
        return relabel(ingest, unloaded.labels)

