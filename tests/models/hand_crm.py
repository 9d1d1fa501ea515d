"""Tiny hand-built CRMs for the close-timing and forecast tests: every deal and stage move written
out, so expected numbers can be worked out by hand."""

from __future__ import annotations

import pandas as pd

from etl.pipeline_state import as_of_end, pipeline_at, prepare_history
from etl.schema import DEAL_COLUMNS, DEAL_HISTORY_COLUMNS, conform
from etl.stages import PipelineStages, StageCatalog

PIPELINE = "Sales"
OPEN_STAGES = ("Qualify", "X", "Negotiate")
STAGE_PROBABILITY = {"Qualify": 0.2, "X": 0.5, "Negotiate": 0.8}
CATALOG = StageCatalog([PipelineStages(PIPELINE, OPEN_STAGES, probabilities=STAGE_PROBABILITY)])

DEFAULTS = {
    "pipeline": PIPELINE,
    "owner": "Ana",
    "team": "East",
    "product": "Core",
    "region": "EMEA",
    "lead_source": "Web",
    "deal_type": "New",
    "amount": 100.0,
    "expected_close_date": pd.NaT,
    "crm_probability": float("nan"),
}


def make_crm(deals: list[dict], events: list[tuple[str, str, str]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Canonical deals and prepared history.

    `deals`: dicts with deal_id and created_at, optionally any key of DEFAULTS (amount in the
    reporting currency, constant over the deal's life). `events`: (deal_id, changed_at, stage),
    the first one per deal at its creation; the last one decides the deal's current stage.
    """
    spec = pd.DataFrame([{**DEFAULTS, **d} for d in deals])
    spec["created_at"] = pd.to_datetime(spec["created_at"], format="ISO8601")
    spec["expected_close_date"] = pd.to_datetime(spec["expected_close_date"])
    history = pd.DataFrame(events, columns=["deal_id", "changed_at", "stage"])
    history["changed_at"] = pd.to_datetime(history["changed_at"], format="ISO8601")
    history = history.merge(spec[["deal_id", "amount", "expected_close_date", "crm_probability"]], on="deal_id")
    history["amount_reporting"] = history["amount"]
    history["forecast_category"] = pd.NA
    history["source_file"] = "history.csv"
    history["source_row"] = range(2, len(history) + 2)
    history = conform(history, DEAL_HISTORY_COLUMNS, "hand history")

    last = history.sort_values(["deal_id", "changed_at"]).groupby("deal_id").tail(1).set_index("deal_id")
    stage = spec["deal_id"].map(last["stage"])
    status = stage.map({"Closed Won": "won", "Closed Lost": "lost"}).fillna("open")
    closed_at = spec["deal_id"].map(last["changed_at"]).where(status != "open")
    frame = spec.assign(
        source_system="hand",
        source_file="deals.csv",
        source_row=range(2, len(spec) + 2),
        deal_name=spec["deal_id"],
        account="Acme",
        account_segment="SMB",
        currency="USD",
        amount_reporting=spec["amount"],
        closed_at=closed_at,
        crm_close_date=closed_at.dt.normalize(),
        stage=stage,
        stage_order=stage.map({s: i + 1 for i, s in enumerate(OPEN_STAGES)} | {"Closed Won": 4, "Closed Lost": 5}),
        status=status,
        lost_reason=pd.NA,
        forecast_category=pd.NA,
        last_stage_change_at=spec["deal_id"].map(last["changed_at"]),
        push_count=0,
        has_history=True,
    )
    deals_frame = conform(frame, DEAL_COLUMNS, "hand deals")
    return deals_frame, prepare_history(deals_frame, history, CATALOG)


def open_at(deals, history, as_of, deal_ids=None):
    state = pipeline_at(deals, history, as_of_end(as_of))
    rows = state.loc[state["status"] == "open"]
    if deal_ids is not None:
        rows = rows.loc[rows["deal_id"].isin(deal_ids)]
    return rows.reset_index(drop=True)


def half_within_thirty_days_crm():
    """One deal enters X every day for 120 days; even-numbered deals win 10 days later, odd ones 60
    days later, so P(close within 30 days | wins) is 1/2 for a deal just entered in X (NEW)."""
    day0 = pd.Timestamp("2024-01-01")
    as_of = day0 + pd.Timedelta(days=120)
    deals, events = [], []
    for i in range(120):
        created = day0 + i * pd.Timedelta(days=1)
        close = created + (10 if i % 2 == 0 else 60) * pd.Timedelta(days=1)
        deals.append({"deal_id": f"D{i:03d}", "created_at": created})
        events.append((f"D{i:03d}", created, "X"))
        if close <= as_of:
            events.append((f"D{i:03d}", close, "Closed Won"))
    deals.append({"deal_id": "NEW", "created_at": as_of})
    events.append(("NEW", as_of, "X"))
    crm_deals, history = make_crm(deals, events)
    return crm_deals, history, as_of
