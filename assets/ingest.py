"""Ingest: CRM export files in, validated canonical deals and stage history out.

The blocking checks run before anything reaches the tables people read: when one fails, the
quarantine and data-quality results are still written (so the morning's diagnosis is in the
warehouse) but deals, history and stage events are not, and every downstream asset is skipped.
"""


from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import pandas as pd

from assets.checks import BLOCKING_CHECK_SPECS, blocking_check_results
from assets.execution import HEAVY_STEP_TAGS
from assets.partitions import NIGHTS
from assets.resources import DealcastSettings, WarehouseResource
from assets.runs import run_settings
from assets.store import encoded
from etl.ingest.crm_load import (
    CrmLoad,
    describe_exports,
    load_crm,
    previous_deal_count,
    quarantine_frame,
    reconciliation_frame,
    results_frame,
)
from etl.config import ConfigError, missing_exports_message
from etl.ingest.currency import ExchangeRatesError
from etl.ingest.readers import ExportFormatError
from etl.charts import markdown_table
from etl.ingest.source_warehouse import describe_source, warehouse_source

# Errors whose message already names the file (or setting) at fault and what was expected.
UNREADABLE_INPUT = (ExportFormatError, ExchangeRatesError, ConfigError, FileNotFoundError)


@dg.asset(partitions_def=NIGHTS, group_name="ingest", kinds={"csv", "python"})
def crm_exports(context: dg.AssetExecutionContext, settings: DealcastSettings) -> dg.Output[pd.DataFrame]:
    """The CRM export files in the exports folder, with their detected format and checksum, or the CRM's tables in the warehouse source ([sources.warehouse]) with their rows and latest sync."""
    resolved = run_settings(context, settings)
    try:
        source = warehouse_source(resolved.project)
        manifest = describe_source(source) if source is not None else None
    except UNREADABLE_INPUT as exc:
        raise dg.Failure(description=str(exc), metadata={"error": type(exc).__name__}) from exc
    if source is not None and manifest is not None:
        # The CRM is read from the warehouse it is in: its tables stand where the files would.
        return dg.Output(
            manifest,
            metadata={
                "source": source.safe_url,
                "schema": str(source.schema),
                "as_of": str(resolved.as_of),
                "files": dg.MetadataValue.md(markdown_table(manifest)),
                "dagster/row_count": len(manifest),
            },
        )
    manifest = describe_exports(resolved.exports_dir)
    if manifest.empty:
        raise dg.Failure(description=missing_exports_message(resolved.exports_dir, resolved.exports_are_sample))
    return dg.Output(
        manifest,
        metadata={
            "exports_dir": str(resolved.exports_dir),
            "as_of": str(resolved.as_of),
            "files": dg.MetadataValue.md(markdown_table(manifest)),
            "dagster/row_count": len(manifest),
        },
    )


@dg.multi_asset(
    partitions_def=NIGHTS,
    group_name="ingest",
    outs={
        "deals": dg.AssetOut(description="One row per accepted deal, normalised from the CRM exports.", kinds={"pandas", "sql"}),
        "deal_history": dg.AssetOut(description="Every recorded change of every accepted deal, with running stage-move and push counts.", kinds={"pandas", "sql"}),
        "stage_events": dg.AssetOut(description="One row per stay of a deal in a stage, with days in stage and backward moves.", kinds={"pandas", "sql"}),
        "pipeline_stages": dg.AssetOut(description="Each pipeline's stages in order, with won/lost stages and CRM default probabilities.", kinds={"pandas", "sql"}),
        "quarantine": dg.AssetOut(description="Input rows that were not accepted, each with its file, row, column and reason.", kinds={"pandas", "sql"}),
        "data_quality_results": dg.AssetOut(description="The outcome of every data-quality expectation and per-file reconciliation of this run.", kinds={"pandas", "sql"}),
    },
    check_specs=BLOCKING_CHECK_SPECS,
    op_tags=HEAVY_STEP_TAGS["ingest"],
)
def crm_tables(
    context: dg.AssetExecutionContext,
    settings: DealcastSettings,
    warehouse: WarehouseResource,
    crm_exports: pd.DataFrame,
):
    """Read, normalise and validate the CRM exports; publish them only when every blocking check passes."""
    resolved = run_settings(context, settings)
    run_id = context.run.run_id
    # The as_of is claimed before the exports are read: a run that fails while reading them leaves
    # its claim, so `dealcast summary` can say that the night's run did not finish.
    with warehouse.for_run(context, resolved.as_of) as writer:
        # The volume baseline is the previous published night's accepted deals: a night that was blocked
        # (or never finished) is no baseline. It is last night's published data, so it is read from the
        # warehouse, not taken as an asset input of this night's graph.
        previous_night = warehouse.warehouse.published_as_of(before=resolved.as_of)
        previous = (
            None if previous_night is None
            else previous_deal_count(warehouse.warehouse.read("reconciliation", as_of=previous_night), resolved.as_of)
        )  # fmt: skip
        try:
            load = load_crm(resolved, previous_deal_count=previous)
        except UNREADABLE_INPUT as exc:
            # An export, rates file or setting that cannot be used at all: its own message names the
            # file, the line and what was expected; the run fails with it, and writes no table.
            raise dg.Failure(description=str(exc), metadata={"error": type(exc).__name__}) from exc
        for note in load.ingest.notes:
            context.log.info(note)
        for warning in load.stage_order_warnings:
            context.log.warning(warning)
        diagnostics = {
            "quarantine": quarantine_frame(load, run_id),
            "data_quality_results": results_frame(load, run_id),
            "reconciliation": reconciliation_frame(load, run_id),
        }
        frames = _output_frames(load)
        if load.publishable:
            # The outputs' Parquet files are made on a thread while the warehouse is written: the
            # write spends most of its time in SQLite or the database server, without the GIL.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-encoding") as encoder:
                encoding = encoder.submit(encoded, frames)
                written = writer.write_many({**load.warehouse_frames(), **diagnostics})
            frames = encoding.result()
        else:
            written = writer.write_many(diagnostics)
            context.log.error(
                "blocking data-quality checks failed; deals, history and stage events were not written:\n"
                + markdown_table(load.validation.blocking_failures)
            )

    yield from _outputs(load, frames, written)
    yield from blocking_check_results(load.validation)


def _output_frames(load: CrmLoad) -> dict[str, pd.DataFrame]:
    """The frames later steps read from the store, by output name."""
    return {
        "deals": load.deals,
        "deal_history": load.history,
        "stage_events": load.events,
        "pipeline_stages": load.pipeline_stages,
    }


def _outputs(load: CrmLoad, frames: dict[str, pd.DataFrame], written: dict[str, int]):
    status = "published" if load.publishable else "NOT published: blocking checks failed"
    previews = {
        "deals": ["deal_id", "pipeline", "owner", "stage", "status", "amount_reporting", "created_at", "closed_at"],
        "deal_history": ["deal_id", "changed_at", "stage", "amount_reporting", "expected_close_date", "is_backward", "is_push"],
        "stage_events": ["deal_id", "stage", "entered_at", "exited_at", "days_in_stage", "is_backward"],
        "pipeline_stages": ["pipeline", "stage", "stage_order", "stage_status", "stage_probability"],
    }
    order_columns = ["pipeline", "order_source", "order_basis", "stage_moves", "backward_moves", "backward_share"]
    extra = {
        "deals": {"reader_notes": dg.MetadataValue.json(load.ingest.notes)},
        "pipeline_stages": {
            "stage_order": dg.MetadataValue.md(
                markdown_table(load.pipeline_stages.drop_duplicates("pipeline")[order_columns], floatfmt="{:.1%}")
            ),
            "stage_order_warnings": dg.MetadataValue.json(load.stage_order_warnings),
        }
    }
    for name, frame in frames.items():
        yield dg.Output(
            frame,
            output_name=name,
            metadata={
                "dagster/row_count": len(frame),
                "warehouse": status,
                "preview": dg.MetadataValue.md(markdown_table(frame[previews[name]], max_rows=10)),
                **extra.get(name, {}),
            },
        )
    outcome = load.validation
    by_reason = (
        outcome.quarantine.groupby("reason_code").size().rename("rows").reset_index()
        if not outcome.quarantine.empty
        else pd.DataFrame(columns=["reason_code", "rows"])
    )
    # The diagnostics are read from the warehouse, never by a later step: nothing is stored for them.
    yield dg.MaterializeResult(
        asset_key="quarantine",
        metadata={
            "dagster/row_count": len(outcome.quarantine),
            "rows_by_reason": dg.MetadataValue.md(markdown_table(by_reason)),
            "reconciliation": dg.MetadataValue.md(markdown_table(outcome.reconciliation)),
        },
    )
    yield dg.MaterializeResult(
        asset_key="data_quality_results",
        metadata={
            "dagster/row_count": written.get("data_quality_results", 0),
            "report": dg.MetadataValue.md(outcome.report_markdown()),
        },
    )
