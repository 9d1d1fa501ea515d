"""Columns parsed at the same time (`RowChecks.parsed_all`, `etl.threads.map_in_threads`) quarantine
exactly what parsing them one after the other does: each row under its first problem, in the
order the checks are listed."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from etl.ingest.csvfiles import Quarantine, RowChecks, load_csv, parse_numbers, parse_timestamps
from etl.threads import map_in_threads


def test_map_in_threads_keeps_the_order_and_uses_several_threads(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    seen = set()
    barrier = threading.Barrier(2, timeout=10)

    def square(x):
        seen.add(threading.current_thread().name)
        if x < 2:
            barrier.wait()  # the first two items are worked on at the same time, or this times out
        return x * x

    assert map_in_threads(square, range(5)) == [0, 1, 4, 9, 16]
    assert len(seen) == 2
    assert map_in_threads(square, []) == []


def test_map_in_threads_raises_the_error_of_the_work():
    def fail_on_three(x):
        if x == 3:
            raise ValueError("three")
        return x

    with pytest.raises(ValueError, match="three"):
        map_in_threads(fail_on_three, range(6))


def _checks(tmp_path) -> tuple[RowChecks, Quarantine]:
    path = tmp_path / "rows.csv"
    path.write_text("Id,When,Amount\nA,2026-01-05 10:00:00,12.5\nB,not a date,oops\nC,,7\nD,2026-02-30 00:00:00,1e3\n")
    table = load_csv(path, "test rows", ["Id", "When", "Amount"])
    quarantine = Quarantine()
    key = quarantine.register(table)
    frame = pd.DataFrame({column: table.text(column) for column in ("Id", "When", "Amount")})
    frame.insert(0, "_file", np.int64(key))
    frame.insert(1, "_pos", np.arange(len(table), dtype=np.int64))
    frame["_blank"] = table.blank_rows()
    return RowChecks(frame, quarantine), quarantine


@pytest.mark.parametrize("first", ["When", "Amount"])
def test_a_row_bad_in_two_columns_is_quarantined_for_the_first_listed(tmp_path, first):
    checks, quarantine = _checks(tmp_path)
    specs = {
        "When": ("When", parse_timestamps, "unparseable_date", "a date"),
        "Amount": ("Amount", parse_numbers, "unparseable_amount", "a number"),
    }
    order = [first, "Amount" if first == "When" else "When"]
    values = dict(zip(order, checks.parsed_all([specs[name] for name in order])))
    # Row B is bad in both columns; row D's 30 February is not a date; row C's blank date is allowed.
    assert checks.bad.tolist() == [False, True, False, True]
    codes = quarantine.first_reason_codes(np.zeros(4, dtype=np.int64), np.arange(4))
    assert codes[1] == specs[first][2]
    assert codes[3] == "unparseable_date"
    assert values["Amount"].tolist()[0] == 12.5 and values["Amount"].tolist()[3] == 1000.0
    assert values["When"].tolist()[0] == pd.Timestamp("2026-01-05 10:00:00")
    assert pd.isna(values["When"].iloc[2])
    reasons = quarantine.frame().set_index("source_row")["reason"]
    assert reasons.loc[3] == (
        "When: expected a date, got 'not a date'; Amount: expected a number, got 'oops'" if first == "When"
        else "Amount: expected a number, got 'oops'; When: expected a date, got 'not a date'"
    )
