"""A blocking data-quality failure stops the downstream assets in a real Dagster run, and nothing
reaches the tables people read, while the quarantine and check results are kept for diagnosis."""

import csv
import shutil

import pytest

from etl.warehouse import Warehouse

from .conftest import AS_OF, materialize_graph, project_config

pytestmark = pytest.mark.slow


def corrupt_amounts(source, target, every: int) -> int:
    """Copy the exports, replacing every `every`-th Opportunity amount with text; returns how many."""
    shutil.copytree(source, target)
    path = target / "Opportunity.csv"
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    amount = header.index("Amount")
    corrupted = 0
    for i, row in enumerate(body):
        if i % every == 0:
            row[amount] = "twelve thousand"
            corrupted += 1
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows([header, *body])
    return corrupted


def test_too_many_bad_rows_stop_the_run_before_any_published_table(sample_exports, tmp_path):
    exports = tmp_path / "exports"
    corrupted = corrupt_amounts(sample_exports, exports, every=10)  # 10% > the 5% limit
    url = f"sqlite:///{tmp_path / 'dealcast.sqlite'}"
    result = materialize_graph(exports, AS_OF, project_config(tmp_path), url, raise_on_error=False)
    assert not result.success
    failed = {(e.asset_key.to_user_string(), e.check_name) for e in result.get_asset_check_evaluations() if not e.passed}
    assert failed == {("deals", "quarantine_share_within_limit")}
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    for downstream in ["deals_at_as_of", "stage_conversion", "stage_durations", "velocity", "deal_scoring_model",
                       "close_timing", "deal_scores", "model_runs", "forecast_quarterly"]:
        assert downstream not in materialized, f"{downstream} ran despite the failed blocking check"

    warehouse = Warehouse(url)
    try:
        assert warehouse.row_count("deals") == 0
        assert warehouse.row_count("deal_scores") == 0
        quarantine = warehouse.read("quarantine", as_of=AS_OF)
        assert (quarantine["reason_code"] == "unparseable_amount").sum() == corrupted
        results = warehouse.read("data_quality_results", as_of=AS_OF).set_index("check_name")
        assert not results.loc["deals.quarantine_share", "passed"]
        recon = warehouse.read("reconciliation", as_of=AS_OF)
        assert (recon["rows_read"] == recon["accepted"] + recon["quarantined"]).all()
    finally:
        warehouse.dispose()


def test_an_unreadable_file_fails_the_run_naming_it_and_writes_nothing(sample_exports, tmp_path):
    exports = tmp_path / "exports"
    shutil.copytree(sample_exports, exports)
    opportunity = exports / "Opportunity.csv"
    opportunity.write_bytes(opportunity.read_bytes()[:-7])  # cut inside the last quoted value
    url = f"sqlite:///{tmp_path / 'dealcast.sqlite'}"
    result = materialize_graph(exports, AS_OF, project_config(tmp_path), url, raise_on_error=False)
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert [e.step_key for e in failures] == ["crm_tables"]
    message = str(failures[0].event_specific_data.error)
    assert str(opportunity) in message and "ends inside a quoted value" in message
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {"crm_exports"}  # the file listing only: no table of this run
    warehouse = Warehouse(url)
    try:
        for table in ("deals", "quarantine", "data_quality_results", "reconciliation"):
            assert warehouse.row_count(table) == 0, table
    finally:
        warehouse.dispose()
