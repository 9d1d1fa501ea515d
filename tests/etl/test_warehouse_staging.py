"""A SQLite warehouse file takes large frames through staging files (Arrow batches bound in C by the
ADBC SQLite driver, then copied in the write transaction): the file must hold exactly what the
row-by-row `executemany` path stores, and the write must stay one fenced, atomic transaction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import etl.warehouse as warehouse_module
from etl.warehouse import StaleRunError, Warehouse, WarehouseError
from tests.etl.test_warehouse import AS_OF, NEXT_DAY, claimed, deals, forecast, scores, sql_rows

DEAL_COLUMNS = [
    "deal_id", "source_row", "deal_name", "amount", "amount_reporting", "created_at", "closed_at",
    "expected_close_date", "stage_order", "crm_probability", "push_count", "has_history", "account", "as_of",
]


def tricky_deals() -> pd.DataFrame:
    """Five deals with NULLs, non-ASCII text, whole and fractional amounts, large integers,
    microseconds and dates on either side of the batch boundaries of `BATCH_ROWS = 2`."""
    frame = deals(["D1", "D2", "D3", "D4", "D5"])
    frame["source_row"] = [2**53 + 1, 2**62, 3, 4, 5]
    frame["deal_name"] = ["Ærø – 東京 🚀", "", None, 'say "hi"\nbye', "plain"]
    frame["amount"] = [500.0, 1234.567, np.nan, -0.5, 1e12]
    frame["created_at"] = pd.to_datetime(
        ["2026-11-02 17:00:00.000250", "1999-12-31 23:59:59.999999", "2026-01-05", "2026-02-03 04:05:06", "2026-03-04"],
        format="ISO8601",
    )
    frame["closed_at"] = pd.to_datetime([None, "2026-03-04 05:06:07", None, None, "2026-10-01 12:00:00"])
    frame["expected_close_date"] = pd.to_datetime(["2026-12-31 15:45", None, "0999-01-02", "2026-06-30", None], format="ISO8601")
    frame["stage_order"] = pd.array([2, None, 1, 3, None], dtype="Int64")
    frame["crm_probability"] = [np.nan, 0.35, 1.0, 0.1, 0.0]
    frame["push_count"] = np.array([0, 3, 1, 0, 7], dtype=np.int32)
    frame["has_history"] = np.array([True, False, True, False, True])
    frame["account"] = pd.array(["Acme", None, "Beta", None, "Ço"], dtype="string")
    return frame


def stored(wh: Warehouse, table: str, columns: list[str]) -> list[tuple]:
    """Every row as the file holds it, in rowid order: each value with its SQLite storage class."""
    shown = ", ".join(f"typeof({c}), {c}" for c in columns)
    return sql_rows(wh, f"SELECT rowid, {shown} FROM {table} ORDER BY rowid")


@pytest.fixture
def staged_always(monkeypatch):
    """Every frame of a SQLite file goes through the staging files, two rows per Arrow batch."""
    monkeypatch.setattr(warehouse_module, "SQLITE_STAGED_ROWS", 1)
    monkeypatch.setattr(warehouse_module, "BATCH_ROWS", 2)


def sqlite_warehouse(folder, name: str = "w.sqlite") -> Warehouse:
    folder.mkdir(parents=True, exist_ok=True)
    wh = Warehouse(f"sqlite:///{folder / name}")
    wh.create_all()
    return wh


def test_a_staged_write_stores_exactly_what_executemany_stores(tmp_path, monkeypatch):
    monkeypatch.setattr(warehouse_module, "BATCH_ROWS", 2)
    monkeypatch.setattr(warehouse_module, "SQLITE_STAGED_ROWS", 10**9)
    row_by_row = claimed(sqlite_warehouse(tmp_path / "rows"))
    row_by_row.write("deals", tricky_deals(), as_of=AS_OF, run_id="run-a")
    monkeypatch.setattr(warehouse_module, "SQLITE_STAGED_ROWS", 1)
    staged = claimed(sqlite_warehouse(tmp_path / "staged"))
    assert staged._staged_frames([warehouse_module.prepare_frame(staged._spec("deals"), tricky_deals(), AS_OF)]) == {
        "deals": "dealcast_staging_0"
    }
    staged.write("deals", tricky_deals(), as_of=AS_OF, run_id="run-a")

    rows = stored(staged, "deals", DEAL_COLUMNS)
    assert rows == stored(row_by_row, "deals", DEAL_COLUMNS)
    by_id = {row[2]: row for row in rows}
    d1, d2, d3 = by_id["D1"], by_id["D2"], by_id["D3"]
    # rowid, then (storage class, value) per column of DEAL_COLUMNS
    assert d1[0] == 1 and d3[0] == 3  # the frame's order
    assert d1[3:5] == ("integer", 9007199254740993)
    assert d1[5:7] == ("text", "Ærø – 東京 🚀") and d2[5:7] == ("text", "") and d3[5:7] == ("null", None)
    # NUMERIC(18, 2): 500.0 is kept as the integer 500 (SQLite's NUMERIC affinity), 1234.567 rounds to 1234.57.
    assert d1[7:9] == ("integer", 500) and d2[7:9] == ("real", 1234.57) and d3[7:9] == ("null", None)
    assert d1[11:13] == ("text", "2026-11-02 17:00:00.000250") and d3[11:13] == ("text", "2026-01-05 00:00:00.000000")
    assert d1[13:15] == ("null", None) and d2[13:15] == ("text", "2026-03-04 05:06:07.000000")
    assert d1[15:17] == ("text", "2026-12-31") and d3[15:17] == ("text", "0999-01-02")
    assert d2[17:19] == ("null", None) and d3[17:19] == ("integer", 1)
    assert d1[19:21] == ("null", None) and d2[19:21] == ("real", 0.35)
    assert d2[21:23] == ("integer", 3)
    assert d1[23:25] == ("integer", 1) and d2[23:25] == ("integer", 0)
    assert d2[25:27] == ("null", None)
    assert d1[27:29] == ("text", "2026-11-15")
    assert staged.read("deals")["deal_id"].tolist() == ["D1", "D2", "D3", "D4", "D5"]
    assert [p.name for p in (tmp_path / "staged").iterdir() if "staging" in p.name] == []  # removed after the write
    for wh in (row_by_row, staged):
        wh.dispose()


def test_staged_rows_land_in_their_columns_when_the_table_orders_them_otherwise(tmp_path, staged_always):
    # A warehouse from an older Dealcast whose deals table lacked crm_close_date: the upgrade adds it
    # as the table's last column, so the file's column order differs from the contract's.
    folder = tmp_path / "old"
    wh = sqlite_warehouse(folder)
    with wh.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE deals DROP COLUMN crm_close_date")
    wh.dispose()
    wh = claimed(sqlite_warehouse(folder))
    assert sql_rows(wh, "SELECT name FROM pragma_table_info('deals') ORDER BY cid DESC LIMIT 1") == [("crm_close_date",)]
    frame = tricky_deals()
    frame["crm_close_date"] = pd.to_datetime([None, "2026-03-05", None, None, "2026-10-02"])
    wh.write("deals", frame, as_of=AS_OF, run_id="run-a")
    assert sql_rows(wh, "SELECT deal_id, crm_close_date, booking_date FROM deals ORDER BY deal_id") == [
        ("D1", None, None), ("D2", "2026-03-05", None), ("D3", None, None), ("D4", None, None), ("D5", "2026-10-02", None),
    ]
    wh.dispose()


def test_a_failing_table_rolls_back_the_staged_ones(tmp_path, staged_always):
    wh = claimed(sqlite_warehouse(tmp_path / "w"))
    wh.write_many({"deals": deals(["A1", "A2", "A3"]), "forecast_quarterly": forecast(["2026-Q4"])}, as_of=AS_OF, run_id="run-a")
    with pytest.raises(WarehouseError, match="forecast_quarterly has 2 rows sharing a primary key"):
        wh.write_many(
            {"deals": tricky_deals(), "forecast_quarterly": forecast(["2027-Q1", "2027-Q1"])}, as_of=AS_OF, run_id="run-a"
        )
    assert wh.read("deals")["deal_id"].tolist() == ["A1", "A2", "A3"]
    assert wh.read("forecast_quarterly")["quarter"].tolist() == ["2026-Q4"]
    assert [p.name for p in (tmp_path / "w").iterdir() if "staging" in p.name] == []
    wh.dispose()


def test_a_staged_frame_with_repeated_keys_is_refused_and_names_them(tmp_path, staged_always):
    wh = claimed(sqlite_warehouse(tmp_path / "w"))
    wh.write("deals", deals(["A1"]), as_of=AS_OF, run_id="run-a")
    with pytest.raises(WarehouseError) as caught:
        wh.write("deals", deals(["B1", "B2", "B1"]), as_of=AS_OF, run_id="run-a")
    assert "deals has 2 rows sharing a primary key (deal_id), row(s) 0, 2" in str(caught.value)
    assert wh.read("deals")["deal_id"].tolist() == ["A1"]
    wh.dispose()


def test_a_superseded_run_cannot_write_through_the_staging_files(tmp_path, staged_always):
    wh = claimed(sqlite_warehouse(tmp_path / "w"), run_id="run-a")
    wh.write("deals", deals(["A1", "A2"]), as_of=AS_OF, run_id="run-a")
    wh.claim(AS_OF, "run-b", supersede="run-a")
    with pytest.raises(StaleRunError):
        wh.write("deals", deals(["X1", "X2", "X3"]), as_of=AS_OF, run_id="run-a")
    assert wh.read("deals")["deal_id"].tolist() == ["A1", "A2"]
    wh.dispose()


def test_the_largest_frames_are_spread_over_the_staging_files(tmp_path, monkeypatch):
    monkeypatch.setattr(warehouse_module, "SQLITE_STAGED_ROWS", 3)
    wh = sqlite_warehouse(tmp_path / "w")
    prepared = [
        warehouse_module.prepare_frame(wh._spec("deals"), deals([f"D{i}" for i in range(5)]), AS_OF),
        warehouse_module.prepare_frame(wh._spec("forecast_quarterly"), forecast(["2026-Q1", "2026-Q2"]), AS_OF),
        warehouse_module.prepare_frame(
            wh._spec("deal_scores"), scores(["s1", "s2", "s3"]), AS_OF
        ),
        warehouse_module.prepare_frame(wh._spec("pipeline_stages"), pd.DataFrame(columns=wh._spec("pipeline_stages").columns), AS_OF),
    ]
    # 5 rows to the first file, 3 to the second; 2 rows and 0 rows are below the threshold of 3.
    assert wh._staged_frames(prepared) == {"deals": "dealcast_staging_0", "deal_scores": "dealcast_staging_1"}
    memory = Warehouse("sqlite:///:memory:")
    assert memory._staged_frames(prepared) == {}  # no file to stage beside: row by row
    wh.dispose()
    memory.dispose()


def test_two_nights_of_a_current_state_table_through_the_staging_files(tmp_path, staged_always):
    wh = claimed(sqlite_warehouse(tmp_path / "w"))
    wh.write("deals", deals(["A1", "A2", "A3"]), as_of=AS_OF, run_id="run-a")
    wh.claim(NEXT_DAY, "run-b")
    wh.write("deals", deals(["B1", "B2"]), as_of=NEXT_DAY, run_id="run-b")
    back = wh.read("deals")
    assert back["deal_id"].tolist() == ["B1", "B2"]
    assert back["as_of"].tolist() == [pd.Timestamp(NEXT_DAY)] * 2
    assert sql_rows(wh, "SELECT MIN(rowid), MAX(rowid) FROM deals") == [(1, 2)]
    wh.dispose()


def test_the_deals_frame_is_unchanged_by_staging(tmp_path, staged_always):
    frame = tricky_deals()
    before = frame.copy()
    wh = claimed(sqlite_warehouse(tmp_path / "w"))
    wh.write("deals", frame, as_of=AS_OF, run_id="run-a")
    pd.testing.assert_frame_equal(frame, before)
    wh.dispose()


def test_text_held_by_arrow_in_several_chunks_is_staged(tmp_path, staged_always):
    import pyarrow as pa

    frame = deals(["C1", "C2", "C3"])
    frame["deal_id"] = pd.Series(pd.arrays.ArrowStringArray(pa.chunked_array([["C1", "C2"], ["C3"]])))
    frame["account"] = pd.Series(pd.arrays.ArrowStringArray(pa.chunked_array([["x"], [None, "z"]])))
    wh = claimed(sqlite_warehouse(tmp_path / "w"))
    wh.write("deals", frame, as_of=AS_OF, run_id="run-a")
    assert sql_rows(wh, "SELECT deal_id, account FROM deals ORDER BY rowid") == [("C1", "x"), ("C2", None), ("C3", "z")]
    wh.dispose()


def _autocheckpoint_pages(wh: Warehouse) -> int:
    with wh.engine.connect() as conn:
        return conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()


def test_a_staged_write_is_checkpointed_into_the_database_file(tmp_path, staged_always):
    """The staged transaction commits without SQLite's automatic checkpoint and the write
    checkpoints afterwards: the database file alone, without its write-ahead log, holds the night,
    and the connection goes back to SQLite's automatic checkpoints."""
    import shutil
    import sqlite3

    wh = claimed(sqlite_warehouse(tmp_path / "w"))
    wh.write("deals", tricky_deals(), as_of=AS_OF, run_id="run-a")
    shutil.copyfile(tmp_path / "w" / "w.sqlite", tmp_path / "file-only.sqlite")  # not the -wal file
    copy = sqlite3.connect(tmp_path / "file-only.sqlite")
    assert copy.execute("SELECT deal_id FROM deals ORDER BY rowid").fetchall() == [(f"D{i}",) for i in range(1, 6)]
    copy.close()
    assert _autocheckpoint_pages(wh) == 1000
    wh.dispose()


def test_a_failed_staged_write_gives_the_connection_its_automatic_checkpoints_back(tmp_path, staged_always):
    wh = claimed(sqlite_warehouse(tmp_path / "w"))
    with pytest.raises(WarehouseError):
        wh.write("deals", deals(["D1", "D1"]), as_of=AS_OF, run_id="run-a")
    assert _autocheckpoint_pages(wh) == 1000
    wh.dispose()
