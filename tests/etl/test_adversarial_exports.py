"""An adversarial Salesforce export, read and validated the way a nightly run does (etl.ingest.crm_load.load_crm):
every bad row is quarantined with the expected reason code at its own row, the identity rows read =
accepted + quarantined holds for every file, nothing crashes, and no accepted row changes."""

import csv
import datetime as dt
import shutil

import pandas as pd
import pytest

from etl.config import resolve_settings
from etl.ingest.crm_load import load_crm
from sample_crm.generate import generate_sample

AS_OF = dt.date(2026, 6, 30)
INJECTIONS = ['=HYPERLINK("http://x","y")', "+cmd|' /C calc'!A0"]


def _rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def _write(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows([header, *rows])


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    clean = tmp_path_factory.mktemp("clean")
    generate_sample(clean, n_deals=1500, seed=3, end_date=AS_OF)
    bad = tmp_path_factory.mktemp("adversarial") / "exports"
    shutil.copytree(clean, bad)

    header, opps = _rows(bad / "Opportunity.csv")
    col = {name: i for i, name in enumerate(header)}
    open_template = next(r for r in opps if r[col["IsClosed"]] == "0")
    won_template = next(r for r in opps if r[col["IsWon"]] == "1")

    def variant(template, new_id, **changes):
        row = list(template)
        row[col["Id"]] = new_id
        for name, value in changes.items():
            row[col[name]] = value
        return row

    cases = {  # appended in this order: the expected source_row is len(opps) + 2 + position
        "X01": (variant(open_template, "X01", Amount="1 234,56"), "unparseable_amount"),
        "X02": (variant(open_template, "X02", Amount="-500"), "amount_out_of_range"),
        "X03": (variant(open_template, "X03", Amount="NaN"), "unparseable_amount"),
        "X04": (variant(open_template, "X04", Amount="twelve"), "unparseable_amount"),
        "X05": (variant(open_template, "X05", CreatedDate="1900-01-01 00:00:00"), "implausible_date"),
        "X06": (variant(open_template, "X06", CloseDate="2199-01-01 00:00:00"), "implausible_date"),
        "X07": (variant(won_template, "X07", CloseDate=""), "missing_required_value"),
        "X08": (variant(open_template, "X08", StageName="Negotiating"), "unknown_stage"),
        "X09": (variant(won_template, "X09", CreatedDate="2025-06-01 00:00:00", CloseDate="2025-05-01 00:00:00"), "closed_before_created"),
        "X10": (variant(open_template, "X10", Name=INJECTIONS[0]), "accepted"),
        "X11": (variant(open_template, "X11", Name=INJECTIONS[1]), "accepted"),
    }
    duplicate = variant(opps[0], opps[0][col["Id"]], Amount="999999")
    rows = opps + [row for row, _ in cases.values()] + [duplicate]
    _write(bad / "Opportunity.csv", header, rows)

    hheader, history = _rows(bad / "OpportunityHistory.csv")
    hcol = {name: i for i, name in enumerate(hheader)}
    orphan = list(history[0])
    orphan[hcol["Id"]], orphan[hcol["OpportunityId"]] = "017ORPHAN", "006NOSUCHDEAL"
    # Out-of-order history: a deal's first two rows (at different times) trade places in the file.
    seen = {}
    for i, row in enumerate(history):
        first = seen.setdefault(row[hcol["OpportunityId"]], i)
        if first != i and history[first][hcol["CreatedDate"]] < row[hcol["CreatedDate"]]:
            history[first], history[i] = history[i], history[first]
            break
    _write(bad / "OpportunityHistory.csv", hheader, history + [orphan])
    first_case_row = len(opps) + 2
    expected = {deal_id: (first_case_row + i, code) for i, (deal_id, (_, code)) in enumerate(cases.items())}
    return clean, bad, expected, len(rows) + 1, len(history) + 2


def _load(path):
    return load_crm(resolve_settings(exports_dir=path, as_of=AS_OF))


def test_every_bad_row_is_quarantined_with_its_reason_at_its_row(exports):
    _, bad, expected, duplicate_row, orphan_row = exports
    load = _load(bad)
    quarantine = load.validation.quarantine
    found = {
        (name.rsplit("/", 1)[-1], int(row)): code
        for name, row, code in zip(quarantine["source_file"], quarantine["source_row"], quarantine["reason_code"])
    }
    for deal_id, (row, code) in expected.items():
        if code == "accepted":
            assert ("Opportunity.csv", row) not in found, deal_id
            assert deal_id in set(load.deals["deal_id"]), deal_id
        else:
            assert found.get(("Opportunity.csv", row)) == code, f"{deal_id} at row {row}"
    # Same id with other content later in the file: the first copy is kept, the later one quarantined.
    assert found[("Opportunity.csv", duplicate_row)] == "duplicate_id"
    assert found[("OpportunityHistory.csv", orphan_row)] == "orphan_history"
    assert len(found) == sum(code != "accepted" for _, code in expected.values()) + 2
    assert load.validation.blocking_failures.empty  # 12 bad rows of 1,512 stay under the 5% limit


def test_rows_read_equal_accepted_plus_quarantined_for_every_file(exports):
    _, bad, *_ = exports
    recon = _load(bad).validation.reconciliation
    assert len(recon) == 4 and recon["balanced"].all()
    assert (recon["rows_read"] == recon["accepted"] + recon["quarantined"]).all()
    opportunity = recon[recon["source_file"].str.endswith("Opportunity.csv")].iloc[0]
    # 1,500 clean deals + 11 cases + 1 duplicate = 1,512 read; 1,500 + the 2 injection names accepted.
    assert (opportunity["rows_read"], opportunity["accepted"], opportunity["quarantined"]) == (1512, 1502, 10)


def test_accepted_rows_are_unchanged_and_formula_strings_are_data(exports):
    clean, bad, *_ = exports
    before = _load(clean).deals.drop(columns=["source_file"]).set_index("deal_id").sort_index()
    after = _load(bad).deals.drop(columns=["source_file"]).set_index("deal_id")
    names = after.loc[["X10", "X11"], "deal_name"].tolist()
    assert names == INJECTIONS  # stored exactly as written: never evaluated, escaped or stripped
    pd.testing.assert_frame_equal(after.loc[before.index], before)


def test_raw_suites_count_each_bad_value_in_its_file_column(exports):
    _, bad, *_ = exports
    results = _load(bad).validation.results.set_index("check_name")
    # "1 234,56", "NaN" and "twelve" are not numbers as Salesforce writes them; "-500" is (its range is
    # the canonical suite's business); the blank CloseDate of X07; the duplicated Id (both copies).
    expected_failures = {
        "raw[Opportunity.csv].Amount.number": 3,
        "raw[Opportunity.csv].CloseDate.not_blank": 1,
        "raw[Opportunity.csv].Id.unique": 2,
        "raw[Opportunity.csv].CreatedDate.date": 0,  # 1900-01-01 is a well-formed date: implausible, not unreadable
        "raw[Opportunity.csv].Id.not_blank": 0,
        "raw[OpportunityHistory.csv].OpportunityId.not_blank": 0,
    }
    for name, failing in expected_failures.items():
        assert results.loc[name, "failing_rows"] == failing, name
        assert bool(results.loc[name, "passed"]) == (failing == 0), name
        assert results.loc[name, "asset"] == "crm_exports"


def test_canonical_problems_name_the_files_own_column(exports):
    _, bad, expected, _, orphan_row = exports
    quarantine = _load(bad).validation.quarantine
    column_at = {
        (name.rsplit("/", 1)[-1], int(row)): column
        for name, row, column in zip(quarantine["source_file"], quarantine["source_row"], quarantine["column"])
    }
    assert column_at[("Opportunity.csv", expected["X02"][0])] == "Amount"  # amount_out_of_range
    assert column_at[("Opportunity.csv", expected["X05"][0])] == "CreatedDate"  # implausible_date
    assert column_at[("Opportunity.csv", expected["X06"][0])] == "CloseDate"
    assert column_at[("Opportunity.csv", expected["X09"][0])] == "CloseDate"  # closed_before_created
    assert column_at[("OpportunityHistory.csv", orphan_row)] == "OpportunityId"


def test_out_of_order_history_is_a_warning_and_stage_events_stay_ordered(exports):
    _, bad, *_ = exports
    load = _load(bad)
    results = load.validation.results.set_index("check_name")
    assert results.loc["deal_history.in_time_order", "severity"] == "warning"
    assert results.loc["deal_history.in_time_order", "failing_rows"] == 1  # the one swapped pair
    events = [name for name in results.index if name.startswith("stage_events.")]
    assert len(events) == 6 and results.loc[events, "passed"].all()
    assert load.publishable


FILE_CASES = {
    # name: (bytes of Opportunity.csv built from a clean header and rows, words the error must contain)
    "empty": (lambda header, rows: b"", ["Opportunity.csv", "empty"]),
    "header_only": (lambda header, rows: header, ["Opportunity.csv", "line 2", "no data rows"]),
    "truncated_last_line": (lambda header, rows: header + rows[:-8], ["Opportunity.csv", "ends inside a quoted value"]),
    "wrong_delimiter": (lambda header, rows: (header + rows).replace(b'","', b'";"'), ["Opportunity.csv", "line 1", "semicolon"]),
    "binary": (lambda header, rows: header + b"\x00\x01\x02\x03\x04", ["Opportunity.csv", "binary"]),
    "mixed_encodings": (
        # An en dash in one deal name as UTF-8 (e2 80 93), in a later one as Windows-1252 (96).
        lambda header, rows: header + rows.replace(b" - ", " \u2013 ".encode("utf-8"), 1).replace(b" - ", b" \x96 ", 1),
        ["Opportunity.csv", "mixes two encodings", "line"],
    ),
}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_a_file_that_cannot_be_read_fails_naming_the_file_and_line(exports, tmp_path, case):
    from etl.ingest.readers import ExportFormatError

    clean, *_ = exports
    target = tmp_path / "exports"
    shutil.copytree(clean, target)
    text = (clean / "Opportunity.csv").read_bytes()
    header_end = text.index(b"\n") + 1
    build, words = FILE_CASES[case]
    data = build(text[:header_end], text[header_end:])
    if case == "mixed_encodings":
        assert text.count(b" - ") >= 2  # deal names are "<account> - <product>"
    (target / "Opportunity.csv").write_bytes(data)
    with pytest.raises(ExportFormatError) as failure:
        _load(target)
    message = str(failure.value)
    for word in words:
        assert word in message, (case, message)
