"""Where reading ends and validating begins.

- A reader declares its raw suites and runs no Great Expectations check; `read_exports` has
  `etl.validation.raw` run every declared suite in one session.
- The Salesforce reader returns its deals as recorded and its history as read; the load step
  completes the deals from their rebuilt history (`completed_from_history`), and `load_crm` rebuilds
  the validated history once more for the tables.
- Every reader finds repeated source ids with the one test `repeated_ids`.
"""

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import etl.ingest.crm_load
import etl.pipeline_state
from etl.config import load_project_config, resolve_settings
from etl.ingest.crm_load import load_crm
from etl.ingest.csvfiles import first_occurrences, repeated_ids
from etl.ingest.exports import read_exports
from etl.ingest.readers.salesforce import FORMATS, read_salesforce
from etl.validation.gx_session import GxSession, failing_rows
from etl.validation.raw import run_raw_suites

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
SMALL = FIXTURES / "salesforce" / "small"
PIPEDRIVE = FIXTURES / "pipedrive" / "exports"
AS_OF = dt.date(2026, 6, 30)
T = pd.Timestamp


@pytest.fixture
def gx_calls(monkeypatch):
    """How many Great Expectations sessions were opened and suites validated."""
    calls = {"sessions": 0, "suites": 0}
    session_init, validate = GxSession.__init__, GxSession.validate

    def counted_init(self):
        calls["sessions"] += 1
        session_init(self)

    def counted_validate(self, *args, **kwargs):
        calls["suites"] += 1
        return validate(self, *args, **kwargs)

    monkeypatch.setattr(GxSession, "__init__", counted_init)
    monkeypatch.setattr(GxSession, "validate", counted_validate)
    return calls


@pytest.fixture
def rebuilds(monkeypatch):
    """The deal count of each `prepare_history` call, wherever it is made from."""
    sizes: list[int] = []
    prepare = etl.pipeline_state.prepare_history

    def counted(deals, history, stages):
        sizes.append(len(deals))
        return prepare(deals, history, stages)

    monkeypatch.setattr(etl.pipeline_state, "prepare_history", counted)
    monkeypatch.setattr(etl.ingest.crm_load, "prepare_history", counted)
    return sizes


def _small_files():
    by_name = {"Opportunity.csv": FORMATS[0], "OpportunityHistory.csv": FORMATS[1], "User.csv": FORMATS[2], "Account.csv": FORMATS[3]}
    return {fmt: [SMALL / name] for name, fmt in by_name.items()}


def test_a_reader_declares_its_raw_suites_and_checks_nothing(gx_calls):
    project = load_project_config(SMALL.parent / "dealcast.toml")
    export = read_salesforce(_small_files(), project)
    assert gx_calls == {"sessions": 0, "suites": 0}
    assert [s.format_label for s in export.raw_suites] == [
        "Salesforce User", "Salesforce Account", "Salesforce Opportunity", "Salesforce OpportunityHistory",
    ]
    # The declared values are the text as written: run later, they find Opportunity row 4's "12,5k".
    results = run_raw_suites(export.raw_suites).set_index("check_name")["failing_rows"]
    assert gx_calls["sessions"] == 1
    assert results["raw[Opportunity.csv].Amount.number"] == 1
    assert results["raw[Opportunity.csv].Id.not_blank"] == 0


def test_reading_the_exports_runs_every_raw_suite_in_one_session(gx_calls):
    result = read_exports(SMALL, load_project_config(SMALL.parent / "dealcast.toml"), as_of=AS_OF)
    assert gx_calls["sessions"] == 1
    files = {name.split("]")[0] + "]" for name in result.raw_checks["check_name"]}
    assert files == {"raw[Opportunity.csv]", "raw[OpportunityHistory.csv]", "raw[User.csv]", "raw[Account.csv]"}


def test_the_salesforce_reader_returns_deals_as_recorded(rebuilds):
    export = read_salesforce(_small_files(), load_project_config(SMALL.parent / "dealcast.toml"))
    assert rebuilds == []
    deals = export.deals.set_index("deal_id")
    # 006D1 won: CloseDate 2024-03-14, no LastStageChangeDate; its history enters Closed Won at 11:15.
    assert deals.at["006D1", "closed_at"] == T("2024-03-14")
    assert pd.isna(deals.at["006D1", "last_stage_change_at"])
    # 006D2's history moves its close date from 2024-05-31 to 2024-06-30: a push the record does not count.
    assert (export.deals["push_count"] == 0).all()
    assert export.completed_from_history


def test_the_load_step_completes_salesforce_deals_from_their_history(rebuilds):
    result = read_exports(SMALL, load_project_config(SMALL.parent / "dealcast.toml"), as_of=AS_OF)
    deals = result.deals.set_index("deal_id")
    assert deals.at["006D1", "closed_at"] == T("2024-03-14 11:15:00")
    assert deals.at["006D1", "last_stage_change_at"] == T("2024-03-14 11:15:00")
    assert deals.at["006D2", "push_count"] == 1
    # One rebuild, over every deal the reader accepted (before currency and validation).
    assert len(rebuilds) == 1


def test_a_nightly_load_rebuilds_history_once_per_frame_it_needs(rebuilds):
    settings = resolve_settings(exports_dir=SMALL, as_of=AS_OF, config_file=SMALL.parent / "dealcast.toml")
    load = load_crm(settings)
    # Salesforce: once on the deals as the reader accepted them (their closed_at is then valued in
    # the reporting currency and validated), once on the validated deals for the tables. In between,
    # the currency step quarantines Opportunity row 6 (EUR, and no rates file).
    currency = load.validation.quarantine["reason_code"].eq("unknown_currency").sum()
    assert currency == 1
    assert rebuilds == [len(load.ingest.deals) + 1, len(load.deals)]


def test_a_source_with_complete_records_rebuilds_history_once(rebuilds):
    settings = resolve_settings(exports_dir=PIPEDRIVE, as_of=AS_OF, config_file=PIPEDRIVE.parent / "dealcast.toml")
    load = load_crm(settings)
    assert rebuilds == [len(load.deals)]


def test_repeated_ids_keep_the_first_live_row():
    frame = pd.DataFrame(
        {
            "Id": ["A", "B", "A", "", "B", "C", "A"],
            "source_file": ["x.csv"] * 4 + ["y.csv"] * 3,
            "source_row": [2, 3, 4, 5, 2, 3, 4],
        }
    )
    # Row 0 ("A") is already quarantined for something else: row 2 is the first live "A".
    live = np.array([False, True, True, False, True, True, True])
    assert repeated_ids(frame["Id"], live).tolist() == [False, False, False, False, True, False, True]
    first = first_occurrences(frame, "Id", live)
    assert first.to_dict() == {"B": "x.csv row 3", "A": "x.csv row 4", "C": "y.csv row 3"}


def test_repeated_ids_of_any_type_and_missing_ones_count_among_live_rows_only():
    # Ids read from a warehouse table may be numbers; a missing id repeats only a live missing id
    # (row 3 is the first live one although row 1, quarantined, is missing too).
    ids = pd.Series([7, None, 7, None, 8, None, 8], dtype="Int64")
    live = np.array([True, False, True, True, True, True, False])
    assert repeated_ids(ids, live).tolist() == [False, False, True, False, False, True, False]
    chunked = pd.Series(pd.arrays.ArrowExtensionArray(pa.chunked_array([["A", "B"], ["A", "C", "B"]])))
    assert repeated_ids(chunked, np.ones(5, dtype=bool)).tolist() == [False, False, True, False, True]
    mixed = pd.Series(["7", 7, "7"], dtype=object)  # text and a number are different ids
    assert repeated_ids(mixed, np.ones(3, dtype=bool)).tolist() == [False, False, True]


def test_one_session_checks_each_frame_it_is_given_without_fingerprinting_it():
    import great_expectations.expectations as gxe

    session = GxSession()

    def failing(suite, values):
        frame = pd.DataFrame({"amount": values})
        check = gxe.ExpectColumnValuesToBeBetween(column="amount", min_value=0, meta={"check_name": "amount_not_negative"})
        return failing_rows(session.validate(suite, frame, [check])["amount_not_negative"], "amount_not_negative")

    # Two frames of the same shape in one session: each gets its own answer (no batch mixed up
    # with an earlier one once GX no longer fingerprints the frames).
    assert failing("first", [5.0, -1.0, 3.0]).tolist() == [1]
    assert failing("second", [-2.0, 4.0, -7.0]).tolist() == [0, 2]
    batch = session.batch_definition.get_batch(batch_parameters={"dataframe": pd.DataFrame({"amount": [1.0]})})
    assert "pandas_data_fingerprint" not in batch.batch_markers
