"""A run cannot write an as_of that another run, still in progress, is writing; a finished (or
unknown) holder is taken over, and then the old holder's writes are refused."""

import datetime as dt

import dagster as dg
import pandas as pd
import pytest

from assets.resources import WarehouseResource
from etl.warehouse import StaleRunError, Warehouse

AS_OF = dt.date(2026, 11, 15)


@dg.asset
def probe(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> None:
    with warehouse.for_run(context, AS_OF):
        pass


def _run(instance, url):
    return dg.materialize([probe], resources={"warehouse": WarehouseResource(url=url)}, instance=instance, raise_on_error=False)


def _holder(instance, status):
    run = dg.DagsterRun(job_name="__ASSET_JOB", run_id="holder-run", status=status)
    instance.add_run(run)
    return run.run_id


@pytest.fixture()
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'w.sqlite'}"


def test_a_run_in_progress_keeps_its_as_of(url):
    instance = dg.DagsterInstance.ephemeral()
    warehouse = Warehouse(url)
    warehouse.create_all()
    warehouse.claim(AS_OF, _holder(instance, dg.DagsterRunStatus.STARTED))
    result = _run(instance, url)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "holder-run" in failure and "interleave" in failure
    assert warehouse.claimant(AS_OF) == "holder-run"
    warehouse.dispose()


def test_a_finished_holder_is_taken_over_and_fenced(url):
    instance = dg.DagsterInstance.ephemeral()
    warehouse = Warehouse(url)
    warehouse.create_all()
    warehouse.claim(AS_OF, _holder(instance, dg.DagsterRunStatus.FAILURE))
    result = _run(instance, url)
    assert result.success
    assert warehouse.claimant(AS_OF) == result.run_id
    # The superseded run can no longer write that as_of.
    frame = pd.DataFrame(
        [{"pipeline": "P", "stage": "A", "stage_order": 1, "stage_status": "open", "stage_probability": 0.1,
          "order_source": "configured", "order_basis": None, "stage_moves": 0, "backward_moves": 0,
          "backward_share": None}]
    )
    with pytest.raises(StaleRunError):
        warehouse.write("pipeline_stages", frame, as_of=AS_OF, run_id="holder-run")
    warehouse.dispose()
