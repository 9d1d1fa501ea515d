"""Tiny hand-built CRMs for the close-timing and forecast tests: every deal and stage move written
out, so expected numbers can be worked out by hand."""

from __future__ import annotations

import pandas as pd

from etl.pipeline_state import prepare_history
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
