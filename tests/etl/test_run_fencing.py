"""Run fencing in the warehouse itself (claims with leases, heartbeats, release) and the
published-night manifest the latest_* views join on, on SQLite and PostgreSQL. The two Warehouse
objects of a test stand for two Dagster instances: they share nothing but the database."""

from __future__ import annotations

import csv
import datetime as dt
import sqlite3
import time

import pytest

from etl.cli import main as cli
from etl.charts import spreadsheet_safe
from etl.warehouse import ClaimRefusedError, StaleRunError, Warehouse, WarehouseError

from .test_warehouse import AS_OF, NEXT_DAY, qualified, scores, sql_rows


@pytest.fixture
def second(warehouse_target, warehouse):
    """Another process's view of the same warehouse."""
    url, schema = warehouse_target
    other = Warehouse(url, schema=schema or "dealcast")
    yield other
    other.dispose()


def test_a_live_claim_refuses_every_other_run_naming_the_holder(warehouse, second):
    warehouse.claim(AS_OF, "run-a")
    with pytest.raises(ClaimRefusedError) as refused:
        second.claim(AS_OF, "run-b")
    message = str(refused.value)
    assert "is being written by run run-a" in message and "dealcast release --as-of 2026-11-15" in message
    assert second.claimant(AS_OF) == "run-a"
    # run-b never claimed, so its writes are refused too; run-a's go through.
    with pytest.raises(StaleRunError):
        second.write("deal_scores", scores(["B1"]), as_of=AS_OF, run_id="run-b")
    assert warehouse.write("deal_scores", scores(["A1"]), as_of=AS_OF, run_id="run-a") == 1


def test_a_lapsed_lease_is_taken_over_and_the_old_run_is_fenced(warehouse, second):
    warehouse.claim(AS_OF, "run-a", lease_seconds=0.5)
    time.sleep(0.8)
    second.claim(AS_OF, "run-b")
    assert warehouse.claimant(AS_OF) == "run-b"
    with pytest.raises(StaleRunError, match="run run-b claimed it later"):
        warehouse.write("deal_scores", scores(["A1"]), as_of=AS_OF, run_id="run-a")
    assert warehouse.row_count("deal_scores") == 0


def test_heartbeats_and_writes_keep_a_claim_alive(warehouse, second):
    warehouse.claim(AS_OF, "run-a", lease_seconds=1.0)
    for _ in range(3):
        time.sleep(0.5)
        assert warehouse.heartbeat("run-a") == [AS_OF]
    with pytest.raises(ClaimRefusedError):
        second.claim(AS_OF, "run-b")
    time.sleep(0.5)
    warehouse.write("deal_scores", scores(["A1"]), as_of=AS_OF, run_id="run-a")  # renews as well
    time.sleep(0.5)
    with pytest.raises(ClaimRefusedError):
        second.claim(AS_OF, "run-b")


def test_release_clears_a_stuck_claim_and_fences_the_released_run(warehouse, second, capsys, monkeypatch, warehouse_target):
    warehouse.claim(AS_OF, "run-dead")
    url, schema = warehouse_target
    monkeypatch.setenv("DEALCAST_WAREHOUSE_URL", url)
    assert cli(["release", "--as-of", "2026-11-15", *(["--schema", schema] if schema else [])]) == 0
    assert "released as_of 2026-11-15 from run run-dead" in capsys.readouterr().out
    with pytest.raises(StaleRunError, match="was released at"):
        warehouse.write("deal_scores", scores(["X"]), as_of=AS_OF, run_id="run-dead")
    second.claim(AS_OF, "run-next")
    assert second.write("deal_scores", scores(["N1"]), as_of=AS_OF, run_id="run-next") == 1


def _latest(wh: Warehouse) -> list[tuple]:
    return sql_rows(wh, f"SELECT as_of, deal_id FROM {qualified(wh, 'latest_deal_scores')} ORDER BY deal_id")


def test_latest_views_show_only_a_published_night(warehouse):
    warehouse.claim(AS_OF, "run-a")
    warehouse.write("deal_scores", scores(["A1", "A2"]), as_of=AS_OF, run_id="run-a")
    assert _latest(warehouse) == []  # written, not published
    assert warehouse.publish_night(AS_OF, "run-a", required=["deal_scores"]) == {"deal_scores": 2}
    assert [row[1] for row in _latest(warehouse)] == ["A1", "A2"]
    assert warehouse.published_as_of() == AS_OF
    # The newest published night before a date (the volume check's baseline): none before AS_OF itself.
    assert warehouse.published_as_of(before=AS_OF) is None
    assert warehouse.published_as_of(before=NEXT_DAY) == AS_OF

    # The next night: one table written, another not; publishing refuses and the views stay put.
    warehouse.claim(NEXT_DAY, "run-b")
    warehouse.write("deal_scores", scores(["B1"]), as_of=NEXT_DAY, run_id="run-b")
    with pytest.raises(WarehouseError) as refused:
        warehouse.publish_night(NEXT_DAY, "run-b", required=["deal_scores", "forecast_quarterly"])
    assert "forecast_quarterly were not written for it" in str(refused.value)
    assert "keep showing the night of 2026-11-15" in str(refused.value)
    assert [row[1] for row in _latest(warehouse)] == ["A1", "A2"]
    assert warehouse.published_as_of() == AS_OF
    assert warehouse.claimant(NEXT_DAY) == "run-b"  # still held: it may finish the night


def test_publishing_releases_the_claim(warehouse, second):
    warehouse.claim(AS_OF, "run-a")
    warehouse.write("deal_scores", scores(["A1"]), as_of=AS_OF, run_id="run-a")
    warehouse.publish_night(AS_OF, "run-a", required=["deal_scores"])
    second.claim(AS_OF, "run-b")  # no wait for a lease: the night is done
    assert second.claimant(AS_OF) == "run-b"


def test_an_older_run_claims_table_gets_the_lease_columns(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE run_claims (as_of DATE NOT NULL PRIMARY KEY, run_id VARCHAR(64) NOT NULL, claimed_at DATETIME NOT NULL)")
        conn.execute("INSERT INTO run_claims VALUES ('2026-11-15', 'old-run', '2026-11-15 02:00:00.000000')")
    wh = Warehouse(f"sqlite:///{path}")
    try:
        wh.create_all()
        claim = wh.claim_of(AS_OF)
        assert claim.run_id == "old-run" and claim.lease_expires_at is None
        wh.claim(AS_OF, "new-run")  # an old claim has no lease: it has lapsed
        assert wh.claimant(AS_OF) == "new-run"
    finally:
        wh.dispose()


def test_a_csv_for_people_neutralises_formulas_and_the_warehouse_keeps_them(warehouse, tmp_path, monkeypatch, warehouse_target, capsys):
    names = ['=HYPERLINK("http://x","y")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\tTab", "Plain - name"]
    frame = scores([f"D{i}" for i in range(len(names))])
    frame["owner"] = names
    warehouse.claim(AS_OF, "run-a")
    warehouse.write("deal_scores", frame, as_of=AS_OF, run_id="run-a")
    assert warehouse.read("deal_scores")["owner"].tolist() == names  # stored verbatim
    url, schema = warehouse_target
    monkeypatch.setenv("DEALCAST_WAREHOUSE_URL", url)
    out = tmp_path / "scores.csv"
    args = ["export", "--table", "deal_scores", "--as-of", "2026-11-15", "--out", str(out)]
    assert cli(args + (["--schema", schema] if schema else [])) == 0
    assert "wrote 6 rows of deal_scores" in capsys.readouterr().out
    with open(out, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["owner"] for r in rows] == ["'" + n for n in names[:5]] + ["Plain - name"]
    assert [float(r["amount_reporting"]) for r in rows] == [1000.0 * (i + 1) for i in range(6)]  # numbers untouched
    raw = out.read_bytes()
    assert b'"\'=HYPERLINK(""http://x"",""y"")"' in raw  # quoted, inner quotes doubled


def test_spreadsheet_safe_leaves_negative_numbers_as_numbers():
    import pandas as pd

    frame = pd.DataFrame({"amount": [-500.0, 12.5], "note": ["-500", "ok"], "when": pd.to_datetime(["2026-01-01", None])})
    safe = spreadsheet_safe(frame)
    assert safe["amount"].tolist() == [-500.0, 12.5]
    assert safe["note"].tolist() == ["'-500", "ok"]
    assert safe["when"].equals(frame["when"])
