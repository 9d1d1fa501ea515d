"""Nights as Dagster partitions: every asset of the graph is partitioned by day, and a run's as_of is
its partition key (YYYY-MM-DD), nothing else.

The partitions are days in the schedule's timezone (`dealcast.toml` [schedule] `timezone`), from
[schedule] `first_night` to today: `end_offset=1` makes the day in progress a partition, so the night
that runs at 02:00 describes the day it runs on, as a run before midnight would. Both settings are read
when the definitions load (from `DEALCAST_CONFIG` or the project's `dealcast.toml`), like the schedule.

docs/partitions.md explains the choices: why the current-state tables are partitioned too, how one
run per night is enforced, and how to backfill.
"""

import datetime as dt
import os

import dagster as dg

from etl.config import ENV_AS_OF, ConfigError, ProjectConfig, load_project_config

NIGHT_JOB_NAME = "nightly_job"


def night_partitions(project: ProjectConfig) -> dg.DailyPartitionsDefinition:
    """One partition per night, from [schedule] first_night to today (in the schedule's timezone)."""
    return dg.DailyPartitionsDefinition(
        start_date=project.first_night.isoformat(), timezone=project.schedule_timezone, end_offset=1
    )


NIGHTS = night_partitions(load_project_config())


def tonight(now: dt.datetime, partitions: dg.DailyPartitionsDefinition = NIGHTS) -> str:
    """The partition key of the night that `now` falls in (the day of `now` in the partitions' timezone)."""
    with dg.partition_loading_context(effective_dt=now):
        key = partitions.get_last_partition_key()
    if key is None:
        raise ConfigError(f"no night on or before {now:%Y-%m-%d %H:%M %Z}: [schedule] first_night is later")
    return key


def as_of_for(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> dt.date:
    """The run's as_of: its partition key, the one source of the date a run describes.

    `DEALCAST_AS_OF` does not choose the date of a Dagster run; set in the run's environment it must name
    the same day as the partition, otherwise the run stops rather than leave two dates in doubt.
    """
    if not context.has_partition_key:
        raise dg.Failure(
            description=(
                "this run has no night (partition key): materialise the assets for one night, e.g. "
                "`dagster asset materialize -m assets.definitions --select '*' --partition 2026-11-24`, "
                "or launch the night from the UI or `dagster job backfill`"
            )
        )
    key = context.partition_key
    try:
        as_of = dt.date.fromisoformat(key)
    except ValueError:
        raise dg.Failure(description=f"partition key {key!r} is not a night (YYYY-MM-DD)") from None
    from_env = os.environ.get(ENV_AS_OF)
    if from_env and from_env.strip() != as_of.isoformat():
        raise dg.Failure(
            description=(
                f"{ENV_AS_OF}={from_env} but this run is the night of {as_of} (its partition key): a Dagster run "
                f"describes its partition's day. Unset {ENV_AS_OF}, or run the night {from_env.strip()} "
                f"(--partition {from_env.strip()})."
            )
        )
    return as_of


def command_line_night(now: dt.datetime, partitions: dg.DailyPartitionsDefinition = NIGHTS) -> str:
    """The night a command-line run is for: `DEALCAST_AS_OF` when set (it must be a night: a day from
    [schedule] first_night to today), else tonight. `make demo` passes it as `--partition`."""
    text = os.environ.get(ENV_AS_OF, "").strip()
    if not text:
        return tonight(now, partitions)
    with dg.partition_loading_context(effective_dt=now):
        if partitions.has_partition_key(text):
            return text
        first, last = partitions.get_first_partition_key(), partitions.get_last_partition_key()
    raise ConfigError(
        f"{ENV_AS_OF}={text} is not a night: nights are days written YYYY-MM-DD from {first} "
        f"([schedule] first_night) to {last} (today, {partitions.timezone})"
    )


if __name__ == "__main__":  # `python -m assets.partitions`: the night to pass as --partition
    import sys

    try:
        print(command_line_night(dt.datetime.now(dt.timezone.utc)))
    except ConfigError as exc:
        print(f"dealcast: {exc}", file=sys.stderr)
        sys.exit(2)
