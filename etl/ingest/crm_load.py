"""One nightly load of the CRM: read every export file, validate, and rebuild stage history.

This is what the ingest asset runs; it lives here so it can be called (and tested, and
benchmarked) without Dagster.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from etl.bookings import with_booking_dates
from etl.config import Settings
from etl.ingest.exports import (
    HISTORY_FORMATS,
    LOOKUP_FORMATS,
    IngestResult,
    detect_format,
    read_exports,
    unrecognised_reason,
    with_values_as_written,
)
from etl.ingest.source_warehouse import read_source, warehouse_source
from etl.pipeline_state import as_of_end, closed_at_from_history, prepare_history, stage_events, stage_move_counts
from etl.stages import ORDER_INFERRED, StageCatalog
from etl.tables import TABLES
from etl.validation.canonical import validate_crm
from etl.validation.outcome import ValidationOutcome
from etl.validation.reconciliation import FileCount
from etl.validation.stage_events import validate_stage_events

log = logging.getLogger(__name__)


CONTENT_DEALS, CONTENT_HISTORY, CONTENT_LOOKUP = "deals", "history", "lookup"


def previous_deal_count(reconciliation: pd.DataFrame, as_of: dt.date) -> int | None:
    """Deals accepted by the latest earlier as_of (rows of the `reconciliation` table), the baseline
    of the volume check; None before the first run. A re-run of the same as_of compares with the
    day before, not with itself, so re-runs give identical results."""
    dates = pd.to_datetime(reconciliation["as_of"]).dt.date
    earlier = reconciliation[dates < as_of]
    if earlier.empty:
        return None
    latest = earlier[pd.to_datetime(earlier["as_of"]).dt.date == max(dates[dates < as_of])]
    return int(latest.loc[latest["content"] == CONTENT_DEALS, "accepted"].sum())


@dataclass
class CrmLoad:
    """The validated CRM as of one run: accepted deals, their annotated history and stage events."""

    ingest: IngestResult
    validation: ValidationOutcome
    deals: pd.DataFrame
    history: pd.DataFrame  # etl.pipeline_state.prepare_history output
    events: pd.DataFrame  # etl.pipeline_state.stage_events output
    stages: StageCatalog
    pipeline_stages: pd.DataFrame  # `pipeline_stage_table` output
    # Pipelines whose stage order is a guess, or that their deals' moves contradict often.
    stage_order_warnings: list[str]

    @property
    def publishable(self) -> bool:
        """False when a blocking check failed: nothing may reach the tables people read."""
        return self.validation.blocking_failures.empty

    def warehouse_frames(self) -> dict[str, pd.DataFrame]:
        """The current-state tables of this load, shaped as the warehouse contract says."""
        return {
            "deals": table_frame("deals", self.deals),
            "deal_history": table_frame("deal_history", self.history),
            "stage_events": table_frame("stage_events", self.events),
            "pipeline_stages": table_frame("pipeline_stages", self.pipeline_stages),
        }


def pipeline_stage_table(stages: StageCatalog, history: pd.DataFrame) -> pd.DataFrame:
    """The `pipeline_stages` rows: every pipeline's stages in order with where the order comes from,
    plus how many of its deals' moves between open stages (in `history`, the output of
    `prepare_history`) there are and how many go backward under that order."""
    table = stages.lookup_frame().merge(stage_move_counts(history), on="pipeline", how="left")
    for column in ("stage_moves", "backward_moves"):
        table[column] = table[column].fillna(0).astype("int64")
    moves = table["stage_moves"].where(table["stage_moves"] > 0)
    table["backward_share"] = (table["backward_moves"] / moves).astype("float64")
    return table


def stage_order_warnings(table: pd.DataFrame, warn_share: float) -> list[str]:
    """One sentence per pipeline of `pipeline_stage_table` whose order is a guess (inferred with no
    move between open stages to check it against) or leaves more than `warn_share` of its deals'
    moves backward."""
    warnings = []
    for name, rows in table.groupby("pipeline", sort=True):
        first = rows.iloc[0]
        order = " > ".join(rows.loc[rows["stage_status"] == "open"].sort_values("stage_order")["stage"].astype(str))
        fix = "set the order under [[pipelines]] in dealcast.toml"
        if first["order_source"] == ORDER_INFERRED and first["stage_moves"] == 0:
            warnings.append(
                f"pipeline {name!r}: the stage order {order} is a guess, from {first['order_basis']}; no deal moved "
                f"between its open stages to check it; {fix}"
            )
        elif pd.notna(first["backward_share"]) and first["backward_share"] > warn_share:
            warnings.append(
                f"pipeline {name!r}: {first['backward_moves']:,} of {first['stage_moves']:,} stage moves "
                f"({first['backward_share']:.0%}) go backward under its {first['order_source']} stage order {order} "
                f"({first['order_basis']}); above {warn_share:.0%}, the deals do not follow one order: check the "
                f"stages, or {fix}"
            )
    return warnings


def table_frame(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` reduced to the columns of warehouse table `name` (as_of is added by the writer)."""
    columns = [c for c in TABLES[name].columns if c != "as_of" or c in frame.columns]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"table {name}: frame lacks column(s) {missing}")
    return frame.loc[:, columns]


def file_counts(ingest: IngestResult) -> list[FileCount]:
    """What each input file contributed, for the reconciliation: rows read, and for lookup files
    (owners, accounts) the rows the reader kept as lookup entries."""
    return [
        FileCount(
            str(f.path), f.rows_read, f.rows_accepted if f.format in LOOKUP_FORMATS else 0, dict(f.columns),
            lookup=f.format in LOOKUP_FORMATS, history_only=f.format in HISTORY_FORMATS,
        )
        for f in ingest.files
    ]


def load_crm(settings: Settings, previous_deal_count: int | None = None) -> CrmLoad:
    """Read the CRM (the `[sources.warehouse]` tables when configured, else the exports directory),
    validate it, and rebuild history and stage events for `settings.as_of`."""
    source = warehouse_source(settings.project)
    if source is not None:
        ingest = read_source(source, settings.project, settings.as_of)
        origin = f"{source.safe_url} schema {source.schema}"
    else:
        ingest = read_exports(settings.exports_dir, settings.project, as_of=settings.as_of)
        origin = str(settings.exports_dir)
    log.info(
        "read %d file(s) from %s: %d deals, %d history rows, %d rows rejected while parsing",
        len(ingest.files),
        origin,
        len(ingest.deals),
        len(ingest.history),
        len(ingest.quarantine),
    )
    outcome = validate_crm(
        ingest.deals,
        ingest.history,
        ingest.quarantine,
        file_counts(ingest),
        ingest.stages,
        settings.project.validation,
        settings.as_of,
        previous_deal_count,
        raw_results=ingest.raw_checks, currencies=ingest.currencies,
    )
    outcome.quarantine = with_values_as_written(outcome.quarantine, ingest.normalised)
    history = prepare_history(outcome.deals, outcome.history, ingest.stages)
    events = stage_events(history, settings.as_of)
    outcome.add_results(*validate_stage_events(events, outcome.deals, as_of_end(settings.as_of)))
    deals = outcome.deals.assign(closed_at=closed_at_from_history(outcome.deals, history))
    deals = with_booking_dates(deals, settings.as_of, settings.project.booking_date)
    stage_table = pipeline_stage_table(ingest.stages, history)
    order_warnings = stage_order_warnings(stage_table, settings.project.validation.warn_backward_share)
    for warning in order_warnings:
        log.warning("%s", warning)
    return CrmLoad(
        ingest=ingest,
        validation=outcome,
        deals=deals,
        history=history,
        events=events,
        stages=ingest.stages,
        pipeline_stages=stage_table,
        stage_order_warnings=order_warnings,
    )


def describe_exports(exports_dir: Path) -> pd.DataFrame:
    """The files in the exports folder: name, detected format (None when not a known export, with
    why in `not_recognised`), size and sha256."""
    rows = []
    for path in sorted(p for p in Path(exports_dir).iterdir() if p.is_file()) if Path(exports_dir).is_dir() else []:
        digest = hashlib.sha256()
        try:
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            checksum = digest.hexdigest()
        except OSError as exc:
            # Listed all the same: reading the exports says what it means for the run.
            log.warning("%s cannot be read (%s)", path, exc.strerror or type(exc).__name__)
            checksum = f"unreadable: {exc.strerror or type(exc).__name__}"
        fmt = detect_format(path)
        rows.append(
            {
                "file": path.name,
                "format": fmt,
                "bytes": path.stat().st_size,
                "sha256": checksum,
                "modified_at": pd.Timestamp(path.stat().st_mtime, unit="s"),
                "not_recognised": unrecognised_reason(path) if fmt is None else None,
            }
        )
    return pd.DataFrame(rows, columns=["file", "format", "bytes", "sha256", "modified_at", "not_recognised"])


def _now() -> pd.Timestamp:
    return pd.Timestamp(dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))


def quarantine_frame(load: CrmLoad, run_id: str) -> pd.DataFrame:
    """The `quarantine` table rows of this run (as_of is added by the writer)."""
    frame = load.validation.quarantine.copy()
    frame["run_id"] = run_id
    frame["quarantined_at"] = _now()
    return table_frame("quarantine", frame)


def results_frame(load: CrmLoad, run_id: str) -> pd.DataFrame:
    """The `data_quality_results` table rows of this run."""
    frame = load.validation.results.copy()
    frame["run_id"] = run_id
    frame["checked_at"] = _now()
    return table_frame("data_quality_results", frame)


def reconciliation_frame(load: CrmLoad, run_id: str) -> pd.DataFrame:
    """The `reconciliation` table rows of this run: per input file, rows read = accepted + quarantined."""
    formats = {str(f.path): f.format for f in load.ingest.files}
    deal_files = set(load.ingest.deals["source_file"].dropna().astype(str))
    frame = load.validation.reconciliation.copy()
    frame["file_format"] = frame["source_file"].map(formats)
    frame["content"] = [
        CONTENT_DEALS if name in deal_files else CONTENT_LOOKUP if formats.get(name) in LOOKUP_FORMATS else CONTENT_HISTORY
        for name in frame["source_file"]
    ]
    frame["run_id"] = run_id
    return table_frame("reconciliation", frame)
