"""`publish_table` in a real (tiny) asset materialised with `dg.materialize`: the frame lands in the
warehouse for the run's night, the metadata counts the rows written and previews each view."""

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


def _materialize(tmp_path, keep: bool):
    @dg.asset(partitions_def=NIGHTS, name="reconciliation")
    def reconciliation_probe(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
        frame = FILES.assign(run_id=context.run.run_id)
        return publish_table(
            context, warehouse, pd.Timestamp(NIGHT).date(), "reconciliation", frame, keep=keep,
            previews={"deal_files": frame[frame["content"] == "deals"][["source_file", "rows_read"]]},
            metadata={"files": 2},
        )  # fmt: skip

    url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    result = dg.materialize(
        [reconciliation_probe], partition_key=NIGHT, resources={"warehouse": WarehouseResource(url=url)},
        instance=dg.DagsterInstance.ephemeral(),
    )  # fmt: skip
    return result, url


def test_the_frame_is_written_for_the_night_and_described(tmp_path):
    result, url = _materialize(tmp_path, keep=False)
    (materialization,) = result.asset_materializations_for_node("reconciliation")
    metadata = materialization.metadata
    assert metadata["dagster/row_count"].value == 2 and metadata["files"].value == 2
    preview = metadata["deal_files"].value
    assert "Opportunity.csv" in preview and "OpportunityHistory.csv" not in preview
    warehouse = Warehouse(url)
    try:
        written = warehouse.read("reconciliation", as_of=pd.Timestamp(NIGHT).date())
    finally:
        warehouse.dispose()
    assert list(written["source_file"]) == ["Opportunity.csv", "OpportunityHistory.csv"]
    assert list(written["rows_read"]) == [10, 25] and (written["run_id"] == result.run_id).all()


def test_a_kept_frame_is_the_assets_output(tmp_path):
    result, _ = _materialize(tmp_path, keep=True)
    kept = result.output_for_node("reconciliation")
    assert list(kept["source_file"]) == ["Opportunity.csv", "OpportunityHistory.csv"]
