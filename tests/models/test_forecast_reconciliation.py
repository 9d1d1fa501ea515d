"""The forecast reconciles: one open pipeline per quarter shared with coverage and the waterfall,
overdue deals shown, per-deal contributions adding up to `expected`, outliers and their effect on P90.

Hand-built CRM, as of 2024-05-16 (2024-Q2; calendar quarters), every deal created inside 2024-Q2
but OD1 (2024-03-01: 2024-Q1's point matching the as_of, Feb 15, is before the data start, so no
past quarter feeds the new-deal stream). W was won on 2024-05-01 for 400 (Ana): the largest
win, so the outlier bar is 3 x 400 = 1,200. Open deals (owner, amount, expected close, score):

    A    Ana   500  2024-06-10   0.5     in Q2
    OD1  Ben   300  2024-03-20   0.2     overdue (from Q1)
    OD2  Ana   100  2024-05-01   0.4     overdue (earlier in Q2)
    NX   Ben  1000  2024-08-15   0.6     in Q3
    ND   Ana    50  (none)       1.0     no close date: in no quarter's pipeline
    OUT  Ben  5000  2024-06-01   0.2     in Q2, outlier: 5000 > 1200
    BAD  Ana   100  2024-04-10   0.3     overdue, outlier: expected to close before its creation (04-20)

The close timing is fixed by hand (`HandTiming`): P(closes by the end of Q2 | wins) and by the end
of Q3 per deal; nothing closes before the as_of, so P(close in Q2) = the first, P(close in Q3) =
second - first:

    A 0.8 / 1.0   OD1 1 / 1   OD2 0.5 / 0.9   NX 0.25 / 1   ND 0.1 / 0.3   OUT 1 / 1   BAD 1 / 1

Contributions (amount x score x P(close in quarter)), worked out by hand:

    Q2: A 200, OD1 60, OD2 20, OUT 1000, BAD 30 (open pipeline 1,310, overdue part 110);
        NX 150, ND 5 (outside the pipeline: 155). Expected = 400 + 1,310 + 155 = 1,865.
        Ana: 400 + (200 + 20 + 30) + 5 = 655;  Ben: (60 + 1000) + 150 = 1,210.
    Q3: NX 450 (pipeline); A 50, OD2 16, ND 10 (outside: 76). Expected 526.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from etl.analytics.coaching import pipeline_coverage
from etl.config import load_project_config
from etl.ingest.exports import read_exports
from etl.analytics.funnel import stage_conversion
from etl.pipeline_state import prepare_history
from etl.analytics.health import pipeline_waterfall
from etl.quarter_pipeline import closes_by, in_quarter_pipeline, overdue, pipeline_dates
from etl.tables import TABLES
from models.forecast import build_forecast
from models.revenue_calibration import RevenueCalibration
from models.timing import CloseTiming
from sample_crm.generate import generate_sample
from sample_crm.truth import SampleTruth
from tests.models.hand_crm import CATALOG, make_crm
from tests.models.test_forecast import SAMPLING_MARGIN, exact_distribution

AS_OF = pd.Timestamp("2024-05-16")
DRAWS = 10_000

OPEN = {
    # deal: (owner, amount, expected close, score, P(close by Q2 end), P(close by Q3 end))
    "A": ("Ana", 500.0, "2024-06-10", 0.5, 0.8, 1.0),
    "OD1": ("Ben", 300.0, "2024-03-20", 0.2, 1.0, 1.0),
    "OD2": ("Ana", 100.0, "2024-05-01", 0.4, 0.5, 0.9),
    "NX": ("Ben", 1000.0, "2024-08-15", 0.6, 0.25, 1.0),
    "ND": ("Ana", 50.0, None, 1.0, 0.1, 0.3),
    "OUT": ("Ben", 5000.0, "2024-06-01", 0.2, 1.0, 1.0),
    "BAD": ("Ana", 100.0, "2024-04-10", 0.3, 1.0, 1.0),
}


class HandTiming:
    """A close timing given by hand: P(closes before `until` | wins) per deal, for the two
    quarter ends (and 0 before Q2's end: nothing closes before the as_of)."""

    def probability_closed_by_many(self, open_deals, untils):
        out = np.zeros((len(open_deals), len(untils)))
        for j, until in enumerate(untils):
            for i, deal_id in enumerate(open_deals["deal_id"]):
                _, _, _, _, q2, q3 = OPEN[deal_id]
                until = pd.Timestamp(until)
                out[i, j] = 0.0 if until <= pd.Timestamp("2024-04-01") else q2 if until <= pd.Timestamp("2024-07-01") else q3
        return out


def hand_crm():
    deals = [{"deal_id": "W", "created_at": "2024-04-02", "amount": 400.0, "owner": "Ana"}]
    events = [("W", "2024-04-02", "Qualify"), ("W", "2024-05-01", "Closed Won")]
    for i, (deal_id, (owner, amount, close, *_)) in enumerate(OPEN.items()):
        created = {"BAD": "2024-04-20", "OD1": "2024-03-01"}.get(deal_id, f"2024-04-{3 + i:02d}")
        deals.append(
            {"deal_id": deal_id, "created_at": created, "amount": amount, "owner": owner,
             "expected_close_date": close if close else pd.NaT}
        )
        events.append((deal_id, created, "X"))
    return make_crm(deals, events)


@pytest.fixture(scope="module")
def forecast():
    deals, history = hand_crm()
    scores = pd.DataFrame({"deal_id": list(OPEN), "win_probability": [v[3] for v in OPEN.values()]})
    return build_forecast(
        deals, history, CATALOG, AS_OF, scores=scores, timing=HandTiming(), quotas=None, draws=DRAWS, seed=3,
        model_version="hand",
    )


def p90_range(amounts, chances, shift):
    """Where the P90 of 10,000 draws of independent wins must land: between the exact inverted-CDF
    quantiles at 0.9 -/+ the sampling margin (5 standard deviations of the empirical CDF), by
    enumerating every outcome."""
    law = exact_distribution(amounts, chances)
    values = sorted(law)
    cdf = np.cumsum([law[v] for v in values])
    low = values[int(np.argmax(cdf >= 0.9 - SAMPLING_MARGIN))]
    high = values[int(np.argmax(cdf >= 0.9 + SAMPLING_MARGIN))]
    return low + shift, high + shift


def row(frame, quarter, segment_type="all", segment="all"):
    match = frame[(frame["quarter"] == quarter) & (frame["segment_type"] == segment_type) & (frame["segment"] == segment)]
    assert len(match) == 1
    return match.iloc[0]


def test_the_shared_definition_by_hand():
    close = pd.Series(pd.to_datetime(["2024-03-20", "2024-05-01", "2024-06-30", "2024-07-01", None]))
    # as of 2024-05-16: the overdue dates move to Q2's first day; the others stay.
    dates = pipeline_dates(close, AS_OF)
    assert list(pd.to_datetime(dates)) == list(pd.to_datetime(["2024-04-01", "2024-05-01", "2024-06-30", "2024-07-01", None]))
    q2 = in_quarter_pipeline(close, AS_OF, pd.Timestamp("2024-04-01"), pd.Timestamp("2024-07-01"))
    q3 = in_quarter_pipeline(close, AS_OF, pd.Timestamp("2024-07-01"), pd.Timestamp("2024-10-01"))
    q1 = in_quarter_pipeline(close, AS_OF, pd.Timestamp("2024-01-01"), pd.Timestamp("2024-04-01"))
    assert q2.tolist() == [True, True, True, False, False]
    assert q3.tolist() == [False, False, False, True, False]
    assert not q1.any()  # a past quarter has no pipeline: its open deals are this quarter's overdue ones
    assert overdue(close, AS_OF).tolist() == [True, True, False, False, False]
    # The waterfall's rule at the end of Q2 is the current quarter's pipeline.
    assert closes_by(close.to_numpy(dtype="datetime64[us]"), np.datetime64("2024-07-01")).tolist() == q2.tolist()


def test_overdue_deals_are_in_the_current_quarters_pipeline(forecast):
    q2, q3 = row(forecast.quarterly, "2024-Q2"), row(forecast.quarterly, "2024-Q3")
    # Q2: A, OD1, OD2, OUT, BAD = 500 + 300 + 100 + 5000 + 100; overdue OD1, OD2, BAD.
    assert (q2["open_deals"], q2["open_pipeline"]) == (5, pytest.approx(6000.0))
    assert (q2["overdue_deals"], q2["overdue_pipeline"]) == (3, pytest.approx(500.0))
    assert (q3["open_deals"], q3["open_pipeline"], q3["overdue_deals"]) == (1, pytest.approx(1000.0), 0)
    # weighted by the stage X default 0.5 (no CRM probability on these deals)
    assert q2["weighted_pipeline_crm"] == pytest.approx(0.5 * 6000.0)


def test_expected_is_closed_won_plus_contributions_plus_new_deals_by_hand(forecast):
    q2, q3 = row(forecast.quarterly, "2024-Q2"), row(forecast.quarterly, "2024-Q3")
    assert q2["closed_won_to_date"] == pytest.approx(400.0)
    assert q2["pipeline_expected"] == pytest.approx(1310.0)
    assert q2["overdue_expected"] == pytest.approx(110.0)
    assert q2["other_open_expected"] == pytest.approx(155.0)
    assert q2["new_deals_expected"] == 0.0
    assert q2["expected"] == pytest.approx(1865.0)
    assert row(forecast.quarterly, "2024-Q2", "owner", "Ana")["expected"] == pytest.approx(655.0)
    assert row(forecast.quarterly, "2024-Q2", "owner", "Ben")["expected"] == pytest.approx(1210.0)
    assert (q3["pipeline_expected"], q3["other_open_expected"], q3["expected"]) == pytest.approx((450.0, 76.0, 526.0))


def test_contribution_rows_by_hand(forecast):
    c = forecast.contributions
    assert list(c.columns) == TABLES["forecast_contributions"].columns
    q2 = c[c["quarter"] == "2024-Q2"].set_index("deal_id")
    assert set(q2.index) == set(OPEN)
    assert q2["contribution"].to_dict() == pytest.approx(
        {"A": 200.0, "OD1": 60.0, "OD2": 20.0, "NX": 150.0, "ND": 5.0, "OUT": 1000.0, "BAD": 30.0}
    )
    assert q2.loc["OD2", "close_in_quarter_probability"] == pytest.approx(0.5)
    assert q2.loc["OD2", "win_in_quarter_probability"] == pytest.approx(0.2)
    assert sorted(q2.index[q2["in_open_pipeline"]]) == ["A", "BAD", "OD1", "OD2", "OUT"]
    assert sorted(q2.index[q2["overdue"]]) == ["BAD", "OD1", "OD2"]
    assert sorted(q2.index[q2["outlier"]]) == ["BAD", "OUT"]
    assert "12.5x the largest win (400)" in q2.loc["OUT", "outlier_reason"]
    assert "before it was created on 2024-04-20" in q2.loc["BAD", "outlier_reason"]
    # Q3: only deals that can win in Q3 or are in its pipeline.
    q3 = c[c["quarter"] == "2024-Q3"].set_index("deal_id")
    assert q3["contribution"].to_dict() == pytest.approx({"A": 50.0, "OD2": 16.0, "NX": 450.0, "ND": 10.0})


def test_the_revenue_calibration_is_a_visible_column():
    deals, history = hand_crm()
    scores = pd.DataFrame({"deal_id": list(OPEN), "win_probability": [v[3] for v in OPEN.values()]})
    # Deals of 1,000 and more (NX, OUT) win half as much money as their scores say.
    calibration = RevenueCalibration(edges=(999.0,), factors=(1.0, 0.5), rows=40)
    calibrated = build_forecast(
        deals, history, CATALOG, AS_OF, scores=scores, timing=HandTiming(), quotas=None, draws=DRAWS, seed=3,
        revenue_calibration=calibration,
    )
    q2 = row(calibrated.quarterly, "2024-Q2")
    # NX 150 -> 75 and OUT 1,000 -> 500: the calibration takes 575 off the 1,865 worked out above.
    assert q2["revenue_calibration"] == pytest.approx(-575.0)
    assert q2["expected"] == pytest.approx(1865.0 - 575.0)
    c = calibrated.contributions.set_index(["quarter", "deal_id"])
    assert c.loc[("2024-Q2", "OUT"), "revenue_factor"] == 0.5 and c.loc[("2024-Q2", "A"), "revenue_factor"] == 1.0
    assert c.loc[("2024-Q2", "OUT"), "win_probability"] == pytest.approx(0.2)  # the score itself is unchanged
    assert c.loc[("2024-Q2", "OUT"), "contribution"] == pytest.approx(500.0)
    assert check_reconciles(calibrated, deals) == len(calibrated.quarterly)
    # Q3: NX 450 -> 225.
    assert row(calibrated.quarterly, "2024-Q3")["revenue_calibration"] == pytest.approx(-225.0)


def check_reconciles(forecast, deals):
    """closed won + sum of contributions + new deals = expected within 0.1%, for every segment."""
    contributions = forecast.contributions
    checked = 0
    for r in forecast.quarterly.itertuples():
        part = contributions[contributions["quarter"] == r.quarter]
        if r.segment_type != "all":
            part = part[part[r.segment_type].fillna("(unknown)") == r.segment]
        total = r.closed_won_to_date + part["contribution"].sum() + r.new_deals_expected
        assert total == pytest.approx(r.expected, rel=1e-3, abs=0.01), (r.quarter, r.segment_type, r.segment)
        checked += 1
    return checked


def test_every_segment_reconciles(forecast):
    deals, _ = hand_crm()
    assert check_reconciles(forecast, deals) == len(forecast.quarterly)


def test_outliers_and_their_effect_on_p90(forecast):
    q2 = row(forecast.quarterly, "2024-Q2")
    assert (q2["outlier_deals"], q2["outlier_pipeline"]) == (2, pytest.approx(5100.0))
    # Q2 win chances: A 0.4, OD1 0.2, OD2 0.2, NX 0.15, ND 0.1, OUT 0.2, BAD 0.3; closed won 400.
    amounts = {"A": 500, "OD1": 300, "OD2": 100, "NX": 1000, "ND": 50, "OUT": 5000, "BAD": 100}
    chance = {"A": 0.4, "OD1": 0.2, "OD2": 0.2, "NX": 0.15, "ND": 0.1, "OUT": 0.2, "BAD": 0.3}
    low, high = p90_range([amounts[d] for d in amounts], [chance[d] for d in amounts], 400)
    kept = [d for d in amounts if d not in ("OUT", "BAD")]
    low_without, high_without = p90_range([amounts[d] for d in kept], [chance[d] for d in kept], 400)
    # With OUT (chance 0.2 > 0.1) the P90 is a quarter in which it wins: at least 400 + 5,000; without
    # the outliers, at most 400 + every other deal (500 + 300 + 100 + 1,000 + 50 = 1,950).
    assert low >= 5400.0 and high_without <= 2350.0
    assert low <= q2["p90"] <= high
    assert low_without <= q2["p90_without_outliers"] <= high_without
    assert q2["p90"] > q2["p90_without_outliers"]
    # Q3: neither outlier can win in Q3, so nothing to take out.
    q3 = row(forecast.quarterly, "2024-Q3")
    assert q3["outlier_deals"] == 0 and q3["p90_without_outliers"] == q3["p90"]


def test_forecast_coverage_and_waterfall_agree_on_the_open_pipeline(forecast):
    deals, history = hand_crm()
    conversion = pd.DataFrame(
        {c: pd.Series(dtype="float64" if c in ("stage_order", "stage_to_won_rate") else "object")
         for c in ("period_grain", "funnel_mode", "segment_type", "segment", "pipeline", "stage_order", "stage_to_won_rate")}
    )
    quotas = pd.DataFrame({"quarter": ["2024-Q2"], "segment_type": ["owner"], "segment": ["Ana"], "amount": [1000.0]})
    coverage = pipeline_coverage(deals, history, conversion, quotas, AS_OF.date())
    waterfall = pipeline_waterfall(deals, history, AS_OF.date())
    for segment_type, segment in (("all", "all"), ("owner", "Ana")):
        fc = row(forecast.quarterly, "2024-Q2", segment_type, segment)
        cov = row(coverage, "2024-Q2", segment_type, segment)
        wf = waterfall[
            (waterfall["period_grain"] == "quarter") & (waterfall["period"] == "2024-Q2")
            & (waterfall["segment_type"] == segment_type) & (waterfall["segment"] == segment)
        ].iloc[0]
        assert fc["open_pipeline"] == pytest.approx(cov["open_pipeline"]) == pytest.approx(wf["end_value"])
        assert fc["open_deals"] == cov["open_deals"] == wf["deals_end"]
        assert fc["overdue_pipeline"] == pytest.approx(cov["overdue_pipeline"])
        assert fc["overdue_deals"] == cov["overdue_deals"]
    # By hand, Ana: A 500 + OD2 100 + BAD 100 (ND has no close date).
    assert row(coverage, "2024-Q2", "owner", "Ana")["open_pipeline"] == pytest.approx(700.0)
    assert row(coverage, "2024-Q2", "owner", "Ana")["overdue_deals"] == 2
    # Next quarter: NX only, in both.
    assert row(coverage, "2024-Q3")["open_pipeline"] == pytest.approx(1000.0) == row(forecast.quarterly, "2024-Q3")["open_pipeline"]


# --- On messy samples ---------------------------------------------------------------------------

MESSY_END = dt.date(2026, 11, 15)


@pytest.fixture(scope="module", params=[21, 5])
def messy(request, tmp_path_factory):
    """A messy org (stale and overdue deals, an outlier with its close date before its creation)
    forecast at its end with the CRM's probabilities, its coverage and its waterfall."""
    out = tmp_path_factory.mktemp(f"messy_{request.param}")
    generate_sample(out, seed=request.param, end_date=MESSY_END, profile="messy")
    project = load_project_config()
    export = read_exports(out, project)
    history = prepare_history(export.deals, export.history, export.stages)
    timing = CloseTiming.fit(export.deals, history, export.stages, MESSY_END)
    no_scores = pd.DataFrame({"deal_id": pd.Series(dtype="string"), "win_probability": pd.Series(dtype="float64")})
    forecast = build_forecast(
        export.deals, history, export.stages, MESSY_END, scores=no_scores, timing=timing, quotas=None, draws=2_000,
        seed=1, fiscal_year_start_month=project.fiscal_year_start_month,
    )
    conversion = stage_conversion(export.deals, history, export.stages, MESSY_END, project.fiscal_year_start_month)
    quotas = pd.DataFrame({"quarter": [], "segment_type": [], "segment": [], "amount": []})
    coverage = pipeline_coverage(export.deals, history, conversion, quotas, MESSY_END, project.fiscal_year_start_month)
    waterfall = pipeline_waterfall(export.deals, history, MESSY_END, project.fiscal_year_start_month)
    return SampleTruth.load(out), forecast, coverage, waterfall, export.deals


def test_messy_org_forecast_reconciles_and_agrees_with_coverage_and_waterfall(messy):
    truth, forecast, coverage, waterfall, deals = messy
    quarter = "2026-Q4"
    fc, cov = row(forecast.quarterly, quarter), row(coverage, quarter)
    wf = waterfall[
        (waterfall["period_grain"] == "quarter") & (waterfall["period"] == quarter) & (waterfall["segment_type"] == "all")
    ].iloc[0]
    assert fc["open_pipeline"] == pytest.approx(cov["open_pipeline"]) == pytest.approx(wf["end_value"])
    assert fc["open_deals"] == cov["open_deals"] == wf["deals_end"]
    # Stale deals nobody cleaned up: the truth's open deals whose CRM close date is before the end.
    real = truth.deals
    stale_open = real[(real["crm_status"] == "open") & (real["crm_close_date"] < pd.Timestamp(MESSY_END))]
    assert fc["overdue_deals"] == cov["overdue_deals"] == len(stale_open) > 0
    # Their amounts as the export shows them (the truth keeps the outlier's real amount).
    shown = deals.set_index("deal_id").loc[stale_open["deal_id"], "amount_reporting"].astype("float64")
    assert fc["overdue_pipeline"] == pytest.approx(shown.sum())
    assert check_reconciles(forecast, None) == len(forecast.quarterly)


def test_messy_org_outlier_is_flagged_with_its_effect_on_p90(messy):
    truth, forecast, _, _, _ = messy
    outliers = truth.deals.loc[truth.deals["outlier"] & (truth.deals["crm_status"] == "open"), "deal_id"]
    assert len(outliers) == 1
    flagged = forecast.contributions.loc[forecast.contributions["outlier"], "deal_id"].unique()
    assert set(outliers) <= set(flagged)
    reason = forecast.contributions.loc[forecast.contributions["deal_id"] == outliers.iloc[0], "outlier_reason"].iloc[0]
    assert "the largest win" in reason and "before it was created" in reason
    current = row(forecast.quarterly, "2026-Q4")
    assert current["outlier_deals"] >= 1 and current["p90_without_outliers"] <= current["p90"]
