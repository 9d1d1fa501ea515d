"""The whole graph on real CRM data without stage history: ../shared/data/maven_crm through the
shipped mapping (examples/maven_crm/mapping.toml)."""

import datetime as dt
import json
from pathlib import Path

import pytest

from etl.warehouse import Warehouse

from .conftest import materialize_graph, project_config

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MAVEN = ROOT.parent / "shared" / "data" / "maven_crm"
AS_OF = dt.date(2017, 12, 31)


def test_maven_crm_end_to_end(tmp_path):
    mapping = (ROOT / "examples" / "maven_crm" / "mapping.toml").as_posix()
    config = project_config(tmp_path, extra=f'[sources]\nmappings = ["{mapping}"]\n\n')
    url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    result = materialize_graph(MAVEN, AS_OF, config, url)
    assert result.success
    warehouse = Warehouse(url)
    try:
        deals = warehouse.read("deals")
        counts = deals["status"].value_counts()
        assert (len(deals), counts["won"], counts["lost"], counts["open"]) == (8800, 4238, 2473, 2089)
        assert not deals["has_history"].any()
        recon = warehouse.read("reconciliation", as_of=AS_OF)
        assert (recon["rows_read"] == recon["accepted"] + recon["quarantined"]).all()
        assert recon["quarantined"].sum() == 0

        run = warehouse.read("model_runs").iloc[0]
        assert not run["has_history"]
        features = json.loads(run["features"])
        # Without stage history the model sees creation-time attributes only: never the final stage.
        assert not {"stage", "stage_order", "days_in_stage", "crm_probability"} & set(features)
        scores = warehouse.read("deal_scores", as_of=AS_OF)
        assert len(scores) == 2089 and scores["win_probability"].between(0, 1).all()
    finally:
        warehouse.dispose()
