"""The adversarial corpus: more than a hundred classes of bad input, each built into a copy of one
generated Salesforce export and run through the real Dagster ingest assets (crm_exports and
crm_tables, with their blocking checks) into a real SQLite warehouse. On every case one invariant:

- no unhandled exception: the run succeeds, or fails with a message naming the file at fault and
  what was expected;
- rows read = rows accepted + rows quarantined, for every file, in the warehouse's reconciliation;
- nothing wrong is published: every quarantined row has its code, reason and raw record; every
  published deal is within the contract (amounts, probabilities, dates, id length, one Unicode
  form), and every deal a case did not touch is published exactly as the clean export gives it.

Row-level classes each corrupt their own deals of one large export, run once together (one
generated export, many small corruptions); file-level classes each need their own run of a small
export. The test id of each case names its class.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import json
import shutil
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from assets.ingest import crm_exports, crm_tables
from sample_crm.generate import generate_sample
from etl.warehouse import Warehouse

from .conftest import ROOT, materialize_graph

pytestmark = pytest.mark.slow

AS_OF = dt.date(2026, 6, 30)
ROW_DEALS = 2400  # the shared export: its 90-odd quarantined deals stay under the 5% limit
FILE_DEALS = 120
COMPARED = ["amount", "amount_reporting", "currency", "created_at", "closed_at", "expected_close_date", "stage",
            "status", "pipeline", "owner", "team", "account", "account_segment", "region", "product", "crm_probability"]
IDENTIFYING = ["deal_id", "pipeline", "stage", "owner", "team", "product", "region", "account_segment", "currency"]
LIMITS = (0.0, 1e9)
NFD_NAME = unicodedata.normalize("NFD", "Équipe Île")
NFC_NAME = unicodedata.normalize("NFC", "Équipe Île")


# ---------------------------------------------------------------------------------------------
# Running a case


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def write_rows(path: Path, header: list[str], rows: list[list[str]], quoting: int = csv.QUOTE_ALL,
               delimiter: str = ",", terminator: str = "\n", encoding: str = "utf-8") -> None:
    with open(path, "w", newline="", encoding=encoding) as handle:
        csv.writer(handle, quoting=quoting, delimiter=delimiter, lineterminator=terminator).writerows([header, *rows])


@dataclass
class RunOutcome:
    success: bool
    failures: list[str]
    warehouse_tables: dict[str, pd.DataFrame]


def run_ingest(exports: Path, workdir: Path, config: Path, instance: dg.DagsterInstance) -> RunOutcome:
    """crm_exports and crm_tables materialised into a fresh SQLite warehouse."""
    url = f"sqlite:///{workdir / 'warehouse.sqlite'}"
    result = materialize_graph(
        exports, AS_OF, config, url, assets=[crm_exports, crm_tables], instance=instance, raise_on_error=False
    )
    errors = [e.event_specific_data.error for e in result.get_step_failure_events()]
    # A clear failure is a dagster Failure carrying the input error's own message, or a failed
    # blocking check (its details are in data_quality_results); anything else (an exception
    # escaping an asset) is a crash, recorded with its class for the invariant.
    clear = ("Failure", "DagsterAssetCheckFailedError")
    failures = [e.message if e.cls_name in clear else f"CRASH {e.cls_name}: {e.to_string()}" for e in errors]
    warehouse = Warehouse(url)
    try:
        warehouse.create_all()
        tables = {name: warehouse.read(name) for name in ("deals", "quarantine", "reconciliation", "data_quality_results")}
    finally:
        warehouse.dispose()
    return RunOutcome(result.success, failures, tables)


def project_config(workdir: Path, extra: str = "") -> Path:
    config = workdir / "dealcast.toml"
    config.write_text(extra + (ROOT / "dealcast.toml").read_text(encoding="utf-8"), encoding="utf-8")
    return config


def baseline_frame(outcome: RunOutcome) -> pd.DataFrame:
    return outcome.warehouse_tables["deals"].set_index("deal_id")[COMPARED]


def assert_invariant(
    outcome: RunOutcome, baseline: pd.DataFrame, touched: set[str], case: str, changed: tuple[str, ...] = ()
) -> None:
    """The invariant every case must keep (see the module docstring)."""
    for failure in outcome.failures:
        assert not failure.startswith("CRASH"), (case, failure)
    recon = outcome.warehouse_tables["reconciliation"]
    assert (recon["rows_read"] == recon["accepted"] + recon["quarantined"]).all(), (case, recon)
    quarantine = outcome.warehouse_tables["quarantine"]
    per_file = quarantine.groupby("source_file").size()
    for row in recon.itertuples(index=False):
        assert int(per_file.get(row.source_file, 0)) == row.quarantined, (case, row.source_file)
    for column in ("reason_code", "reason", "raw_record", "source_file"):
        assert quarantine[column].notna().all() and (quarantine[column].astype(str).str.len() > 0).all(), (case, column)
    assert (quarantine["source_row"] >= 2).all(), case
    for raw in quarantine["raw_record"]:
        json.loads(raw)
    deals = outcome.warehouse_tables["deals"]
    if deals.empty:
        return
    assert deals["deal_id"].is_unique and (deals["deal_id"].str.len() <= 64).all(), case
    for column in ("amount", "amount_reporting"):
        values = deals[column].dropna()
        assert values.between(*LIMITS).all(), (case, column, values[~values.between(*LIMITS)].head())
    assert deals["crm_probability"].dropna().between(0, 1).all(), case
    assert deals["created_at"].between(pd.Timestamp("2000-01-01"), pd.Timestamp(AS_OF) + pd.Timedelta(days=1)).all(), case
    assert deals["status"].isin(["open", "won", "lost"]).all(), case
    for column in IDENTIFYING:
        text = deals[column].dropna().astype(str)
        assert (text == text.map(lambda v: unicodedata.normalize("NFC", v))).all(), (case, column)
        assert not text.str.contains("[\u200b\u2060\ufeff]").any(), (case, column)
        assert not (text.str.strip() != text).any(), (case, column)
    compared = [c for c in COMPARED if c not in changed]
    published = deals.set_index("deal_id")[compared]
    untouched = published.index.difference(pd.Index(sorted(touched)))
    untouched = untouched.intersection(baseline.index)
    pd.testing.assert_frame_equal(published.loc[untouched], baseline.loc[untouched, compared], obj=f"{case}: untouched deals")


# ---------------------------------------------------------------------------------------------
# Row-level classes: each corrupts its own deals (or history rows) of the shared export


@dataclass
class Target:
    """Rows a row-level case edits, handed out so that no two cases share a deal."""

    opp: list[list[str]]
    opp_col: dict[str, int]
    hist: list[list[str]]
    hist_col: dict[str, int]
    users: list[list[str]]
    user_col: dict[str, int]
    extra_opp: list[list[str]] = field(default_factory=list)
    extra_hist: list[list[str]] = field(default_factory=list)
    used: set[int] = field(default_factory=set)
    used_users: set[int] = field(default_factory=set)

    def deal(self, kind: str = "open") -> int:
        """A deal position not used yet: kind open, won or any."""
        for i, row in enumerate(self.opp):
            if i in self.used or i < 5:
                continue
            closed, won = row[self.opp_col["IsClosed"]], row[self.opp_col["IsWon"]]
            if kind == "any" or (kind == "open" and closed == "0") or (kind == "won" and won == "1"):
                if kind == "open" and not self.history_of(i):
                    continue
                self.used.add(i)
                return i
        raise AssertionError(f"no unused {kind} deal left")

    def history_of(self, position: int) -> list[int]:
        deal_id = self.opp[position][self.opp_col["Id"]]
        return [j for j, row in enumerate(self.hist) if row[self.hist_col["OpportunityId"]] == deal_id]

    def set(self, position: int, column: str, value: str) -> str:
        self.opp[position][self.opp_col[column]] = value
        return self.opp[position][self.opp_col["Id"]]

    def deal_id(self, position: int) -> str:
        return self.opp[position][self.opp_col["Id"]]


@dataclass
class RowCase:
    """`edit(target)` returns the expectations: [(file, position-or-row, expected code or None)]
    where position is a data-row index of the file (None code: quarantined with any reason, or
    published within the contract); `accepted` maps deal ids to values they must be published with."""

    name: str
    edit: Callable[[Target], list[tuple[str, int, str | None]]]
    accepted: Callable[[Target], dict[str, dict[str, object]]] | None = None


def _cell(column: str, value: str, code: str | None, kind: str = "open") -> Callable[[Target], list]:
    def edit(t: Target) -> list:
        p = t.deal(kind)
        t.set(p, column, value)
        return [("Opportunity.csv", p, code)]

    return edit


def _history_cell(column: str, value: str, code: str | None) -> Callable[[Target], list]:
    def edit(t: Target) -> list:
        p = t.deal("open")
        h = t.history_of(p)[-1]
        t.hist[h][t.hist_col[column]] = value
        return [("OpportunityHistory.csv", h, code)]

    return edit


def _accepted(column: str, value: object, kind: str = "open", write: str | None = None) -> tuple[Callable, Callable]:
    """A value that must be read (and published) as `value`."""
    chosen: dict[str, str] = {}

    def edit(t: Target) -> list:
        p = t.deal(kind)
        chosen["id"] = t.set(p, {"amount": "Amount", "crm_probability": "Probability", "created_at": "CreatedDate",
                                 "account_segment": "Segment__c", "region": "Region__c", "currency": "CurrencyIsoCode",
                                 "product": "Product__c"}.get(column, column), write)
        return [("Opportunity.csv", p, "accepted")]

    return edit, lambda t: {chosen["id"]: {column: value}}


def _duplicate(identical: bool) -> Callable[[Target], list]:
    def edit(t: Target) -> list:
        p = t.deal("any")
        copy = list(t.opp[p])
        if not identical:
            copy[t.opp_col["Amount"]] = "987654"
        t.extra_opp.append(copy)
        return [("Opportunity.csv", len(t.opp) + len(t.extra_opp) - 1, "duplicate_id")]

    return edit


def _orphan_history(t: Target) -> list:
    copy = list(t.hist[0])
    copy[t.hist_col["OpportunityId"]] = "006NOSUCHDEAL00AAA"
    copy[t.hist_col["Id"]] = "008ORPHAN0000000AAA"
    t.extra_hist.append(copy)
    return [("OpportunityHistory.csv", len(t.hist) + len(t.extra_hist) - 1, "orphan_history")]


def _history_follows_deal(t: Target) -> list:
    p = t.deal("open")
    t.set(p, "Amount", "not a number")
    return [("Opportunity.csv", p, "unparseable_amount")] + [
        ("OpportunityHistory.csv", h, "deal_quarantined") for h in t.history_of(p)
    ]


def _long_owner(t: Target) -> list:
    """A new user with a 300-character name, owning two deals."""
    user = list(t.users[0])
    user[t.user_col["Id"]] = "005LONGNAME000AAA"
    user[t.user_col["Name"]] = "N" * 300
    t.users.append(user)
    owned = [t.deal("any"), t.deal("any")]
    for p in owned:
        t.set(p, "OwnerId", "005LONGNAME000AAA")
    return [("Opportunity.csv", p, "text_too_long") for p in owned]


def _nbsp_owner(t: Target) -> list:
    u = next(i for i in range(len(t.users)) if i not in t.used_users)
    t.used_users.add(u)
    t.users[u][t.user_col["Name"]] = "\u00a0" + t.users[u][t.user_col["Name"]] + "\u200b"
    return []  # every deal of that owner is published with the name as the clean export gives it


def _blank_row(t: Target) -> list:
    t.extra_opp.append([""] * len(t.opp_col))
    return [("Opportunity.csv", len(t.opp) + len(t.extra_opp) - 1, "blank_row")]


def _case_distinct_ids(t: Target) -> list:
    p = t.deal("any")
    copy = list(t.opp[p])
    copy[t.opp_col["Id"]] = t.deal_id(p).swapcase()
    t.extra_opp.append(copy)
    return [("Opportunity.csv", len(t.opp) + len(t.extra_opp) - 1, "accepted")]


def _zero_width_duplicate(t: Target) -> list:
    p = t.deal("any")
    copy = list(t.opp[p])
    copy[t.opp_col["Id"]] = t.deal_id(p) + "\u200b"
    t.extra_opp.append(copy)
    return [("Opportunity.csv", len(t.opp) + len(t.extra_opp) - 1, "duplicate_id")]


def _closed_before_created(t: Target) -> list:
    p = t.deal("won")
    t.set(p, "CreatedDate", "2025-06-01 00:00:00")
    t.set(p, "CloseDate", "2025-05-01 00:00:00")
    return [("Opportunity.csv", p, "closed_before_created")]


def _deleted_history_row(t: Target) -> list:
    p = t.deal("open")
    h = t.history_of(p)[-1]
    t.hist[h][t.hist_col["IsDeleted"]] = "1"
    return [("OpportunityHistory.csv", h, "deleted_in_crm")]


def _unicode_segment(value: str) -> tuple[Callable, Callable]:
    chosen: dict[str, str] = {}

    def edit(t: Target) -> list:
        p = t.deal("any")
        chosen["id"] = t.set(p, "Segment__c", value)
        return [("Opportunity.csv", p, "accepted")]

    return edit, lambda t: {chosen["id"]: {"account_segment": NFC_NAME}}


ROW_CASES: list[RowCase] = [
    # Amounts and numbers
    RowCase("amount_european_decimal_comma", _cell("Amount", "1.234,56", "unparseable_amount")),
    RowCase("amount_currency_symbol", _cell("Amount", "$1,200", "unparseable_amount")),
    RowCase("amount_thousands_space", _cell("Amount", "1 234", "unparseable_amount")),
    RowCase("amount_negative", _cell("Amount", "-500", "amount_out_of_range")),
    RowCase("amount_nan", _cell("Amount", "NaN", "unparseable_amount")),
    RowCase("amount_infinite", _cell("Amount", "inf", "unparseable_amount")),
    RowCase("amount_words", _cell("Amount", "twelve thousand", "unparseable_amount")),
    RowCase("amount_overflow_1e20", _cell("Amount", "1e20", "amount_out_of_range")),
    RowCase("amount_just_over_max", _cell("Amount", "1000000000.01", "amount_out_of_range")),
    RowCase("amount_scientific_notation", *_accepted("amount", 15000.0, write="1.5e4")),
    RowCase("amount_leading_plus", *_accepted("amount", 500.0, write="+500")),
    RowCase("amount_blank", *_accepted("amount", None, write="")),
    RowCase("amount_padded_with_spaces", *_accepted("amount", 2500.0, write="  2500  ")),
    # Dates and timestamps
    RowCase("close_date_day_31_of_30_day_month", _cell("CloseDate", "2026-09-31 00:00:00", "unparseable_date")),
    RowCase("close_date_feb_29_non_leap_year", _cell("CloseDate", "2027-02-29 00:00:00", "unparseable_date")),
    RowCase("close_date_month_13", _cell("CloseDate", "2026-13-01 00:00:00", "unparseable_date")),
    RowCase("created_hour_25", _cell("CreatedDate", "2026-01-10 25:00:00", "unparseable_date")),
    RowCase("created_us_slash_date", _cell("CreatedDate", "06/30/2026", "unparseable_date")),
    RowCase("created_day_first_date", _cell("CreatedDate", "30.06.2026", "unparseable_date")),
    RowCase("created_relative_word", _cell("CreatedDate", "yesterday", "unparseable_date")),
    RowCase("created_epoch_seconds", _cell("CreatedDate", "1719705600", "unparseable_date")),
    RowCase("created_year_1900", _cell("CreatedDate", "1900-01-01 00:00:00", "implausible_date")),
    RowCase("created_far_future", _cell("CreatedDate", "2041-01-01 00:00:00", "implausible_date")),
    RowCase("close_date_year_2199", _cell("CloseDate", "2199-01-01 00:00:00", "implausible_date")),
    RowCase("created_blank", _cell("CreatedDate", "", "missing_required_value")),
    RowCase("won_deal_without_close_date", _cell("CloseDate", "", "missing_required_value", kind="won")),
    RowCase("closed_before_created", _closed_before_created),
    RowCase("created_iso_with_offset", *_accepted("created_at", pd.Timestamp("2026-03-01 08:00:00"),
                                                  write="2026-03-01T10:00:00+02:00")),
    RowCase("created_iso_zulu_with_fraction", *_accepted("created_at", pd.Timestamp("2026-03-01 10:00:00.250"),
                                                         write="2026-03-01T10:00:00.250Z")),
    RowCase("created_date_without_time", *_accepted("created_at", pd.Timestamp("2026-03-01"), write="2026-03-01")),
    RowCase("history_impossible_timestamp", _history_cell("CreatedDate", "2026-06-31 13:46:06", "unparseable_date")),
    RowCase("history_timestamp_text", _history_cell("CreatedDate", "last week", "unparseable_date")),
    RowCase("history_blank_timestamp", _history_cell("CreatedDate", "", "missing_required_value")),
    # Ids and duplicates
    RowCase("id_blank", _cell("Id", "", "missing_id", kind="any")),
    RowCase("id_too_long", _cell("Id", "006" + "Z" * 70, "text_too_long", kind="any")),
    RowCase("id_duplicate_identical_row", _duplicate(identical=True)),
    RowCase("id_duplicate_different_content", _duplicate(identical=False)),
    RowCase("id_differs_only_by_case", _case_distinct_ids),
    RowCase("id_differs_only_by_zero_width_space", _zero_width_duplicate),
    RowCase("id_formula_text", _cell("Id", "=1+1", "accepted", kind="any")),
    RowCase("id_unicode", _cell("Id", "006Ünïcødé", "accepted", kind="any")),
    # Orphans and history
    RowCase("history_orphan", _orphan_history),
    RowCase("history_of_a_quarantined_deal", _history_follows_deal),
    RowCase("history_unknown_stage", _history_cell("StageName", "Negotiating Hard", "unknown_stage")),
    RowCase("history_amount_overflow", _history_cell("Amount", "1e20", "amount_out_of_range")),
    RowCase("history_probability_150", _history_cell("Probability", "150", "probability_out_of_range")),
    RowCase("history_probability_text", _history_cell("Probability", "likely", "unparseable_number")),
    RowCase("history_deleted_row", _deleted_history_row),
    # Stages, status and booleans
    RowCase("stage_unknown", _cell("StageName", "Negotiating", "unknown_stage")),
    RowCase("stage_blank", _cell("StageName", "", "missing_required_value")),
    RowCase("stage_300_characters", _cell("StageName", "S" * 300, None)),
    RowCase("is_closed_yes_word", _cell("IsClosed", "yes", "unparseable_boolean")),
    RowCase("is_won_two", _cell("IsWon", "2", "unparseable_boolean")),
    RowCase("is_deleted_opportunity", _cell("IsDeleted", "1", "deleted_in_crm", kind="any")),
    # Currencies
    RowCase("currency_unknown_code", _cell("CurrencyIsoCode", "XYZ", "unknown_currency")),
    RowCase("currency_without_rates_file", _cell("CurrencyIsoCode", "EUR", "unknown_currency")),
    RowCase("currency_lower_case", _cell("CurrencyIsoCode", "usd", None)),
    RowCase("currency_blank_is_reporting", *_accepted("currency", "USD", write="")),
    # Probabilities
    RowCase("probability_150", _cell("Probability", "150", "probability_out_of_range")),
    RowCase("probability_negative", _cell("Probability", "-20", "probability_out_of_range")),
    RowCase("probability_word", _cell("Probability", "high", "unparseable_number")),
    RowCase("probability_as_fraction", *_accepted("crm_probability", 0.005, write="0.5")),
    # Lengths
    RowCase("deal_name_100k_characters", _cell("Name", "N" * 100_000, "accepted")),
    RowCase("segment_300_characters", _cell("Segment__c", "S" * 300, "text_too_long")),
    RowCase("product_300_characters", _cell("Product__c", "P" * 300, "text_too_long")),
    RowCase("owner_name_300_characters", _long_owner),
    RowCase("description_1mb", _cell("Description", "D" * 1_000_000, "accepted")),
    # Unicode
    RowCase("segment_nfd", *_unicode_segment(NFD_NAME)),
    RowCase("segment_zero_width_prefix", *_unicode_segment("\u200b" + NFC_NAME)),
    RowCase("segment_nbsp_suffix", *_unicode_segment(NFC_NAME + "\u00a0")),
    RowCase("segment_bom_and_narrow_nbsp", *_unicode_segment("\ufeff" + NFD_NAME + "\u202f")),
    RowCase("owner_nbsp_and_zero_width", _nbsp_owner),
    RowCase("deal_name_emoji", _cell("Name", "Big deal 🚀🔥", "accepted")),
    RowCase("deal_name_right_to_left_override", _cell("Name", "Acme \u202etxt.exe", "accepted")),
    RowCase("region_zero_width_space", *_accepted("region", "EMEA", kind="any", write="EMEA\u200b")),
    # Injection
    RowCase("formula_hyperlink_name", _cell("Name", '=HYPERLINK("http://x","y")', "accepted")),
    RowCase("formula_dde_name", _cell("Name", "+cmd|' /C calc'!A0", "accepted")),
    RowCase("formula_at_sum_name", _cell("Name", "@SUM(1+1)*cmd|' /C calc'!A0", "accepted")),
    RowCase("sql_injection_name", _cell("Name", "'); DROP TABLE deals; --", "accepted")),
    RowCase("html_script_name", _cell("Name", "<script>alert(1)</script>", "accepted")),
    # Empty and blank
    RowCase("blank_row_in_middle", _blank_row),
    RowCase("whitespace_only_stage", _cell("StageName", "   ", "missing_required_value")),
    RowCase("nul_like_text_escape", _cell("Name", "\\x00 not a NUL", "accepted")),
]


@pytest.fixture(scope="module")
def instance():
    return dg.DagsterInstance.ephemeral()


@pytest.fixture(scope="module")
def row_corpus(tmp_path_factory, instance):
    """The shared export: a clean run (the baseline), then every row-level class applied at once."""
    base = tmp_path_factory.mktemp("row_corpus")
    clean = base / "clean"
    generate_sample(clean, n_deals=ROW_DEALS, seed=17, end_date=AS_OF)
    config = project_config(base)
    (base / "clean_run").mkdir()
    clean_outcome = run_ingest(clean, base / "clean_run", config, instance)
    assert clean_outcome.success, clean_outcome.failures

    bad = base / "bad"
    shutil.copytree(clean, bad)
    opp_header, opp = read_rows(bad / "Opportunity.csv")
    hist_header, hist = read_rows(bad / "OpportunityHistory.csv")
    user_header, users = read_rows(bad / "User.csv")
    target = Target(opp, {c: i for i, c in enumerate(opp_header)}, hist, {c: i for i, c in enumerate(hist_header)},
                    users, {c: i for i, c in enumerate(user_header)})
    expected, accepted, touched = {}, {}, {}
    for case in ROW_CASES:
        before = set(target.used)
        expected[case.name] = case.edit(target)
        accepted[case.name] = case.accepted(target) if case.accepted else {}
        touched[case.name] = {target.deal_id(p) for p in target.used - before}
    write_rows(bad / "Opportunity.csv", opp_header, opp + target.extra_opp)
    write_rows(bad / "OpportunityHistory.csv", hist_header, hist + target.extra_hist)
    write_rows(bad / "User.csv", user_header, users)
    (base / "bad_run").mkdir()
    outcome = run_ingest(bad, base / "bad_run", config, instance)
    all_touched = set().union(*touched.values()) | {target.deal_id(p) for p in range(len(opp)) if p in target.used}
    # Deals of owners whose User row was edited are touched too (their owner name was edited).
    edited_owners = {target.users[u][target.user_col["Id"]] for u in target.used_users}
    all_touched |= {r[target.opp_col["Id"]] for r in opp if r[target.opp_col["OwnerId"]] in edited_owners}
    return {"outcome": outcome, "baseline": baseline_frame(clean_outcome), "expected": expected,
            "accepted": accepted, "touched": all_touched}


@pytest.mark.parametrize("case", ROW_CASES, ids=[c.name for c in ROW_CASES])
def test_row_level_class(row_corpus, case):
    outcome = row_corpus["outcome"]
    results = outcome.warehouse_tables["data_quality_results"]
    blocking = results.loc[(results["severity"] == "error") & ~results["passed"].astype(bool), ["check_name", "observed"]]
    assert outcome.success, blocking.to_dict("records")  # 90-odd bad rows of 2,400 stay under the limits
    assert_invariant(outcome, row_corpus["baseline"], row_corpus["touched"], case.name)
    quarantine = outcome.warehouse_tables["quarantine"]
    at = {(Path(f).name, int(r)): (c, reason) for f, r, c, reason in
          zip(quarantine["source_file"], quarantine["source_row"], quarantine["reason_code"], quarantine["reason"])}
    for file, position, code in row_corpus["expected"][case.name]:
        row = position + 2
        found = at.get((file, row))
        if code == "accepted":
            assert found is None, (case.name, file, row, found)
        elif code is not None:
            assert found is not None and found[0] == code, (case.name, file, row, found)
    deals = outcome.warehouse_tables["deals"].set_index("deal_id")
    for deal_id, values in row_corpus["accepted"][case.name].items():
        assert deal_id.strip("\u200b") in deals.index, (case.name, deal_id)
        for column, value in values.items():
            got = deals.loc[deal_id.strip("\u200b"), column]
            if value is None:
                assert pd.isna(got), (case.name, column, got)
            elif isinstance(value, float):
                assert got == pytest.approx(value), (case.name, column, got)
            else:
                assert got == value, (case.name, column, got)


# ---------------------------------------------------------------------------------------------
# File-level classes: each needs its own run


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _rewrite(name: str, **options) -> Callable[[Path], None]:
    def edit(exports: Path) -> None:
        header, rows = read_rows(exports / name)
        write_rows(exports / name, header, rows, **options)

    return edit


def _bytes(name: str, change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def edit(exports: Path) -> None:
        path = exports / name
        path.write_bytes(change(path.read_bytes()))

    return edit


def _header(name: str, change: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    def edit(exports: Path) -> None:
        header, rows = read_rows(exports / name)
        write_rows(exports / name, change(list(header)), rows)

    return edit


def _columns(name: str, change: Callable[[list[str], list[list[str]]], tuple[list[str], list[list[str]]]]):
    def edit(exports: Path) -> None:
        header, rows = read_rows(exports / name)
        write_rows(exports / name, *change(header, rows))

    return edit


def _drop_column(column: str):
    def change(header, rows):
        i = header.index(column)
        return header[:i] + header[i + 1:], [r[:i] + r[i + 1:] for r in rows]

    return change


def _reorder(header, rows):
    order = list(reversed(range(len(header))))
    return [header[i] for i in order], [[r[i] for i in order] for r in rows]


def _with_extra_column(header, rows):
    return header + ["Custom_Field__c"], [r + ["x"] for r in rows]


def _unquoted_truncated(exports: Path) -> None:
    header, rows = read_rows(exports / "Opportunity.csv")
    write_rows(exports / "Opportunity.csv", header, rows, quoting=csv.QUOTE_MINIMAL)
    data = (exports / "Opportunity.csv").read_bytes()
    (exports / "Opportunity.csv").write_bytes(data[: data.rstrip(b"\n").rfind(b",") - 3])


def _accent_names(exports: Path) -> None:
    header, rows = read_rows(exports / "Account.csv")
    rows[0][header.index("Name")] = "Société Générale Café"
    write_rows(exports / "Account.csv", header, rows, encoding="cp1252")


def _stray_quote(exports: Path) -> None:
    path = exports / "Opportunity.csv"
    lines = _text(path).split("\n")
    header = next(csv.reader([lines[0]]))
    name = next(csv.reader([lines[5]]))[header.index("Name")]
    lines[5] = lines[5].replace(f'"{name}"', '"Acme "Big" Co"', 1)
    path.write_text("\n".join(lines), encoding="utf-8")


def _newline_in_value(exports: Path) -> None:
    header, rows = read_rows(exports / "Opportunity.csv")
    rows[3][header.index("Name")] = "Line one\nLine two, with a comma"
    rows[4][header.index("Description")] = "a\r\nb"
    write_rows(exports / "Opportunity.csv", header, rows)


def _ragged(extra: int) -> Callable[[Path], None]:
    def edit(exports: Path) -> None:
        header, rows = read_rows(exports / "Opportunity.csv")
        rows[6] = rows[6] + ["surplus"] * extra if extra > 0 else rows[6][:extra]
        write_rows(exports / "Opportunity.csv", header, rows)

    return edit


def _rates(text: str, positions: int = 3) -> Callable[[Path], None]:
    def edit(exports: Path) -> None:
        (exports / "rates.csv").write_text(text, encoding="utf-8")
        header, rows = read_rows(exports / "Opportunity.csv")
        for row in rows[5:5 + positions]:
            row[header.index("CurrencyIsoCode")] = "GBP"
        write_rows(exports / "Opportunity.csv", header, rows)

    return edit


def _move(name: str, new: str) -> Callable[[Path], None]:
    return lambda exports: (exports / name).rename(exports / new)


def _remove(name: str) -> Callable[[Path], None]:
    return lambda exports: (exports / name).unlink()


def _unclosed_quote(data: bytes) -> bytes:
    """The closing quote of line 6's last value dropped: that value would run to the end of the file."""
    end = 0
    for _ in range(6):
        end = data.index(b"\n", end) + 1
    return data[: end - 2] + data[end - 1:]


def _second_copy(exports: Path) -> None:
    shutil.copy(exports / "Opportunity.csv", exports / "Opportunity (1).csv")


def _grow_accounts(exports: Path) -> None:
    header, rows = read_rows(exports / "Account.csv")
    extra = [[f"001GROW{i:011d}"] + r[1:] for i, r in enumerate(rows * 40)]
    write_rows(exports / "Account.csv", header, rows + extra)


RATES_CONFIG = '[currency]\nrates_file = "rates.csv"\n\n'


@dataclass
class FileCase:
    """`edit(exports)` damages a copy of the small export. `fails` lists words the run's failure
    must contain (the file's name among them); None means the run must publish, with `quarantined`
    rows of the named file quarantined."""

    name: str
    edit: Callable[[Path], None]
    fails: tuple[str, ...] | None = None
    quarantined: dict[str, int] = field(default_factory=dict)
    config: str = ""
    blocked: bool = False  # the run completes but a blocking check stops publication
    changed: tuple[str, ...] = ()  # deal columns the case changes on purpose
    check: Callable[[pd.DataFrame], bool] | None = None  # on the published deals


FILE_CASES: list[FileCase] = [
    # Encodings and byte-order marks
    FileCase("utf8_bom", _bytes("Opportunity.csv", lambda b: codecs.BOM_UTF8 + b)),
    FileCase("windows_1252_accents", _accent_names, changed=("account",),
             check=lambda deals: (deals["account"] == "Société Générale Café").any()),
    FileCase("utf16_le_with_bom", _bytes("Opportunity.csv", lambda b: codecs.BOM_UTF16_LE + b.decode().encode("utf-16-le")),
             fails=("Opportunity.csv", "UTF-16")),
    FileCase("utf16_be_with_bom", _bytes("Opportunity.csv", lambda b: codecs.BOM_UTF16_BE + b.decode().encode("utf-16-be")),
             fails=("Opportunity.csv", "UTF-16")),
    FileCase("mixed_utf8_and_cp1252", _bytes("Opportunity.csv", lambda b: b.replace(b" - ", " \u2013 ".encode(), 1).replace(b" - ", b" \x96 ", 1)),
             fails=("Opportunity.csv", "mixes two encodings")),
    FileCase("bytes_neither_utf8_nor_cp1252", _bytes("Opportunity.csv", lambda b: b.replace(b" - ", b" \x81 ", 1)),
             fails=("Opportunity.csv", "neither UTF-8 nor Windows-1252")),
    FileCase("nul_byte", _bytes("Opportunity.csv", lambda b: b[:500] + b"\x00" + b[500:]), fails=("Opportunity.csv", "binary")),
    FileCase("xlsx_saved_as_csv", _bytes("Opportunity.csv", lambda b: b"PK\x03\x04" + b"\x14" * 40), fails=("Opportunity.csv", ".xlsx")),
    # Empty and truncated files
    FileCase("empty_file", _bytes("Opportunity.csv", lambda b: b""), fails=("Opportunity.csv", "empty")),
    FileCase("header_only", _bytes("Opportunity.csv", lambda b: b[: b.index(b"\n") + 1]), fails=("Opportunity.csv", "no data rows")),
    FileCase("truncated_inside_quote", _bytes("Opportunity.csv", lambda b: b[:-9]), fails=("Opportunity.csv", "truncated")),
    FileCase("truncated_unquoted_last_record", _unquoted_truncated, fails=("Opportunity.csv", "looks truncated")),
    # The value's quote closes on the next line: both lines are quarantined, none is lost uncounted.
    FileCase("unclosed_quote_mid_file", _bytes("Opportunity.csv", _unclosed_quote), quarantined={"Opportunity.csv": 2}),
    # Delimiters
    FileCase("semicolon_delimited", _rewrite("Opportunity.csv", delimiter=";"), fails=("Opportunity.csv", "semicolon")),
    FileCase("tab_delimited", _rewrite("Opportunity.csv", delimiter="\t"), fails=("Opportunity.csv", "tab")),
    FileCase("pipe_delimited", _rewrite("Opportunity.csv", delimiter="|"), fails=("Opportunity.csv", "pipe")),
    # Line endings
    FileCase("crlf_line_endings", _rewrite("Opportunity.csv", terminator="\r\n")),
    FileCase("cr_only_line_endings", _rewrite("Opportunity.csv", terminator="\r")),
    FileCase("cr_only_history", _rewrite("OpportunityHistory.csv", terminator="\r")),
    FileCase("mixed_line_endings", _bytes("Opportunity.csv", lambda b: b.replace(b"\n", b"\r\n", 20))),
    FileCase("trailing_blank_lines", _bytes("Opportunity.csv", lambda b: b + b"\n\n"), quarantined={"Opportunity.csv": 2}),
    # Quoting
    FileCase("unquoted_file", _rewrite("Opportunity.csv", quoting=csv.QUOTE_MINIMAL)),
    FileCase("stray_quote_in_quoted_value", _stray_quote, quarantined={"Opportunity.csv": 1}),
    FileCase("newline_and_delimiter_inside_quoted_values", _newline_in_value),
    FileCase("ragged_row_short", _ragged(-3), quarantined={"Opportunity.csv": 1}),
    FileCase("ragged_row_long", _ragged(2), quarantined={"Opportunity.csv": 1}),
    # Header variants
    FileCase("header_row_missing", _bytes("Opportunity.csv", lambda b: b[b.index(b"\n") + 1:]),
             fails=("Opportunity.csv", "missing required column")),
    FileCase("required_column_missing", _columns("Opportunity.csv", _drop_column("Amount")),
             fails=("Opportunity.csv", "Amount")),
    FileCase("duplicate_column_name", _header("Opportunity.csv", lambda h: h[:-1] + [h[0]]),
             fails=("Opportunity.csv", "more than once")),
    FileCase("optional_column_missing", _columns("Opportunity.csv", _drop_column("Probability")),
             changed=("crm_probability",), check=lambda deals: deals["crm_probability"].isna().all()),
    FileCase("columns_reordered", _columns("Opportunity.csv", _reorder)),
    FileCase("unknown_extra_column", _columns("Opportunity.csv", _with_extra_column)),
    FileCase("header_names_padded", _header("Opportunity.csv", lambda h: [f" {c} " for c in h])),
    # Exchange rates
    FileCase("rate_absurd_1e12", _rates("date,currency,rate\n2015-01-01,GBP,1e12\n"), config=RATES_CONFIG,
             quarantined={"Opportunity.csv": 3}),
    FileCase("rate_jumps_a_thousandfold", _rates("date,currency,rate\n2015-01-01,GBP,1.27\n2024-01-01,GBP,1270\n"),
             config=RATES_CONFIG, fails=("rates.csv", "row 3", "times the previous rate")),
    FileCase("rate_negative", _rates("date,currency,rate\n2015-01-01,GBP,-1.2\n"), config=RATES_CONFIG,
             fails=("rates.csv", "positive number")),
    FileCase("rates_file_missing", lambda exports: None, config=RATES_CONFIG, fails=("rates.csv", "not found")),
    # Whole files: missing, repeated, extra, renamed
    # Without history a deal's close time is its CloseDate (a day), not the history row's timestamp.
    FileCase("history_file_missing", _remove("OpportunityHistory.csv"), changed=("closed_at",)),
    FileCase("opportunity_file_missing", _remove("Opportunity.csv"), fails=("Opportunity.csv",)),
    FileCase("second_copy_of_the_export", _second_copy, blocked=True),
    FileCase("unrelated_notes_file", lambda e: (e / "notes.txt").write_text("call Bob about the renewal\n")),
    FileCase("office_lock_file", lambda e: (e / "~$Opportunity.csv").write_bytes(b"\x00\x01lock")),
    FileCase("subfolder_named_like_an_export", lambda e: (e / "Opportunity.csv.d").mkdir()),
    # Lookup files
    FileCase("user_file_missing", _remove("User.csv"), changed=("owner", "team", "region"),
             check=lambda deals: deals["owner"].str.startswith("005").all()),
    FileCase("account_file_missing", _remove("Account.csv"), changed=("account",),
             check=lambda deals: deals["account"].str.startswith("001").all()),
    FileCase("user_file_header_only", _bytes("User.csv", lambda b: b[: b.index(b"\n") + 1]), fails=("User.csv", "no data rows")),
    FileCase("user_file_semicolons", _rewrite("User.csv", delimiter=";"), fails=("User.csv", "semicolon")),
    FileCase("user_file_cr_only", _rewrite("User.csv", terminator="\r")),
    FileCase("account_file_forty_times_larger", _grow_accounts),
]


@pytest.fixture(scope="module")
def small_export(tmp_path_factory, instance):
    base = tmp_path_factory.mktemp("file_corpus")
    clean = base / "clean"
    generate_sample(clean, n_deals=FILE_DEALS, seed=19, end_date=AS_OF)
    (base / "run").mkdir()
    outcome = run_ingest(clean, base / "run", project_config(base), instance)
    assert outcome.success, outcome.failures
    return clean, baseline_frame(outcome)


@pytest.mark.parametrize("case", FILE_CASES, ids=[c.name for c in FILE_CASES])
def test_file_level_class(small_export, case, tmp_path, instance):
    clean, baseline = small_export
    exports = tmp_path / "exports"
    shutil.copytree(clean, exports)
    case.edit(exports)
    outcome = run_ingest(exports, tmp_path, project_config(tmp_path, case.config), instance)
    assert_invariant(outcome, baseline, set(), case.name, case.changed)
    if case.fails is not None:
        assert not outcome.success and len(outcome.failures) == 1, (case.name, outcome.failures)
        for word in case.fails:
            assert word in outcome.failures[0], (case.name, word, outcome.failures[0])
        assert outcome.warehouse_tables["deals"].empty, case.name  # nothing of a failed read is published
        return
    results = outcome.warehouse_tables["data_quality_results"].set_index("check_name")
    blocking = results[(results["severity"] == "error") & ~results["passed"].astype(bool)]
    if case.blocked:
        assert not outcome.success and not blocking.empty, case.name
        assert outcome.warehouse_tables["deals"].empty, case.name
        return
    assert outcome.success, (case.name, outcome.failures)
    assert blocking.empty, (case.name, blocking[["observed"]])
    quarantine = outcome.warehouse_tables["quarantine"]
    names = quarantine["source_file"].map(lambda f: Path(f).name)
    by_file = names.value_counts().to_dict()
    for name, count in case.quarantined.items():
        assert by_file.get(name, 0) == count, (case.name, by_file, quarantine[["source_row", "reason_code", "reason"]])
    # Other files lose only rows that follow a quarantined deal.
    others = quarantine.loc[~names.isin(list(case.quarantined)), "reason_code"]
    assert others.isin(["deal_quarantined", "orphan_history"]).all(), (case.name, others.value_counts())
    deals = outcome.warehouse_tables["deals"]
    assert case.check is None or case.check(deals), case.name
    assert len(deals) + by_file.get("Opportunity.csv", 0) == FILE_DEALS + (2 if case.name == "trailing_blank_lines" else 0)


def test_the_corpus_has_at_least_a_hundred_classes():
    names = [c.name for c in ROW_CASES] + [c.name for c in FILE_CASES]
    assert len(names) == len(set(names)) >= 100, len(names)
