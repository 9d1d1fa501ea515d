"""Publishing one table of a night: write the asset's frame to the warehouse table of the same name for the
run's as_of (atomic, fenced by the run's claim: `WarehouseResource.publish`), and describe it in the
asset's metadata: the rows written and a Markdown preview of each named view of the frame."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import dagster as dg
import pandas as pd

from assets.resources import WarehouseResource
from etl.charts import markdown_table

PREVIEW_ROWS = 20


def publish_table(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    as_of: dt.date,
    table: str,
    frame: pd.DataFrame,
    *,
    previews: Mapping[str, pd.DataFrame] | None = None,
    metadata: Mapping[str, object] | None = None,
    keep: bool = False,
) -> dg.Output | dg.MaterializeResult:
    """Write `frame` as `table`'s rows for `as_of` and return the asset's result: `dagster/row_count` (the
    rows written), one Markdown table per entry of `previews` (at most PREVIEW_ROWS rows each), then
    `metadata`. `keep`: a later step reads the frame (an `Output`, kept in the intermediate-data store);
    otherwise a `MaterializeResult`, the rows being read from the warehouse only."""
    written = warehouse.publish(context, as_of, table, frame)
    described: dict[str, object] = {"dagster/row_count": written}
    for name, preview in (previews or {}).items():
        described[name] = dg.MetadataValue.md(markdown_table(preview, max_rows=PREVIEW_ROWS))
    described.update(metadata or {})
    return dg.Output(frame, metadata=described) if keep else dg.MaterializeResult(metadata=described)
