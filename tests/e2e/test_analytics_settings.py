"""The `[analytics]` settings of dealcast.toml reach the nightly tables: configured stall
thresholds replace the learned ones in `stage_durations` (and so in `stalled_deals`), and the
configured ask stages are the ones `ask_to_decision` measures from. The waterfall picture is
checked on the same run."""

import dagster as dg
import pytest

from etl.warehouse import Warehouse

from .conftest import AS_OF, materialize_graph, project_config

pytestmark = pytest.mark.slow

ANALYTICS = """[analytics]
ask_stages = ["Negotiation/Review"]
[analytics.stall_days]
"Qualification" = 12
"Closing Dinner" = 3
[analytics.stall_days."Expansion"]
"Qualification" = 40

"""


def test_configured_thresholds_and_ask_stages_reach_the_tables(sample_exports, tmp_path):
    url = f"sqlite:///{tmp_path / 'dealcast.sqlite'}"
    instance = dg.DagsterInstance.ephemeral()
    result = materialize_graph(
        sample_exports, AS_OF, project_config(tmp_path, ANALYTICS), url,
        # crm_tables writes its tables together: its quarantine and check results come along.
        selection=dg.AssetSelection.assets(
            "stage_durations", "ask_to_decision", "stalled_deals", "pipeline_waterfall", "quarantine",
            "data_quality_results",
        ).upstream(),
        instance=instance,
    )
    assert result.success
    warehouse = Warehouse(url)
    try:
        durations = warehouse.read("stage_durations", as_of=AS_OF)
        stalled = warehouse.read("stalled_deals", as_of=AS_OF)
    finally:
        warehouse.dispose()
    overall = durations[durations["segment_type"] == "all"].set_index(["pipeline", "stage"])
    # Qualification: 12 days wherever it exists, except Expansion's own 40.
    assert overall.loc[("New Business", "Qualification"), "stall_threshold_days"] == 12
    assert overall.loc[("Channel", "Qualification"), "stall_threshold_days"] == 12
    assert overall.loc[("Expansion", "Qualification"), "stall_threshold_days"] == 40
    configured = overall["threshold_source"] == "configured"
    assert configured.sum() == 3
    # Every other stage keeps its learned threshold: the p90 of its completed stays.
    learned = overall.loc[~configured & overall["p90_days"].notna()]
    assert len(learned) > 0
    assert (learned["stall_threshold_days"] == learned["p90_days"]).all()
    # Deals in Qualification are judged against 12 days (40 in Expansion), not the learned p90.
    qualifying = stalled[stalled["stage"] == "Qualification"]
    assert len(qualifying) > 0
    expected = qualifying["pipeline"].map({"New Business": 12.0, "Channel": 12.0, "Expansion": 40.0})
    assert (qualifying["threshold_days"] == expected).all()
    assert (qualifying["is_stalled"] == (qualifying["days_in_stage"] > expected)).all()

    # The run warns about the stage no pipeline has, and measures asks from Negotiation/Review only.
    messages = [record.user_message for record in instance.all_logs(result.run_id)]
    assert any("Closing Dinner" in message for message in messages)
    asks = result.asset_materializations_for_node("ask_to_decision")[0].metadata["ask_stages"].value
    assert "Negotiation/Review" in asks and "Proposal/Price Quote" not in asks

    # The waterfall asset shows the current quarter's picture.
    waterfall = result.asset_materializations_for_node("pipeline_waterfall")[0].metadata["waterfall"].value
    assert waterfall.startswith("![pipeline waterfall](data:image/png;base64,")
