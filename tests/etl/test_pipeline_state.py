"""The point-in-time rebuild, checked on a tiny hand-made history.

Deal d1 (pipeline P: A -> B -> C, won/lost after):
  2024-01-01 created in A, expected close 2024-03-01
  2024-01-10 jumps to C (skips B)
  2024-01-20 moves back to B and the close date is pushed to 2024-04-01
  2024-02-01 won
Deal d2: 2024-01-05 created in A (close 2024-02-01); 2024-01-15 close date pushed to 2024-03-01
  (amount-only/close-only change, stage unchanged); 2024-01-25 moves to B; still open.
Deal d3: no history in the source (current stage only); lost on 2024-03-01.
"""

import numpy as np
import pandas as pd
import pytest

from etl.pipeline_state import (
    as_of_end,
    lean_rebuild_inputs,
    pipeline_at,
    pipeline_at_many,
    prepare_history,
    reusing_states,
    stage_events,
)
from etl.schema import DEAL_COLUMNS, DEAL_HISTORY_COLUMNS, conform
from etl.stages import PipelineStages, StageCatalog

T = pd.Timestamp
CATALOG = StageCatalog([PipelineStages("P", ("A", "B", "C"), probabilities={"A": 0.1, "B": 0.5, "C": 0.8})])


def _deals() -> pd.DataFrame:
    rows = [
        dict(deal_id="d1", created_at=T("2024-01-01"), status="won", stage="Closed Won", closed_at=T("2024-02-01"), has_history=True, amount=100.0),
        dict(deal_id="d2", created_at=T("2024-01-05"), status="open", stage="B", closed_at=pd.NaT, has_history=True, amount=200.0),
        dict(deal_id="d3", created_at=T("2024-01-02"), status="lost", stage="Closed Lost", closed_at=T("2024-03-01"), has_history=False, amount=300.0),
    ]
    frame = pd.DataFrame(rows)
    for col in DEAL_COLUMNS:
        if col not in frame:
            frame[col] = {"pipeline": "P", "source_row": 0, "push_count": 0, "amount_reporting": None}.get(col, pd.NA)
    frame["amount_reporting"] = frame["amount"]
    frame["expected_close_date"] = T("2024-03-01")
    frame["stage_order"] = [4, 2, 5]
    return conform(frame, DEAL_COLUMNS, "deals")


def _history() -> pd.DataFrame:
    rows = [
        ("d1", "2024-01-01", "A", "2024-03-01"),
        ("d1", "2024-01-10", "C", "2024-03-01"),
        ("d1", "2024-01-20", "B", "2024-04-01"),
        ("d1", "2024-02-01", "Closed Won", "2024-04-01"),
        ("d2", "2024-01-05", "A", "2024-02-01"),
        ("d2", "2024-01-15", "A", "2024-03-01"),
        ("d2", "2024-01-25", "B", "2024-03-01"),
    ]
    frame = pd.DataFrame(rows, columns=["deal_id", "changed_at", "stage", "expected_close_date"])
    frame["changed_at"] = pd.to_datetime(frame["changed_at"])
    frame["expected_close_date"] = pd.to_datetime(frame["expected_close_date"])
    frame["amount"] = 100.0
    frame["amount_reporting"] = 100.0
    frame["crm_probability"] = 0.1
    frame["forecast_category"] = "Pipeline"
    frame["source_file"] = "OpportunityHistory.csv"
    frame["source_row"] = range(2, 2 + len(frame))
    return conform(frame, DEAL_HISTORY_COLUMNS, "history")


@pytest.fixture()
def prepared() -> pd.DataFrame:
    return prepare_history(_deals(), _history(), CATALOG)


def test_running_counts(prepared):
    d1 = prepared[prepared.deal_id == "d1"]
    # moves: A->C, C->B, B->Won = 3; the only backward move is C->B; one push (03-01 -> 04-01).
    assert d1["stage_moves"].tolist() == [0, 1, 2, 3]
    assert d1["is_backward"].tolist() == [False, False, True, False]
    assert d1["close_pushes"].tolist() == [0, 0, 1, 1]
    d2 = prepared[prepared.deal_id == "d2"]
    # The close-date-only change is a push, not a stage move; the stage stays entered at 01-05.
    assert d2["is_stage_change"].tolist() == [True, False, True]
    assert d2["stage_entered_at"].tolist() == [T("2024-01-05"), T("2024-01-05"), T("2024-01-25")]
    assert d2["close_pushes"].tolist() == [0, 1, 1]


def test_state_at_a_date(prepared):
    at = pipeline_at(_deals(), prepared, T("2024-01-21")).set_index("deal_id")
    # d1 entered B on 01-20: 1 day in stage, 20 days old, 2 moves (1 backward), 1 push.
    assert at.loc["d1", "stage"] == "B"
    assert at.loc["d1", "days_in_stage"] == pytest.approx(1.0)
    assert at.loc["d1", "age_days"] == pytest.approx(20.0)
    assert (at.loc["d1", "stage_moves"], at.loc["d1", "backward_moves"], at.loc["d1", "close_pushes"]) == (2, 1, 1)
    assert at.loc["d1", "expected_close_date"] == T("2024-04-01")
    # d2 still in A since 01-05 (16 days); its close date was pushed on 01-15.
    assert at.loc["d2", "stage"] == "A" and at.loc["d2", "days_in_stage"] == pytest.approx(16.0)
    # d3 has no history: open with its stage unknown until it closed.
    assert at.loc["d3", "status"] == "open" and pd.isna(at.loc["d3", "stage"])


def test_a_repeated_state_is_rebuilt_once_inside_a_reusing_block(prepared, monkeypatch):
    import etl.pipeline_state as pipeline_state

    rebuilds = []
    rebuild = pipeline_state.pipeline_at_many

    def counting(deals, history, dates):
        rebuilds.append(list(dates))
        return rebuild(deals, history, dates)

    monkeypatch.setattr(pipeline_state, "pipeline_at_many", counting)
    deals = _deals()
    outside = pipeline_at(deals, prepared, T("2024-01-21"))
    with reusing_states():
        first = pipeline_at(deals, prepared, T("2024-01-21"))
        # A caller changing its rows leaves the next caller's rows as they were.
        first.loc[first["deal_id"] == "d1", "stage"] = "changed"
        first["extra"] = 1
        second = pipeline_at(deals, prepared, T("2024-01-21"))
        later = pipeline_at(deals, prepared, T("2024-01-26"))
        other_frame = pipeline_at(deals.copy(), prepared, T("2024-01-26"))
    after = pipeline_at(deals, prepared, T("2024-01-21"))
    # outside, first, later (another instant), other_frame (other deals object), after (block ended)
    assert len(rebuilds) == 5
    pd.testing.assert_frame_equal(second, outside)
    pd.testing.assert_frame_equal(after, outside)
    assert second.set_index("deal_id").loc["d1", "stage"] == "B" and "extra" not in second.columns
    # On 01-26 d2 has entered B (01-25): the later state is its own rebuild.
    assert later.set_index("deal_id").loc["d2", "stage"] == "B"
    pd.testing.assert_frame_equal(other_frame, later)


def test_many_dates_and_existence(prepared):
    snaps = pipeline_at_many(_deals(), prepared, [T("2024-01-03"), T("2024-02-15"), T("2024-03-05")])
    by = {(r.snapshot_at, r.deal_id): r for r in snaps.itertuples()}
    # On 01-03 d2 (created 01-05) does not exist yet.
    assert {d for (s, d) in by if s == T("2024-01-03")} == {"d1", "d3"}
    assert by[(T("2024-02-15"), "d1")].status == "won"
    assert by[(T("2024-02-15"), "d1")].closed_at == T("2024-02-01")
    assert by[(T("2024-02-15"), "d3")].status == "open"
    assert by[(T("2024-03-05"), "d3")].status == "lost"
    assert len(snaps) == 2 + 3 + 3


def test_a_lean_rebuild_keeps_what_it_was_asked_for(prepared):
    dates = [T("2024-01-03"), T("2024-01-21"), T("2024-02-15"), T("2024-03-05")]
    lean_deals, lean_history = lean_rebuild_inputs(
        _deals(), prepared, deal_columns=["pipeline"], state_columns=["stage", "close_pushes"], categorical=["pipeline", "stage"]
    )
    lean = pipeline_at_many(lean_deals, lean_history, dates).set_index(["snapshot_at", "deal_id"])
    by = {(r.snapshot_at, r.deal_id): r for r in lean.reset_index().itertuples()}
    # The same 2 + 3 + 3 + 3 rows as the full rebuild, with the asked-for columns as they stood.
    assert len(lean) == 11
    assert by[(T("2024-01-21"), "d1")].stage == "B" and by[(T("2024-01-21"), "d1")].close_pushes == 1
    assert by[(T("2024-01-21"), "d1")].days_in_stage == pytest.approx(1.0)
    assert by[(T("2024-01-21"), "d2")].pipeline == "P" and by[(T("2024-01-21"), "d2")].age_days == pytest.approx(16.0)
    assert by[(T("2024-02-15"), "d1")].status == "won" and by[(T("2024-03-05"), "d3")].status == "lost"
    # Strings asked for as categoricals repeat a code; what was not asked for is blank.
    assert isinstance(lean["stage"].dtype, pd.CategoricalDtype)
    assert lean["owner"].isna().all() and lean["amount"].isna().all() and lean["crm_probability"].isna().all()


def test_an_event_at_the_snapshot_instant_counts(prepared):
    at = pipeline_at(_deals(), prepared, T("2024-01-10")).set_index("deal_id")
    assert at.loc["d1", "stage"] == "C" and at.loc["d1", "days_in_stage"] == 0.0


def test_stage_events(prepared):
    events = stage_events(prepared, T("2024-01-31").date())
    d1 = events[events.deal_id == "d1"].set_index("stage")
    # Won on 02-01 is after as_of 01-31: the stay in B is current and runs to the end of 01-31.
    assert list(d1.index) == ["A", "C", "B"]
    assert d1.loc["A", "days_in_stage"] == pytest.approx(9.0)
    assert d1.loc["C", "days_in_stage"] == pytest.approx(10.0)
    assert bool(d1.loc["B", "is_backward"]) and bool(d1.loc["B", "is_current"])
    assert d1.loc["B", "days_in_stage"] == pytest.approx(12.0, abs=1e-6)  # 01-20 -> end of 01-31
    # d3 has no history: its unknown open stage is not an event.
    assert "d3" not in set(events.deal_id)


def test_as_of_end_is_the_last_instant_of_the_day():
    assert as_of_end(T("2024-05-31").date()) == T("2024-05-31 23:59:59.999999")


def test_closing_late_is_not_a_push():
    deals = _deals()
    won = deals["deal_id"] == "d2"
    deals.loc[won, ["status", "stage", "closed_at"]] = ["won", "Closed Won", T("2024-03-10")]
    history = _history()
    # d2 is won on 2024-03-10, after its expected close date of 2024-03-01: the closing row carries the
    # actual close date, which is later, but that is a late close, not a push.
    late = history[history.deal_id == "d2"].iloc[[-1]].copy()
    late["changed_at"] = T("2024-03-10")
    late["stage"] = "Closed Won"
    late["expected_close_date"] = T("2024-03-10")
    late["source_row"] = 99
    prepared = prepare_history(deals, pd.concat([history, late], ignore_index=True), CATALOG)
    d2 = prepared[prepared.deal_id == "d2"]
    assert d2["is_push"].tolist() == [False, True, False, False]
    assert d2["close_pushes"].iloc[-1] == 1


def test_no_deal_and_no_history_rebuild_to_empty_tables():
    # Every deal quarantined: the rebuild still runs, over nothing, and keeps its columns.
    prepared = prepare_history(_deals().iloc[0:0], _history().iloc[0:0], CATALOG)
    assert len(prepared) == 0
    assert {"stage_moves", "stage_entered_at", "valid_to"} <= set(prepared.columns)
    assert len(stage_events(prepared, T("2024-01-31").date())) == 0


def _rows_to_order() -> tuple[pd.DataFrame, pd.DataFrame]:
    """History rows out of order: ids that sort otherwise as text than as the deals list them
    ("D10" before "D9"), rows sharing a time told apart by their row number, two rows equal in all
    three keys (kept in file order by `note`), a missing time, and a row of a deal not among the deals."""
    deals = pd.DataFrame({
        "deal_id": pd.array(["D9", "D10", "Ä1", "B2"], dtype="string"),
        "pipeline": pd.array(["P9", "P10", "PÄ", "PB"], dtype="string"),
    })
    t = pd.Timestamp
    history = pd.DataFrame({
        "deal_id": pd.array(["D9", "ZZ", "D10", "D9", "Ä1", "D10", "B2", "D9", "D9", "B2"], dtype="string"),
        "changed_at": [t("2026-03-01"), t("2026-01-01"), t("2026-02-01"), t("2026-01-01"), t("2026-01-05"),
                       t("2026-02-01"), pd.NaT, t("2026-01-01"), t("2026-01-01"), t("2026-04-01")],
        "source_row": np.array([5, 9, 8, 7, 3, 2, 4, 7, 6, 1], dtype=np.int64),
        "note": ["a", "orphan", "b", "c", "d", "e", "f", "g", "h", "i"],
    })
    return deals, history


@pytest.mark.parametrize("path", ["integer keys", "merge and sort"])
def test_history_rows_in_deal_order_with_their_pipeline(path):
    from etl import pipeline_state
    from etl.deal_ids import id_ranks

    deals, history = _rows_to_order()
    if path == "merge and sort":
        history["source_row"] = history["source_row"].astype("Int64")  # not a plain integer: the general path
    ids = pd.Index(deals["deal_id"])
    position = pipeline_state._positions(ids, history["deal_id"])
    out, sorted_position = pipeline_state._with_pipeline_in_deal_order(
        history, deals, ids, position, id_ranks(ids)
    )
    if path == "integer keys":
        assert sorted_position.tolist() == [3, 3, 1, 1, 0, 0, 0, 0, 2]
    else:
        assert sorted_position is None
    # By hand: B2 (its missing time last), D10 (same time: row 2 before row 8), D9 (row 6, then the two
    # rows 7 in file order c, g, then March), Ä1 (non-ASCII sorts after ASCII); the orphan row is dropped.
    assert out["note"].tolist() == ["i", "f", "e", "b", "h", "c", "g", "a", "d"]
    assert out["pipeline"].tolist() == ["PB", "PB", "P10", "P10", "P9", "P9", "P9", "P9", "PÄ"]
    assert list(out.columns) == ["deal_id", "changed_at", "source_row", "note", "pipeline"]
    reference = history.merge(deals, on="deal_id", how="inner").sort_values(
        ["deal_id", "changed_at", "source_row"], kind="stable"
    ).reset_index(drop=True)
    pd.testing.assert_frame_equal(out, reference)


def test_history_of_deals_with_ids_of_mixed_types_is_ordered_by_the_merge_and_sort():
    """Ids a warehouse source gives as numbers for some deals and text for others cannot be ranked by
    Arrow: the general path orders them, as pandas does."""
    from etl import pipeline_state
    from etl.deal_ids import id_ranks

    deals = pd.DataFrame({"deal_id": pd.array([7, "A"], dtype=object), "pipeline": ["P7", "PA"]})
    history = pd.DataFrame({
        "deal_id": pd.array(["A", 7, 7], dtype=object),
        "changed_at": pd.to_datetime(["2026-01-02", "2026-01-03", "2026-01-01"]),
        "source_row": np.array([1, 2, 3], dtype=np.int64),
    })
    ids = pd.Index(deals["deal_id"])
    position = pipeline_state._positions(ids, history["deal_id"])
    out, sorted_position = pipeline_state._with_pipeline_in_deal_order(
        history, deals, ids, position, id_ranks(ids)
    )
    assert sorted_position is None
    # pandas puts the number before the text; each deal's rows by time.
    assert out["deal_id"].tolist() == [7, 7, "A"]
    assert out["source_row"].tolist() == [3, 2, 1]
    assert out["pipeline"].tolist() == ["P7", "P7", "PA"]
