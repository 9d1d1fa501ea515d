"""The funnel of sources without stage history: the real rate where it is known, NULL with the
reason where it is not, never the 100% a win-only count makes up.

1. A lead funnel read creation-to-outcome (every lead enters the one open stage, MQL, when it is
   created; a lead that became a deal is won, the others are lost): 8,000 leads, 842 won, 7,158
   lost. Stage-to-won = next-step = 842 / 8,000 = 10.525%; lost here 7,158, drop-off 89.475%.
2. A three-stage pipeline (A, B, C) exported without history (current stage only), ten deals:
   open: o1, o2 in A, o3 in B, o4 in C; won: w1, w2, w3; lost: l1, l2, l3.
   any_order: every deal reached A (a lost one was open in some stage): reached 10, won 3, closed
   6 -> stage-to-won(A) 3/6 = 0.5 is known. Where the three lost deals went after A is not: they are
   "unplaced" and every other rate is NULL with a note. (Counting only what is recorded would give
   stage-to-won(B) = 3 won / 3 closed = 100%.)
   in_order: only o1, o2 are known to have entered A in order; the eight others are left out.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from etl.config import Settings, load_project_config
from etl.ingest.crm_load import load_crm
from etl.analytics.funnel import stage_conversion
from etl.pipeline_state import prepare_history
from etl.schema import DEAL_COLUMNS, DEAL_HISTORY_COLUMNS, empty_frame
from etl.stages import PipelineStages, StageCatalog
from tests.etl.hand_frames import canonical

T = pd.Timestamp
AS_OF = dt.date(2024, 6, 30)


def _deals(pipeline: str, rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    """Deals without history: (deal_id, stage, status), created 2024-01-10, closed 2024-03-01."""
    frame = pd.DataFrame(rows, columns=["deal_id", "stage", "status"])
    closed = frame["status"] != "open"
    frame["closed_at"] = pd.Series(T("2024-03-01"), index=frame.index).where(closed)
    frame["crm_close_date"] = frame["closed_at"]
    defaults = dict(
        source_system="leads", source_file="leads.csv", source_row=1, pipeline=pipeline, owner="Ana",
        currency="USD", amount=100.0, amount_reporting=100.0, created_at=T("2024-01-10"), push_count=0,
        has_history=False,
    )
    return canonical(frame, DEAL_COLUMNS, defaults, "deals")


def _funnel(deals: pd.DataFrame, catalog: StageCatalog) -> pd.DataFrame:
    history = prepare_history(deals, empty_frame(DEAL_HISTORY_COLUMNS), catalog)
    return stage_conversion(deals, history, catalog, AS_OF)


def _row(funnel: pd.DataFrame, mode: str, stage: str) -> pd.Series:
    mask = (
        (funnel["funnel_mode"] == mode) & (funnel["stage"] == stage) & (funnel["period_grain"] == "all")
        & (funnel["segment_type"] == "all")
    ).to_numpy(dtype=bool)
    assert mask.sum() == 1
    return funnel.loc[mask].iloc[0]


def test_creation_to_outcome_funnel_shows_the_real_rate():
    catalog = StageCatalog([PipelineStages("Leads", ("MQL",), won_stage="Won", lost_stage="Lost")])
    rows = [(f"w{i}", "Won", "won") for i in range(842)] + [(f"l{i}", "Lost", "lost") for i in range(7158)]
    funnel = _funnel(_deals("Leads", rows), catalog)
    for mode in ("any_order", "in_order"):
        mql = _row(funnel, mode, "MQL")
        assert (mql["reached"], mql["won"], mql["closed"], mql["lost_here"], mql["decided"]) == (8000, 842, 8000, 7158, 8000)
        assert mql["stage_to_won_rate"] == 0.10525 and mql["next_step_rate"] == 0.10525
        assert mql["drop_off_rate"] == 0.89475
        assert mql["unplaced"] == 0 and pd.isna(mql["rate_note"])


def test_multi_stage_funnel_without_history_says_what_is_unknown():
    catalog = StageCatalog([PipelineStages("P", ("A", "B", "C"))])
    rows = [
        ("o1", "A", "open"), ("o2", "A", "open"), ("o3", "B", "open"), ("o4", "C", "open"),
        ("w1", "Closed Won", "won"), ("w2", "Closed Won", "won"), ("w3", "Closed Won", "won"),
        ("l1", "Closed Lost", "lost"), ("l2", "Closed Lost", "lost"), ("l3", "Closed Lost", "lost"),
    ]
    funnel = _funnel(_deals("P", rows), catalog)
    a = _row(funnel, "any_order", "A")
    assert (a["reached"], a["won"], a["closed"], a["unplaced"]) == (10, 3, 6, 3)
    assert a["stage_to_won_rate"] == 0.5
    assert np.isnan(a["next_step_rate"]) and np.isnan(a["drop_off_rate"])
    assert a["rate_note"].startswith("3 lost deal(s) without recorded stages count as reaching this first stage")
    for stage, reached in (("B", 5), ("C", 4)):  # open deals at or past the stage, and the three wins
        row = _row(funnel, "any_order", stage)
        assert (row["reached"], row["won"], row["closed"], row["unplaced"]) == (reached, 3, 3, 3)
        assert row[["next_step_rate", "stage_to_won_rate", "drop_off_rate"]].isna().all()
        assert row["rate_note"].startswith("3 lost deal(s) without recorded stages may have reached this stage")
    a = _row(funnel, "in_order", "A")
    assert (a["reached"], a["decided"], a["closed"], a["unplaced"]) == (2, 0, 0, 8)
    assert np.isnan(a["next_step_rate"]) and np.isnan(a["stage_to_won_rate"])
    assert a["rate_note"] == "8 deal(s) without stage history are left out: their in-order path is not recorded"


def test_olist_lead_funnel_through_its_mapping(tmp_path):
    # examples/olist_funnel on its fixture (tests/etl/ingest/test_mapping_examples.py works the leads out):
    # 20 leads, 5 won, 7 lost (90 days after first contact), 8 still open, all in the one stage MQL.
    root = Path(__file__).resolve().parents[3]
    mapping = (root / "examples" / "olist_funnel" / "mapping.toml").as_posix()
    (tmp_path / "dealcast.toml").write_text(f'[reporting]\ncurrency = "USD"\n[sources]\nmappings = ["{mapping}"]\n', encoding="utf-8")
    settings = Settings(load_project_config(tmp_path / "dealcast.toml"), root / "tests" / "fixtures" / "olist_funnel",
                        False, dt.date(2018, 6, 30), tmp_path)
    load = load_crm(settings)
    funnel = stage_conversion(load.deals, load.history, load.stages, settings.as_of)
    for mode in ("any_order", "in_order"):
        mql = _row(funnel, mode, "MQL")
        # Every lead reached MQL; 5 won and 7 lost are decided, the 8 open leads are not yet.
        assert (mql["reached"], mql["won"], mql["lost_here"], mql["closed"], mql["decided"]) == (20, 5, 7, 12, 12)
        assert mql["stage_to_won_rate"] == 5 / 12 and mql["next_step_rate"] == 5 / 12 and mql["drop_off_rate"] == 7 / 20
        assert mql["unplaced"] == 0 and pd.isna(mql["rate_note"])
