"""The whole graph on the sample's messy profile (a small untidy org: Spanish stages from the export's
StageSortOrder, a bulk import, wins keyed in at close, stale deals, purges, same-day closes without
history), materialised into PostgreSQL. Expected numbers come from the export files and the truth files."""

import csv

import pandas as pd
import pytest

from sample_crm.generate import generate_sample
from etl.warehouse import Warehouse

from .conftest import AS_OF, materialize_graph, project_config

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

SALESFORCE_FILES = ("Opportunity.csv", "OpportunityHistory.csv", "User.csv", "Account.csv")
SPANISH = [
    "Prospección", "Calificación", "Análisis de necesidades", "Propuesta de valor", "Propuesta/Presupuesto",
    "Negociación/Revisión", "Cerrada ganada", "Cerrada perdida",
]  # fmt: skip


def test_whole_graph_on_a_messy_org_into_postgres(tmp_path, pg_url, pg_schema):
    exports = tmp_path / "exports"
    generate_sample(exports, seed=5, end_date=AS_OF, profile="messy")
    with open(exports / "Opportunity.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    status = pd.Series(["won" if r["IsWon"] == "1" else "lost" if r["IsClosed"] == "1" else "open" for r in rows])
    truth = pd.read_csv(exports / "truth_deals.csv")
    result = materialize_graph(exports, AS_OF, project_config(tmp_path), pg_url, pg_schema)
    assert result.success
    warehouse = Warehouse(pg_url, schema=pg_schema)
    try:
        recon = warehouse.read("reconciliation", as_of=AS_OF)
        assert (recon["rows_read"] == recon["accepted"] + recon["quarantined"]).all()
        lines = {name: len((exports / name).read_text(encoding="utf-8").splitlines()) - 1 for name in SALESFORCE_FILES}
        assert recon["quarantined"].sum() == 0 and recon["rows_read"].sum() == sum(lines.values())
        deals = warehouse.read("deals")
        assert len(deals) == len(rows) == (truth["crm_status"].notna()).sum()
        assert deals["status"].value_counts().sort_index().to_dict() == status.value_counts().sort_index().to_dict()

        stages = warehouse.read("pipeline_stages").query("pipeline == 'Ventas'").sort_values("stage_order")
        assert stages["stage"].tolist() == SPANISH and stages["stage_order"].tolist() == list(range(1, 9))

        # deals nobody closed look open: every one of them is scored like any open deal, and nothing
        # closed in the export is scored (deals created and closed the same day without history included)
        scores = warehouse.read("deal_scores", as_of=AS_OF)
        open_ids = set(deals.loc[deals["status"] == "open", "deal_id"])
        assert set(scores["deal_id"]) == open_ids and scores["win_probability"].between(0, 1).all()
        same_day = set(truth.loc[truth["no_history"] == 1, "deal_id"])
        assert same_day and not same_day & set(scores["deal_id"])
        stale_open = set(truth.loc[(truth["stale"] == 1) & (truth["purged"] == 0), "deal_id"])
        assert len(stale_open) > 20 and stale_open <= open_ids
        assert not warehouse.read("forecast_quarterly", as_of=AS_OF).empty
    finally:
        warehouse.dispose()
