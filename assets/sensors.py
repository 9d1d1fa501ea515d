"""New exports trigger a run: a sensor on the exports folder that starts the whole asset graph for
tonight's partition (the night the tick falls in) when the export files change.

Each tick lists the folder (name, size, modification time). When that listing matches the cursor
nothing is read. Otherwise, once every file has been left alone for `minimum_age_seconds`, the files
are fingerprinted with `etl.ingest.crm_load.describe_exports` (which adds each file's sha256) and a run is
requested when the set of file names or any file's content differs from the fingerprint in the cursor.
A file that is only touched, or copied again with identical bytes, moves the cursor on without a run.

When the CRM is read from a warehouse (`[sources.warehouse]`), each tick instead counts each
table's rows and reads its latest `_fivetran_synced` (`etl.ingest.source_warehouse.fingerprint`), and a
run is requested when either changed since the cursor.

The run key is the hash of the fingerprint (names, sizes, modification times and sha256), so a tick
that is retried after a crash cannot start a second run for the same files, while a folder that
returns to an earlier content later (new modification times) still gets its run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import dagster as dg

from assets.automation import night_job
from assets.partitions import tonight
from assets.resources import DealcastSettings
from etl.config import ConfigError
from etl.ingest.crm_load import describe_exports
from etl.ingest.source_warehouse import SourceError, WarehouseSource, fingerprint, warehouse_source

logger = logging.getLogger(__name__)

SENSOR_NAME = "new_exports_sensor"
FINGERPRINT_TAG = "dealcast/exports_fingerprint"
DEFAULT_MINIMUM_AGE_SECONDS = 60.0
CURSOR_VERSION = 1

# (file name, size in bytes, modification time in ns) per file, in file-name order.
Listing = tuple[tuple[str, int, int], ...]


def _now() -> dt.datetime:
    """The tick's time (UTC): it gives the run's night (partition key) and the age of each file."""
    return dt.datetime.now(dt.timezone.utc)


def list_exports(exports_dir: Path) -> Listing:
    """Name, size and modification time (ns) of every file directly in the exports folder, by name;
    the same files `describe_exports` reads."""
    listing = []
    for path in sorted(p for p in exports_dir.iterdir() if p.is_file()):
        stat = path.stat()
        listing.append((path.name, int(stat.st_size), int(stat.st_mtime_ns)))
    return tuple(listing)


def fingerprint_hash(files: list[dict[str, Any]]) -> str:
    """The sha256 of a fingerprint's canonical JSON: the run key for that state of the folder."""
    text = json.dumps(files, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_cursor(cursor: str | None) -> list[dict[str, Any]] | None:
    """The fingerprint stored by the last tick that saw the folder, or None (first tick, or a cursor
    written by another version, which is then treated as a first tick)."""
    if not cursor:
        return None
    try:
        stored = json.loads(cursor)
    except json.JSONDecodeError:
        logger.warning("sensor cursor is not JSON (%.80s); treating this tick as the first one", cursor)
        return None
    if (
        not isinstance(stored, dict)
        or stored.get("version") != CURSOR_VERSION
        or not isinstance(stored.get("files"), list)
    ):
        logger.warning("sensor cursor has an unknown layout; treating this tick as the first one")
        return None
    return stored["files"]


def _write_cursor(files: list[dict[str, Any]]) -> str:
    return json.dumps({"version": CURSOR_VERSION, "files": files}, sort_keys=True, separators=(",", ":"))


def _listing_of(files: list[dict[str, Any]]) -> Listing:
    return tuple((str(f["file"]), int(f["bytes"]), int(f["mtime_ns"])) for f in files)


def _content_of(files: list[dict[str, Any]]) -> tuple[tuple[str, str], ...]:
    return tuple((str(f["file"]), str(f["sha256"])) for f in files)


def evaluate_exports(
    exports_dir: Path, cursor: str | None, now: dt.datetime, minimum_age_seconds: float
) -> dg.SkipReason | dg.SensorResult:
    """One tick of the sensor for `exports_dir`, as a skip (with the reason) or a run request."""
    if not exports_dir.is_dir():
        return dg.SkipReason(
            f"exports folder {exports_dir} does not exist "
            "(set DEALCAST_EXPORTS_DIR or the settings resource's exports_dir)"
        )
    listing = list_exports(exports_dir)
    if not listing:
        return dg.SkipReason(f"exports folder {exports_dir} is empty: no export files to ingest")

    previous = _read_cursor(cursor)
    if previous is not None and _listing_of(previous) == listing:
        return dg.SkipReason(f"the {len(listing)} export file(s) in {exports_dir} are unchanged since the last check")

    newest_name, _, newest_ns = max(listing, key=lambda item: item[2])
    age = now.timestamp() - newest_ns / 1e9
    if age < minimum_age_seconds:
        return dg.SkipReason(
            f"{newest_name} in {exports_dir} is still being written (modified {max(age, 0.0):.0f} s ago); "
            f"waiting until every file is at least {minimum_age_seconds:.0f} s old"
        )

    manifest = describe_exports(exports_dir)
    if list_exports(exports_dir) != listing:
        return dg.SkipReason(
            f"the files in {exports_dir} changed while they were being fingerprinted; looking again next tick"
        )
    hashes = dict(zip(manifest["file"], manifest["sha256"], strict=True))
    files = [
        {"file": name, "bytes": size, "mtime_ns": mtime_ns, "sha256": hashes[name]}
        for name, size, mtime_ns in listing
    ]
    new_cursor = _write_cursor(files)

    if previous is not None and _content_of(previous) == _content_of(files):
        return dg.SensorResult(
            skip_reason=f"the export files in {exports_dir} were touched but their content is unchanged; no new run",
            cursor=new_cursor,
        )

    key = fingerprint_hash(files)
    request = dg.RunRequest(run_key=key, partition_key=tonight(now), tags={FINGERPRINT_TAG: key})
    return dg.SensorResult(run_requests=[request], cursor=new_cursor)


def evaluate_source(source: WarehouseSource, cursor: str | None, now: dt.datetime) -> dg.SkipReason | dg.SensorResult:
    """One tick of the sensor for a CRM read from a warehouse (`[sources.warehouse]`): a run when any
    table's row count or latest sync (`_fivetran_synced`) differs from the cursor's, else a skip."""
    try:
        tables = fingerprint(source)
    except (SourceError, ConfigError) as exc:
        return dg.SkipReason(f"the CRM source cannot be read: {exc}")
    previous = _read_cursor(cursor)
    new_cursor = _write_cursor(tables)
    if previous is not None and previous == tables:
        return dg.SkipReason(
            f"the {len(tables)} CRM table(s) in {source.safe_url} schema {source.schema} are unchanged since the last check"
        )
    key = fingerprint_hash(tables)
    request = dg.RunRequest(run_key=key, partition_key=tonight(now), tags={FINGERPRINT_TAG: key})
    return dg.SensorResult(run_requests=[request], cursor=new_cursor)


def exports_sensor(
    minimum_age_seconds: float = DEFAULT_MINIMUM_AGE_SECONDS, name: str = SENSOR_NAME
) -> dg.SensorDefinition:
    """The sensor that runs every asset when the export files change (stopped until turned on in the UI).

    `minimum_age_seconds`: a run starts only once every file in the folder was last modified at least
    this long ago, so an export still being copied in does not start a run on half a file.
    """
    if minimum_age_seconds < 0:
        raise ValueError(f"exports sensor: minimum_age_seconds must be >= 0, got {minimum_age_seconds}")

    @dg.sensor(
        name=name,
        job=night_job,
        default_status=dg.DefaultSensorStatus.STOPPED,
        minimum_interval_seconds=60,
        description=(
            "Runs every asset for tonight's partition (today's as_of) when an export file is added, removed or its "
            "content changes in the exports folder, or when a sync changed the CRM's tables in the warehouse source; "
            f"waits until files are {minimum_age_seconds:.0f} s old so a copy in progress "
            "does not start a run."
        ),
    )
    def _new_exports(
        context: dg.SensorEvaluationContext, settings: DealcastSettings
    ) -> dg.SkipReason | dg.SensorResult:
        resolved = settings.resolve()
        source = warehouse_source(resolved.project)
        if source is not None:
            outcome = evaluate_source(source, context.cursor, _now())
            if isinstance(outcome, dg.SensorResult) and outcome.run_requests:
                context.log.info(f"CRM tables in {source.safe_url} changed: requesting run {outcome.run_requests[0].run_key}")
            return outcome
        exports_dir = resolved.exports_dir
        outcome = evaluate_exports(exports_dir, context.cursor, _now(), minimum_age_seconds)
        if isinstance(outcome, dg.SensorResult) and outcome.run_requests:
            context.log.info(f"export files in {exports_dir} changed: requesting run {outcome.run_requests[0].run_key}")
        return outcome

    return _new_exports
