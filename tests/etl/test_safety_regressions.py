"""Regression tests of defects adversarial testing found: impossible dates, wild exchange rates,
over-long text, out-of-range probabilities, the quarantine-share denominator, unreadable files,
malformed quoting, CR line endings and Unicode variants of one name. Each builds the bad shape
into a copy of one generated Salesforce export and checks what is published and quarantined
against counts worked out from the edit itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from etl.ingest.currency import ExchangeRatesError
from sample_crm.generate import generate_sample

from .exports_kit import AS_OF, copy_exports, edit, load, quarantined_at, read_rows, set_value

N_DEALS = 300


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean_export")
    generate_sample(out, n_deals=N_DEALS, seed=5, end_date=AS_OF)
    return out


@pytest.fixture
def exports(clean, tmp_path):
    return copy_exports(clean, tmp_path / "exports")


def _open_position(path, column="IsClosed"):
    header, rows = read_rows(path)
    return next(i for i, r in enumerate(rows) if r[header.index(column)] == "0")


# -- impossible dates -------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["2026-09-31 00:00:00", "2027-02-29 00:00:00", "2026-04-31 12:00:00"])
def test_an_impossible_close_date_is_quarantined_not_rolled_over(exports, value):
    opp = exports / "Opportunity.csv"
    position = _open_position(opp)
    row = set_value(opp, position, "CloseDate", value)
    crm = load(exports)
    found = quarantined_at(crm, "Opportunity.csv", row)
    assert found is not None and found["reason_code"] == "unparseable_date", found
    assert value in found["reason"] and found["column"] == "CloseDate"
    assert value in found["raw_record"]  # the raw text, not the rolled-over date
    assert len(crm.deals) == N_DEALS - 1


def test_an_impossible_history_timestamp_is_quarantined(exports):
    history = exports / "OpportunityHistory.csv"
    row = set_value(history, 3, "CreatedDate", "2026-06-31 13:46:06")
    crm = load(exports)
    found = quarantined_at(crm, "OpportunityHistory.csv", row)
    assert found is not None and found["reason_code"] == "unparseable_date"
    # Nothing of that row reaches the history (1 July would lie after the as_of 30 June).
    assert not (crm.history["source_row"] == row).any()


# -- amounts and rates ------------------------------------------------------------------------


def _with_rates(exports, tmp_path, rates: str, currency_positions: list[int]) -> tuple:
    (exports / "rates.csv").write_text(rates, encoding="utf-8")
    config = tmp_path / "dealcast.toml"
    from tests.e2e.conftest import ROOT

    text = (ROOT / "dealcast.toml").read_text(encoding="utf-8")
    config.write_text('[currency]\nrates_file = "rates.csv"\n\n' + text.replace("[reporting]", "[reporting]", 1), encoding="utf-8")
    opp = exports / "Opportunity.csv"

    def to_gbp(col, rows):
        for p in currency_positions:
            rows[p][col["CurrencyIsoCode"]] = "GBP"
            rows[p][col["Amount"]] = "5100"

    edit(opp, to_gbp)
    return config, [p + 2 for p in currency_positions]


def test_an_absurd_rate_quarantines_the_converted_amount_instead_of_publishing_it(exports, tmp_path):
    position = _open_position(exports / "Opportunity.csv")
    config, rows = _with_rates(exports, tmp_path, "date,currency,rate\n2020-01-01,GBP,1e12\n", [position])
    crm = load(exports, config)
    found = quarantined_at(crm, "Opportunity.csv", rows[0])
    assert found is not None and found["reason_code"] == "amount_out_of_range", found
    assert "amount_reporting" in found["reason"] and "exchange rate" in found["reason"]
    # 5,100 x 1e12 = 5.1e15 never reaches the deals.
    assert crm.deals["amount_reporting"].max() < 1e9


def test_a_rate_that_jumps_by_orders_of_magnitude_is_refused_naming_its_row(exports, tmp_path):
    position = _open_position(exports / "Opportunity.csv")
    rates = "date,currency,rate\n2020-01-01,GBP,1.27\n2024-01-01,GBP,1.25\n2025-01-01,GBP,1250\n"
    config, _ = _with_rates(exports, tmp_path, rates, [position])
    with pytest.raises(ExchangeRatesError) as failure:
        load(exports, config)
    message = str(failure.value)
    assert "rates.csv: row 4, column rate" in message and "1,000 times the previous rate 1.25 (row 3)" in message


# -- text the warehouse cannot hold -----------------------------------------------------------


def test_an_over_long_deal_id_is_quarantined_at_its_row(exports):
    opp = exports / "Opportunity.csv"
    long_id = "006" + "X" * 70  # 73 characters; deal_id holds 64
    row = set_value(opp, 5, "Id", long_id)
    crm = load(exports)
    found = quarantined_at(crm, "Opportunity.csv", row)
    assert found is not None and found["reason_code"] == "text_too_long" and found["column"] == "Id"
    assert "73 characters long; the warehouse holds at most 64" in found["reason"]
    assert long_id not in set(crm.deals["deal_id"])


def test_an_over_long_owner_name_is_quarantined_not_a_write_crash(exports):
    user = exports / "User.csv"
    header, users = read_rows(user)
    owner_id = users[0][header.index("Id")]
    set_value(user, 0, "Name", "N" * 300)
    opp_header, opps = read_rows(exports / "Opportunity.csv")
    owned = [i + 2 for i, r in enumerate(opps) if r[opp_header.index("OwnerId")] == owner_id]
    crm = load(exports)
    codes = {quarantined_at(crm, "Opportunity.csv", row)["reason_code"] for row in owned}
    assert codes == {"text_too_long"}
    assert len(crm.deals) == N_DEALS - len(owned)


# -- probabilities ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["150", "-20"])
def test_a_probability_outside_0_100_is_quarantined_not_stored_scaled(exports, value):
    opp = exports / "Opportunity.csv"
    position = _open_position(opp)
    row = set_value(opp, position, "Probability", value)
    crm = load(exports)
    found = quarantined_at(crm, "Opportunity.csv", row)
    assert found is not None and found["reason_code"] == "probability_out_of_range", found
    assert f"{float(value):g}" in found["reason"] and "0-100%" in found["reason"]
    assert crm.deals["crm_probability"].dropna().between(0, 1).all()


# -- the quarantine share ---------------------------------------------------------------------


def _corrupt_amounts(path, every: int) -> int:
    bad = 0

    def change(col, rows):
        nonlocal bad
        for i, row in enumerate(rows):
            if i % every == 0:
                row[col["Amount"]] = "twelve"
                bad += 1

    edit(path, change)
    return bad


def _grow_accounts(path, extra: int) -> None:
    def change(col, rows):
        template = rows[0]
        for i in range(extra):
            copy = list(template)
            copy[col["Id"]] = f"001EXTRA{i:011d}"
            rows.append(copy)

    edit(path, change)


def test_a_large_account_file_does_not_dilute_the_deal_quarantine_share(exports):
    bad = _corrupt_amounts(exports / "Opportunity.csv", every=5)  # 60 of 300 deals = 20%
    _grow_accounts(exports / "Account.csv", 20_000)
    crm = load(exports)
    results = crm.validation.results.set_index("check_name")
    share = results.loc["deals.quarantine_share"]
    assert bad == 60
    assert not share["passed"] and share["observed"] == f"20.00% ({bad} of {N_DEALS} deal rows quarantined)"
    assert not crm.publishable


def test_every_deal_quarantined_says_so_in_deal_counts(exports):
    bad = _corrupt_amounts(exports / "Opportunity.csv", every=1)
    crm = load(exports)
    share = crm.validation.results.set_index("check_name").loc["deals.quarantine_share"]
    assert share["observed"] == f"100.00% ({bad} of {N_DEALS} deal rows quarantined)"


def test_history_is_judged_on_its_own_share(exports):
    history = exports / "OpportunityHistory.csv"
    _, rows = read_rows(history)
    every = 10

    def change(col, data):
        for i, row in enumerate(data):
            if i % every == 0:
                row[col["CreatedDate"]] = "yesterday"

    edit(history, change)
    bad = len(range(0, len(rows), every))
    crm = load(exports)
    results = crm.validation.results.set_index("check_name")
    assert results.loc["deals.quarantine_share", "passed"]
    history_share = results.loc["deal_history.quarantine_share"]
    assert not history_share["passed"]
    assert f"({bad} of {len(rows):,} history rows quarantined" in history_share["observed"]


# -- passwords in warehouse URLs --------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown", "secret"),
    [
        ("postgresql+psycopg://adv:S3cr@PW!@127.0.0.1:1/db", "postgresql+psycopg://adv:***@127.0.0.1:1/db", "PW!"),
        ("postgresql+psycopg://u@127.0.0.1:1/db?sslpassword=k3y-Pass&sslmode=require",
         "postgresql+psycopg://u@127.0.0.1:1/db?sslpassword=***&sslmode=require", "k3y-Pass"),
        ("postgresql+psycopg://u@127.0.0.1:1/db?password=a@b&application_name=x",
         "postgresql+psycopg://u@127.0.0.1:1/db?password=***&application_name=x", "a@b"),
        ("snowflake://u:pw-1@acct/db?private_key_passphrase=Zz9&token=T0k",
         "snowflake://u:***@acct/db?private_key_passphrase=***&token=***", "T0k"),
    ],
)
def test_every_credential_in_a_url_is_masked(url, shown, secret):
    from etl.warehouse import redact_url

    assert redact_url(url) == shown
    assert secret not in redact_url(url)


def test_an_unencoded_at_in_a_password_never_reaches_an_error_message():
    from etl.warehouse import Warehouse, WarehouseError

    warehouse = Warehouse("postgresql+psycopg://adv:S3cr@PW!@127.0.0.1:1/db?sslpassword=Other%40Secret&connect_timeout=2")
    try:
        with pytest.raises(WarehouseError) as failure:
            warehouse.create_all()
    finally:
        warehouse.dispose()
    text = str(failure.value) + repr(failure.value.__cause__)
    for spelling in ("PW!", "S3cr", "Other@Secret", "Other%40Secret"):
        assert spelling not in text, text
    assert "adv:***@127.0.0.1:1/db" in text


# -- file-level faults ------------------------------------------------------------------------


def _rename_on_line(path, line: int, quoted: str) -> None:
    """Replace the deal name on physical line `line` (1-based) with `quoted`, written as is."""
    header, rows = read_rows(path)
    name = rows[line - 2][header.index("Name")]
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[line - 1].count(f'"{name}"') == 1
    lines[line - 1] = lines[line - 1].replace(f'"{name}"', quoted)
    path.write_text("\n".join(lines), encoding="utf-8")


def test_malformed_quoting_is_quarantined_with_the_line_as_written(exports):
    opp = exports / "Opportunity.csv"
    _rename_on_line(opp, 9, '"Acme "Big" Co"')
    crm = load(exports)
    found = quarantined_at(crm, "Opportunity.csv", 9)
    assert found is not None and found["reason_code"] == "malformed_quoting", found
    assert '"Acme \\"Big\\" Co\\"' in found["raw_record"]  # the line exactly as written, JSON-escaped
    assert 'must be doubled' in found["reason"]
    assert not crm.deals["deal_name"].str.contains('Big" Co', regex=False).any()
    assert len(crm.deals) == N_DEALS - 1
    recon = crm.validation.reconciliation
    assert (recon["rows_read"] == recon["accepted"] + recon["quarantined"]).all()


def test_a_quote_left_open_quarantines_every_line_it_swallows(exports):
    opp = exports / "Opportunity.csv"
    lines = opp.read_text(encoding="utf-8").split("\n")
    assert lines[8].endswith('"')
    lines[8] = lines[8][:-1]  # row 9's last value loses its closing quote: it runs into row 10
    opp.write_text("\n".join(lines), encoding="utf-8")
    crm = load(exports)
    for row in (9, 10):
        found = quarantined_at(crm, "Opportunity.csv", row)
        assert found is not None and found["reason_code"] == "malformed_quoting", (row, found)
        assert "runs over rows 9-10" in found["reason"]
    assert quarantined_at(crm, "Opportunity.csv", 11) is None
    recon = crm.validation.reconciliation.set_index("source_file")
    opportunity = recon.loc[[f for f in recon.index if f.endswith("/Opportunity.csv")][0]]
    assert (opportunity["rows_read"], opportunity["quarantined"]) == (N_DEALS, 2)
    assert len(crm.deals) == N_DEALS - 2


def test_doubled_quotes_inside_a_value_are_read_as_one_quote(exports):
    _rename_on_line(exports / "Opportunity.csv", 9, '"Acme ""Big"" Co"')
    crm = load(exports)
    assert (crm.deals["deal_name"] == 'Acme "Big" Co').sum() == 1
    assert len(crm.deals) == N_DEALS


@pytest.mark.parametrize("name", ["Opportunity.csv", "OpportunityHistory.csv", "User.csv"])
def test_cr_only_line_endings_are_read_like_lf(clean, exports, name):
    path = exports / name
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r"))
    before = load(clean)
    after = load(exports)
    assert len(after.deals) == len(before.deals) == N_DEALS
    assert len(after.history) == len(before.history)
    assert after.validation.quarantine.empty
    assert after.deals["owner"].equals(before.deals["owner"])


def _read_with_one_file_unreadable(clean, name: str) -> dict:
    """Load a copy of the export in which `name` may not be read. Root reads every file whatever
    its permissions, so when the tests run as root the load runs in a forked child that has
    dropped to the `nobody` user (after one warm-up load here, so that it needs no new imports)."""
    import json
    import os
    import shutil
    import tempfile

    from etl.ingest.crm_load import describe_exports
    from etl.ingest.readers import ExportFormatError

    load(clean)  # warm-up: every module the load needs is imported before the fork
    folder = Path(tempfile.mkdtemp(prefix="dealcast-unreadable-"))
    try:
        exports = folder / "exports"
        shutil.copytree(clean, exports)
        for path in (folder, exports, *exports.iterdir()):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        os.chmod(exports / name, 0o000)
        reading, writing = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            code = 0
            try:
                os.close(reading)
                if os.geteuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                listed = len(describe_exports(exports))
                try:
                    crm = load(exports)
                    outcome = {"deals": len(crm.deals), "owners": sorted(set(crm.deals["owner"].dropna()))[:3],
                               "skipped": [p.name for p in crm.ingest.skipped_files], "listed": listed}
                except ExportFormatError as exc:
                    outcome = {"error": str(exc), "listed": listed}
            except BaseException as exc:  # report anything else to the parent as it is
                outcome = {"crash": f"{type(exc).__name__}: {exc}"}
                code = 1
            with os.fdopen(writing, "w") as out:
                out.write(json.dumps(outcome))
            os._exit(code)
        os.close(writing)
        with os.fdopen(reading) as got:
            text = got.read()
        os.waitpid(child, 0)
        outcome = json.loads(text)
        assert "crash" not in outcome, outcome
        return outcome
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_an_unreadable_deals_file_is_named_with_its_problem(clean):
    outcome = _read_with_one_file_unreadable(clean, "Opportunity.csv")
    assert "Opportunity.csv: the file cannot be read (Permission denied)" in outcome["error"]
    assert outcome["listed"] == 6  # the listing of the folder still shows every file


def test_an_unreadable_optional_user_file_is_skipped_with_a_warning(clean):
    outcome = _read_with_one_file_unreadable(clean, "User.csv")
    assert outcome["deals"] == N_DEALS
    assert outcome["skipped"] == ["User.csv"] or "User.csv" in outcome["skipped"]
    assert all(owner.startswith("005") for owner in outcome["owners"])  # ids, as without a User file


# -- Unicode ----------------------------------------------------------------------------------


def test_unicode_variants_of_one_name_are_one_name_and_quarantine_keeps_the_raw_value(exports):
    import json
    import unicodedata

    nfc = unicodedata.normalize("NFC", "Équipe Île")
    nfd = unicodedata.normalize("NFD", "Équipe Île")
    assert nfc != nfd
    variants = [nfc, nfd, "\u200b" + nfc, nfc + "\u00a0", " \ufeff" + nfd + "\u202f"]
    opp = exports / "Opportunity.csv"
    quarantined_variant = 5  # this deal also has a negative amount

    def change(col, rows):
        for i, value in enumerate(variants):
            rows[i][col["Segment__c"]] = value
            rows[i][col["Region__c"]] = "EMEA" + "\u200b" * (i % 2)
        rows[quarantined_variant][col["Segment__c"]] = nfd
        rows[quarantined_variant][col["Amount"]] = "-500"

    edit(opp, change)
    crm = load(exports)
    segments = crm.deals.set_index("source_row")["account_segment"]
    assert {segments[row] for row in range(2, 2 + len(variants))} == {nfc}
    assert crm.deals["region"].isin(["EMEA"]).sum() >= 3 and not crm.deals["region"].str.contains("\u200b").any()
    found = quarantined_at(crm, "Opportunity.csv", quarantined_variant + 2)
    assert found["reason_code"] == "amount_out_of_range"
    assert json.loads(found["raw_record"])["_as_written"]["account_segment"] == nfd


def test_a_deal_id_with_a_zero_width_space_is_the_same_deal(exports):
    opp = exports / "Opportunity.csv"
    header, rows = read_rows(opp)
    first_id = rows[0][header.index("Id")]

    def change(col, data):
        copy = list(data[0])
        copy[col["Id"]] = first_id + "\u200b"
        data.append(copy)

    edit(opp, change)
    crm = load(exports)
    found = quarantined_at(crm, "Opportunity.csv", N_DEALS + 2)
    assert found is not None and found["reason_code"] == "duplicate_id"
    assert (crm.deals["deal_id"] == first_id).sum() == 1
