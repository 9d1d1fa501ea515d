"""A backfill of three nights through a real Dagster instance, the way a data engineer runs one: the
documented `dagster job backfill` command queues one run per night, the daemon starts them under the
shipped dagster_home/dagster.yaml limits, each in its own process, and each run describes its own night.

The expected nights, and which deals each night may score, come straight from Opportunity.csv.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from sample_crm.generate import generate_sample
from etl.warehouse import Warehouse

from .conftest import ROOT, project_config

pytestmark = pytest.mark.slow

EXPORT_END = dt.date(2026, 11, 15)
NIGHTS = [dt.date(2026, 11, 9), dt.date(2026, 11, 10), dt.date(2026, 11, 11)]
DEFINITIONS = "assets.definitions"
BACKFILL_CAP = 2  # dagster_home/dagster.yaml: runs tagged dagster/backfill, at most 2 at once
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def _open_deals_created_on(exports: Path, days: list[dt.date]) -> dict[str, dt.date]:
    """Deals the export shows open today, created on one of `days`: deal id -> creation day."""
    created = {}
    with open(exports / "Opportunity.csv", newline="", encoding="utf-8-sig") as handle:
        for row in csv.DictReader(handle):
            day = dt.date.fromisoformat(row["CreatedDate"][:10])
            if row["IsClosed"] == "0" and row["IsDeleted"] == "0" and day in days:
                created[row["Id"]] = day
    return created


def _most_at_once(records) -> int:
    """The largest number of runs that were executing at the same moment."""
    edges = sorted([(r.start_time, 1) for r in records] + [(r.end_time, -1) for r in records], key=lambda e: (e[0], e[1]))
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def _wait_for_runs(instance: dg.DagsterInstance, daemon: subprocess.Popen, count: int, limit: float, log: Path) -> list:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        records = instance.get_run_records()
        if len(records) == count and all(r.dagster_run.status in FINISHED for r in records):
            return records
        if daemon.poll() is not None:
            raise AssertionError(f"the daemon stopped (exit {daemon.returncode}): {log.read_text()[-3000:]}")
        time.sleep(2)
    statuses = [(r.dagster_run.tags.get("dagster/partition"), r.dagster_run.status) for r in instance.get_run_records()]
    raise AssertionError(f"the backfill's runs did not finish within {limit:.0f} s: {statuses}; {log.read_text()[-3000:]}")


def test_a_backfill_of_three_nights_publishes_each_night_for_its_own_day(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    exports = tmp_path / "exports"
    generate_sample(exports, n_deals=400, seed=3, end_date=EXPORT_END)
    created = _open_deals_created_on(exports, NIGHTS)
    # The nights differ: deals created on the later nights exist only from their creation day on.
    assert {day for day in created.values()} - {NIGHTS[0]}, "the sample has no open deal created on a later night"

    url = f"sqlite:///{tmp_path / 'warehouse.sqlite'}"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DEALCAST_EXPORTS_DIR": str(exports),
        "DEALCAST_CONFIG": str(project_config(tmp_path)),
        "DEALCAST_WAREHOUSE_URL": url,
        "DEALCAST_MODEL_DIR": str(tmp_path / "models"),
        "DEALCAST_STORE_URL": str(tmp_path / "store"),
        # Each run's steps in the run's own process: a process per step would make three nights on a
        # busy 2-core machine take half an hour; the executor is not what this test is about.
        "DEALCAST_EXECUTOR": "in_process",
    }
    env.pop("DEALCAST_AS_OF", None)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    bin_dir = Path(sys.executable).parent

    # The documented command: it queues one run per night and returns.
    backfill = subprocess.run(
        [str(bin_dir / "dagster"), "job", "backfill", "-m", DEFINITIONS, "-j", "nightly_job",
         "--from", NIGHTS[0].isoformat(), "--to", NIGHTS[-1].isoformat(), "--noprompt"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert backfill.returncode == 0, backfill.stdout[-2000:] + backfill.stderr[-3000:]
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        queued = instance.get_run_records()
        assert sorted(r.dagster_run.tags["dagster/partition"] for r in queued) == [n.isoformat() for n in NIGHTS]
        assert {r.dagster_run.status for r in queued} == {dg.DagsterRunStatus.QUEUED}
        assert len({r.dagster_run.tags["dagster/backfill"] for r in queued}) == 1

        # The daemon and the runs it starts log a lot: to a file, never to a pipe nobody reads (a full
        # pipe would stop every run at its next log line).
        log = tmp_path / "daemon.log"
        with open(log, "w", encoding="utf-8") as out:
            daemon = subprocess.Popen(
                [str(bin_dir / "dagster-daemon"), "run", "-m", DEFINITIONS],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            records = _wait_for_runs(instance, daemon, len(NIGHTS), limit=900, log=log)
        finally:
            os.killpg(daemon.pid, signal.SIGTERM)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait()
        failed = [r.dagster_run.tags["dagster/partition"] for r in records if r.dagster_run.status != dg.DagsterRunStatus.SUCCESS]
        assert not failed, f"nights {failed} failed"
        assert _most_at_once(records) <= BACKFILL_CAP
        # Status per night, as the UI shows it: every asset materialised for exactly these nights.
        nights = {n.isoformat() for n in NIGHTS}
        for key in ("crm_exports", "deals", "deal_scores", "forecast_quarterly", "published_night"):
            assert instance.get_materialized_partitions(dg.AssetKey(key)) == nights, key
    finally:
        instance.dispose()

    warehouse = Warehouse(url)
    try:
        with warehouse.engine.connect() as conn:
            published = pd.read_sql("SELECT as_of FROM published_nights", conn)
        assert sorted(pd.to_datetime(published["as_of"]).dt.date) == NIGHTS
        assert warehouse.published_as_of() == NIGHTS[-1]
        # The current-state tables show the newest night, whichever night's run finished last.
        assert set(pd.to_datetime(warehouse.read("deals")["as_of"]).dt.date) == {NIGHTS[-1]}
        for night in NIGHTS:
            recon = warehouse.read("reconciliation", as_of=night)
            assert len(recon) and (recon["rows_read"] == recon["accepted"] + recon["quarantined"]).all()
            scored = set(warehouse.read("deal_scores", as_of=night)["deal_id"])
            for deal_id, day in created.items():
                assert (deal_id in scored) == (day <= night), f"night {night}: deal {deal_id} created {day}"
    finally:
        warehouse.dispose()
