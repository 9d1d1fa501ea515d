"""Publishing one table of a night: write the asset's frame to the warehouse table of the same name for the
run's as_of (atomic, fenced by the run's claim: `WarehouseResource.publish`), with any other tables the
asset writes in the same transaction, and describe it in the asset's metadata: the rows written and a
Markdown preview of each named view of the frame. Every asset that writes warehouse tables for its night
returns this function's result."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

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
    together: Mapping[str, pd.DataFrame] | None = None,
    previews: Mapping[str, pd.DataFrame] | None = None,
    metadata: Mapping[str, object] | None = None,
    check_results: Sequence[dg.AssetCheckResult] = (),
    keep: bool = False,
) -> dg.Output | dg.MaterializeResult:
    """Write `frame` as `table`'s rows for `as_of`, and each frame of `together` as the rows of the table it
    is keyed by, in one transaction (every table or none), and return the asset's result:
    `dagster/row_count` (the rows of `table` written), `<name>_rows` for each table of `together`, one
    Markdown table per entry of `previews` (at most PREVIEW_ROWS rows each), then `metadata`.
    `keep`: a later step reads the frame (an `Output`, kept in the intermediate-data store); otherwise a
    `MaterializeResult` carrying `check_results`, the rows being read from the warehouse only."""
    if keep and check_results:
        raise ValueError(f"{table}: a kept frame's asset reports its check results itself (yield them after the Output)")
    written = warehouse.publish(context, as_of, {table: frame, **(together or {})})
    described: dict[str, object] = {"dagster/row_count": written[table]}
    described.update({f"{name}_rows": written[name] for name in together or {}})
    for name, preview in (previews or {}).items():
        described[name] = dg.MetadataValue.md(markdown_table(preview, max_rows=PREVIEW_ROWS))
    described.update(metadata or {})
    if keep:
        return dg.Output(frame, metadata=described)
    return dg.MaterializeResult(metadata=described, check_results=list(check_results))
