"""The project's Definitions (`assets.definitions.defs`) with each run's steps executed in the run's
own process (Dagster's in-process executor): the code location of the backfill test. Everything else,
the assets, the nights, `nightly_job`, the schedule, the sensor and the resources, is the project's own.
The executor only changes how a run's steps are started; a process per step would make a three-night
backfill on a busy 2-core machine take half an hour instead of minutes."""

import dagster as dg

import assets.definitions


def _in_one_process(project: dg.Definitions) -> dg.Definitions:
    return dg.Definitions(
        assets=project.assets,
        asset_checks=project.asset_checks,
        jobs=project.jobs,
        schedules=project.schedules,
        sensors=project.sensors,
        resources=project.resources,
        loggers=project.loggers,
        executor=dg.in_process_executor,
    )


defs = _in_one_process(assets.definitions.defs)
