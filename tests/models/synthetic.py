"""A small synthetic CRM with a known signal, for the model tests.

One pipeline, three open stages. At each stage a deal advances with probability
q(stage, owner) = sigmoid(BASE[stage] + SKILL[owner]) and is otherwise lost; after the last stage
it is won. So the true win probability of a deal in stage s is the product of q over stages s..3:
stage and owner drive the outcome. Deals that will be lost in a stage linger there longer
(mean 35 days against 14), so days in stage carries signal too. The CRM's stage probabilities
(0.2 / 0.5 / 0.8) are deliberately not the true rates.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from etl.schema import DEAL_COLUMNS, DEAL_HISTORY_COLUMNS, conform
from etl.stages import PipelineStages, StageCatalog

PIPELINE = "New Business"
STAGES = ("Qualification", "Proposal/Price Quote", "Negotiation/Review")
CRM_PROBABILITY = {"Qualification": 0.2, "Proposal/Price Quote": 0.5, "Negotiation/Review": 0.8}
FORECAST = {"Qualification": "Pipeline", "Proposal/Price Quote": "Best Case", "Negotiation/Review": "Commit"}
CATALOG = StageCatalog([PipelineStages(PIPELINE, STAGES, probabilities=CRM_PROBABILITY)])
BASE = np.array([0.3, 0.6, 1.2])
OWNERS = np.array(["Ana", "Ben", "Chloe", "Dev", "Eli", "Fay"])
SKILL = np.array([-1.2, -0.6, 0.0, 0.0, 0.6, 1.2])
ADVANCE_DAYS = 14.0
LOSE_DAYS = 35.0


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def true_stage_win_probability(stage_index: np.ndarray, owner_index: np.ndarray) -> np.ndarray:
    """Win probability of a deal in stage `stage_index` (0-based) owned by `owner_index`,
    ignoring how long it has been there."""
    q = _sigmoid(BASE[None, :] + SKILL[owner_index][:, None])
    later = np.arange(len(STAGES))[None, :] >= stage_index[:, None]
    return np.where(later, q, 1.0).prod(axis=1)


def true_win_probability(frame: pd.DataFrame) -> np.ndarray:
    """The true win probability of each open-deal row of a features frame (stage, owner and days
    in stage at the snapshot): Bayes' rule on "still in the stage after d days" with the
    exponential stay lengths above, times the chance of passing the later stages."""
    stage_index = frame["stage"].map({s: i for i, s in enumerate(STAGES)}).to_numpy(dtype=int)
    owner_index = frame["owner"].map({o: i for i, o in enumerate(OWNERS)}).to_numpy(dtype=int)
    q_all = _sigmoid(BASE[None, :] + SKILL[owner_index][:, None])
    q_here = q_all[np.arange(len(frame)), stage_index]
    waited = np.maximum(frame["days_in_stage"].to_numpy(dtype=float) - 1.0, 0.0)
    stay_if_advancing = np.exp(-waited / ADVANCE_DAYS)
    stay_if_losing = np.exp(-waited / LOSE_DAYS)
    q_now = q_here * stay_if_advancing / (q_here * stay_if_advancing + (1 - q_here) * stay_if_losing)
    later = np.arange(len(STAGES))[None, :] > stage_index[:, None]
    return q_now * np.where(later, q_all, 1.0).prod(axis=1)


def _blank_deals(n: int) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([pd.NA] * n, dtype="object") for c in DEAL_COLUMNS})


def make_crm(
    n_deals: int,
    seed: int,
    start: str = "2022-01-01",
    end: str = "2024-12-31",
    as_of: str = "2024-12-31",
    with_history: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Canonical `deals` and `deal_history` frames as a CRM export at `as_of` would show them."""
    rng = np.random.default_rng(seed)
    t0, t1, cutoff = pd.Timestamp(start), pd.Timestamp(end), pd.Timestamp(as_of) + pd.Timedelta(days=1)
    span_minutes = int((t1 - t0) / pd.Timedelta(minutes=1))
    created = t0 + pd.to_timedelta(rng.integers(0, span_minutes, n_deals), unit="min")
    owner = rng.integers(0, len(OWNERS), n_deals)
    q = _sigmoid(BASE[None, :] + SKILL[owner][:, None])
    advance = rng.random((n_deals, len(STAGES))) < q
    means = np.where(advance, ADVANCE_DAYS, LOSE_DAYS)
    minutes = np.round((1.0 + rng.exponential(means)) * 24 * 60).astype("int64")

    ids = np.array([f"D{i:05d}" for i in range(n_deals)])
    rows = []
    alive = np.ones(n_deals, dtype=bool)
    entered = pd.Series(created)
    for s, stage in enumerate(STAGES):
        rows.append(pd.DataFrame({"deal_id": ids[alive], "changed_at": entered[alive].to_numpy(), "stage": stage}))
        leave = entered + pd.to_timedelta(minutes[:, s], unit="min")
        lost_here = alive & ~advance[:, s]
        rows.append(pd.DataFrame({"deal_id": ids[lost_here], "changed_at": leave[lost_here].to_numpy(), "stage": "Closed Lost"}))
        alive = alive & advance[:, s]
        entered = leave
    rows.append(pd.DataFrame({"deal_id": ids[alive], "changed_at": entered[alive].to_numpy(), "stage": "Closed Won"}))
    history = pd.concat(rows, ignore_index=True)
    history = history.loc[history["changed_at"] < cutoff].sort_values(["deal_id", "changed_at"]).reset_index(drop=True)

    amount = np.round(np.exp(rng.normal(9.5, 0.8, n_deals)), 2)
    expected_close = created.normalize() + pd.Timedelta(days=90)
    per_deal = pd.DataFrame({"deal_id": ids, "amount": amount, "expected_close_date": expected_close})
    history = history.merge(per_deal, on="deal_id", how="left")
    history["amount_reporting"] = history["amount"]
    history["crm_probability"] = history["stage"].map({**CRM_PROBABILITY, "Closed Won": 1.0, "Closed Lost": 0.0})
    history["forecast_category"] = history["stage"].map({**FORECAST, "Closed Won": "Closed", "Closed Lost": "Omitted"})
    history["source_file"] = "OpportunityHistory.csv"
    history["source_row"] = np.arange(2, len(history) + 2)
    history = conform(history, DEAL_HISTORY_COLUMNS, "synthetic history")

    last = history.groupby("deal_id", sort=True).tail(1).set_index("deal_id").reindex(ids)
    first_change = history.groupby("deal_id")["changed_at"].max().reindex(ids)
    final_stage = last["stage"].astype("string")
    won = (final_stage == "Closed Won").fillna(False).to_numpy(dtype=bool)
    lost = (final_stage == "Closed Lost").fillna(False).to_numpy(dtype=bool)
    status = np.where(won, "won", np.where(lost, "lost", "open"))
    deals = _blank_deals(n_deals)
    deals["deal_id"] = ids
    deals["source_system"] = "synthetic"
    deals["source_file"] = "Opportunity.csv"
    deals["source_row"] = np.arange(2, n_deals + 2)
    deals["pipeline"] = PIPELINE
    deals["deal_name"] = [f"Deal {i}" for i in range(n_deals)]
    deals["account"] = np.array([f"Account {i:03d}" for i in range(200)])[rng.integers(0, 200, n_deals)]
    deals["owner"] = OWNERS[owner]
    deals["team"] = np.where(owner < 3, "East", "West")
    deals["product"] = np.array(["Core", "Plus"])[rng.integers(0, 2, n_deals)]
    deals["region"] = np.array(["EMEA", "Americas"])[rng.integers(0, 2, n_deals)]
    deals["account_segment"] = np.array(["SMB", "Enterprise"])[rng.integers(0, 2, n_deals)]
    deals["lead_source"] = np.array(["Web", "Partner", "Outbound"])[rng.integers(0, 3, n_deals)]
    deals["deal_type"] = "New"
    deals["amount"] = amount
    deals["currency"] = "USD"
    deals["amount_reporting"] = amount
    deals["created_at"] = created
    deals["expected_close_date"] = expected_close
    deals["stage"] = last["stage"].to_numpy()
    deals["stage_order"] = deals["stage"].map({s: i + 1 for i, s in enumerate(STAGES)} | {"Closed Won": 4, "Closed Lost": 5})
    deals["status"] = status
    deals["closed_at"] = pd.Series(first_change.to_numpy()).where(status != "open")
    deals["crm_close_date"] = deals["closed_at"].dt.normalize()
    deals["lost_reason"] = pd.NA
    deals["forecast_category"] = last["forecast_category"].to_numpy()
    deals["crm_probability"] = last["crm_probability"].to_numpy()
    deals["last_stage_change_at"] = first_change.to_numpy()
    deals["push_count"] = 0
    deals["has_history"] = with_history
    deals = conform(deals, DEAL_COLUMNS, "synthetic deals")
    # Deals created after the export day are not in it (the random draws above cover all deals,
    # so exports of the same seed at different days describe the same world).
    deals = deals.loc[(deals["created_at"] < cutoff).to_numpy(dtype=bool)].reset_index(drop=True)
    if not with_history:
        history = history.iloc[0:0]
    return deals, history
