"""Stage order inferred from the moves deals made (etl.stages.order_from_moves, stage_moves).

Every expected order and count below is worked out by hand from the moves listed in the test.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from etl.config import Settings, load_project_config
from etl.cli import RunSummary, _stage_order_lines
from etl.ingest.crm_load import CrmLoad, load_crm, table_frame
from etl.stages import EXACT_ORDER_LIMIT, InferredOrder, PipelineStages, StageCatalog, order_from_moves, stage_moves

T = pd.Timestamp


def _moves(*triples: tuple[str, str, int]) -> pd.DataFrame:
    return pd.DataFrame(triples, columns=["from_stage", "to_stage", "moves"])


def test_the_order_with_fewest_backward_moves_wins_over_the_fallback():
    # Fallback C, A, B (e.g. first appearance in a file). Moves: A->B 5, B->C 4, A->C 2, C->B 1.
    # A, B, C leaves only C->B backward (1 of 12); A, C, B would leave B->C (4); C first leaves 6.
    found = order_from_moves(["C", "A", "B"], _moves(("A", "B", 5), ("B", "C", 4), ("A", "C", 2), ("C", "B", 1)))
    assert found == InferredOrder(("A", "B", "C"), moves=12, backward=1, exact=True)
    assert found.backward_share == pytest.approx(1 / 12)


def test_stages_no_deal_moved_between_keep_the_fallback_order():
    # Only A->B is seen: every order with A before B has no backward move; the one closest to the
    # fallback A, D, B is the fallback itself. E never appears in a move: it stays last.
    found = order_from_moves(["A", "D", "B", "E"], _moves(("A", "B", 3)))
    assert found.stages == ("A", "D", "B", "E") and found.backward == 0
    # With B->A seen more often than A->B, B goes before A; D, which no deal moved to or from,
    # stays after both as in the fallback A, B, D (B, A, D swaps one pair of it; B, D, A two).
    found = order_from_moves(["A", "B", "D"], _moves(("A", "B", 1), ("B", "A", 2)))
    assert found.stages == ("B", "A", "D") and found.backward == 1 and found.moves == 3


def test_moves_into_won_or_lost_are_ignored_and_no_moves_means_no_share():
    found = order_from_moves(["Lead", "Demo"], _moves(("Demo", "Won", 7), ("Lead", "Lost", 2)))
    assert found.stages == ("Lead", "Demo") and found.moves == 0
    assert math.isnan(found.backward_share)


def test_exact_order_matches_brute_force_on_random_move_counts():
    rng = np.random.default_rng(5)
    names = ["S1", "S2", "S3", "S4", "S5", "S6"]
    for _ in range(20):
        counts = rng.integers(0, 6, size=(6, 6))
        moves = _moves(*[(a, b, int(counts[i, j])) for i, a in enumerate(names) for j, b in enumerate(names) if i != j])
        found = order_from_moves(names, moves)

        def backward(order):
            rank = {s: k for k, s in enumerate(order)}
            return sum(int(counts[i, j]) for i, a in enumerate(names) for j, b in enumerate(names) if rank[a] > rank[b])

        assert found.backward == min(backward(p) for p in itertools.permutations(names))
        assert found.backward == backward(found.stages)


def test_many_stages_are_ordered_by_local_search():
    # 16 stages (beyond the exact limit) that deals walk in order S00 -> S01 -> ... -> S15, given
    # in reverse as the fallback: the search must find the walk, with no backward move.
    names = [f"S{i:02d}" for i in range(16)]
    assert len(names) > EXACT_ORDER_LIMIT
    walk = _moves(*[(names[i], names[i + 1], 3) for i in range(15)])
    found = order_from_moves(names[::-1], walk)
    assert found.stages == tuple(names) and found.backward == 0 and found.moves == 45 and not found.exact
    # Some deals step back (S05 -> S03 once, S10 -> S09 twice): the walk is still the best order,
    # now with those 3 of 48 moves backward.
    noisy = pd.concat([walk, _moves(("S05", "S03", 1), ("S10", "S09", 2))], ignore_index=True)
    found = order_from_moves(names[::-1], noisy)
    assert found.stages == tuple(names) and (found.backward, found.moves) == (3, 48)


def test_stage_moves_counts_consecutive_entries_and_skips_shared_instants():
    # d1: Lead (1 Jan) -> Demo (3 Jan) -> Lead (5 Jan) -> Won (9 Jan): Lead->Demo, Demo->Lead, Lead->Won.
    # d2: Lead and Demo both stamped 1 Feb 00:00 (a bulk import), Proposal 4 Feb: the two stamped
    #     together are left out, so nothing pairs with Proposal; no move is counted.
    # d3: Demo (1 Mar) -> Demo (2 Mar, re-entered) -> Proposal (6 Mar): one move Demo->Proposal.
    frame = pd.DataFrame(
        [
            ("d1", "Lead", T("2024-01-01")), ("d1", "Demo", T("2024-01-03")), ("d1", "Lead", T("2024-01-05")),
            ("d1", "Won", T("2024-01-09")),
            ("d2", "Lead", T("2024-02-01")), ("d2", "Demo", T("2024-02-01")), ("d2", "Proposal", T("2024-02-04")),
            ("d3", "Demo", T("2024-03-01")), ("d3", "Demo", T("2024-03-02")), ("d3", "Proposal", T("2024-03-06")),
        ],
        columns=["deal", "stage", "at"],
    )
    moves = stage_moves(frame["deal"], frame["stage"], frame["at"])
    assert sorted(zip(moves["from_stage"], moves["to_stage"], moves["moves"])) == [
        ("Demo", "Lead", 1), ("Demo", "Proposal", 1), ("Lead", "Demo", 1), ("Lead", "Won", 1),
    ]


def test_order_source_survives_the_pipeline_stages_table():
    inferred = PipelineStages(
        "Sales", ("Lead", "Demo"), "Won", "Lost", {}, order_source="inferred", order_basis="12 stage moves"
    )
    catalog = StageCatalog([inferred, PipelineStages("New", ("A",))])
    frame = catalog.lookup_frame()
    assert list(frame.loc[frame["pipeline"] == "Sales", "order_source"].unique()) == ["inferred"]
    again = StageCatalog.from_frame(frame)
    assert again["Sales"].order_source == "inferred" and again["Sales"].order_basis == "12 stage moves"
    assert again["New"].order_source == "configured"
    with pytest.raises(ValueError, match="order_source"):
        PipelineStages("X", ("A",), order_source="guessed")


# --------------------------------------------------------------------------------------------
# The readers and the pipeline_stages table
ROOT = Path(__file__).resolve().parents[2]

# A well-behaved HubSpot pipeline "Growth" whose deals walk Discovery -> Demo -> Contract. Three
# January deals went all the way; five June deals are still in Discovery; H9 entered Contract
# before Demo. Median entry dates: Discovery 1 Jun (9 dates, five in June), Demo 11 Jan 12:00,
# Contract 21 Jan 12:00, so ordering by median date puts Discovery last: wrong.
# Moves between open stages: Discovery->Demo 3, Demo->Contract 3 (H1-H3), Discovery->Contract 1
# and Contract->Demo 1 (H9): 8 moves. Discovery, Demo, Contract leaves 1 backward (Contract->Demo);
# Discovery, Contract, Demo would leave 3 (Demo->Contract). Share 1/8 = 12.5%.
HUBSPOT_GROWTH = '''Record ID,Deal Name,Deal Stage,Pipeline,Amount,Close Date,Create Date,"Date entered ""Discovery (Growth)""","Date entered ""Demo (Growth)""","Date entered ""Contract (Growth)""","Date entered ""Closed won (Growth)""","Date entered ""Closed lost (Growth)"""
H1,One,Closed won,Growth,100,2024-01-30,2024-01-02 09:00,2024-01-02 09:00,2024-01-10 09:00,2024-01-20 09:00,2024-01-30 09:00,
H2,Two,Closed won,Growth,100,2024-01-31,2024-01-03 09:00,2024-01-03 09:00,2024-01-11 09:00,2024-01-21 09:00,2024-01-31 09:00,
H3,Three,Closed won,Growth,100,2024-02-01,2024-01-04 09:00,2024-01-04 09:00,2024-01-12 09:00,2024-01-22 09:00,2024-02-01 09:00,
H4,Four,Discovery,Growth,100,2024-09-30,2024-06-01 09:00,2024-06-01 09:00,,,,
H5,Five,Discovery,Growth,100,2024-09-30,2024-06-02 09:00,2024-06-02 09:00,,,,
H6,Six,Discovery,Growth,100,2024-09-30,2024-06-03 09:00,2024-06-03 09:00,,,,
H7,Seven,Discovery,Growth,100,2024-09-30,2024-06-04 09:00,2024-06-04 09:00,,,,
H8,Eight,Discovery,Growth,100,2024-09-30,2024-06-05 09:00,2024-06-05 09:00,,,,
H9,Nine,Demo,Growth,100,2024-09-30,2024-02-01 09:00,2024-02-01 09:00,2024-02-09 09:00,2024-02-05 09:00,,
'''

# Pipedrive keeps no stage history and these deals carry no probability: the order of "Sales" is
# the stages' first appearance, a guess the run must name.
PIPEDRIVE_SALES = '''Deal - ID,Deal - Title,Deal - Value,Deal - Stage,Deal - Pipeline,Deal - Status,Deal - Deal created
1,A,100,Proposal,Sales,open,2024-03-01 09:00:00
2,B,100,Qualified,Sales,open,2024-03-02 09:00:00
'''


def _load(tmp_path: Path, name: str, text: str, config: str = "") -> CrmLoad:
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / name).write_text(text, encoding="utf-8")
    (tmp_path / "dealcast.toml").write_text('[reporting]\ncurrency = "USD"\n' + config, encoding="utf-8")
    project = load_project_config(tmp_path / "dealcast.toml")
    settings = Settings(project, exports, False, dt.date(2024, 10, 1), tmp_path)
    return load_crm(settings)


def _order(load, pipeline: str) -> dict:
    rows = load.pipeline_stages.loc[load.pipeline_stages["pipeline"] == pipeline].sort_values("stage_order")
    first = rows.iloc[0]
    return {
        "stages": tuple(rows["stage"]),
        "source": first["order_source"],
        "moves": int(first["stage_moves"]),
        "backward": int(first["backward_moves"]),
        "share": first["backward_share"],
    }


def test_hubspot_order_comes_from_the_moves_not_the_median_entry_date(tmp_path):
    load = _load(tmp_path, "hubspot-deals.csv", HUBSPOT_GROWTH)
    found = _order(load, "Growth")
    assert found == {
        "stages": ("Discovery", "Demo", "Contract", "Closed won", "Closed lost"),
        "source": "inferred", "moves": 8, "backward": 1, "share": 0.125,
    }
    assert "8 stage moves" in load.stages["Growth"].order_basis
    assert load.stage_order_warnings == []


def test_many_backward_moves_are_reported(tmp_path, caplog):
    load = _load(tmp_path, "hubspot-deals.csv", HUBSPOT_GROWTH, "[validation]\nwarn_backward_share = 0.1\n")
    assert len(load.stage_order_warnings) == 1
    warning = load.stage_order_warnings[0]
    assert "'Growth'" in warning and "1 of 8 stage moves (12%)" in warning and "Discovery > Demo > Contract" in warning
    assert warning in caplog.text


def test_a_pipedrive_order_without_history_is_called_a_guess(tmp_path):
    load = _load(tmp_path, "deals.csv", PIPEDRIVE_SALES)
    found = _order(load, "Sales")
    assert found["stages"][:2] == ("Proposal", "Qualified") and found["source"] == "inferred"
    assert (found["moves"], found["backward"]) == (0, 0) and math.isnan(found["share"])
    assert "first appearance" in load.stages["Sales"].order_basis
    assert len(load.stage_order_warnings) == 1 and "is a guess" in load.stage_order_warnings[0]
    # Configured through [sources.pipedrive] stage_order: no guess, nothing to warn about.
    (tmp_path / "configured").mkdir()
    configured = _load(
        tmp_path / "configured", "deals.csv", PIPEDRIVE_SALES,
        '[sources.pipedrive]\nstage_order = { "Sales" = ["Qualified", "Proposal"] }\n',
    )
    assert _order(configured, "Sales")["source"] == "configured" and configured.stage_order_warnings == []


def test_salesforce_sort_order_is_the_crm_order_and_configured_stays_configured():
    project = load_project_config(ROOT / "tests" / "fixtures" / "salesforce" / "dealcast.toml")
    settings = Settings(project, ROOT / "tests" / "fixtures" / "salesforce" / "small", False, dt.date(2024, 7, 1), ROOT)
    load = load_crm(settings)
    assert _order(load, "Default")["source"] == "crm"
    assert load.stages["Default"].order_basis == "StageSortOrder in Opportunity.csv"
    assert _order(load, "New Business")["source"] == "configured"


def test_the_summary_says_where_each_order_comes_from(tmp_path, warehouse):
    (tmp_path / "growth").mkdir()
    (tmp_path / "sales").mkdir()
    growth = _load(tmp_path / "growth", "hubspot-deals.csv", HUBSPOT_GROWTH)
    sales = _load(tmp_path / "sales", "deals.csv", PIPEDRIVE_SALES)
    as_of = dt.date(2024, 10, 1)
    frame = pd.concat([growth.pipeline_stages, sales.pipeline_stages], ignore_index=True)
    warehouse.claim(as_of, "run-1")
    warehouse.write("pipeline_stages", table_frame("pipeline_stages", frame), as_of=as_of, run_id="run-1")
    run = RunSummary(warehouse, as_of, "USD", 1, warn_backward_share=0.1, tables=warehouse.table_names())
    assert _stage_order_lines(run) == [
        "  stage order of 'Growth': inferred (8 stage moves in the date-entered columns); 1 of 8 stage moves "
        "backward (12.5%): Discovery > Demo > Contract [above 10%: the deals do not follow this order]",
        "  stage order of 'Sales': inferred (first appearance in the export; no stage history or probabilities to "
        "order by: a guess); no stage moves to check it: Proposal > Qualified [a guess: set it under [[pipelines]] "
        "in dealcast.toml]",
    ]


def test_inferred_from_history_matches_the_crm_order_on_a_messy_org(tmp_path):
    """The messy sample org (Spanish stages, a bulk import, wins keyed in at close, stale deals)
    states its order in StageSortOrder. With that column removed, the order inferred from the moves
    in OpportunityHistory must be the same one, and leave the same moves backward."""
    import csv

    from sample_crm.generate import generate_sample

    stated = tmp_path / "stated"
    generate_sample(stated, seed=7, end_date=dt.date(2026, 11, 15), profile="messy")
    unstated = tmp_path / "unstated"
    unstated.mkdir()
    for path in stated.glob("*.csv"):
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        if path.name == "Opportunity.csv":
            drop = rows[0].index("StageSortOrder")
            rows = [row[:drop] + row[drop + 1 :] for row in rows]
        with open(unstated / path.name, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle, quoting=csv.QUOTE_ALL).writerows(rows)
    config = load_project_config(ROOT / "dealcast.toml")
    loads = {
        name: load_crm(Settings(config, folder, False, dt.date(2026, 11, 15), ROOT))
        for name, folder in (("stated", stated), ("unstated", unstated))
    }
    pipeline = next(p.name for p in loads["stated"].stages if p.order_source == "crm")
    crm, inferred = loads["stated"].stages[pipeline], loads["unstated"].stages[pipeline]
    assert inferred.order_source == "inferred" and "stage moves in OpportunityHistory" in inferred.order_basis
    assert (inferred.open_stages, inferred.won_stage, inferred.lost_stage) == (crm.open_stages, crm.won_stage, crm.lost_stage)
    fit = {name: _order(load, pipeline) for name, load in loads.items()}
    assert (fit["stated"]["moves"], fit["stated"]["backward"]) == (fit["unstated"]["moves"], fit["unstated"]["backward"])
    assert fit["stated"]["moves"] > 0
