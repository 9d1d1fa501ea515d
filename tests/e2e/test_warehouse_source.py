"""The whole Dagster graph reading the CRM straight from PostgreSQL: a generated Salesforce org
written as the tables Fivetran lands (snake_case, typed, `_fivetran_synced`/`_fivetran_deleted`) in
a `salesforce_*` schema of the test database, plus rows deleted in the CRM, read through
`[sources.warehouse]` and written to the Dealcast warehouse in another schema. Expected numbers come
from the CSV files the tables were made from."""

import shutil
import uuid

import pandas as pd
import pytest

from sample_crm.generate import generate_sample
from etl.ingest.source_warehouse import ENV_SOURCE_URL
from etl.warehouse import Warehouse
from tests.fivetran_kit import TABLE_OF_FILE, drop_schema, fivetran_table, write_tables

from .conftest import AS_OF, materialize_graph, project_config

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture
def source_schema(pg_url):
    name = f"salesforce_{uuid.uuid4().hex[:10]}"
    yield name
    drop_schema(pg_url, name)


def test_whole_graph_from_fivetran_tables_in_postgres(tmp_path, monkeypatch, pg_url, pg_schema, source_schema):
    monkeypatch.delenv(ENV_SOURCE_URL, raising=False)
    sample = tmp_path / "sample"
    generate_sample(sample, n_deals=600, seed=3, end_date=AS_OF, years=2.0)
    tables = {TABLE_OF_FILE[name]: fivetran_table(sample / name) for name in TABLE_OF_FILE}
    opportunities = pd.read_csv(sample / "Opportunity.csv", dtype=str)
    history_csv = pd.read_csv(sample / "OpportunityHistory.csv", dtype=str)
    # Two opportunities deleted in Salesforce (one flagged by Salesforce, one by Fivetran) and one
    # deleted history row of a live deal: left out, and counted apart.
    opp = tables["opportunity"]
    deleted = opp.iloc[[0, 1]].copy()
    deleted["id"] = ["006DELETED000001", "006DELETED000002"]
    deleted["is_deleted"] = [True, False]
    deleted["_fivetran_deleted"] = [False, True]
    tables["opportunity"] = pd.concat([opp, deleted], ignore_index=True)
    hist = tables["opportunity_history"]
    gone = hist.iloc[[0]].copy()
    gone["id"] = "008DELETED000001"
    gone["_fivetran_deleted"] = True
    tables["opportunity_history"] = pd.concat([hist, gone], ignore_index=True)
    write_tables(pg_url, source_schema, tables)

    # The exports folder holds only the quota file: the CRM comes from the warehouse.
    exports = tmp_path / "exports"
    exports.mkdir()
    shutil.copy(sample / "quotas.csv", exports / "quotas.csv")
    config = project_config(tmp_path, f'[sources.warehouse]\nurl = "{pg_url}"\nschema = "{source_schema}"\n\n')
    result = materialize_graph(exports, AS_OF, config, pg_url, pg_schema)
    assert result.success

    n_deals, n_history = len(opportunities), len(history_csv)
    warehouse = Warehouse(pg_url, schema=pg_schema)
    try:
        recon = warehouse.read("reconciliation", as_of=AS_OF).set_index("source_file")
        counts = recon[["rows_read", "accepted", "quarantined", "excluded"]]
        assert counts.loc[f"{source_schema}.opportunity"].tolist() == [n_deals + 2, n_deals, 2, 2]
        assert counts.loc[f"{source_schema}.opportunity_history"].tolist() == [n_history + 1, n_history, 1, 1]
        assert recon.loc[f"{source_schema}.user", "rows_read"] == len(pd.read_csv(sample / "User.csv"))
        quarantine = warehouse.read("quarantine", as_of=AS_OF)
        assert sorted(quarantine["reason_code"]) == ["deleted_in_crm"] * 3
        results = warehouse.read("data_quality_results", as_of=AS_OF).set_index("check_name")
        observed = results.loc[f"crm_exports.reconciliation[{source_schema}.opportunity]", "observed"]
        assert observed == (
            f"read {n_deals + 2:,}; accepted {n_deals:,} + quarantined 0 + excluded 2 "
            f"(left out as deleted in the CRM) = {n_deals + 2:,}"
        )

        deals = warehouse.read("deals").set_index("deal_id")
        assert len(deals) == n_deals and not deals.index.str.startswith("006DELETED").any()
        expected_status = opportunities.apply(
            lambda r: "won" if r["IsWon"] == "1" else "lost" if r["IsClosed"] == "1" else "open", axis=1
        )
        assert deals["status"].value_counts().sort_index().to_dict() == expected_status.value_counts().sort_index().to_dict()
        won = opportunities.loc[opportunities["IsWon"] == "1"].iloc[0]
        assert pd.Timestamp(deals.loc[won["Id"], "crm_close_date"]) == pd.Timestamp(won["CloseDate"]).normalize()

        # One deal's stays, stage by stage, as its OpportunityHistory rows list them.
        events = warehouse.read("stage_events", as_of=AS_OF)
        per_deal = history_csv.groupby("OpportunityId")
        deal_id = next(d for d, rows in per_deal if len(rows) >= 4 and rows["CreatedDate"].is_unique)
        rows = per_deal.get_group(deal_id).sort_values("CreatedDate")
        stages = rows["StageName"].tolist()
        walked = [s for i, s in enumerate(stages) if i == 0 or s != stages[i - 1]]
        stays = events.loc[events["deal_id"] == deal_id].sort_values("entered_at")
        assert stays["stage"].tolist()[: len(walked)] == walked
        assert pd.Timestamp(stays["entered_at"].iloc[0]) == pd.Timestamp(rows["CreatedDate"].iloc[0])
        assert set(events["deal_id"]) <= set(deals.index)
        assert not warehouse.read("forecast_quarterly", as_of=AS_OF).empty
    finally:
        warehouse.dispose()
