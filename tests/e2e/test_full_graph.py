"""The whole asset graph, materialised for real (in-process Dagster runs) into SQLite (here) and
PostgreSQL (test_full_graph_postgres.py, with the same checks).

The expected numbers are computed independently of the pipeline: straight from the export files with
the csv module, or from invariants that must hold whatever the data.
"""

import datetime as dt

import pandas as pd
import pytest

from etl.warehouse import Warehouse

from .conftest import AS_OF, E2E_BACKTEST_QUARTERS, materialize_graph, project_config, won_in_quarter_from_export
from .test_cli_summary import check_finished_night_summary

pytestmark = pytest.mark.slow

# Columns that legitimately differ between two runs of the same as_of.
RUN_SPECIFIC = {"run_id", "quarantined_at", "checked_at", "trained_at"}


# The assets a later step reads, worked out from the graph by hand: only these pass through the
# intermediate-data store; every other asset's rows are read from the warehouse.
STORED_FRAMES = {
    "crm_exports", "deals", "deal_history", "stage_events", "pipeline_stages", "deals_at_as_of",
    "stage_conversion", "stage_durations", "stalled_deals", "deal_scores",
}
STORED_OBJECTS = {"deal_scoring_model", "close_timing"}


def stored_files(night: dt.date) -> set[str]:
    """The store's files of one night: every asset is partitioned by night, one file per partition."""
    return {f"{name}/{night}.parquet" for name in STORED_FRAMES} | {f"{name}/{night}.joblib" for name in STORED_OBJECTS}


def materialize(exports, url, config, schema=None, store=None):
    return materialize_graph(exports, AS_OF, config, url, schema or "dealcast", store=store)


def check_warehouse(warehouse: Warehouse, exports):
    deals = warehouse.read("deals")
    scores = warehouse.read("deal_scores", as_of=AS_OF)
    forecast = warehouse.read("forecast_quarterly", as_of=AS_OF)
    recon = warehouse.read("reconciliation", as_of=AS_OF)

    # Rows read = accepted + quarantined, for every input file.
    assert (recon["rows_read"] == recon["accepted"] + recon["quarantined"]).all()

    # Every deal open at as_of has exactly one score.
    created = pd.to_datetime(deals["created_at"]) <= pd.Timestamp(AS_OF) + pd.Timedelta(days=1)
    open_ids = set(deals.loc[(deals["status"] == "open") & created, "deal_id"])
    assert len(scores) == scores["deal_id"].nunique()
    assert set(scores["deal_id"]) == open_ids
    assert scores["win_probability"].between(0, 1).all()
    assert (scores["win_this_quarter_probability"] <= scores["win_probability"] + 1e-9).all()

    # Ranges are ordered everywhere, and the quarter's closed-won-to-date matches the export itself.
    assert (forecast["p10"] <= forecast["p50"] + 0.01).all() and (forecast["p50"] <= forecast["p90"] + 0.01).all()
    current = forecast[(forecast["segment_type"] == "all") & (forecast["quarter"] == "2026-Q4")]
    assert len(current) == 1
    assert current["closed_won_to_date"].iloc[0] == pytest.approx(won_in_quarter_from_export(exports, AS_OF), abs=0.01)

    # Segment rows add up to the company total for additive columns.
    for segment_type in ["owner", "pipeline", "product"]:
        part = forecast[(forecast["segment_type"] == segment_type) & (forecast["quarter"] == "2026-Q4")]
        assert part["closed_won_to_date"].sum() == pytest.approx(current["closed_won_to_date"].iloc[0], abs=0.05)

    runs = warehouse.read("model_runs")
    assert len(runs) == 1 and runs["model_version"].iloc[0] == scores["model_version"].iloc[0]
    assert not warehouse.read("stage_conversion", as_of=AS_OF).empty
    assert not warehouse.read("velocity", as_of=AS_OF).empty
    assert not warehouse.read("stage_durations", as_of=AS_OF).empty


def snapshot(warehouse: Warehouse) -> dict[str, pd.DataFrame]:
    from etl.tables import TABLES

    frames = {}
    for name in TABLES:
        frame = warehouse.read(name)
        frame = frame.drop(columns=[c for c in frame.columns if c in RUN_SPECIFIC])
        frames[name] = frame.sort_values(list(frame.columns)).reset_index(drop=True)
    return frames


def backtest_counts(result) -> dict[str, int]:
    """How many past quarters the run's forecast_backtest reused and computed (its metadata)."""
    (materialization,) = result.asset_materializations_for_node("forecast_backtest")
    return {k: materialization.metadata[k].value for k in ("quarters_reused", "quarters_computed")}


def check_store(store):
    """Values a later step reads are in the store, one file per night (partition), frames as Parquet and
    models as joblib; nothing else is."""
    files = {path.relative_to(store).as_posix() for path in store.rglob("*") if path.is_file()}
    assert files == stored_files(AS_OF)
    deals = pd.read_parquet(store / "deals" / f"{AS_OF}.parquet")
    assert deals["deal_id"].is_unique and len(deals) > 0


def run_twice_and_check(exports, url, config, schema=None):
    store = config.parent / "store"
    first = materialize(exports, url, config, schema, store)
    assert first.success
    check_store(store)
    warehouse = Warehouse(url, schema=schema or "dealcast")
    try:
        check_warehouse(warehouse, exports)
        before = snapshot(warehouse)
        second = materialize(exports, url, config, schema, store)
        assert second.success
        after = snapshot(warehouse)
        # The past quarters were computed once, on the first run, and reused on the second.
        assert backtest_counts(first) == {"quarters_reused": 0, "quarters_computed": E2E_BACKTEST_QUARTERS}
        assert backtest_counts(second) == {"quarters_reused": E2E_BACKTEST_QUARTERS, "quarters_computed": 0}
        assert before["forecast_backtest_cache"]["quarter"].nunique() == E2E_BACKTEST_QUARTERS
        for name in before:
            pd.testing.assert_frame_equal(before[name], after[name], check_like=True, obj=name)
    finally:
        warehouse.dispose()


def test_whole_graph_into_sqlite(sample_exports, tmp_path, capsys, monkeypatch):
    url, config = f"sqlite:///{tmp_path / 'dealcast.sqlite'}", project_config(tmp_path)
    run_twice_and_check(sample_exports, url, config)
    check_finished_night_summary(url, config, sample_exports, capsys, monkeypatch)
