"""`publish_table` in a real (tiny) asset materialised with `dg.materialize`: the frame lands in the
warehouse for the run's night, with the tables written together with it or not at all, and the
metadata counts the rows written, previews each view and carries the asset's check results."""

import dagster as dg
import pandas as pd

from assets.partitions import NIGHTS
from assets.publishing import publish_table
from assets.resources import WarehouseResource
from etl.warehouse import Warehouse

NIGHT = "2026-11-15"
FILES = pd.DataFrame(
    {
        "source_file": ["Opportunity.csv", "OpportunityHistory.csv"],
        "file_format": ["salesforce_opportunity", "salesforce_history"],
        "content": ["deals", "history"],
        "rows_read": [10, 25],
        "accepted": [9, 25],
        "quarantined": [1, 0],
        "excluded": [0, 0],
        "balanced": [True, True],
    }
)
# The one row of Opportunity.csv that FILES counts as quarantined.
QUARANTINED = pd.DataFrame(
    {
        "source_file": ["Opportunity.csv"],
        "source_row": [7],
        "reason_code": ["missing_id"],
        "reason": ["Id is empty"],
        "column": ["Id"],
        "raw_record": ['{"Id": ""}'],
        "quarantined_at": [pd.Timestamp("2026-11-16 01:00")],
    }
)
CHECK = dg.AssetCheckSpec("files_balanced", asset="reconciliation", blocking=False)


def _materialize(tmp_path, keep: bool = False, together=None, check: bool = False):
    @dg.asset(partitions_def=NIGHTS, name="reconciliation", check_specs=[CHECK] if check else None)
    def reconciliation_probe(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
        run_id = context.run.run_id
        frame = FILES.assign(run_id=run_id)
        return publish_table(
            context, warehouse, pd.Timestamp(NIGHT).date(), "reconciliation", frame, keep=keep,
            together={name: rows.assign(run_id=run_id) for name, rows in (together or {}).items()},
            previews={"deal_files": frame[frame["content"] == "deals"][["source_file", "rows_read"]]},
            metadata={"files": 2},
            check_results=[dg.AssetCheckResult(check_name=CHECK.name, passed=bool(frame["balanced"].all()))] if check else (),
        )  # fmt: skip

    url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    result = dg.materialize(
        [reconciliation_probe], partition_key=NIGHT, resources={"warehouse": WarehouseResource(url=url)},
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False,
    )  # fmt: skip
    return result, url


def _read(url: str, table: str) -> pd.DataFrame:
    warehouse = Warehouse(url)
    try:
        return warehouse.read(table, as_of=pd.Timestamp(NIGHT).date())
    finally:
        warehouse.dispose()


def _failure(result) -> str:
    """The one failed step's error, with the exception that caused it."""
    (failure,) = result.get_step_failure_events()
    return failure.event_specific_data.error.to_string()


def test_the_frame_is_written_for_the_night_and_described(tmp_path):
    result, url = _materialize(tmp_path)
    assert result.success
    (materialization,) = result.asset_materializations_for_node("reconciliation")
    metadata = materialization.metadata
    assert metadata["dagster/row_count"].value == 2 and metadata["files"].value == 2
    preview = metadata["deal_files"].value
    assert "Opportunity.csv" in preview and "OpportunityHistory.csv" not in preview
    written = _read(url, "reconciliation")
    assert list(written["source_file"]) == ["Opportunity.csv", "OpportunityHistory.csv"]
    assert list(written["rows_read"]) == [10, 25] and (written["run_id"] == result.run_id).all()


def test_a_kept_frame_is_the_assets_output(tmp_path):
    result, _ = _materialize(tmp_path, keep=True)
    kept = result.output_for_node("reconciliation")
    assert list(kept["source_file"]) == ["Opportunity.csv", "OpportunityHistory.csv"]


def test_tables_written_together_land_with_the_frame_and_are_counted(tmp_path):
    result, url = _materialize(tmp_path, together={"quarantine": QUARANTINED})
    assert result.success
    (materialization,) = result.asset_materializations_for_node("reconciliation")
    assert materialization.metadata["dagster/row_count"].value == 2
    assert materialization.metadata["quarantine_rows"].value == 1
    quarantined = _read(url, "quarantine")
    assert list(zip(quarantined["source_file"], quarantined["source_row"])) == [("Opportunity.csv", 7)]
    # The files' quarantined counts and the quarantine rows of the night agree.
    assert _read(url, "reconciliation")["quarantined"].sum() == len(quarantined)


def test_a_table_that_cannot_be_written_leaves_the_frame_unwritten_too(tmp_path):
    # The quarantine rows lack their required reason: neither table gets a row for the night.
    result, url = _materialize(tmp_path, together={"quarantine": QUARANTINED.drop(columns="reason")})
    assert not result.success
    assert "table quarantine: the frame's columns do not match the table: missing ['reason']" in _failure(result)
    assert _read(url, "reconciliation").empty and _read(url, "quarantine").empty


def test_check_results_come_with_the_materialization(tmp_path):
    result, _ = _materialize(tmp_path, check=True)
    assert result.success
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.check_name == "files_balanced" and evaluation.passed


def test_a_kept_frame_does_not_take_check_results(tmp_path):
    result, _ = _materialize(tmp_path, keep=True, check=True)
    assert not result.success
    assert "reconciliation: a kept frame's asset reports its check results itself" in _failure(result)
