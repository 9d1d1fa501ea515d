"""The named asset checks, tested as the Dagster testing lessons do: the ingest checks through a real
`dg.materialize` of `crm_exports` and `crm_tables` on a good export and on bad ones, the warnings on the
model and the forecast as functions given a good and a bad value."""

from __future__ import annotations

import csv
import datetime as dt
import shutil

import dagster as dg
import pandas as pd
import pytest

from assets.checks import forecast_check_result, model_check_result
from assets.ingest import crm_exports, crm_tables
from etl.warehouse import Warehouse
from sample_crm.generate import generate_sample
from tests.e2e.conftest import materialize_graph, project_config

NIGHT = dt.date(2026, 11, 15)
BLOCKING = {
    ("deals", "deals_not_empty"), ("deals", "volume_not_collapsed"), ("deals", "reconciliation_balanced"),
    ("deals", "quarantine_share_within_limit"), ("deals", "stage_events_consistent"),
    ("stage_events", "stage_events_consistent"),
}  # fmt: skip


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exports")
    generate_sample(folder, n_deals=300, seed=3, end_date=NIGHT, years=1.0)
    return folder


def _ingest(exports, night, tmp_path, url):
    result = materialize_graph(
        exports, night, project_config(tmp_path), url, assets=[crm_exports, crm_tables], raise_on_error=False
    )
    checks = {(e.asset_key.to_user_string(), e.check_name): e for e in result.get_asset_check_evaluations()}
    assert set(checks) == BLOCKING
    return result, checks


def _failed(checks) -> set:
    return {key for key, evaluation in checks.items() if not evaluation.passed}


def test_a_good_export_passes_every_blocking_check(exports, tmp_path):
    result, checks = _ingest(exports, NIGHT, tmp_path, f"sqlite:///{tmp_path / 'w.sqlite'}")
    assert result.success and _failed(checks) == set()
    assert all(e.severity == dg.AssetCheckSeverity.ERROR for e in checks.values())


def _bad_amounts(exports, folder, every: int):
    """A copy of `exports` whose every `every`-th deal has an amount that is no number."""
    shutil.copytree(exports, folder)
    path = folder / "Opportunity.csv"
    with open(path, newline="", encoding="utf-8") as handle:
        header, *body = list(csv.reader(handle))
    amount = header.index("Amount")
    for i in range(0, len(body), every):
        body[i][amount] = "twelve thousand"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows([header, *body])
    return folder


def test_too_many_bad_amounts_fail_only_the_quarantine_share(exports, tmp_path):
    bad = _bad_amounts(exports, tmp_path / "bad", every=5)  # 20% of the deal rows, above the 5% limit
    result, checks = _ingest(bad, NIGHT, tmp_path, f"sqlite:///{tmp_path / 'w.sqlite'}")
    assert not result.success
    assert _failed(checks) == {("deals", "quarantine_share_within_limit")}
    failures = checks[("deals", "quarantine_share_within_limit")].metadata["failures"].value
    assert "deals.quarantine_share" in failures


def test_no_deal_accepted_fails_deals_not_empty_and_every_row_is_still_accounted_for(exports, tmp_path):
    bad = _bad_amounts(exports, tmp_path / "bad", every=1)  # every deal quarantined
    result, checks = _ingest(bad, NIGHT, tmp_path, f"sqlite:///{tmp_path / 'w.sqlite'}")
    assert not result.success
    assert _failed(checks) == {("deals", "deals_not_empty"), ("deals", "quarantine_share_within_limit")}
    assert "| 0 accepted deals" in checks[("deals", "deals_not_empty")].metadata["failures"].value
    assert "300 of 300 deal rows quarantined" in checks[("deals", "quarantine_share_within_limit")].metadata["failures"].value


def test_volume_is_compared_with_the_previous_published_night_only(exports, tmp_path):
    url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    first, checks = _ingest(exports, NIGHT - dt.timedelta(days=1), tmp_path, url)
    assert _failed(checks) == set()
    warehouse = Warehouse(url)
    try:
        assert warehouse.row_count("deals") == 300  # every simulated deal accepted: floor 0.5 x 300 = 150
    finally:
        warehouse.dispose()
    # A third of the deals the next night: 300 -> 100 is a drop of 2/3, beyond the 0.5 allowed.
    small = tmp_path / "small"
    generate_sample(small, n_deals=100, seed=3, end_date=NIGHT, years=1.0)

    # The first night is not published (its run never reached published_night): no baseline yet.
    _, checks = _ingest(small, NIGHT, tmp_path, url)
    assert _failed(checks) == set()

    warehouse = Warehouse(url)
    try:
        warehouse.publish_night(NIGHT - dt.timedelta(days=1), first.run_id, required=["deals", "reconciliation"])
        warehouse.release(NIGHT)  # the unpublished run gives the night up, as an operator would
    finally:
        warehouse.dispose()
    _, checks = _ingest(small, NIGHT, tmp_path, url)
    assert _failed(checks) == {("deals", "volume_not_collapsed")}
    failures = checks[("deals", "volume_not_collapsed")].metadata["failures"].value
    assert "previous published night 300" in failures and "at least 150" in failures


def test_model_beats_baseline_is_a_warning_with_the_two_losses():
    good = model_check_result({"scoring_method": "logistic", "log_loss": 0.58, "constant_log_loss": 0.66})
    bad = model_check_result({"scoring_method": "logistic", "log_loss": 0.71, "constant_log_loss": 0.66})
    assert good.passed and not bad.passed
    for result in (good, bad):
        assert result.asset_key == dg.AssetKey("deal_scoring_model") and result.check_name == "model_beats_baseline"
        assert result.severity == dg.AssetCheckSeverity.WARN
    assert bad.metadata["observed"].value == "logistic: held-out log loss 0.7100; constant win rate 0.6600"


def test_forecast_ordered_is_a_warning_listing_the_rows_out_of_order():
    columns = ["quarter", "segment_type", "segment", "p10", "p50", "p90"]
    good = forecast_check_result(pd.DataFrame([("2026-Q4", "all", "all", 1.0, 2.0, 3.0)], columns=columns))
    bad = forecast_check_result(
        pd.DataFrame([("2026-Q4", "all", "all", 1.0, 2.0, 3.0), ("2026-Q4", "team", "EMEA", 3.0, 2.0, 1.0)], columns=columns)
    )
    assert good.passed and not bad.passed and bad.severity == dg.AssetCheckSeverity.WARN
    assert bad.asset_key == dg.AssetKey("forecast_quarterly") and bad.check_name == "forecast_ordered"
    assert "EMEA" in bad.metadata["failing_rows"].value and "all" not in bad.metadata["failing_rows"].value.split("EMEA")[1]
