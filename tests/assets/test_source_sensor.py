"""The exports sensor when the CRM is read from a warehouse schema: a run when a sync changed a
table (its latest `_fivetran_synced` or its row count), none while the tables stay as they were,
and a reason, without the password, when the source cannot be read."""

import datetime as dt
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

import assets.sensors as sensors
from assets.resources import DealcastSettings
from assets.sensors import exports_sensor
from etl.ingest.source_warehouse import ENV_SOURCE_URL
from tests.fivetran_kit import typed, write_tables

pytestmark = pytest.mark.postgres

NOW = dt.datetime(2026, 7, 1, 6, 0, tzinfo=dt.timezone.utc)
FIXTURE = Path(__file__).parents[1] / "fixtures" / "fivetran_salesforce"


@pytest.fixture
def config(tmp_path, monkeypatch, pg_url, pg_schema) -> Path:
    tables = {
        name: typed(pd.read_csv(FIXTURE / f"{name}.csv", dtype=str, keep_default_na=False))
        for name in ("opportunity", "opportunity_history")
    }
    write_tables(pg_url, pg_schema, tables)
    path = tmp_path / "dealcast.toml"
    path.write_text(f'[sources.warehouse]\nurl = "{pg_url}"\nschema = "{pg_schema}"\n', encoding="utf-8")
    monkeypatch.delenv(ENV_SOURCE_URL, raising=False)
    monkeypatch.delenv("DEALCAST_AS_OF", raising=False)
    monkeypatch.setattr(sensors, "_now", lambda: NOW)
    return path


def _tick(config: Path, cursor: str | None = None):
    sensor = exports_sensor(minimum_age_seconds=30)
    settings = DealcastSettings(config_file=str(config))
    with dg.build_sensor_context(cursor=cursor, resources={"settings": settings}) as context:
        return sensor(context)


def _execute(url: str, sql: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


def test_a_sync_that_changed_a_table_starts_a_run_and_an_unchanged_one_does_not(config, pg_url, pg_schema):
    first = _tick(config)
    assert isinstance(first, dg.SensorResult) and len(first.run_requests) == 1
    request = first.run_requests[0]
    assert request.partition_key == "2026-07-01"  # tonight: the night NOW falls in
    again = _tick(config, first.cursor)
    assert isinstance(again, dg.SkipReason) and "2 CRM table(s)" in again.skip_message and "unchanged" in again.skip_message
    _execute(pg_url, f"UPDATE \"{pg_schema}\".opportunity_history SET _fivetran_synced = '2026-07-01 02:00:00+00' WHERE id = 'H02'")
    synced = _tick(config, first.cursor)
    assert isinstance(synced, dg.SensorResult) and len(synced.run_requests) == 1
    assert synced.run_requests[0].run_key != request.run_key
    # A row removed from the table (a hard delete) changes the count even with no newer sync time.
    _execute(pg_url, f"DELETE FROM \"{pg_schema}\".opportunity WHERE id = '006E'")
    removed = _tick(config, synced.cursor)
    assert isinstance(removed, dg.SensorResult) and len(removed.run_requests) == 1


def test_an_unreadable_source_skips_with_its_reason_and_no_password(config, monkeypatch):
    monkeypatch.setenv(ENV_SOURCE_URL, "postgresql+psycopg://postgres:Hidden9@127.0.0.1:5432/no_such_db_dealcast")
    outcome = _tick(config)
    assert isinstance(outcome, dg.SkipReason)
    assert "the CRM source cannot be read" in outcome.skip_message and "Hidden9" not in outcome.skip_message
