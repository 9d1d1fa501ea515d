"""Typed Dagster resources: run settings (exports folder, config file) and the warehouse."""


import datetime as dt
import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import dagster as dg
import pandas as pd
from dagster import DagsterRunStatus
from pydantic import Field, PrivateAttr

from etl.config import Settings, default_warehouse_url, resolve_settings
from etl.warehouse import DEFAULT_LEASE_SECONDS, ClaimRefusedError, Warehouse, WarehouseError

log = logging.getLogger(__name__)

_RUNNING = {
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
}


class DealcastSettings(dg.ConfigurableResource):
    """Where the CRM exports are and which project config file to use (the date a run describes is its
    partition key, see `assets.partitions`).

    Unset fields fall back to DEALCAST_EXPORTS_DIR and DEALCAST_CONFIG, then to the project's
    `sample_exports/` folder (which `make demo` fills with the sample CRM) and its dealcast.toml.
    """

    exports_dir: str | None = Field(default=None, description="Folder holding the CRM export files.")
    config_file: str | None = Field(default=None, description="Path of the dealcast.toml to use.")

    def resolve(self, as_of: dt.date | None = None) -> Settings:
        """The settings for the night `as_of`; a run passes its partition key (`assets.runs.run_settings`).
        Without it (the sensor, which only needs the folder) as_of is DEALCAST_AS_OF or today (UTC)."""
        return resolve_settings(self.exports_dir, as_of, self.config_file)


class WarehouseResource(dg.ConfigurableResource):
    """The SQL warehouse (any SQLAlchemy URL). Unset, the URL comes from DEALCAST_WAREHOUSE_URL, else the
    embedded SQLite file in the project's warehouse/ folder. The password never reaches logs or metadata."""

    url: str | None = Field(default=None, description="SQLAlchemy URL; prefer DEALCAST_WAREHOUSE_URL for secrets.")
    schema_name: str = Field(default="dealcast", description="Schema for the tables on PostgreSQL.")
    lease_seconds: float = Field(
        default=DEFAULT_LEASE_SECONDS,
        description="How long a run's claim on its as_of stays live without a write or heartbeat; a killed "
        "run's as_of can be written by another run after this (or at once after `dealcast release`).",
    )

    _warehouse: Warehouse | None = PrivateAttr(default=None)
    _heartbeat: "_Heartbeat | None" = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._warehouse = Warehouse(self.url or default_warehouse_url(), schema=self.schema_name)
        self._warehouse.create_all()
        run = getattr(context, "run", None)
        run_id = run.run_id if run is not None else None
        if run_id:
            self._heartbeat = _Heartbeat(self._warehouse, run_id, self.lease_seconds / 4)
            self._heartbeat.start()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self._warehouse is not None:
            self._warehouse.dispose()

    @property
    def warehouse(self) -> Warehouse:
        if self._warehouse is None:  # used outside a run (tests, CLI)
            self.setup_for_execution(dg.build_init_resource_context())
        assert self._warehouse is not None
        return self._warehouse

    @contextmanager
    def for_run(self, context: dg.AssetExecutionContext, as_of: dt.date) -> Iterator["RunWriter"]:
        """A writer that owns `as_of` for this run. The claim lives in the warehouse with a lease,
        so runs of two Dagster instances on one warehouse are fenced too: while another run holds a
        live claim, this run fails with a message naming it. A holder this instance knows to have
        finished is taken over at once; any other holder only once its lease lapsed or it was
        released (`dealcast release --as-of`)."""
        warehouse = self.warehouse
        run_id = context.run.run_id
        holder = warehouse.claim_of(as_of)
        finished = None
        if holder is not None and holder.run_id != run_id:
            other = context.instance.get_run_by_id(holder.run_id)
            if other is not None and other.status not in _RUNNING:
                finished = holder.run_id
        try:
            warehouse.claim(as_of, run_id, lease_seconds=self.lease_seconds, supersede=finished)
        except ClaimRefusedError as exc:
            raise dg.Failure(description=str(exc)) from None
        context.log.info(f"writing as_of {as_of} to {warehouse.safe_url}")
        yield RunWriter(warehouse, as_of, run_id)

    def publish(
        self, context: dg.AssetExecutionContext, as_of: dt.date, frames: Mapping[str, pd.DataFrame]
    ) -> dict[str, int]:
        """Write each table's rows of `frames` for `as_of` as this run (see `for_run`), in one transaction;
        returns the rows written per table."""
        with self.for_run(context, as_of) as writer:
            return writer.write_many(frames)


class _Heartbeat:
    """Renews a run's claims every `interval` seconds while its step runs, so only a dead run's
    claim lapses. A failed renewal is logged and tried again; the writes stay fenced regardless."""

    def __init__(self, warehouse: Warehouse, run_id: str, interval: float) -> None:
        self._warehouse = warehouse
        self._run_id = run_id
        self._interval = max(interval, 0.5)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"dealcast-heartbeat-{run_id[:8]}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=30)

    def _beat(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self._warehouse.heartbeat(self._run_id)
            except WarehouseError as exc:
                log.warning("renewing the claims of run %s failed: %s", self._run_id, exc)


class RunWriter:
    """Writes one run's tables for its as_of (atomic per call, fenced by the run's claim)."""

    def __init__(self, warehouse: Warehouse, as_of: dt.date, run_id: str) -> None:
        self.warehouse = warehouse
        self.as_of = as_of
        self.run_id = run_id

    def write_many(self, frames: dict[str, pd.DataFrame]) -> dict[str, int]:
        return self.warehouse.write_many(frames, as_of=self.as_of, run_id=self.run_id)
