"""The mapping language on real file shapes: a row filter, several source columns coalesced into
one canonical column, one source column feeding several, a status from membership in a lookup
file, and lost deals without a lost date. Small files written here; every figure worked by hand.

deals.csv (mapping "direct", pipeline Direct: Lead -> Proposal, then Won / Lost):
  row id  stage     status value created     won_time          lost_time         close_date  is_deleted
   2  D1  Proposal  won    1000  2024-01-10  2024-02-01 10:00                    2024-02-15  false
   3  D2  Proposal  lost   2000  2024-01-11                    2024-02-05 11:00  2024-02-20  (blank)
   4  D3  Lead      open   3000  2024-01-12                                      2024-03-31  FALSE
   5  D4  Lead      open   4000  2024-01-13                                      2024-03-31  true   -> left out by the filter
   6  D5  Lead      lost    500  2024-01-14                                                  no     -> lost, no lost date
   7  D6  Lead      open    600  2024-01-15                                      2024-04-30  maybe  -> the filter cannot judge it
closed_at = [won_time, lost_time]; last_stage_change_at = [won_time, lost_time] too (one list
feeding two columns); close_date feeds expected_close_date and deal_type (one column feeding two).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from etl.config import ConfigError, Settings, load_project_config
from etl.ingest.crm_load import load_crm, results_frame
from etl.ingest.exports import read_exports
from etl.ingest.readers.mapped import load_mapping

T = pd.Timestamp
AS_OF = dt.date(2024, 6, 30)

DEALS = """id,stage,status,value,created,won_time,lost_time,close_date,is_deleted
D1,Proposal,won,1000,2024-01-10,2024-02-01 10:00,,2024-02-15,false
D2,Proposal,lost,2000,2024-01-11,,2024-02-05 11:00,2024-02-20,
D3,Lead,open,3000,2024-01-12,,,2024-03-31,FALSE
D4,Lead,open,4000,2024-01-13,,,2024-03-31,true
D5,Lead,lost,500,2024-01-14,,,,no
D6,Lead,open,600,2024-01-15,,,2024-04-30,maybe
"""

MAPPING = """
file = "deals.csv"
source_system = "direct"
{extra}

[pipeline]
name = "Direct"
stages = ["Lead", "Proposal"]
won_stage = "Won"
lost_stage = "Lost"

[columns]
deal_id = "id"
stage = "stage"
status = "status"
amount = "value"
created_at = "created"
closed_at = ["won_time", "lost_time"]
last_stage_change_at = ["won_time", "lost_time"]
expected_close_date = "close_date"
deal_type = "close_date"

[filter]
is_deleted = false
"""


def _project(tmp_path: Path, files: dict[str, str], mappings: dict[str, str]) -> Settings:
    exports = tmp_path / "exports"
    exports.mkdir(exist_ok=True)
    for name, text in files.items():
        (exports / name).write_text(text, encoding="utf-8")
    for name, text in mappings.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    listed = ", ".join(f'"{name}"' for name in mappings)
    (tmp_path / "dealcast.toml").write_text(
        f'[reporting]\ncurrency = "USD"\n\n[sources]\nmappings = [{listed}]\n', encoding="utf-8"
    )
    project = load_project_config(tmp_path / "dealcast.toml")
    return Settings(project, exports, False, AS_OF, tmp_path)


def _direct(tmp_path: Path, extra: str = "") -> Settings:
    return _project(tmp_path, {"deals.csv": DEALS}, {"direct.toml": MAPPING.format(extra=extra)})


def test_filter_coalesce_and_shared_columns(tmp_path):
    settings = _direct(tmp_path)
    result = read_exports(settings.exports_dir, settings.project)
    deals = result.deals.set_index("deal_id")
    assert list(deals.index) == ["D1", "D2", "D3"]
    assert deals["status"].tolist() == ["won", "lost", "open"]
    assert deals["closed_at"].tolist()[:2] == [T("2024-02-01 10:00"), T("2024-02-05 11:00")]
    assert pd.isna(deals.loc["D3", "closed_at"])
    assert deals["last_stage_change_at"].tolist()[:2] == [T("2024-02-01 10:00"), T("2024-02-05 11:00")]
    assert deals["expected_close_date"].tolist() == [T("2024-02-15"), T("2024-02-20"), T("2024-03-31")]
    assert deals["deal_type"].tolist() == ["2024-02-15", "2024-02-20", "2024-03-31"]
    quarantine = result.quarantine.set_index("source_row")
    assert quarantine["reason_code"].to_dict() == {
        5: "excluded_by_filter", 6: "missing_close_date", 7: "unparseable_boolean",
    }
    assert quarantine.loc[5, "reason"] == (
        "left out by the mapping's [filter]: is_deleted is 'true'; the filter keeps false or blank"
    )
    assert quarantine.loc[5, "column"] == "is_deleted"
    assert "won_time or lost_time is blank" in quarantine.loc[6, "reason"]
    assert [(f.rows_read, f.rows_accepted, f.rows_quarantined) for f in result.files] == [(6, 3, 3)]


def test_a_column_feeding_several_canonical_columns_is_checked_once(tmp_path, warehouse):
    load = load_crm(_direct(tmp_path))
    results = results_frame(load, "run-1")
    assert not results["check_name"].duplicated().any()
    raw = results.loc[results["check_name"].str.startswith("raw[deals.csv].")]
    # One check per export column and kind: close_date (two canonical columns) and won_time /
    # lost_time (two lists) are each checked once.
    assert sorted(raw["check_name"].str.removeprefix("raw[deals.csv].")) == [
        "close_date.date", "created.date", "id.not_blank", "id.unique", "is_deleted.boolean", "lost_time.date",
        "value.number", "won_time.date",
    ]
    parsed = results.set_index("check_name").loc["crm_exports.rows_parsed", "observed"]
    assert parsed == "2 of 6 rows read could not be parsed; 1 left out by a mapping's filter"
    warehouse.claim(AS_OF, "run-1")
    assert warehouse.write("data_quality_results", results, as_of=AS_OF, run_id="run-1") == len(results)


def test_filtered_rows_do_not_count_as_quarantined_in_the_blocking_share(tmp_path):
    load = load_crm(_direct(tmp_path, 'lost_date_when_blank = "latest"'))
    share = load.validation.results.set_index("check_name").loc["deals.quarantine_share"]
    # Six rows: one left out by the filter, one unjudgeable flag (D6): 1 of 5 deal rows quarantined.
    assert share["observed"] == "20.00% (1 of 5 deal rows quarantined; 1 more left out by a mapping's filter)"


@pytest.mark.parametrize(
    ("rule", "closed_at"),
    [("created_at", T("2024-01-14")), ("latest", T("2024-02-05 11:00"))],
)
def test_lost_deals_without_a_lost_date(tmp_path, rule, closed_at):
    # "latest" is the export's end: the latest creation date (15 Jan, D6; but D6 is quarantined
    # by the filter, so 14 Jan, D5) or close date of a closed deal (D2 lost 5 Feb 11:00).
    settings = _direct(tmp_path, f'lost_date_when_blank = "{rule}"')
    result = read_exports(settings.exports_dir, settings.project)
    deals = result.deals.set_index("deal_id")
    assert deals.loc["D5", "status"] == "lost" and deals.loc["D5", "closed_at"] == closed_at
    assert "D5" in deals.index and result.quarantine["reason_code"].tolist() == ["excluded_by_filter", "unparseable_boolean"]


def test_filter_on_values_and_bad_settings(tmp_path):
    listed = MAPPING.format(extra="").replace("[filter]\nis_deleted = false", '[filter]\nstatus = ["open", "WON"]')
    settings = _project(tmp_path, {"deals.csv": DEALS}, {"direct.toml": listed})
    result = read_exports(settings.exports_dir, settings.project)
    assert result.deals["deal_id"].tolist() == ["D1", "D3", "D4", "D6"]
    assert result.quarantine["reason_code"].tolist() == ["excluded_by_filter", "excluded_by_filter"]
    bad = tmp_path / "bad.toml"
    for text, message in [
        (MAPPING.format(extra="").replace("is_deleted = false", "is_deleted = 0"), r"\[filter\] is_deleted: expected true or false"),
        (MAPPING.format(extra='lost_date_when_blank = "never"'), "lost_date_when_blank must be one of"),
        (MAPPING.format(extra="").replace('closed_at = ["won_time", "lost_time"]', "closed_at = []"), r"\[columns\] closed_at: expected"),
        (MAPPING.format(extra="").replace('stage = "stage"\n', ""), r"\[columns\] stage is required"),
    ]:
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError, match=message):
            load_mapping(bad)
