"""Nights as partitions: a run's as_of is its partition key and nothing else; the nights follow the
schedule's timezone and [schedule] first_night; a non-daily cron still asks for the night it falls in."""

import datetime as dt
from dataclasses import replace
from pathlib import Path

import dagster as dg
import pytest

from assets.automation import night_job, nightly_schedule
from assets.definitions import ALL_ASSETS
from assets.partitions import as_of_for, command_line_night, night_partitions, tonight
from assets.resources import DealcastSettings, WarehouseResource
from assets.runs import run_settings
from etl.config import ConfigError, load_project_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_env_date(monkeypatch):
    monkeypatch.delenv("DEALCAST_AS_OF", raising=False)


def _config(tmp_path: Path, schedule: str) -> Path:
    text = (ROOT / "dealcast.toml").read_text(encoding="utf-8")
    shipped = '[schedule]\n# The nightly run of the whole asset graph (cron syntax, evaluated in `timezone`).\n'
    assert shipped in text
    start = text.index("[schedule]")
    end = text.index("\n[", start + 1)
    path = tmp_path / "dealcast.toml"
    path.write_text(text[:start] + "[schedule]\n" + schedule + "\n" + text[end:], encoding="utf-8")
    return path


def test_the_run_as_of_is_the_partition_key(tmp_path):
    settings = DealcastSettings(exports_dir=str(tmp_path))
    context = dg.build_asset_context(partition_key="2026-11-24")
    resolved = run_settings(context, settings)
    assert resolved.as_of == dt.date(2026, 11, 24)
    assert resolved.exports_dir == tmp_path.resolve()


def test_a_run_without_a_night_fails_saying_how_to_give_one():
    with pytest.raises(dg.Failure) as caught:
        as_of_for(dg.build_asset_context())
    assert "--partition" in caught.value.description


def test_dealcast_as_of_must_name_the_partition_night(monkeypatch):
    monkeypatch.setenv("DEALCAST_AS_OF", "2026-11-24")
    assert as_of_for(dg.build_asset_context(partition_key="2026-11-24")) == dt.date(2026, 11, 24)
    monkeypatch.setenv("DEALCAST_AS_OF", "2026-11-23")
    with pytest.raises(dg.Failure) as caught:
        as_of_for(dg.build_asset_context(partition_key="2026-11-24"))
    message = caught.value.description
    assert "DEALCAST_AS_OF=2026-11-23" in message and "night of 2026-11-24" in message
    assert "--partition 2026-11-23" in message


def test_nights_are_days_in_the_schedule_timezone(tmp_path):
    project = load_project_config(_config(tmp_path, 'cron = "0 2 * * *"\ntimezone = "America/Los_Angeles"\nfirst_night = "2026-01-01"'))
    nights = night_partitions(project)
    # 05:00 UTC on 25 Nov is 21:00 on 24 Nov in Los Angeles (UTC-8 in November).
    assert tonight(dt.datetime(2026, 11, 25, 5, 0, tzinfo=dt.timezone.utc), nights) == "2026-11-24"
    assert tonight(dt.datetime(2026, 11, 25, 8, 0, tzinfo=dt.timezone.utc), nights) == "2026-11-25"
    with dg.partition_loading_context(effective_dt=dt.datetime(2026, 1, 10, 12, tzinfo=dt.timezone.utc)):
        assert nights.get_partition_keys()[0] == "2026-01-01"
        assert not nights.has_partition_key("2025-12-31")  # before first_night: no such night
    with pytest.raises(ConfigError, match="first_night is later"):
        tonight(dt.datetime(2025, 6, 1, tzinfo=dt.timezone.utc), nights)


def test_a_bad_first_night_or_timezone_names_the_setting(tmp_path):
    with pytest.raises(ConfigError, match=r"\[schedule\] first_night: expected a date as YYYY-MM-DD, got '1 May'"):
        load_project_config(_config(tmp_path, 'first_night = "1 May"'))
    with pytest.raises(ConfigError, match=r"\[schedule\] timezone must be an IANA timezone .* got 'Mars/Olympus'"):
        load_project_config(_config(tmp_path, 'timezone = "Mars/Olympus"'))


def _schedule_of(project) -> tuple[dg.ScheduleDefinition, dg.Definitions]:
    defs = dg.Definitions(
        assets=ALL_ASSETS, jobs=[night_job], schedules=[nightly_schedule(project)],
        resources={"settings": DealcastSettings(), "warehouse": WarehouseResource()},
    )
    return defs.resolve_schedule_def("nightly_pipeline"), defs


def test_a_weekday_cron_asks_for_the_night_each_tick_falls_in(tmp_path):
    project = load_project_config(_config(tmp_path, 'cron = "30 1 * * 1-5"\ntimezone = "UTC"'))
    schedule, defs = _schedule_of(project)
    assert schedule.cron_schedule == "30 1 * * 1-5"
    tuesday = dt.datetime(2026, 11, 24, 1, 30, tzinfo=dt.timezone.utc)
    with dg.build_schedule_context(scheduled_execution_time=tuesday, repository_def=defs.get_repository_def()) as context:
        (request,) = schedule.evaluate_tick(context).run_requests
    assert request.partition_key == "2026-11-24" and request.run_key == "2026-11-24"


def test_a_daily_cron_at_another_time_is_built_from_the_partitioned_job(tmp_path):
    project = load_project_config(_config(tmp_path, 'cron = "15 4 * * *"'))
    schedule, defs = _schedule_of(project)
    assert schedule.cron_schedule == "15 4 * * *"
    assert schedule.job_name == "nightly_job"
    at = dt.datetime(2026, 11, 24, 4, 15, tzinfo=dt.timezone.utc)
    with dg.build_schedule_context(scheduled_execution_time=at, repository_def=defs.get_repository_def()) as context:
        (request,) = schedule.evaluate_tick(context).run_requests
    assert request.partition_key == "2026-11-24"
    with pytest.raises(ConfigError, match="names no time of day"):
        nightly_schedule(replace(project, schedule_cron="75 4 * * *"))


def test_dealcast_as_of_maps_onto_a_night_for_the_command_line(monkeypatch):
    now = dt.datetime(2026, 11, 24, 9, 0, tzinfo=dt.timezone.utc)
    assert command_line_night(now) == "2026-11-24"  # unset: tonight
    monkeypatch.setenv("DEALCAST_AS_OF", "2026-11-20")
    assert command_line_night(now) == "2026-11-20"
    for text in ("2026-11-25", "2014-12-31", "24/11/2026"):  # tomorrow, before first_night, not a key
        monkeypatch.setenv("DEALCAST_AS_OF", text)
        with pytest.raises(ConfigError) as caught:
            command_line_night(now)
        assert f"DEALCAST_AS_OF={text} is not a night" in str(caught.value)
        assert "from 2015-01-01 ([schedule] first_night) to 2026-11-24 (today, UTC)" in str(caught.value)
