"""The warehouse layer on SQLite and PostgreSQL: tables and views, atomic idempotent writes, fencing
of stale runs, serialised writers, type round trips, password hygiene, and the table reference page.

Every expected value below is written out by hand from the small frames each test builds.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import sqlite3
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from etl.tables import TABLES, metadata
from etl.warehouse import StaleRunError, Warehouse, WarehouseError, advisory_lock_key, claims_metadata, redact_url

AS_OF = dt.date(2026, 11, 15)
NEXT_DAY = dt.date(2026, 11, 16)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "warehouse.md"
PASSWORD = "s3cr3t-Pa55"
LATEST_VIEWS = {
    "latest_quarantine",
    "latest_data_quality_results",
    "latest_stage_conversion",
    "latest_stage_durations",
    "latest_velocity",
    "latest_deal_scores",
    "latest_forecast_quarterly",
}


# ------------------------------------------------------------------------------------------------
# Frames


def scores(ids: list[str], probability: float = 0.5, as_of: dt.date | None = None) -> pd.DataFrame:
    """A deal_scores frame: one row per id, amount 1000 x (position + 1)."""
    n = len(ids)
    amounts = [1000.0 * (i + 1) for i in range(n)]
    frame = pd.DataFrame(
        {
            "deal_id": ids,
            "pipeline": ["New Business"] * n,
            "stage": ["Qualification"] * n,
            "owner": ["Ana"] * n,
            "amount_reporting": amounts,
            "expected_close_date": pd.to_datetime(["2026-12-31"] * n),
            "win_probability": [probability] * n,
            "win_this_quarter_probability": [probability / 2] * n,
            "expected_value": [a * probability for a in amounts],
            "score_band": ["medium"] * n,
            "top_factors": ['[{"factor": "stage", "effect": 0.1}]'] * n,
            "top_factors_text": ["in Qualification for 12 days"] * n,
            "model_version": ["m1"] * n,
            "scoring_method": ["calibrated_model"] * n,
            "scored_with": ["this_run_model"] * n,
            "scoring_reason": [None] * n,
        }
    )
    if as_of is not None:
        frame.insert(0, "as_of", pd.Timestamp(as_of))
    return frame


def forecast(quarters: list[str], p50: float = 100.0) -> pd.DataFrame:
    n = len(quarters)
    return pd.DataFrame(
        {
            "quarter": quarters,
            "segment_type": ["all"] * n,
            "segment": ["all"] * n,
            "closed_won_to_date": [10.0] * n,
            "expected": [p50] * n,
            "p10": [p50 - 50] * n,
            "p50": [p50] * n,
            "p90": [p50 + 50] * n,
            "weighted_pipeline_crm": [80.0] * n,
            "open_deals": [3] * n,
            "open_pipeline": [300.0] * n,
            "overdue_deals": [1] * n,
            "overdue_pipeline": [100.0] * n,
            "pipeline_expected": [p50 - 20.0] * n,
            "overdue_expected": [10.0] * n,
            "other_open_expected": [5.0] * n,
            "new_deals_expected": [5.0] * n,
            "new_deals_trend": [0.0] * n,
            "new_deals_imported": [0.0] * n,
            "new_deals_keying_lag": [0.0] * n,
            "revenue_calibration": [0.0] * n,
            "outlier_deals": [0] * n,
            "outlier_pipeline": [0.0] * n,
            "p90_without_outliers": [p50 + 50] * n,
            "not_yet_backtested": [False] * n,
            "quota": [200.0] * n,
            "gap": [200.0 - p50] * n,
            "coverage": [300.0 / 190.0] * n,
            "model_version": ["m1"] * n,
            "draws": [10_000] * n,
        }
    )


def deals(ids: list[str]) -> pd.DataFrame:
    n = len(ids)
    return pd.DataFrame(
        {
            "deal_id": ids,
            "source_system": ["salesforce"] * n,
            "source_file": ["Opportunity.csv"] * n,
            "source_row": list(range(2, n + 2)),
            "pipeline": ["New Business"] * n,
            "deal_name": [f"Deal {i}" for i in ids],
            "account": ["Acme"] * n,
            "owner": ["Ana"] * n,
            "team": ["East"] * n,
            "product": ["GTX Pro"] * n,
            "region": ["EMEA"] * n,
            "account_segment": ["SMB"] * n,
            "lead_source": ["Web"] * n,
            "deal_type": ["New"] * n,
            "amount": [500.0] * n,
            "currency": ["EUR"] * n,
            "amount_reporting": [550.0] * n,
            "created_at": pd.to_datetime(["2026-01-05 09:30:00"] * n),
            "expected_close_date": pd.to_datetime(["2026-12-31"] * n),
            "closed_at": pd.Series([pd.NaT] * n, dtype="datetime64[us]"),
            "crm_close_date": pd.Series([pd.NaT] * n, dtype="datetime64[us]"),
            "booking_date": pd.Series([pd.NaT] * n, dtype="datetime64[us]"),
            "stage": ["Qualification"] * n,
            "stage_order": [2] * n,
            "status": ["open"] * n,
            "lost_reason": [None] * n,
            "forecast_category": ["Pipeline"] * n,
            "crm_probability": [0.2] * n,
            "last_stage_change_at": pd.to_datetime(["2026-02-01 00:00:00"] * n),
            "push_count": [0] * n,
            "has_history": [True] * n,
        }
    )


def model_run(version: str, auc: float) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "model_version": [version],
            "as_of": [pd.Timestamp("2026-11-01")],
            "trained_at": [pd.Timestamp("2026-11-01 02:00:00")],
            "scoring_method": ["calibrated_model"],
            "eligible": [True],
            "fallback_reason": [None],
            "has_history": [True],
            "data_window": ["snapshots 2024-01-01..2026-06-29, outcomes to 2026-11-01"],
            "train_rows": [1000],
            "calibration_rows": [300],
            "test_rows": [250],
            "auc": [auc],
            "log_loss": [0.5],
            "brier": [0.17],
            "base_rate_brier": [0.24],
            "ece": [0.03],
            "crm_baseline_auc": [0.7],
            "crm_baseline_log_loss": [0.6],
            "crm_baseline_brier": [0.2],
            "stage_rate_baseline_auc": [0.75],
            "stage_rate_baseline_log_loss": [0.55],
            "stage_rate_baseline_brier": [0.19],
            "beats_baselines": [True],
            "reliability": ["[]"],
            "features": ['["stage"]'],
            "params": ["{}"],
            "artifact_path": [None],
            **{column: [None] for column in ("selection_reason", "candidates", "constant_log_loss", "split_rule", "split_note",
                                             "train_won_deals", "train_lost_deals", "test_won_deals", "test_lost_deals",
                                             "creation_rows", "tier_change")},
        }
    )


def qualified(wh: Warehouse, name: str) -> str:
    return f'"{wh.schema}".{name}' if wh.schema else name


def sql_rows(wh: Warehouse, statement: str) -> list[tuple]:
    with wh.engine.connect() as conn:
        return [tuple(row) for row in conn.exec_driver_sql(statement)]


def claimed(wh: Warehouse, as_of: dt.date = AS_OF, run_id: str = "run-a") -> Warehouse:
    wh.claim(as_of, run_id)
    return wh


# ------------------------------------------------------------------------------------------------
# URLs and passwords


def test_redact_url_masks_the_password_only():
    assert redact_url(f"postgresql+psycopg://u:{PASSWORD}@db.example:5432/x") == "postgresql+psycopg://u:***@db.example:5432/x"
    assert redact_url("postgresql+psycopg://u:p%40ss@h/db") == "postgresql+psycopg://u:***@h/db"
    assert redact_url(f"postgresql://u@h/db?password={PASSWORD}&sslmode=require") == (
        "postgresql://u@h/db?password=***&sslmode=require"
    )
    assert redact_url("sqlite:////srv/dealcast/warehouse.sqlite") == "sqlite:////srv/dealcast/warehouse.sqlite"


def test_password_never_appears_in_errors_or_logs(caplog):
    caplog.set_level(logging.DEBUG)
    url = f"postgresql+psycopg://u:{PASSWORD}@127.0.0.1:1/x"
    wh = Warehouse(url, echo=True)
    assert wh.safe_url == "postgresql+psycopg://u:***@127.0.0.1:1/x"
    assert PASSWORD not in repr(wh)
    errors = []
    for attempt in (wh.create_all, lambda: wh.claim(AS_OF, "run-a"), lambda: wh.read("deals")):
        with pytest.raises(WarehouseError) as caught:
            attempt()
        errors.append(caught.value)
    wh.dispose()
    for error in errors:
        assert "u:***@127.0.0.1:1/x" in str(error)
        for text in (str(error), repr(error), "".join(traceback.format_exception(error))):
            assert PASSWORD not in text
    assert PASSWORD not in caplog.text
    assert all(PASSWORD not in (record.exc_text or "") for record in caplog.records)


@pytest.mark.postgres
def test_password_echoed_by_the_database_is_masked(pg_url, pg_schema):
    # The test server trusts local connections, so the password is accepted and ignored; the duplicate
    # key makes PostgreSQL quote it back in its error message.
    url = sa.engine.make_url(pg_url).set(password=PASSWORD).render_as_string(hide_password=False)
    wh = Warehouse(url, schema=pg_schema)
    wh.create_all()
    wh.claim(AS_OF, "run-a")
    with pytest.raises(WarehouseError) as caught:
        wh.write("deal_scores", scores([PASSWORD, PASSWORD]), as_of=AS_OF, run_id="run-a")
    wh.dispose()
    text = str(caught.value) + repr(caught.value) + "".join(traceback.format_exception(caught.value))
    assert PASSWORD not in text
    assert "deal_scores has 2 rows sharing a primary key (as_of, deal_id)" in str(caught.value)


# ------------------------------------------------------------------------------------------------
# Tables and views


def test_create_all_is_idempotent_and_creates_tables_and_views(warehouse):
    warehouse.create_all()  # the fixture already ran it once
    inspector = sa.inspect(warehouse.engine)
    tables = set(inspector.get_table_names(schema=warehouse.schema))
    assert tables == set(metadata.tables) | set(claims_metadata.tables)
    views = set(inspector.get_view_names(schema=warehouse.schema))
    assert views == {f"latest_{name}" for name, spec in TABLES.items() if spec.replace == "as_of"}
    assert LATEST_VIEWS <= views
    if warehouse.dialect == "sqlite":
        assert Path(warehouse.engine.url.database).is_file()  # its folder did not exist before
        assert sql_rows(warehouse, "PRAGMA journal_mode") == [("wal",)]


def _family(reflected: sa.types.TypeEngine) -> str:
    if isinstance(reflected, sa.Boolean):
        return "boolean"
    if isinstance(reflected, sa.DateTime):
        return "timestamp"
    if isinstance(reflected, sa.Date):
        return "date"
    if isinstance(reflected, sa.Integer):
        return "integer"
    if isinstance(reflected, sa.Float):
        return "float"
    if isinstance(reflected, sa.Numeric):
        return f"numeric({reflected.precision},{reflected.scale})"
    if isinstance(reflected, sa.String):
        return "text"
    return repr(reflected)


def test_column_types_follow_the_contract(warehouse):
    inspector = sa.inspect(warehouse.engine)
    reflected = {
        name: {c["name"]: c for c in inspector.get_columns(name, schema=warehouse.schema)} for name in metadata.tables
    }
    # A few columns by hand: dates are DATE, instants TIMESTAMP, money NUMERIC(18,2).
    assert _family(reflected["deal_scores"]["as_of"]["type"]) == "date"
    assert _family(reflected["deals"]["expected_close_date"]["type"]) == "date"
    assert _family(reflected["deals"]["created_at"]["type"]) == "timestamp"
    assert _family(reflected["forecast_quarterly"]["p50"]["type"]) == "numeric(18,2)"
    assert _family(reflected["velocity"]["won_amount"]["type"]) == "numeric(18,2)"
    assert _family(reflected["deal_scores"]["win_probability"]["type"]) == "float"
    assert _family(reflected["deals"]["has_history"]["type"]) == "boolean"
    assert _family(reflected["stage_conversion"]["reached"]["type"]) == "integer"
    assert reflected["deal_scores"]["win_probability"]["nullable"] is False
    assert reflected["deal_scores"]["stage"]["nullable"] is True
    # And every column against etl/tables.py.
    for name, table in metadata.tables.items():
        assert list(reflected[name]) == [c.name for c in table.columns], name
        for column in table.columns:
            assert _family(reflected[name][column.name]["type"]) == _family(column.type), f"{name}.{column.name}"
    if warehouse.dialect == "postgresql":
        assert reflected["deal_scores"]["win_probability"]["comment"] == TABLES["deal_scores"].table.c.win_probability.comment


def test_create_all_names_columns_an_older_warehouse_lacks(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    with sqlite3.connect(tmp_path / "old.sqlite") as conn:
        conn.execute("CREATE TABLE velocity (as_of DATE, period VARCHAR(16))")
    wh = Warehouse(url)
    with pytest.raises(WarehouseError, match=r"velocity.*lacks column\(s\) \['period_grain', 'segment_type'"):
        wh.create_all()
    wh.dispose()


def test_create_all_adds_nullable_columns_a_newer_dealcast_defines(warehouse, warehouse_target):
    # A warehouse from an older Dealcast: deal_scores without the nullable `scoring_reason`, with
    # two rows already written. Upgrading must keep the rows, add the column (NULL for them) and
    # rebuild latest_deal_scores with the column in the contract's place.
    claimed(warehouse).write("deal_scores", scores(["d1", "d2"]), as_of=AS_OF, run_id="run-a")
    table, view = qualified(warehouse, "deal_scores"), qualified(warehouse, "latest_deal_scores")
    with warehouse.engine.begin() as conn:
        conn.exec_driver_sql(f"DROP VIEW {view}")
        conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN scoring_reason")
        conn.exec_driver_sql(f"CREATE VIEW {view} AS SELECT deal_id, as_of FROM {table}")
    url, schema = warehouse_target
    upgraded = Warehouse(url, schema=schema or "dealcast")
    upgraded.create_all()
    upgraded.create_all()  # and again: nothing left to add
    inspector = sa.inspect(upgraded.engine)
    columns = [c["name"] for c in inspector.get_columns("deal_scores", schema=upgraded.schema)]
    assert sorted(columns) == sorted(TABLES["deal_scores"].columns)
    assert [c["name"] for c in inspector.get_columns("latest_deal_scores", schema=upgraded.schema)] == list(
        TABLES["deal_scores"].columns
    )
    assert sql_rows(upgraded, f"SELECT deal_id, scoring_reason FROM {table} ORDER BY deal_id") == [
        ("d1", None),
        ("d2", None),
    ]
    upgraded.dispose()


def test_unknown_table_is_a_clear_error(warehouse):
    with pytest.raises(WarehouseError, match=r"unknown warehouse table 'deal_score'.*'deal_scores'"):
        warehouse.read("deal_score")


# ------------------------------------------------------------------------------------------------
# Idempotent, atomic writes


def test_rewriting_an_as_of_replaces_exactly_its_rows(warehouse):
    claimed(warehouse, AS_OF)
    claimed(warehouse, NEXT_DAY)
    assert warehouse.write("deal_scores", scores(["D1", "D2", "D3"]), as_of=AS_OF, run_id="run-a") == 3
    assert warehouse.write("deal_scores", scores(["D1", "D2", "D3"]), as_of=AS_OF, run_id="run-a") == 3
    assert warehouse.row_count("deal_scores") == 3
    first = warehouse.read("deal_scores", AS_OF)
    assert first["deal_id"].tolist() == ["D1", "D2", "D3"]
    assert first["expected_value"].tolist() == [500.0, 1000.0, 1500.0]

    warehouse.write("deal_scores", scores(["D7", "D8"], probability=0.25), as_of=NEXT_DAY, run_id="run-a")
    assert warehouse.row_count("deal_scores", AS_OF) == 3
    assert warehouse.row_count("deal_scores", NEXT_DAY) == 2
    pd.testing.assert_frame_equal(warehouse.read("deal_scores", AS_OF), first)
    assert warehouse.latest_as_of("deal_scores") == NEXT_DAY
    assert sql_rows(warehouse, f"SELECT COUNT(*) FROM {qualified(warehouse, 'latest_deal_scores')}") == [(0,)]
    warehouse.publish_night(NEXT_DAY, "run-a", required=["deal_scores"])  # the views show published nights
    latest = sql_rows(warehouse, f"SELECT deal_id, win_probability FROM {qualified(warehouse, 'latest_deal_scores')} ORDER BY deal_id")
    assert latest == [("D7", 0.25), ("D8", 0.25)]
    warehouse.claim(NEXT_DAY, "run-a")  # publishing released it

    # A run that scores nothing leaves nothing for its date.
    assert warehouse.write("deal_scores", scores([]), as_of=NEXT_DAY, run_id="run-a") == 0
    assert warehouse.row_count("deal_scores", NEXT_DAY) == 0
    assert warehouse.row_count("deal_scores", AS_OF) == 3


def test_whole_table_is_replaced_by_each_run(warehouse):
    claimed(warehouse, AS_OF)
    claimed(warehouse, NEXT_DAY)
    warehouse.write("deals", deals(["D1", "D2", "D3"]), as_of=AS_OF, run_id="run-a")
    warehouse.write("deals", deals(["D2", "D9"]), as_of=NEXT_DAY, run_id="run-a")
    result = warehouse.read("deals")
    assert result["deal_id"].tolist() == ["D2", "D9"]
    assert (result["as_of"] == pd.Timestamp(NEXT_DAY)).all()


def test_an_older_night_leaves_the_current_state_tables_on_the_newer_one(warehouse):
    """A backfilled (or re-run) older night writes its own as_of rows, but the current-state tables
    keep the newest night: they are counted for the older night, so it can still be published."""
    claimed(warehouse, AS_OF)
    claimed(warehouse, NEXT_DAY)
    warehouse.write("deals", deals(["D2", "D9"]), as_of=NEXT_DAY, run_id="run-a")
    written = warehouse.write_many(
        {"deals": deals(["D1", "D2", "D3"]), "deal_scores": scores(["D1", "D2", "D3"])}, as_of=AS_OF, run_id="run-a"
    )
    assert written == {"deals": 3, "deal_scores": 3}
    result = warehouse.read("deals")
    assert result["deal_id"].tolist() == ["D2", "D9"]
    assert (result["as_of"] == pd.Timestamp(NEXT_DAY)).all()
    assert warehouse.read("deal_scores", AS_OF)["deal_id"].tolist() == ["D1", "D2", "D3"]
    assert warehouse.publish_night(AS_OF, "run-a", required=["deals", "deal_scores"]) == {"deals": 3, "deal_scores": 3}
    # The newer night written again still replaces them.
    warehouse.write("deals", deals(["D9"]), as_of=NEXT_DAY, run_id="run-a")
    assert warehouse.read("deals")["deal_id"].tolist() == ["D9"]


def _linger_after_delete(conn, cursor, statement, parameters, context, executemany):
    # Widen the window between delete and insert, so unserialised writers would surely overlap.
    if statement.lstrip().upper().startswith("DELETE"):
        time.sleep(0.1)


def written_side_by_side(target, claims, table: str, writes) -> pd.DataFrame:
    """`table` as read after two writers on the warehouse `target` (url, schema) each wrote once at the
    same moment, `writes[i]` = (frame, as_of, run_id), after every (as_of, run_id) of `claims` was claimed,
    with a pause after each DELETE so unserialised writes would overlap."""
    url, schema = target
    writers = [Warehouse(url, schema=schema or "dealcast") for _ in range(2)]
    try:
        writers[0].create_all()
        for as_of, run_id in claims:
            writers[0].claim(as_of, run_id)
        start = threading.Barrier(2)

        def write_once(index: int) -> None:
            frame, as_of, run_id = writes[index]
            start.wait()
            writers[index].write(table, frame, as_of=as_of, run_id=run_id)

        for wh in writers:
            sa.event.listen(wh.engine, "after_cursor_execute", _linger_after_delete)
        with ThreadPoolExecutor(max_workers=2) as pool:
            for future in [pool.submit(write_once, i) for i in range(2)]:
                future.result()
        return writers[0].read(table)
    finally:
        for wh in writers:
            wh.dispose()


def test_two_nights_replacing_a_current_state_table_at_once_leave_the_newer(warehouse_target):
    """Nights of a backfill run side by side: their writes of a current-state table (overlapping keys)
    are serialised, whichever starts first, and the table ends on the newer night."""
    claims = [(AS_OF, "run-15"), (NEXT_DAY, "run-16")]
    writes = [
        (deals([f"D{i:04d}" for i in range(300)]), AS_OF, "run-15"),
        (deals([f"D{i:04d}" for i in range(100, 350)]), NEXT_DAY, "run-16"),
    ]
    result = written_side_by_side(warehouse_target, claims, "deals", writes)
    assert result["deal_id"].tolist() == [f"D{i:04d}" for i in range(100, 350)]
    assert (result["as_of"] == pd.Timestamp(NEXT_DAY)).all()


def test_key_table_replaces_only_the_keys_written(warehouse):
    claimed(warehouse)
    warehouse.write_many({"model_runs": pd.concat([model_run("v1", 0.80), model_run("v2", 0.85)])}, as_of=AS_OF, run_id="run-a")
    warehouse.write("model_runs", model_run("v1", 0.90), as_of=AS_OF, run_id="run-a")
    result = warehouse.read("model_runs")
    assert result["model_version"].tolist() == ["v1", "v2"]
    assert result["auc"].tolist() == [0.90, 0.85]
    assert result["as_of"].tolist() == [pd.Timestamp("2026-11-01")] * 2  # a registry keeps its own as_of


def test_write_many_rolls_back_every_table_when_one_fails(warehouse):
    claimed(warehouse)
    warehouse.write_many(
        {"deal_scores": scores(["D1", "D2"]), "forecast_quarterly": forecast(["2026-Q4"])}, as_of=AS_OF, run_id="run-a"
    )
    before = {name: warehouse.read(name) for name in ("deal_scores", "forecast_quarterly")}
    # deal_scores is deleted and re-inserted first; then forecast_quarterly breaks its primary key.
    broken = forecast(["2027-Q1", "2027-Q1"], p50=999.0)
    with pytest.raises(WarehouseError) as caught:
        warehouse.write_many(
            {"deal_scores": scores(["D5"], probability=0.9), "forecast_quarterly": broken}, as_of=AS_OF, run_id="run-a"
        )
    assert "forecast_quarterly has 2 rows sharing a primary key (as_of, quarter, segment_type, segment)" in str(caught.value)
    assert "row(s) 0, 1" in str(caught.value)
    for name, frame in before.items():
        pd.testing.assert_frame_equal(warehouse.read(name), frame, obj=name)
    assert warehouse.read("deal_scores")["deal_id"].tolist() == ["D1", "D2"]


def test_a_missing_required_value_is_refused_before_anything_is_written(warehouse):
    claimed(warehouse)
    warehouse.write("deal_scores", scores(["D1"]), as_of=AS_OF, run_id="run-a")
    bad = scores(["D5", "D6", "D7"])
    bad.loc[2, "win_probability"] = np.nan
    with pytest.raises(WarehouseError, match=r"table deal_scores, column win_probability: .*NOT NULL.*row\(s\) 2 are empty"):
        warehouse.write_many({"forecast_quarterly": forecast(["2026-Q4"]), "deal_scores": bad}, as_of=AS_OF, run_id="run-a")
    assert warehouse.row_count("forecast_quarterly") == 0
    assert warehouse.read("deal_scores")["deal_id"].tolist() == ["D1"]


def test_frame_columns_must_match_the_table(warehouse):
    claimed(warehouse)
    with pytest.raises(WarehouseError, match=r"table deal_scores: .*missing \['score_band'\], unexpected \['band'\]"):
        warehouse.write("deal_scores", scores(["D1"]).rename(columns={"score_band": "band"}), as_of=AS_OF, run_id="run-a")


def test_rows_for_another_as_of_are_refused(warehouse):
    claimed(warehouse)
    frame = pd.concat([scores(["D1"], as_of=AS_OF), scores(["D2"], as_of=NEXT_DAY)], ignore_index=True)
    with pytest.raises(WarehouseError, match=r"as_of 2026-11-15, but row\(s\) 1 hold \['2026-11-16'\]"):
        warehouse.write("deal_scores", frame, as_of=AS_OF, run_id="run-a")
    assert warehouse.row_count("deal_scores") == 0


def test_text_longer_than_its_column_is_refused(warehouse):
    claimed(warehouse)
    with pytest.raises(WarehouseError, match=r"column deal_id: text longer than 64 characters in row\(s\) 1"):
        warehouse.write("deal_scores", scores(["D1", "D" * 65]), as_of=AS_OF, run_id="run-a")


# ------------------------------------------------------------------------------------------------
# Fencing and concurrency


def test_a_superseded_run_can_no_longer_write(warehouse):
    warehouse.claim(AS_OF, "run-a")
    warehouse.write("deal_scores", scores(["A1"]), as_of=AS_OF, run_id="run-a")
    warehouse.claim(AS_OF, "run-b", supersede="run-a")  # the caller knows run-a has finished
    assert warehouse.claimant(AS_OF) == "run-b"
    with pytest.raises(StaleRunError) as caught:
        warehouse.write("deal_scores", scores(["A2"]), as_of=AS_OF, run_id="run-a")
    assert "run run-a no longer owns as_of 2026-11-15" in str(caught.value)
    assert "run run-b claimed it" in str(caught.value)
    assert warehouse.read("deal_scores")["deal_id"].tolist() == ["A1"]
    warehouse.write("deal_scores", scores(["B1"]), as_of=AS_OF, run_id="run-b")
    assert warehouse.read("deal_scores")["deal_id"].tolist() == ["B1"]
    # A run that never claimed its date is refused too.
    with pytest.raises(WarehouseError, match=r"run run-c has not claimed as_of 2026-11-16"):
        warehouse.write("deal_scores", scores(["C1"]), as_of=NEXT_DAY, run_id="run-c")


def test_concurrent_writers_of_one_as_of_never_mix(warehouse_target):
    writes = [
        (scores([f"A{i:04d}" for i in range(400)]), AS_OF, "run-a"),
        (scores([f"B{i:04d}" for i in range(300)], probability=0.7), AS_OF, "run-a"),
    ]
    result = written_side_by_side(warehouse_target, [(AS_OF, "run-a")], "deal_scores", writes)
    ids = result["deal_id"].tolist()
    assert ids in ([f"A{i:04d}" for i in range(400)], [f"B{i:04d}" for i in range(300)])


def test_a_write_waits_while_another_holds_the_as_of(warehouse):
    """The lock is real: while another session holds it, a write blocks, then completes."""
    claimed(warehouse)
    warehouse.write("deal_scores", scores(["D1"]), as_of=AS_OF, run_id="run-a")
    key = int.from_bytes(hashlib.blake2b(b"dealcast:2026-11-15", digest_size=8).digest(), "big", signed=True)
    assert advisory_lock_key(AS_OF) == key
    if warehouse.dialect == "sqlite":
        holder = sqlite3.connect(warehouse.engine.url.database, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")
        # The holder changes the database, so a writer that had started reading before it committed
        # (a deferred BEGIN) would fail; BEGIN IMMEDIATE waits for the lock instead.
        holder.execute(
            "INSERT INTO run_claims (as_of, run_id, claimed_at) VALUES ('2000-01-01', 'holder', '2000-01-01 00:00:00.000000')"
        )
        release = holder.execute
    else:
        engine = sa.create_engine(warehouse.engine.url)
        session = engine.connect()
        session.begin()
        session.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        release = session.exec_driver_sql
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(warehouse.write, "deal_scores", scores(["D2", "D3"]), as_of=AS_OF, run_id="run-a")
        time.sleep(0.8)
        assert not pending.done()
        release("COMMIT")
        assert pending.result(timeout=30) == 2
    if warehouse.dialect == "sqlite":
        holder.close()
    else:
        session.close()
        engine.dispose()
    assert warehouse.read("deal_scores")["deal_id"].tolist() == ["D2", "D3"]


def test_bulk_insert_is_not_row_by_row(warehouse):
    claimed(warehouse)
    statements = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement.split()[0].upper())

    sa.event.listen(warehouse.engine, "before_cursor_execute", record)
    try:
        warehouse.write("deal_scores", scores([f"D{i}" for i in range(500)]), as_of=AS_OF, run_id="run-a")
    finally:
        sa.event.remove(warehouse.engine, "before_cursor_execute", record)
    # lock (BEGIN IMMEDIATE or pg_advisory_xact_lock), claim check, lease renewal, delete, at most one
    # insert (PostgreSQL's COPY bypasses SQLAlchemy's cursor events), and the night_writes note
    # (delete + insert): a constant number, whatever the row count.
    assert len(statements) <= 7, statements
    assert statements.count("INSERT") <= 2  # the rows (one executemany), the night_writes note
    assert warehouse.row_count("deal_scores") == 500


def test_rows_are_written_a_batch_at_a_time_and_all_arrive(warehouse, monkeypatch):
    """Large tables are converted to driver values one batch at a time: with batches of 3 rows, 8
    deals (dates and NULLs on either side of each batch boundary) all arrive exactly."""
    import etl.warehouse as warehouse_module

    monkeypatch.setattr(warehouse_module, "BATCH_ROWS", 3)
    claimed(warehouse)
    ids = [f"D{i}" for i in range(8)]
    frame = scores(ids)
    frame["expected_close_date"] = pd.to_datetime(["2026-12-01", None, "2026-12-03", None, "2026-12-05", "2026-12-06", None, "2026-12-08"])
    frame["owner"] = pd.array(["Ana", None, "Bo", "Cy", None, "Di", "Ed", None], dtype="string")
    prepared = warehouse_module.prepare_frame(warehouse._spec("deal_scores"), frame, AS_OF)
    assert [len(batch) for batch in prepared.batches("python")] == [3, 3, 2]
    warehouse.write("deal_scores", frame, as_of=AS_OF, run_id="run-a")
    result = warehouse.read("deal_scores", as_of=AS_OF).set_index("deal_id").loc[ids]
    assert [None if pd.isna(v) else v for v in result["owner"]] == ["Ana", None, "Bo", "Cy", None, "Di", "Ed", None]
    closes = [None if pd.isna(v) else v.strftime("%Y-%m-%d") for v in result["expected_close_date"]]
    assert closes == ["2026-12-01", None, "2026-12-03", None, "2026-12-05", "2026-12-06", None, "2026-12-08"]
    assert result["amount_reporting"].tolist() == [1000.0 * (i + 1) for i in range(8)]


# ------------------------------------------------------------------------------------------------
# Types


def test_values_round_trip_with_their_types(warehouse):
    claimed(warehouse)
    frame = deals(["D1", "D2"])
    frame["amount"] = [1234.567, np.nan]
    frame["amount_reporting"] = np.array([1358.02, 99.5], dtype=np.float32).astype(np.float64).round(2)
    frame["expected_close_date"] = pd.to_datetime(["2026-12-31 15:45", None])
    frame["closed_at"] = pd.to_datetime([None, "2026-11-02 17:00:00.250"])
    frame["stage_order"] = pd.array([2, None], dtype="Int64")
    frame["push_count"] = np.array([0, 3], dtype=np.int32)
    frame["has_history"] = np.array([True, False])
    frame["crm_probability"] = [np.nan, 0.35]
    frame["account"] = pd.array(["Acme", None], dtype="string")
    frame["status"] = ["open", "won"]
    tricky = 'He said "yes", then\nleft;\t50% \\ done \u00e9'
    frame["deal_name"] = [tricky, ""]  # an empty text is not NULL
    warehouse.write("deals", frame, as_of=AS_OF, run_id="run-a")

    result = warehouse.read("deals")
    assert str(result["as_of"].dtype) == "datetime64[us]"
    assert result["as_of"].tolist() == [pd.Timestamp("2026-11-15")] * 2
    assert result["expected_close_date"].iloc[0] == pd.Timestamp("2026-12-31")  # a DATE keeps the day only
    assert pd.isna(result["expected_close_date"].iloc[1])
    assert result["created_at"].tolist() == [pd.Timestamp("2026-01-05 09:30:00")] * 2
    assert pd.isna(result["closed_at"].iloc[0])
    assert result["closed_at"].iloc[1] == pd.Timestamp("2026-11-02 17:00:00.250")
    assert result["amount"].iloc[0] == 1234.57 and pd.isna(result["amount"].iloc[1])
    assert result["amount_reporting"].tolist() == [1358.02, 99.5]
    assert str(result["amount"].dtype) == "float64"
    assert str(result["has_history"].dtype) == "bool" and result["has_history"].tolist() == [True, False]
    assert str(result["push_count"].dtype) == "int64" and result["push_count"].tolist() == [0, 3]
    assert str(result["stage_order"].dtype) == "Int64"
    assert result["stage_order"].iloc[0] == 2 and pd.isna(result["stage_order"].iloc[1])
    assert result["account"].iloc[0] == "Acme" and pd.isna(result["account"].iloc[1])
    assert result["deal_name"].tolist() == ['He said "yes", then\nleft;\t50% \\ done \u00e9', ""]
    assert pd.isna(result["crm_probability"].iloc[0]) and result["crm_probability"].iloc[1] == 0.35

    # NaN is stored as NULL (PostgreSQL would otherwise keep a float 'NaN'), dates as dates.
    table = qualified(warehouse, "deals")
    assert sql_rows(warehouse, f"SELECT COUNT(*) FROM {table} WHERE crm_probability IS NULL") == [(1,)]
    assert sql_rows(warehouse, f"SELECT COUNT(*) FROM {table} WHERE amount IS NULL") == [(1,)]
    (close_date,) = sql_rows(warehouse, f"SELECT expected_close_date FROM {table} WHERE deal_id = 'D1'")[0]
    assert str(close_date) == "2026-12-31"


def test_sqlite_stores_dates_and_timestamps_as_sqlalchemy_text(tmp_path):
    """The SQLite file holds DATE as YYYY-MM-DD and TIMESTAMP as YYYY-MM-DD HH:MM:SS.ffffff (the
    text SQLAlchemy's SQLite types write and parse), NULL as NULL; large whole numbers and non-ASCII
    text arrive exactly."""
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.sqlite'}")
    wh.create_all()
    claimed(wh)
    frame = deals(["D1", "D2", "D3"])
    frame["created_at"] = pd.to_datetime(["2026-11-02 17:00:00.000250", "1999-12-31 23:59:59.999999", "2026-01-05"], format="ISO8601")
    frame["closed_at"] = pd.to_datetime([None, "2026-03-04 05:06:07", None])
    frame["expected_close_date"] = pd.to_datetime(["2026-12-31 15:45", None, "0999-01-02"], format="ISO8601")
    frame["source_row"] = [2**53 + 1, 2**62, 3]  # beyond a float's exact whole numbers
    frame["deal_name"] = ["Ærø – 東京 🚀", "", None]
    wh.write("deals", frame, as_of=AS_OF, run_id="run-a")
    rows = sql_rows(
        wh, "SELECT deal_id, created_at, closed_at, expected_close_date, as_of, source_row, deal_name FROM deals ORDER BY deal_id"
    )
    assert rows == [
        ("D1", "2026-11-02 17:00:00.000250", None, "2026-12-31", "2026-11-15", 9007199254740993, "Ærø – 東京 🚀"),
        ("D2", "1999-12-31 23:59:59.999999", "2026-03-04 05:06:07.000000", None, "2026-11-15", 4611686018427387904, ""),
        ("D3", "2026-01-05 00:00:00.000000", None, "0999-01-02", "2026-11-15", 3, None),
    ]
    back = wh.read("deals").set_index("deal_id")
    assert back.loc["D2", "created_at"] == pd.Timestamp("1999-12-31 23:59:59.999999")
    assert back.loc["D3", "expected_close_date"] == pd.Timestamp("0999-01-02")
    assert back["source_row"].tolist() == [9007199254740993, 4611686018427387904, 3]
    wh.dispose()


def test_a_new_sqlite_warehouse_has_16_kib_pages_and_an_existing_one_keeps_its_own(tmp_path):
    new = Warehouse(f"sqlite:///{tmp_path / 'new.sqlite'}")
    new.create_all()
    assert sql_rows(new, "PRAGMA page_size") == [(16384,)]
    new.dispose()
    old_file = tmp_path / "old.sqlite"
    with sqlite3.connect(old_file) as conn:  # a warehouse file made before, with SQLite's default pages
        conn.execute("PRAGMA page_size = 4096")
        conn.execute("CREATE TABLE made_before (x INTEGER)")
    old = Warehouse(f"sqlite:///{old_file}")
    old.create_all()
    claimed(old)
    old.write("deals", deals(["D1", "D2"]), as_of=AS_OF, run_id="run-a")
    assert sql_rows(old, "PRAGMA page_size") == [(4096,)]
    assert old.read("deals")["deal_id"].tolist() == ["D1", "D2"]
    old.dispose()


def test_python_and_timezone_aware_values_are_converted(warehouse):
    claimed(warehouse)
    frame = scores(["D1", "D2"])
    frame["expected_close_date"] = [dt.date(2027, 1, 15), None]
    frame["win_probability"] = [np.float32(0.75), np.float64(0.5)]
    frame["expected_value"] = [np.int64(750), 1000]
    warehouse.write("deal_scores", frame, as_of=AS_OF, run_id="run-a")
    result = warehouse.read("deal_scores")
    assert result["expected_close_date"].iloc[0] == pd.Timestamp("2027-01-15")
    assert pd.isna(result["expected_close_date"].iloc[1])
    assert result["win_probability"].tolist() == [0.75, 0.5]
    assert result["expected_value"].tolist() == [750.0, 1000.0]

    run = model_run("v1", 0.8)
    run["trained_at"] = pd.to_datetime(["2026-11-01 03:00:00+01:00"])  # 02:00 UTC
    warehouse.write("model_runs", run, as_of=AS_OF, run_id="run-a")
    assert warehouse.read("model_runs")["trained_at"].tolist() == [pd.Timestamp("2026-11-01 02:00:00")]


# ------------------------------------------------------------------------------------------------
# The table reference page


def _doc_type(column: sa.Column) -> str:
    """How docs/warehouse.md spells a column's type."""
    kind = column.type
    if isinstance(kind, sa.Boolean):
        return "BOOLEAN"
    if isinstance(kind, sa.DateTime):
        return "TIMESTAMP"
    if isinstance(kind, sa.Date):
        return "DATE"
    if isinstance(kind, sa.BigInteger):
        return "BIGINT"
    if isinstance(kind, sa.Integer):
        return "INTEGER"
    if isinstance(kind, sa.Float):
        return "FLOAT"
    if isinstance(kind, sa.Numeric):
        return f"NUMERIC({kind.precision},{kind.scale})"
    if isinstance(kind, sa.String) and kind.length:
        return f"VARCHAR({kind.length})"
    return "TEXT"


def _doc_sections() -> dict[str, str]:
    text = DOCS.read_text(encoding="utf-8")
    sections = {}
    for chunk in re.split(r"^## ", text, flags=re.M)[1:]:
        heading, _, body = chunk.partition("\n")
        match = re.match(r"`(\w+)`", heading)
        if match:
            sections[match.group(1)] = body
    return sections


def test_docs_describe_every_table_and_column():
    sections = _doc_sections()
    replace_words = {
        "as_of": "replaces exactly the rows of its `as_of`",
        "whole": "replaces every row",
        "key": "replaces only the rows whose",
    }
    for table in [*metadata.tables.values(), *claims_metadata.tables.values()]:
        assert table.name in sections, f"docs/warehouse.md has no section for table {table.name}"
        body = sections[table.name]
        key = ", ".join(f"`{c.name}`" for c in table.primary_key.columns)
        assert f"one row per {key}" in body, f"{table.name}: grain (key) not documented as {key}"
        if table.name in TABLES:
            assert replace_words[TABLES[table.name].replace] in body, f"{table.name}: how runs replace it"
        rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \| ([^|]*) \| (.+) \|$", body, flags=re.M)
        documented = {name: (kind.strip(), required.strip(), meaning.strip()) for name, kind, required, meaning in rows}
        assert list(documented) == [c.name for c in table.columns], f"{table.name}: documented columns differ"
        for column in table.columns:
            kind, required, meaning = documented[column.name]
            where = f"docs/warehouse.md, table {table.name}, column {column.name}"
            assert kind == _doc_type(column), f"{where}: type {kind}, expected {_doc_type(column)}"
            assert required == ("key" if column.primary_key else "yes" if not column.nullable else ""), where
            assert column.comment, f"etl/tables.py: {table.name}.{column.name} needs comment= (its meaning)"
            assert meaning == column.comment, f"{where}: meaning differs from the column's comment in etl/tables.py"
    text = DOCS.read_text(encoding="utf-8")
    for view in LATEST_VIEWS | {f"latest_{name}" for name, spec in TABLES.items() if spec.replace == "as_of"}:
        assert f"`{view}`" in text, f"docs/warehouse.md does not list the view {view}"
    assert "Connecting BI tools" in text
