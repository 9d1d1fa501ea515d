"""How an asset learns which as_of its run is for, consistently across every asset of the run."""


import datetime as dt
import os
from dataclasses import replace

import dagster as dg

from assets.resources import AS_OF_TAG, DealcastSettings
from etl.config import ENV_AS_OF, Settings, resolve_as_of


def run_settings(context: dg.AssetExecutionContext, settings: DealcastSettings) -> Settings:
    """The run's settings with its as_of fixed for the whole run.

    Order: the settings resource's `as_of` (run config, e.g. from the schedule), the run's
    `dealcast/as_of` tag, DEALCAST_AS_OF, else the UTC date the run was created, so a run that
    crosses midnight still describes one date.
    """
    resolved = settings.resolve()
    if settings.as_of or os.environ.get(ENV_AS_OF):
        return resolved
    tagged = context.run.tags.get(AS_OF_TAG)
    if tagged:
        return _with_as_of(resolved, resolve_as_of(tagged))
    record = context.instance.get_run_record_by_id(context.run.run_id)
    if record is not None and record.create_timestamp is not None:
        created = record.create_timestamp.astimezone(dt.timezone.utc).date()
        return _with_as_of(resolved, created)
    return resolved


def _with_as_of(settings: Settings, as_of: dt.date) -> Settings:
    return replace(settings, as_of=as_of)
