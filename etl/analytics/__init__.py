"""Pipeline analytics: the warehouse tables BI tools read about the pipeline, its people and its health.

`kernel` holds what every table shares (the deals as they stood at the end of as_of, built once
from `etl.pipeline_state`, frames shaped as the warehouse contract, percentiles, ratios, period
calendars); `funnel`, `velocity`, `coaching` and `health` each compute a few tables from the
kernel's public names only. docs/architecture.md shows how a table is added.
"""
