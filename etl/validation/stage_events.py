"""The `stage_events` suite: the rebuilt stays in each stage, checked before they are published."""

from __future__ import annotations


import great_expectations.expectations as gxe
import pandas as pd

from etl.deal_ids import is_in
from etl.schema import DQ_RESULT_COLUMNS, conform
from etl.validation.gx_session import GxSession, checkable_datetime, failing_rows, quiet_great_expectations
from etl.validation.outcome import SAMPLE_ROWS_KEPT, SEVERITY_ERROR, check_result, count_text

ASSET_STAGE_EVENTS = "stage_events"
CHECK_EVENTS_DEAL_KNOWN = "stage_events.deal_known"
CHECK_EVENTS_STAGE_KNOWN = "stage_events.stage_known"
CHECK_EVENTS_TIME_ORDER = "stage_events.entered_in_time_order"
CHECK_EVENTS_EXIT_AFTER_ENTRY = "stage_events.exited_not_before_entered"
CHECK_EVENTS_DAYS = "stage_events.days_in_stage_not_negative"
CHECK_EVENTS_NOT_FUTURE = "stage_events.entered_by_as_of"


def validate_stage_events(
    events: pd.DataFrame, deals: pd.DataFrame, as_of_end: pd.Timestamp
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The `stage_events` suite (blocking: stage events are rebuilt from accepted history, so a
    failure means the rebuild itself is wrong and nothing may be published): every event belongs to
    an accepted deal and to a stage of its pipeline; a deal's events are in time order; no stay ends
    before it begins or lasts a negative number of days; nothing is dated after the end of as_of.

    `events` is `etl.pipeline_state.stage_events` output (sorted by deal, then time). Returns the
    `data_quality_results` rows and, per check, its first failing events."""
    deal_codes, _ = pd.factorize(events["deal_id"])
    entered = checkable_datetime(events["entered_at"])
    previous = entered.groupby(deal_codes).shift(1)
    work = pd.DataFrame(
        {
            "deal_known": is_in(events["deal_id"], deals["deal_id"]),
            "stage_order": events["stage_order"].astype("Float64").astype("float64"),
            "entered_at": entered,
            "previous_entered_at": previous,
            "exited_at": checkable_datetime(events["exited_at"]),
            "days_in_stage": events["days_in_stage"].astype("float64"),
        }
    )

    def meta(name: str) -> dict:
        return {"check_name": name}

    checks = {
        CHECK_EVENTS_DEAL_KNOWN: (
            "every event belongs to an accepted deal",
            gxe.ExpectColumnValuesToBeInSet(column="deal_known", value_set=[True], meta=meta(CHECK_EVENTS_DEAL_KNOWN)),
        ),
        CHECK_EVENTS_STAGE_KNOWN: (
            "every event's stage is a stage of its pipeline",
            gxe.ExpectColumnValuesToNotBeNull(column="stage_order", meta=meta(CHECK_EVENTS_STAGE_KNOWN)),
        ),
        CHECK_EVENTS_TIME_ORDER: (
            "each deal's events in time order (entered_at never before the previous event's)",
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="entered_at", column_B="previous_entered_at", or_equal=True,
                ignore_row_if="either_value_is_missing", meta=meta(CHECK_EVENTS_TIME_ORDER),
            ),
        ),
        CHECK_EVENTS_EXIT_AFTER_ENTRY: (
            "exited_at on or after entered_at",
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="exited_at", column_B="entered_at", or_equal=True,
                ignore_row_if="either_value_is_missing", meta=meta(CHECK_EVENTS_EXIT_AFTER_ENTRY),
            ),
        ),
        CHECK_EVENTS_DAYS: (
            "days_in_stage blank or at least 0",
            gxe.ExpectColumnValuesToBeBetween(column="days_in_stage", min_value=0, meta=meta(CHECK_EVENTS_DAYS)),
        ),
        CHECK_EVENTS_NOT_FUTURE: (
            f"entered_at at or before the end of as_of ({as_of_end})",
            gxe.ExpectColumnValuesToBeBetween(
                column="entered_at", max_value=as_of_end.to_pydatetime(), meta=meta(CHECK_EVENTS_NOT_FUTURE)
            ),
        ),
    }
    with quiet_great_expectations():
        results = GxSession().validate("stage_events", work, [expectation for _, expectation in checks.values()])
    rows, failures = [], {}
    for name, (expected, _) in checks.items():
        failing = failing_rows(results[name], name)
        failures[name] = events.iloc[failing[:SAMPLE_ROWS_KEPT]][
            ["deal_id", "stage", "entered_at", "exited_at", "days_in_stage"]
        ].reset_index(drop=True)
        rows.append(
            check_result(name, ASSET_STAGE_EVENTS, len(failing) == 0, SEVERITY_ERROR,
                    count_text(len(failing), len(events), "events"), expected, len(failing))
        )
    frame = conform(pd.DataFrame(rows, columns=list(DQ_RESULT_COLUMNS)), DQ_RESULT_COLUMNS, "data_quality_results")
    return frame, failures
