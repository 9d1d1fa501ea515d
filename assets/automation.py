"""The nightly job and its schedule: the whole asset graph for one night (partition) per run."""


import re

import dagster as dg

from assets.partitions import NIGHT_JOB_NAME, tonight
from etl.config import ConfigError, ProjectConfig, load_project_config

SCHEDULE_NAME = "nightly_pipeline"
_DAILY_CRON = re.compile(r"^\s*(\d{1,2})\s+(\d{1,2})\s+\*\s+\*\s+\*\s*$")

night_job = dg.define_asset_job(
    NIGHT_JOB_NAME,
    selection=dg.AssetSelection.all(),  # every asset is partitioned by NIGHTS, so the job is too
    description="Every asset for one night (a daily partition): ingest, validate, analyse, score, forecast, publish.",
)


def nightly_schedule(project: ProjectConfig | None = None):
    """The night job once a night at the time set in dealcast.toml [schedule] (default 02:00 UTC), for the
    night the tick falls in (the day it runs on, in the schedule's timezone).

    A daily cron (`M H * * *`) builds the schedule from the partitioned job; any other cron (e.g.
    weekdays only, `0 2 * * 1-5`) requests the same night's partition at its own ticks. Either way the
    run key is the night, so a night is started by the schedule at most once.
    """
    project = project or load_project_config()
    description = "Ingest, validate, analyse, score and forecast for the night the tick falls in (its partition)."
    daily = _DAILY_CRON.match(project.schedule_cron)
    if daily:
        minute, hour = int(daily.group(1)), int(daily.group(2))
        if minute > 59 or hour > 23:
            raise ConfigError(f"{project.path}: [schedule] cron {project.schedule_cron!r} names no time of day")
        return dg.build_schedule_from_partitioned_job(
            night_job, name=SCHEDULE_NAME, description=description, hour_of_day=hour, minute_of_hour=minute
        )

    @dg.schedule(
        name=SCHEDULE_NAME,
        cron_schedule=project.schedule_cron,
        execution_timezone=project.schedule_timezone,
        job=night_job,
        description=description,
    )
    def _nightly(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        key = tonight(context.scheduled_execution_time)
        return dg.RunRequest(run_key=key, partition_key=key)

    return _nightly
