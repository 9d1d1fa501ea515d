"""How an asset learns which as_of its run is for: the run's partition key (`assets.partitions`), the
same for every asset of the run."""


import dagster as dg

from assets.partitions import as_of_for
from assets.resources import DealcastSettings
from etl.config import Settings


def run_settings(context: dg.AssetExecutionContext, settings: DealcastSettings) -> Settings:
    """The run's settings (exports folder, project config) for the run's night, its partition key:
    one run describes one day however long it runs."""
    return settings.resolve(as_of_for(context))
