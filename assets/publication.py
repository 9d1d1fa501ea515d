"""The published-night manifest: the last asset of a night, after every other asset of the graph.

It checks in one warehouse transaction that every table of the night was written for the run's
as_of, records the night in `published_nights` and releases the run's claim. The `latest_*` views
show the newest published night, so a night's tables become visible together, and a night killed
or stopped half-way (a failed blocking check, a crash) leaves them on the previous complete night.

Its dependencies are every asset it is built with (`published_night_asset(ALL_ASSETS)`), so an
asset added to the graph is waited for without editing this module; the tables it requires are
the warehouse tables named like those assets (each table-writing asset writes the table of its own
name; `reconciliation` is written in the same transaction as `deals`).
"""


from collections.abc import Sequence

import dagster as dg
import pandas as pd

from assets.partitions import NIGHTS
from assets.resources import DealcastSettings, WarehouseResource
from assets.runs import run_settings
from etl.charts import markdown_table
from etl.warehouse import WarehouseError, night_tables


def published_night_asset(upstream: Sequence[dg.AssetsDefinition]) -> dg.AssetsDefinition:
    """The `published_night` asset, depending on every asset of `upstream`."""
    keys = sorted({key for assets in upstream for key in assets.keys}, key=lambda k: k.to_user_string())
    # The night's tables are those its assets write (an asset writes the table of its own name).
    required = [name for name in night_tables() if dg.AssetKey(name) in keys]

    @dg.asset(partitions_def=NIGHTS, group_name="publication", deps=keys, kinds={"sql"})
    def published_night(
        context: dg.AssetExecutionContext, settings: DealcastSettings, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        """The night's manifest row: every table of the run's as_of written, then visible in the latest_* views together."""
        resolved = run_settings(context, settings)
        with warehouse.for_run(context, resolved.as_of):
            try:
                written = warehouse.warehouse.publish_night(resolved.as_of, context.run.run_id, required)
            except WarehouseError as exc:
                raise dg.Failure(description=str(exc)) from None
        context.log.info(f"published the night of {resolved.as_of}: {len(written)} tables")
        summary = pd.DataFrame({"table": list(written), "rows": list(written.values())})
        return dg.MaterializeResult(
            metadata={
                "as_of": str(resolved.as_of),
                "tables": dg.MetadataValue.md(markdown_table(summary, max_rows=len(summary))),
                "dagster/row_count": 1,
            }
        )

    return published_night
