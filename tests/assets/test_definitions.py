"""The Dagster entry point loads, every asset is documented and grouped, and the nightly schedule and the exports sensor run the whole graph."""

import datetime as dt

import dagster as dg

from assets.definitions import defs
from assets.partitions import NIGHTS


def _graph():
    return defs.resolve_asset_graph()


def test_every_asset_has_a_group_and_a_description():
    graph = _graph()
    keys = list(graph.get_all_asset_keys())
    assert len(keys) >= 14
    for key in keys:
        node = graph.get(key)
        assert node.group_name and node.group_name != "default", f"{key.to_user_string()} has no group"
        assert node.description and len(node.description) > 20, f"{key.to_user_string()} has no description"


def test_the_contract_tables_are_assets():
    names = {k.to_user_string() for k in _graph().get_all_asset_keys()}
    for table in ["deals", "stage_events", "quarantine", "data_quality_results", "stage_conversion", "stage_durations",
                  "velocity", "deal_scores", "forecast_quarterly", "model_runs"]:
        assert table in names


def test_blocking_checks_guard_what_downstream_reads():
    graph = _graph()
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    named = {"deals_not_empty", "volume_not_collapsed", "reconciliation_balanced", "quarantine_share_within_limit",
             "stage_events_consistent"}
    assert {("deals", name) for name in named} <= checks and ("stage_events", "stage_events_consistent") in checks
    assert {("deal_scoring_model", "model_beats_baseline"), ("forecast_quarterly", "forecast_ordered")} <= checks
    # The blocking checks sit on `deals`: that stops the whole night only because every asset built on the
    # ingest tables is built on `deals` too (directly or through another asset).
    ingest_tables = {"deals", "deal_history", "stage_events", "pipeline_stages"}

    def ancestors(key) -> set[str]:
        seen, todo = set(), list(graph.get(key).parent_keys)
        while todo:
            parent = todo.pop()
            if parent.to_user_string() not in seen:
                seen.add(parent.to_user_string())
                todo.extend(graph.get(parent).parent_keys)
        return seen

    for key in graph.get_all_asset_keys():
        above = ancestors(key)
        if above & ingest_tables:
            assert "deals" in above, f"{key.to_user_string()} is built on an ingest table but not on deals"


def test_nightly_schedule_runs_the_partitioned_job_for_the_night_it_falls_in():
    schedule = defs.resolve_schedule_def("nightly_pipeline")
    assert schedule.cron_schedule == "0 2 * * *"
    assert schedule.execution_timezone == "UTC"
    job = defs.resolve_job_def(schedule.job_name)
    assert set(job.asset_layer.selected_asset_keys) == set(_graph().get_all_asset_keys())
    assert job.partitions_def == NIGHTS

    when = dt.datetime(2026, 11, 24, 2, 0, tzinfo=dt.timezone.utc)
    with dg.build_schedule_context(scheduled_execution_time=when) as context:
        (request,) = schedule.evaluate_tick(context).run_requests
    assert request.partition_key == "2026-11-24"
    assert request.run_key == "2026-11-24"  # the schedule starts a night once
    assert request.tags["dagster/partition"] == "2026-11-24"
    assert not request.run_config  # the date is the partition, not run config


def test_every_asset_is_partitioned_by_night_from_the_first_night_to_today():
    graph = _graph()
    for key in graph.get_all_asset_keys():
        assert graph.get(key).partitions_def == NIGHTS, f"{key.to_user_string()} is not partitioned by night"
    assert NIGHTS.start.date() == dt.date(2015, 1, 1)  # dealcast.toml [schedule] first_night
    with dg.partition_loading_context(effective_dt=dt.datetime(2026, 11, 24, 0, 5, tzinfo=dt.timezone.utc)):
        keys = NIGHTS.get_partition_keys()
    assert keys[0] == "2015-01-01" and keys[-1] == "2026-11-24"  # end_offset=1: today is a night
    # 2015-01-01 .. 2026-11-24: 12 years of 365 days, 3 leap days (2016, 2020, 2024), minus the 37
    # days from 24 Nov to 31 Dec 2026 (inclusive of 25 Nov .. 31 Dec).
    assert len(keys) == 12 * 365 + 3 - 37


def test_new_exports_sensor_targets_the_whole_graph_and_starts_stopped():
    sensor = defs.resolve_sensor_def("new_exports_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert sensor.minimum_interval_seconds == 60
    assert sensor.description
    job = defs.resolve_job_def(sensor.job_name)
    assert set(job.asset_layer.selected_asset_keys) == set(_graph().get_all_asset_keys())
