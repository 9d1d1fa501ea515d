"""The named blocking checks gather the blocking rows of `data_quality_results`: a hand-made results
frame with every concern passing, then one bad row per concern, and a blocking row nobody gathers."""

from __future__ import annotations

import pandas as pd
import pytest

from etl.validation.blocking import BLOCKING_CHECKS, blocking_verdicts

NAMES = [
    "deals_not_empty", "volume_not_collapsed", "reconciliation_balanced", "quarantine_share_within_limit",
    "stage_events_consistent",
]  # fmt: skip


def _row(check_name: str, passed: bool = True, severity: str = "error") -> dict:
    return {
        "check_name": check_name, "asset": "deals", "passed": passed, "severity": severity,
        "observed": "seen", "expected": "wanted", "failing_rows": 0 if passed else 3,
    }  # fmt: skip


def _good() -> list[dict]:
    return [
        _row("deals.deals_not_empty"),
        _row("deals.volume_not_collapsed"),
        _row("crm_exports.reconciliation[Opportunity.csv]"),
        _row("crm_exports.reconciliation[OpportunityHistory.csv]"),
        _row("deals.quarantine_share"),
        _row("deal_history.quarantine_share"),
        _row("stage_events.deal_known"),
        _row("stage_events.entered_by_as_of"),
        # Row-level and warning results never block, failed or not.
        _row("deals.amount_parseable", passed=False, severity="row"),
        _row("deals.close_date_plausible", passed=False, severity="warning"),
    ]


def _verdicts(rows: list[dict]) -> dict:
    return {v.name: v for v in blocking_verdicts(pd.DataFrame(rows))}


def test_the_named_checks_are_the_five_blocking_concerns():
    assert [check.name for check in BLOCKING_CHECKS] == NAMES


def test_a_good_night_passes_every_named_check_with_its_own_rows():
    verdicts = _verdicts(_good())
    assert list(verdicts) == NAMES
    assert all(v.passed for v in verdicts.values())
    rows = {name: len(v.results) for name, v in verdicts.items()}
    assert rows == {
        "deals_not_empty": 1, "volume_not_collapsed": 1, "reconciliation_balanced": 2,
        "quarantine_share_within_limit": 2, "stage_events_consistent": 2,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("bad", "failing"),
    [
        ("deals.deals_not_empty", "deals_not_empty"),
        ("deals.volume_not_collapsed", "volume_not_collapsed"),
        ("crm_exports.reconciliation[OpportunityHistory.csv]", "reconciliation_balanced"),
        ("deal_history.quarantine_share", "quarantine_share_within_limit"),
        ("stage_events.entered_by_as_of", "stage_events_consistent"),
    ],
)
def test_one_failed_row_fails_only_its_named_check(bad, failing):
    rows = [_row(r["check_name"], passed=False) if r["check_name"] == bad else r for r in _good()]
    verdicts = _verdicts(rows)
    assert {name for name, v in verdicts.items() if not v.passed} == {failing}
    assert list(verdicts[failing].failed["check_name"]) == [bad]


def test_the_first_night_has_no_volume_row_and_the_check_passes():
    rows = [r for r in _good() if r["check_name"] != "deals.volume_not_collapsed"]
    volume = _verdicts(rows)["volume_not_collapsed"]
    assert volume.passed and volume.results.empty


def test_a_blocking_row_no_named_check_gathers_is_refused():
    with pytest.raises(ValueError, match=r"blocking result 'deals\.something_new': expected exactly one named"):
        blocking_verdicts(pd.DataFrame([*_good(), _row("deals.something_new", passed=True)]))
