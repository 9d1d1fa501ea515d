"""Validation of the canonical CRM frames: every adversarial row gets its reason code, nothing
accepted is altered, every file reconciles, and the blocking checks fire exactly at their limits.

Expected numbers are worked out by hand from the frames built here (the case table says which rows
must be rejected and why), never read back from the code under test.
"""

from __future__ import annotations

import datetime as dt
import json
import logging

import numpy as np
import pandas as pd
import pytest

from etl.config import ValidationConfig
from etl.schema import (
    DEAL_COLUMNS,
    DEAL_HISTORY_COLUMNS,
    DQ_RESULT_COLUMNS,
    QUARANTINE_COLUMNS,
    SchemaError,
    conform,
    empty_frame,
)
from etl.stages import PipelineStages, StageCatalog
from etl.validation.canonical import validate_crm
from etl.validation.outcome import ValidationOutcome
from etl.validation.reconciliation import FileCount

AS_OF = dt.date(2024, 11, 1)  # plausible window: 2000-01-01 .. end of 2034-11-01
CATALOG = StageCatalog(
    [
        PipelineStages("New Business", ("Prospecting", "Qualification", "Negotiation"), "Closed Won", "Closed Lost"),
        PipelineStages("Channel", ("Prospecting", "Proposal"), "Won", "Lost"),
    ]
)
CONFIG = ValidationConfig(
    min_amount=0.0,
    max_amount=1_000_000.0,
    earliest_date=dt.date(2000, 1, 1),
    latest_years_ahead=10,
    max_quarantine_share=0.05,
    max_volume_drop_share=0.5,
)
DEALS_FILE = "exports/Opportunity.csv"
HISTORY_FILE = "exports/OpportunityHistory.csv"
NAT = pd.NaT
HYPERLINK = '=HYPERLINK("http://x","y")'
CMD = "+cmd|' /C calc'!A0"


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text)


def deal(deal_id: str | None, row: int, /, **overrides) -> dict:
    """A valid open New Business deal, with `overrides` applied."""
    values = {
        "deal_id": deal_id,
        "source_system": "salesforce",
        "source_file": DEALS_FILE,
        "source_row": row,
        "pipeline": "New Business",
        "deal_name": f"Deal {deal_id}",
        "account": "Acme",
        "owner": "Ana",
        "team": "East",
        "product": "Widget",
        "region": "EU",
        "account_segment": "SMB",
        "lead_source": "Web",
        "deal_type": "New",
        "amount": 12_000.0,
        "currency": "USD",
        "amount_reporting": 12_000.0,
        "created_at": ts("2024-03-04 09:30"),
        "expected_close_date": ts("2024-12-20"),
        "closed_at": NAT,
        "crm_close_date": NAT,
        "stage": "Qualification",
        "stage_order": 2,
        "status": "open",
        "lost_reason": None,
        "forecast_category": "Pipeline",
        "crm_probability": 0.2,
        "last_stage_change_at": ts("2024-03-04 09:30"),
        "push_count": 0,
        "has_history": True,
    }
    values.update(overrides)
    return values


def history_row(deal_id: str | None, row: int, changed_at, stage: str | None = "Qualification", **overrides) -> dict:
    values = {
        "deal_id": deal_id,
        "changed_at": changed_at,
        "stage": stage,
        "amount": 12_000.0,
        "amount_reporting": 12_000.0,
        "expected_close_date": ts("2024-12-20"),
        "crm_probability": 0.2,
        "forecast_category": "Pipeline",
        "source_file": HISTORY_FILE,
        "source_row": row,
    }
    values.update(overrides)
    return values


def deals_frame(rows: list[dict]) -> pd.DataFrame:
    if not rows:
        return empty_frame(DEAL_COLUMNS)
    return conform(pd.DataFrame(rows), DEAL_COLUMNS, "deals")


def history_frame(rows: list[dict]) -> pd.DataFrame:
    if not rows:
        return empty_frame(DEAL_HISTORY_COLUMNS)
    return conform(pd.DataFrame(rows), DEAL_HISTORY_COLUMNS, "deal_history")


def reader_rows(rows: list[tuple[str, int]]) -> pd.DataFrame:
    """Rows the reader itself could not parse."""
    if not rows:
        return empty_frame(QUARANTINE_COLUMNS)
    frame = pd.DataFrame(
        {
            "source_file": [f for f, _ in rows],
            "source_row": [r for _, r in rows],
            "reason_code": "unparseable_row",
            "reason": "unparseable_row: wrong number of fields",
            "column": None,
            "raw_record": '{"line": "1;2"}',
        }
    )
    return conform(frame, QUARANTINE_COLUMNS, "reader quarantine")


def clean_deals(count: int, start_row: int = 1, prefix: str = "C") -> list[dict]:
    return [deal(f"{prefix}{i:04d}", start_row + i) for i in range(count)]


def run(deals, history=None, reader=None, files=None, previous=None, config=CONFIG) -> ValidationOutcome:
    history = history_frame([]) if history is None else history
    reader = reader_rows([]) if reader is None else reader
    if files is None:
        files = [FileCount(DEALS_FILE, len(deals)), FileCount(HISTORY_FILE, len(history))]
    return validate_crm(deals, history, reader, files, CATALOG, config, AS_OF, previous_deal_count=previous)


def blocking(outcome: ValidationOutcome) -> set[str]:
    return set(outcome.blocking_failures["check_name"])


def result(outcome: ValidationOutcome, check: str) -> pd.Series:
    rows = outcome.results.loc[outcome.results["check_name"] == check]
    assert len(rows) == 1, f"expected exactly one result row for {check}"
    return rows.iloc[0]


# ---------------------------------------------------------------------------------------------
# The adversarial export: every bad case is one deal among 700 clean ones.
# ---------------------------------------------------------------------------------------------

# case -> (overrides, expected reason_code, expected column); reason_code None = accepted.
DEAL_CASES: dict[str, tuple[dict, str | None, str | None]] = {
    "missing_id": ({"deal_id": None}, "missing_id", "deal_id"),
    "negative_amount": ({"amount": -250.0}, "amount_out_of_range", "amount"),
    "amount_just_below_zero": ({"amount": -0.01}, "amount_out_of_range", "amount"),
    "huge_amount": ({"amount": 5e12}, "amount_out_of_range", "amount"),
    "amount_just_above_max": ({"amount": 1_000_000.01}, "amount_out_of_range", "amount"),
    "infinite_amount": ({"amount": float("inf")}, "amount_out_of_range", "amount"),
    "created_1900": ({"created_at": ts("1900-01-01")}, "implausible_date", "created_at"),
    "created_2199": ({"created_at": ts("2199-06-01")}, "implausible_date", "created_at"),
    "created_just_before_earliest": ({"created_at": ts("1999-12-31 23:59:59")}, "implausible_date", "created_at"),
    "created_just_after_latest": ({"created_at": ts("2034-11-02 00:00")}, "implausible_date", "created_at"),
    "created_blank": ({"created_at": NAT}, "implausible_date", "created_at"),
    "expected_close_2199": ({"expected_close_date": ts("2199-12-31")}, "implausible_date", "expected_close_date"),
    "won_closed_1900": (
        {"status": "won", "stage": "Closed Won", "closed_at": ts("1900-01-01")},
        "implausible_date",
        "closed_at",
    ),
    "won_without_close_date": ({"status": "won", "stage": "Closed Won"}, "missing_close_date", "closed_at"),
    "lost_without_close_date": ({"status": "lost", "stage": "Closed Lost"}, "missing_close_date", "closed_at"),
    "closed_before_created": (
        {"status": "lost", "stage": "Closed Lost", "created_at": ts("2024-05-10 14:00"), "closed_at": ts("2024-05-09")},
        "closed_before_created",
        "closed_at",
    ),
    "unknown_stage": ({"stage": "Demo Booked"}, "unknown_stage", "stage"),
    "stage_of_another_pipeline": ({"stage": "Proposal"}, "unknown_stage", "stage"),
    "blank_stage": ({"stage": None}, "unknown_stage", "stage"),
    "unknown_pipeline": ({"pipeline": "Partners"}, "unknown_pipeline", "pipeline"),
    "blank_pipeline": ({"pipeline": None}, "unknown_pipeline", "pipeline"),
    "invalid_status": ({"status": "pending"}, "invalid_status", "status"),
    "blank_status": ({"status": None}, "invalid_status", "status"),
    "open_in_won_stage": (
        {"status": "open", "stage": "Closed Won", "closed_at": ts("2024-06-01")},
        "status_stage_mismatch",
        "status",
    ),
    "won_in_lost_stage": (
        {"status": "won", "stage": "Closed Lost", "closed_at": ts("2024-06-01")},
        "status_stage_mismatch",
        "status",
    ),
    "several_problems": (
        {"pipeline": "Partners", "amount": -1.0, "created_at": ts("1900-01-01")},
        "unknown_pipeline",
        "pipeline",
    ),
    "formula_name_and_bad_amount": ({"deal_name": HYPERLINK, "amount": -5.0}, "amount_out_of_range", "amount"),
    # Accepted edge cases.
    "blank_amount": ({"amount": np.nan, "amount_reporting": np.nan}, None, None),
    "zero_amount": ({"amount": 0.0}, None, None),
    "amount_at_max": ({"amount": 1_000_000.0}, None, None),
    "created_at_earliest": ({"created_at": ts("2000-01-01 00:00")}, None, None),
    "created_on_last_plausible_day": ({"created_at": ts("2034-11-01 23:59")}, None, None),
    "closed_same_day_as_created": (
        {"status": "won", "stage": "Closed Won", "created_at": ts("2024-05-10 14:00"), "closed_at": ts("2024-05-10")},
        None,
        None,
    ),
    "channel_pipeline_won": (
        {"pipeline": "Channel", "stage": "Won", "status": "won", "closed_at": ts("2024-07-01")},
        None,
        None,
    ),
    "formula_hyperlink_name": ({"deal_name": HYPERLINK}, None, None),
    "formula_cmd_name": ({"deal_name": CMD}, None, None),
}
CLEAN = 700
READER_DEAL_ROWS = [(DEALS_FILE, 9001), (DEALS_FILE, 9002)]
READER_HISTORY_ROWS = [(HISTORY_FILE, 9501)]


@pytest.fixture(scope="module")
def export():
    """The adversarial export, its expected outcome worked out from the case table, and the run."""
    rows = clean_deals(CLEAN)
    case_rows: dict[str, int] = {}
    for offset, (case, (overrides, _, _)) in enumerate(DEAL_CASES.items()):
        row = 1000 + offset
        case_rows[case] = row
        rows.append(deal(f"X-{case}", row, **overrides))
    # Duplicates: three identical copies (first kept), two differing copies, and a group where
    # two copies agree and a third differs (all three quarantined).
    rows += [deal("DUP-SAME", r) for r in (2001, 2002, 2003)]
    rows += [deal("DUP-DIFF", 2011, amount=100.0), deal("DUP-DIFF", 2012, amount=200.0)]
    rows += [deal("DUP-MIX", 2021), deal("DUP-MIX", 2022), deal("DUP-MIX", 2023, owner="Bo")]
    deals = deals_frame(rows)

    created = ts("2024-03-04 09:30")
    hist_rows = [
        history_row("C0001", 1, created),
        history_row("C0001", 2, ts("2024-04-01"), "Negotiation"),
        history_row("C0002", 3, ts("2024-04-01"), "Negotiation"),  # out of order: later row first
        history_row("C0002", 4, created),
        history_row("C0002", 5, ts("2024-05-01"), "Negotiation"),
        history_row("C0003", 6, created - pd.Timedelta(days=2)),  # warning: before creation
        history_row("C0004", 7, created - pd.Timedelta(hours=12)),  # within the day's tolerance
        history_row("GHOST", 8, created),  # orphan
        history_row("DUP-DIFF", 9, created),  # deal quarantined
        history_row("X-negative_amount", 10, created),  # deal quarantined
        history_row("DUP-SAME", 11, created),  # deal accepted (first copy)
        history_row("C0005", 12, ts("2199-01-01")),  # implausible date
        history_row("C0005", 13, NAT),  # blank date
        history_row("C0006", 14, created, "Proposal"),  # a Channel stage on a New Business deal
        history_row("C0007", 15, created, None),  # blank stage is fine
        history_row(None, 16, created),  # no deal id
        history_row("C0008", 17, created, "Closed Won"),
    ]
    history = history_frame(hist_rows)
    expected_history_codes = {
        8: "orphan_history",
        9: "deal_quarantined",
        10: "deal_quarantined",
        12: "implausible_date",
        13: "implausible_date",
        14: "unknown_stage",
        16: "missing_id",
    }

    reader = reader_rows(READER_DEAL_ROWS + READER_HISTORY_ROWS)
    files = [
        FileCount(DEALS_FILE, len(rows) + len(READER_DEAL_ROWS)),
        FileCount(HISTORY_FILE, len(hist_rows) + len(READER_HISTORY_ROWS)),
    ]
    outcome = run(deals, history, reader, files)

    rejected_deal_rows = {case_rows[c] for c, (_, code, _) in DEAL_CASES.items() if code}
    duplicate_rows = {2002, 2003, 2011, 2012, 2021, 2022, 2023}
    return {
        "deals": deals,
        "history": history,
        "reader": reader,
        "outcome": outcome,
        "case_rows": case_rows,
        "rejected_deal_rows": rejected_deal_rows | duplicate_rows,
        "duplicate_rows": duplicate_rows,
        "expected_history_codes": expected_history_codes,
    }


def quarantined(outcome: ValidationOutcome, source_file: str, source_row: int) -> pd.Series:
    q = outcome.quarantine
    rows = q.loc[(q["source_file"] == source_file) & (q["source_row"] == source_row)]
    assert len(rows) == 1, f"{source_file} row {source_row}: expected one quarantine row, found {len(rows)}"
    return rows.iloc[0]


@pytest.mark.parametrize("case", list(DEAL_CASES))
def test_each_adversarial_deal_gets_its_reason_code(export, case):
    outcome = export["outcome"]
    overrides, code, column = DEAL_CASES[case]
    row = export["case_rows"][case]
    in_quarantine = (outcome.quarantine["source_file"] == DEALS_FILE) & (outcome.quarantine["source_row"] == row)
    accepted = outcome.deals["source_row"] == row
    if code is None:
        assert not in_quarantine.any(), f"{case} must be accepted"
        assert accepted.sum() == 1
    else:
        entry = quarantined(outcome, DEALS_FILE, row)
        assert entry["reason_code"] == code
        assert entry["column"] == column
        assert entry["reason"].startswith(f"{code}: ")
        assert not accepted.any(), f"{case} must not be accepted"


def test_reason_lists_every_failing_check_and_code_is_the_first(export):
    outcome = export["outcome"]
    several = quarantined(outcome, DEALS_FILE, export["case_rows"]["several_problems"])
    assert several["reason_code"] == "unknown_pipeline"
    codes = [part.split(":")[0] for part in several["reason"].split("; ")]
    assert codes == ["unknown_pipeline", "implausible_date", "amount_out_of_range"]
    assert "'Partners'" in several["reason"] and "-1.0" in several["reason"]

    closed_1900 = quarantined(outcome, DEALS_FILE, export["case_rows"]["won_closed_1900"])
    assert closed_1900["reason_code"] == "implausible_date"
    assert "closed_before_created" in closed_1900["reason"]


def test_duplicates_keep_first_identical_copy_and_quarantine_differing_ones(export):
    outcome = export["outcome"]
    accepted_rows = dict(zip(outcome.deals["source_row"], outcome.deals["deal_id"]))
    assert accepted_rows.get(2001) == "DUP-SAME"
    assert (outcome.deals["deal_id"] == "DUP-SAME").sum() == 1
    assert not outcome.deals["deal_id"].isin(["DUP-DIFF", "DUP-MIX"]).any()
    for row in export["duplicate_rows"]:
        assert quarantined(outcome, DEALS_FILE, row)["reason_code"] == "duplicate_id"
    assert "identical earlier row (source_row 2001)" in quarantined(outcome, DEALS_FILE, 2002)["reason"]
    assert "different content" in quarantined(outcome, DEALS_FILE, 2011)["reason"]
    # 2 identical repeats + 2 differing copies + 3 copies of the mixed group.
    assert result(outcome, "deals.deal_id_unique")["failing_rows"] == 7


def test_accepted_rows_are_exactly_the_input_rows_unchanged(export):
    outcome, deals, history = export["outcome"], export["deals"], export["history"]
    keep = ~deals["source_row"].isin(export["rejected_deal_rows"])
    pd.testing.assert_frame_equal(outcome.deals, deals.loc[keep].reset_index(drop=True))
    assert len(outcome.deals) == CLEAN + 9 + 1  # 9 accepted edge cases + the first DUP-SAME copy

    keep_history = ~history["source_row"].isin(list(export["expected_history_codes"]))
    pd.testing.assert_frame_equal(outcome.history, history.loc[keep_history].reset_index(drop=True))


def test_formula_strings_are_data_stored_as_is(export):
    outcome = export["outcome"]
    names = dict(zip(outcome.deals["deal_id"], outcome.deals["deal_name"]))
    assert names["X-formula_hyperlink_name"] == '=HYPERLINK("http://x","y")'
    assert names["X-formula_cmd_name"] == "+cmd|' /C calc'!A0"
    raw = quarantined(outcome, DEALS_FILE, export["case_rows"]["formula_name_and_bad_amount"])["raw_record"]
    record = json.loads(raw)
    assert record["deal_name"] == '=HYPERLINK("http://x","y")'
    assert record["amount"] == -5.0 and record["deal_id"] == "X-formula_name_and_bad_amount"


def test_history_rows_get_their_reason_codes_and_warnings_quarantine_nothing(export):
    outcome = export["outcome"]
    history_quarantine = outcome.quarantine.loc[outcome.quarantine["source_file"] == HISTORY_FILE]
    ours = history_quarantine.loc[~history_quarantine["source_row"].isin([r for _, r in READER_HISTORY_ROWS])]
    assert dict(zip(ours["source_row"], ours["reason_code"])) == export["expected_history_codes"]
    # C0002 has one row earlier than the row before it; C0003 has one row two days before creation.
    order = result(outcome, "deal_history.in_time_order")
    assert (order["passed"], order["severity"], order["failing_rows"]) == (False, "warning", 1)
    early = result(outcome, "deal_history.not_before_creation")
    assert (early["passed"], early["severity"], early["failing_rows"]) == (False, "warning", 1)
    assert set(outcome.history.loc[outcome.history["deal_id"] == "C0002", "source_row"]) == {3, 4, 5}
    assert 6 in set(outcome.history["source_row"]) and 7 in set(outcome.history["source_row"])


def test_blank_amount_is_a_warning_not_a_rejection(export):
    check = result(export["outcome"], "deals.amount_present")
    assert (check["passed"], check["severity"], check["failing_rows"]) == (False, "warning", 1)


def test_reconciliation_balances_every_file(export):
    outcome = export["outcome"]
    rec = outcome.reconciliation.set_index("source_file")
    rejected = len(export["rejected_deal_rows"])
    deal_rows = CLEAN + len(DEAL_CASES) + 8
    assert rec.loc[DEALS_FILE, "rows_read"] == deal_rows + 2
    assert rec.loc[DEALS_FILE, "accepted"] == deal_rows - rejected
    assert rec.loc[DEALS_FILE, "quarantined"] == rejected + 2  # plus the reader's two
    assert rec.loc[HISTORY_FILE, "rows_read"] == 18
    assert rec.loc[HISTORY_FILE, "accepted"] == 17 - 7
    assert rec.loc[HISTORY_FILE, "quarantined"] == 7 + 1
    assert rec["balanced"].all()
    assert (rec["rows_read"] == rec["accepted"] + rec["quarantined"]).all()
    for file in (DEALS_FILE, HISTORY_FILE):
        assert result(outcome, f"crm_exports.reconciliation[{file}]")["passed"]


def test_no_deal_level_blocking_failure_when_every_deal_limit_holds(export):
    outcome = export["outcome"]
    # The 18-row history file is a catalogue of bad history rows, so its own share is far above
    # 5%; the deals' limits all hold.
    assert blocking(outcome) == {"deal_history.quarantine_share"}
    share = result(outcome, "deals.quarantine_share")
    rejected = len(export["rejected_deal_rows"]) + 2
    total = CLEAN + len(DEAL_CASES) + 8 + 2
    assert f"{rejected:,} of {total:,} deal rows" in share["observed"]


def test_quarantine_and_results_follow_the_warehouse_contract(export):
    outcome = export["outcome"]
    assert list(outcome.quarantine.columns) == list(QUARANTINE_COLUMNS)
    assert not outcome.quarantine.duplicated(["source_file", "source_row"]).any()
    assert outcome.quarantine["reason"].notna().all() and outcome.quarantine["raw_record"].notna().all()
    reader_part = outcome.quarantine.loc[outcome.quarantine["reason_code"] == "unparseable_row"]
    assert len(reader_part) == 3
    assert dict(outcome.results.dtypes.astype(str)) == {c: str(pd.Series(dtype=t).dtype) for c, t in DQ_RESULT_COLUMNS.items()}
    assert outcome.results["check_name"].is_unique
    assert set(outcome.results["severity"]) <= {"error", "row", "warning"}
    assert list(outcome.reconciliation.columns) == ["source_file", "rows_read", "accepted", "quarantined", "excluded", "balanced"]


def test_report_and_samples_describe_the_failures(export):
    outcome = export["outcome"]
    report = outcome.report_markdown()
    assert "**1 blocking check(s) failed:** `deal_history.quarantine_share`" in report
    assert "| deals.amount_in_range | deals | row | FAILED |" in report
    assert "| duplicate_id | 7 |" in report
    assert f"| {DEALS_FILE} |" in report
    assert HYPERLINK not in report  # deal names are not part of the summary

    samples = outcome.sample_rows("deals.amount_in_range", n=2)
    assert len(samples) == 2
    assert all(s["source_file"] == DEALS_FILE for s in samples)
    json.dumps(samples)  # plain values, ready for run metadata
    orphans = outcome.sample_rows("deal_history.deal_known")
    assert [(s["source_row"], s["deal_id"]) for s in orphans] == [(8, "GHOST")]
    assert outcome.sample_rows("deals.deal_id_not_null")[0]["reason"] == "deal_id is blank"
    assert outcome.sample_rows("deals.deals_not_empty") == []
    with pytest.raises(KeyError, match="no check named"):
        outcome.sample_rows("deals.nonexistent")


# ---------------------------------------------------------------------------------------------
# Blocking checks: each fires exactly at its limit.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("clean", "unparseable", "quarantined_deal_rows"),
    [
        (19, [], None),  # 1 bad of 20 deal rows = 5.00%: at the limit, passes
        (18, [], 1),  # 1 bad of 19 = 5.26%
        # History rows do not count for deals (1 of 41 deal rows); they are judged on their own: 3 of 4.
        (40, [(HISTORY_FILE, 2), (HISTORY_FILE, 3), (HISTORY_FILE, 4)], "history"),
        (40, [(DEALS_FILE, 901), (DEALS_FILE, 902)], 3),  # the reader's rows do: 3 of 43 = 6.98%
    ],
)
def test_quarantine_share_blocks_above_its_limit(clean, unparseable, quarantined_deal_rows):
    rows = clean_deals(clean) + [deal("BAD", 500, amount=-1.0)]
    history = history_frame([history_row("C0000", 1, ts("2024-03-05"))])
    in_deal_file = sum(1 for f, _ in unparseable if f == DEALS_FILE)
    files = [
        FileCount(DEALS_FILE, len(rows) + in_deal_file),
        FileCount(HISTORY_FILE, 1 + len(unparseable) - in_deal_file),
    ]
    outcome = run(deals_frame(rows), history, reader_rows(unparseable), files)
    share = result(outcome, "deals.quarantine_share")
    if quarantined_deal_rows == "history":
        assert blocking(outcome) == {"deal_history.quarantine_share"}
        assert share["passed"] and "1 of 41 deal rows" in share["observed"]
        history_share = result(outcome, "deal_history.quarantine_share")
        assert history_share["observed"] == "75.00% (3 of 4 history rows quarantined for a defect of their own)"
    elif quarantined_deal_rows is None:
        assert blocking(outcome) == set()
        assert share["passed"] and share["failing_rows"] == 0
    else:
        assert blocking(outcome) == {"deals.quarantine_share"}
        assert share["failing_rows"] == quarantined_deal_rows
    assert outcome.reconciliation["balanced"].all()


@pytest.mark.parametrize(("accepted", "previous", "fails"), [(50, 100, False), (49, 100, True), (3, None, False)])
def test_volume_drop_blocks_below_the_floor(accepted, previous, fails):
    # max_volume_drop_share 0.5 of 100 previous deals: at least 50 must be accepted.
    outcome = run(deals_frame(clean_deals(accepted)), previous=previous)
    assert blocking(outcome) == ({"deals.volume_not_collapsed"} if fails else set())
    volume = result(outcome, "deals.volume_not_collapsed")
    assert volume["failing_rows"] == (1 if fails else 0)
    if previous is None:
        assert "no previous published night" in volume["observed"]


def test_empty_export_blocks_and_gx_stays_quiet(capfd, caplog):
    caplog.set_level(logging.DEBUG)
    gx_logger = logging.getLogger("great_expectations")
    before = gx_logger.level
    gx_logger.setLevel(logging.DEBUG)
    try:
        outcome = run(deals_frame([]), files=[FileCount(DEALS_FILE, 0), FileCount(HISTORY_FILE, 0)])
        assert gx_logger.level == logging.DEBUG  # restored after the call
    finally:
        gx_logger.setLevel(before)
    captured = capfd.readouterr()
    assert "Calculating Metrics" not in captured.err + captured.out
    assert [r.getMessage() for r in caplog.records if r.name.startswith("great_expectations")] == []
    assert any(r.name.startswith("etl.validation") for r in caplog.records)  # our own summary still logs
    assert blocking(outcome) == {"deals.deals_not_empty"}
    assert outcome.reconciliation["balanced"].all()
    assert outcome.deals.empty and outcome.quarantine.empty
    assert "**1 blocking check(s) failed:** `deals.deals_not_empty`" in outcome.report_markdown()


def test_export_where_every_deal_is_rejected_blocks_twice():
    deals = deals_frame([deal("A", 1, amount=-1.0), deal("B", 2, status="x"), deal(None, 3)])
    outcome = run(deals)
    assert blocking(outcome) == {"deals.deals_not_empty", "deals.quarantine_share"}
    assert len(outcome.quarantine) == 3
    assert outcome.reconciliation.set_index("source_file").loc[DEALS_FILE, "quarantined"] == 3


def test_unbalanced_and_uncounted_files_block():
    deals = deals_frame(clean_deals(40))
    history = history_frame(
        [history_row("C0000", 1, ts("2024-03-05")), history_row("C0001", 7, ts("2024-03-05"), source_file="extra.csv")]
    )
    # The reader claims 42 deal rows but only 40 + 1 unparseable are accounted for; extra.csv was
    # never counted at all.
    files = [FileCount(DEALS_FILE, 42), FileCount(HISTORY_FILE, 1)]
    outcome = run(deals, history, reader_rows([(DEALS_FILE, 99)]), files)
    assert blocking(outcome) == {
        f"crm_exports.reconciliation[{DEALS_FILE}]",
        "crm_exports.reconciliation[extra.csv]",
    }
    rec = outcome.reconciliation.set_index("source_file")
    assert (rec.loc[DEALS_FILE, "accepted"], rec.loc[DEALS_FILE, "quarantined"]) == (40, 1)
    assert result(outcome, f"crm_exports.reconciliation[{DEALS_FILE}]")["failing_rows"] == 1
    assert (rec.loc["extra.csv", "rows_read"], rec.loc["extra.csv", "accepted"]) == (0, 1)
    assert not rec.loc["extra.csv", "balanced"]
    assert outcome.sample_rows(f"crm_exports.reconciliation[{DEALS_FILE}]")[0]["rows_read"] == 42


def test_a_source_row_feeding_deal_and_history_counts_once():
    # One export row per deal that also carries the deal's stage history (as a HubSpot export
    # does): the deal and its history rows share source_file and source_row.
    file = "exports/hubspot_deals.csv"
    rows = [deal(f"H{i}", i, source_file=file) for i in range(1, 41)] + [deal("HBAD", 41, source_file=file, amount=-3.0)]
    history = history_frame(
        [history_row(f"H{i}", i, ts("2024-03-05"), source_file=file) for i in range(1, 41)]
        + [history_row("HBAD", 41, ts("2024-03-05"), source_file=file)]
    )
    outcome = run(deals_frame(rows), history, files=[FileCount(file, 41)])
    rec = outcome.reconciliation.set_index("source_file").loc[file]
    assert (rec["rows_read"], rec["accepted"], rec["quarantined"], rec["balanced"]) == (41, 40, 1, True)
    entry = quarantined(outcome, file, 41)
    assert entry["reason_code"] == "amount_out_of_range"
    assert "deal_quarantined" in entry["reason"]
    assert blocking(outcome) == set()  # 1 of 41 rows = 2.4%


def test_inputs_that_break_the_contract_are_refused_with_names():
    deals = deals_frame(clean_deals(2)).drop(columns=["status"])
    with pytest.raises(SchemaError, match=r"deals frame lacks canonical column\(s\) \['status'\]"):
        run(deals)
    twice = [FileCount(DEALS_FILE, 2), FileCount(DEALS_FILE, 2)]
    with pytest.raises(ValueError, match="Opportunity.csv' is listed twice"):
        run(deals_frame(clean_deals(2)), files=twice)


def test_lookup_rows_count_as_accepted_in_the_reconciliation():
    """A users file of 13 rows feeds no deal or history row; the 12 the reader kept as owner names
    and 1 it quarantined balance the file (13 = 12 + 1)."""
    from etl.validation.reconciliation import reconcile
    from etl.schema import QUARANTINE_COLUMNS, empty_frame

    quarantined = empty_frame(QUARANTINE_COLUMNS)
    quarantined.loc[0] = ["User.csv", 5, "missing_id", "Id is blank", "Id", "{}"]
    quarantined = quarantined.astype({"source_row": "int64"})
    empty_rows = pd.DataFrame({"source_file": pd.Series(dtype="string"), "source_row": pd.Series(dtype="int64")})
    rec = reconcile([FileCount("User.csv", 13, lookup_rows=12)], [empty_rows], quarantined)
    row = rec.set_index("source_file").loc["User.csv"]
    assert (row["rows_read"], row["accepted"], row["quarantined"], bool(row["balanced"])) == (13, 12, 1, True)


def test_currency_outside_the_rates_file_is_quarantined_with_the_files_column_name():
    deals = deals_frame(
        clean_deals(40) + [deal("EUR1", 41, currency="EUR"), deal("XYZ1", 42, currency="XYZ")]
    )
    files = [FileCount(DEALS_FILE, 42, columns={"currency": "CurrencyIsoCode", "amount": "Amount"})]
    outcome = validate_crm(
        deals, history_frame([]), reader_rows([]), files, CATALOG, CONFIG, AS_OF, currencies=["EUR", "USD"]
    )
    rows = outcome.quarantine.set_index("source_row")
    assert list(rows.index) == [42]
    assert rows.loc[42, "reason_code"] == "unknown_currency"
    assert rows.loc[42, "column"] == "CurrencyIsoCode"
    assert "'XYZ'" in rows.loc[42, "reason"]
    result = outcome.results.set_index("check_name").loc["deals.currency_known"]
    assert (bool(result["passed"]), int(result["failing_rows"])) == (False, 1)
    assert set(outcome.deals["deal_id"]) >= {"EUR1"}


def test_stage_events_suite_blocks_a_rebuild_that_goes_back_in_time():
    from etl.validation.stage_events import validate_stage_events

    events = pd.DataFrame(
        {
            "deal_id": ["A", "A", "A", "B"],
            "stage": ["Prospecting", "Qualification", "Negotiation", "Prospecting"],
            "stage_order": pd.array([1, 2, None, 1], dtype="Int64"),
            "entered_at": [ts("2024-01-01"), ts("2024-02-01"), ts("2024-01-15"), ts("2024-12-01")],
            "exited_at": [ts("2024-02-01"), ts("2024-01-15"), NAT, NAT],
            "days_in_stage": [31.0, -17.0, None, 0.0],
        }
    )
    deals = pd.DataFrame({"deal_id": ["A"]})
    results, failures = validate_stage_events(events, deals, pd.Timestamp("2024-11-01 23:59:59"))
    failing = results.set_index("check_name")["failing_rows"].to_dict()
    assert failing == {
        "stage_events.deal_known": 1,  # B is no accepted deal
        "stage_events.stage_known": 1,  # A's third stay has no stage order
        "stage_events.entered_in_time_order": 1,  # 2024-01-15 after 2024-02-01
        "stage_events.exited_not_before_entered": 1,  # left on 01-15, entered on 02-01
        "stage_events.days_in_stage_not_negative": 1,
        "stage_events.entered_by_as_of": 1,  # 2024-12-01 is after the end of 2024-11-01
    }
    assert (results["severity"] == "error").all() and not results["passed"].any()
    assert list(failures["stage_events.deal_known"]["deal_id"]) == ["B"]
