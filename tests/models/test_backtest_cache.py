"""The backtest computes each past quarter once and reuses it while nothing it read has changed.

The hand CRM of test_backtest (calendar quarters, data from 2023-12-01) read as of 2024-09-30 has
two backtested quarters: 2024-Q2 (its first full quarter of history is 2024-Q1) and 2024-Q3. Each
quarter's key covers the history dated up to the quarter's end, so:
- a change dated inside 2024-Q3 (a deal created 2024-07-10) recomputes 2024-Q3 only;
- a change dated inside 2024-Q2 recomputes both quarters (2024-Q3's history includes 2024-Q2's);
- a change dated after 2024-09-30 recomputes nothing;
- a changed setting (seed) recomputes both.
A reused quarter is never retrained: `models_at` is made to fail on the nights that must reuse.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

import models.backtest as backtest
from etl.config import ForecastConfig, ModelConfig
from etl.warehouse import Warehouse
from models.backtest import forecast_backtest, run_backtest
from tests.models.hand_crm import CATALOG
from tests.models.test_backtest import hand_deals_and_events

NIGHT_1 = dt.date(2024, 9, 30)
NIGHT_2 = dt.date(2024, 10, 1)
CONFIG = ForecastConfig(draws=500, seed=3)
MODEL = ModelConfig()
BOTH = ("2024-Q2", "2024-Q3")


def crm(extra_deals=(), extra_events=()):
    """The hand CRM plus deals and events (deal_id, changed_at, stage)."""
    return hand_deals_and_events(extra_deals=extra_deals, extra_events=extra_events)


def night(deals, history, as_of, cache=None, config=CONFIG, new_quarters=None):
    with threadpool_limits(limits=1, user_api="openmp"):
        return run_backtest(
            deals, history, CATALOG, as_of, MODEL, config, quarters=None, min_history_quarters=1,
            cache=cache, new_quarters=new_quarters,
        )


def fresh(deals, history, as_of, config=CONFIG):
    with threadpool_limits(limits=1, user_api="openmp"):
        return forecast_backtest(deals, history, CATALOG, as_of, MODEL, config, quarters=None, min_history_quarters=1)


@pytest.fixture
def no_training(monkeypatch):
    """Any retrain fails the test: a night that must reuse every quarter trains nothing."""

    def refuse(*args, **kwargs):
        raise AssertionError("a quarter was retrained although its cached rows should have been reused")

    monkeypatch.setattr(backtest, "models_at", refuse)


@pytest.fixture(scope="module")
def first_night():
    deals, history = crm()
    return night(deals, history, NIGHT_1)


def test_the_first_night_computes_both_quarters(first_night):
    assert first_night.computed == BOTH and first_night.reused == () and first_night.pending == ()
    assert sorted(first_night.frame["quarter"].unique()) == list(BOTH)
    # Actual 2024-Q2 worked out in test_backtest: 6500; 2024-Q3 has no win (O3 won 06-05, N2 06-20).
    totals = first_night.frame.query("segment_type == 'all' and method == 'ours' and checkpoint == 'start'")
    assert totals.set_index("quarter")["actual"].to_dict() == {"2024-Q2": 6500.0, "2024-Q3": 0.0}


def test_second_night_reuses_every_quarter_and_equals_a_fresh_run(first_night, no_training):
    deals, history = crm()
    second = night(deals, history, NIGHT_2, cache=first_night.cache_rows)
    assert second.reused == BOTH and second.computed == () and second.pending == ()
    assert second.cache_rows.empty


def test_a_reused_night_equals_a_fresh_computation(first_night):
    deals, history = crm()
    second = night(deals, history, NIGHT_2, cache=first_night.cache_rows)
    pd.testing.assert_frame_equal(second.frame, fresh(deals, history, NIGHT_2))
    # Same forecasts as the first night; only the run date differs.
    pd.testing.assert_frame_equal(second.frame.drop(columns="as_of"), first_night.frame.drop(columns="as_of"))


def test_the_cache_survives_the_warehouse(first_night, tmp_path, no_training):
    """Rows written to and read back from the warehouse table are reused as they are."""
    warehouse = Warehouse(f"sqlite:///{tmp_path / 'w.db'}", schema=None)
    warehouse.create_all()
    warehouse.claim(NIGHT_1, "run-1")
    assert warehouse.write("forecast_backtest_cache", first_night.cache_rows, as_of=NIGHT_1, run_id="run-1") == len(first_night.cache_rows)
    stored = warehouse.read("forecast_backtest_cache")
    deals, history = crm()
    second = night(deals, history, NIGHT_2, cache=stored)
    assert second.reused == BOTH and second.computed == ()
    pd.testing.assert_frame_equal(second.frame.drop(columns="as_of"), first_night.frame.drop(columns="as_of"))


def test_a_change_inside_the_last_quarter_recomputes_only_that_quarter(first_night):
    # N4 is created 2024-07-10 and won 2024-08-01 (500): dated inside 2024-Q3 only.
    deals, history = crm([{"deal_id": "N4", "created_at": "2024-07-10 09:00", "amount": 500.0}],
                         [("N4", "2024-07-10 09:00", "Qualify"), ("N4", "2024-08-01 10:00", "Closed Won")])
    second = night(deals, history, NIGHT_2, cache=first_night.cache_rows)
    assert second.reused == ("2024-Q2",) and second.computed == ("2024-Q3",)
    pd.testing.assert_frame_equal(second.frame, fresh(deals, history, NIGHT_2))
    totals = second.frame.query("segment_type == 'all' and method == 'ours' and checkpoint == 'start'")
    assert totals.set_index("quarter")["actual"].to_dict() == {"2024-Q2": 6500.0, "2024-Q3": 500.0}


def test_a_re_exported_past_recomputes_that_quarter_and_every_later_one(first_night):
    # O4 moves to X on 2024-05-02, inside 2024-Q2: both quarters' history up to their end changes.
    deals, history = crm(extra_events=[("O4", "2024-05-02 10:00", "X")])
    second = night(deals, history, NIGHT_2, cache=first_night.cache_rows)
    assert second.reused == () and second.computed == BOTH
    pd.testing.assert_frame_equal(second.frame, fresh(deals, history, NIGHT_2))
    # The week-8 checkpoint (sees 2024-05-26) now has O4 in X: its CRM-weighted forecast changes
    # from 2460 (test_backtest) to 1600 + 800 x 0.5 (X's default) + 700 = 2700.
    row = second.frame.query("quarter == '2024-Q2' and checkpoint == 'week8' and method == 'crm_weighted' and segment_type == 'all'")
    assert row["forecast_p50"].item() == pytest.approx(2700.0)


def test_history_after_the_last_quarter_recomputes_nothing(first_night, no_training):
    # N5 is created and won on 2024-10-01, after 2024-Q3's end.
    deals, history = crm([{"deal_id": "N5", "created_at": "2024-10-01 09:00", "amount": 300.0}],
                         [("N5", "2024-10-01 09:00", "Qualify"), ("N5", "2024-10-01 15:00", "Closed Won")])
    second = night(deals, history, NIGHT_2, cache=first_night.cache_rows)
    assert second.reused == BOTH and second.computed == ()


def test_a_changed_setting_recomputes_every_quarter(first_night):
    deals, history = crm()
    config = replace(CONFIG, seed=4)
    second = night(deals, history, NIGHT_2, cache=first_night.cache_rows, config=config)
    assert second.reused == () and second.computed == BOTH
    pd.testing.assert_frame_equal(second.frame, fresh(deals, history, NIGHT_2, config=config))
    # How many quarters are shown picks quarters; it does not change one: still reused.
    assert night(deals, history, NIGHT_2, cache=first_night.cache_rows, config=replace(CONFIG, backtest_quarters=3)).reused == BOTH


def test_a_new_code_version_recomputes_every_quarter(first_night, monkeypatch):
    monkeypatch.setattr(backtest, "BACKTEST_CODE_VERSION", backtest.BACKTEST_CODE_VERSION + "-next")
    deals, history = crm()
    assert night(deals, history, NIGHT_2, cache=first_night.cache_rows).computed == BOTH


def test_the_first_nights_compute_at_most_the_budget_newest_first(first_night):
    deals, history = crm()
    one = night(deals, history, NIGHT_1, new_quarters=1)
    assert one.computed == ("2024-Q3",) and one.pending == ("2024-Q2",)
    assert list(one.frame["quarter"].unique()) == ["2024-Q3"]
    two = night(deals, history, NIGHT_2, cache=one.cache_rows, new_quarters=1)
    assert two.reused == ("2024-Q3",) and two.computed == ("2024-Q2",) and two.pending == ()
    cache = pd.concat([one.cache_rows, two.cache_rows], ignore_index=True)
    three = night(deals, history, NIGHT_2, cache=cache, new_quarters=1)
    assert three.reused == BOTH and three.computed == ()
    pd.testing.assert_frame_equal(three.frame, fresh(deals, history, NIGHT_2))
    with pytest.raises(ValueError, match="backtest_new_quarters"):
        night(deals, history, NIGHT_2, new_quarters=0)


# --- A messy org ----------------------------------------------------------------------------------

MESSY_END = dt.date(2026, 6, 30)


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """A small untidy org over two years (backdated entries, wins keyed in at close, ...): its
    four backtestable quarters are 2025-Q3 to 2026-Q2."""
    from etl.config import load_project_config
    from etl.ingest.exports import read_exports
    from sample_crm.generate import generate_sample

    out = tmp_path_factory.mktemp("messy_backtest")
    generate_sample(out, seed=11, end_date=MESSY_END, years=2.0, profile="messy")
    export = read_exports(out, load_project_config())
    config = ForecastConfig(draws=300, seed=5)
    with threadpool_limits(limits=1, user_api="openmp"):
        first = run_backtest(export.deals, export.history, export.stages, MESSY_END, MODEL, config, quarters=None)
    return export, config, first


@pytest.mark.slow
def test_messy_org_reuses_every_quarter_and_a_rewritten_past_recomputes_from_there(messy):
    export, config, first = messy
    quarters = ("2025-Q3", "2025-Q4", "2026-Q1", "2026-Q2")
    assert first.computed == quarters
    with threadpool_limits(limits=1, user_api="openmp"):
        nxt = MESSY_END + dt.timedelta(days=1)
        second = run_backtest(export.deals, export.history, export.stages, nxt, MODEL, config, quarters=None, cache=first.cache_rows)
        assert second.reused == quarters and second.computed == ()
        pd.testing.assert_frame_equal(
            second.frame,
            forecast_backtest(export.deals, export.history, export.stages, nxt, MODEL, config, quarters=None),
        )
        # A re-export rewrites the past: the history rows dated in 2026-Q1 lose their amounts'
        # cents (a currency re-conversion, say). 2025-Q3 and 2025-Q4 ended before: reused.
        history = export.history.copy()
        in_q1 = (history["changed_at"] >= "2026-01-01") & (history["changed_at"] < "2026-04-01")
        assert in_q1.sum() > 0
        history.loc[in_q1, "amount_reporting"] = history.loc[in_q1, "amount_reporting"].round(0) + 1.0
        third = run_backtest(export.deals, history, export.stages, nxt, MODEL, config, quarters=None, cache=first.cache_rows)
        assert third.reused == ("2025-Q3", "2025-Q4") and third.computed == ("2026-Q1", "2026-Q2")
        pd.testing.assert_frame_equal(
            third.frame, forecast_backtest(export.deals, history, export.stages, nxt, MODEL, config, quarters=None)
        )
