"""The nightly schedule: the whole asset graph for the day's as_of."""


import dagster as dg

from assets.resources import AS_OF_TAG
from etl.config import load_project_config


def nightly_schedule() -> dg.ScheduleDefinition:
    """Every asset, once a night at the time set in dealcast.toml [schedule] (default 02:00 UTC)."""
    project = load_project_config()

    @dg.schedule(
        name="nightly_pipeline",
        cron_schedule=project.schedule_cron,
        execution_timezone=project.schedule_timezone,
        target=dg.AssetSelection.all(),
        description="Ingest, validate, analyse, score and forecast for the scheduled day (its as_of).",
    )
    def _nightly(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        as_of = context.scheduled_execution_time.date().isoformat()
        return dg.RunRequest(
            run_key=f"nightly-{as_of}",
            run_config={"resources": {"settings": {"config": {"as_of": as_of}}}},
            tags={AS_OF_TAG: as_of},
        )

    return _nightly
