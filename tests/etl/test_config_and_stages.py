import datetime as dt
import math

import pytest

from etl.config import ConfigError, load_project_config, resolve_as_of, resolve_settings
from etl.stages import PipelineStages, StageCatalog


def test_project_config_reads_the_shipped_file():
    cfg = load_project_config()
    assert cfg.reporting_currency == "USD"
    nb = cfg.stages["New Business"]
    assert nb.open_stages[0] == "Prospecting" and nb.order_of("Negotiation/Review") == 6
    assert nb.order_of("Closed Won") == 7 and nb.order_of("Closed Lost") == 8
    assert nb.probability_of("Value Proposition") == 0.5 and nb.probability_of("Closed Won") == 1.0


def test_unknown_setting_is_named(tmp_path):
    bad = tmp_path / "dealcast.toml"
    bad.write_text("[validation]\nmax_amout = 5\n")
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['max_amout'\]"):
        load_project_config(bad)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_project_config(tmp_path / "nope.toml")


def test_as_of_resolution(monkeypatch):
    monkeypatch.setenv("DEALCAST_AS_OF", "2025-06-30")
    assert resolve_as_of() == dt.date(2025, 6, 30)
    assert resolve_as_of("2024-01-02") == dt.date(2024, 1, 2)
    monkeypatch.setenv("DEALCAST_AS_OF", "30/06/2025")
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        resolve_as_of()


def test_exports_dir_from_env_is_not_the_sample(monkeypatch, tmp_path):
    monkeypatch.setenv("DEALCAST_EXPORTS_DIR", str(tmp_path))
    settings = resolve_settings()
    assert settings.exports_dir == tmp_path and not settings.exports_are_sample
    monkeypatch.delenv("DEALCAST_EXPORTS_DIR")
    assert resolve_settings().exports_are_sample


def test_stage_catalog_annotates_and_rejects_repeats():
    p = PipelineStages("P", ("A", "B"), probabilities={"A": 0.2})
    catalog = StageCatalog([p])
    assert math.isnan(p.probability_of("B"))
    assert p.status_of("Closed Lost") == "lost" and p.status_of("Z") is None
    with pytest.raises(ValueError, match="repeat"):
        PipelineStages("Q", ("A", "A"))
    with pytest.raises(ValueError, match="configured twice"):
        StageCatalog([p, p])
    import pandas as pd

    out = catalog.annotate(pd.DataFrame({"pipeline": ["P", "P", "X"], "stage": ["B", "Closed Won", "A"]}))
    assert out["stage_order"].tolist()[:2] == [2, 3] and pd.isna(out["stage_order"][2])


def test_catalog_round_trips_through_its_table():
    from etl.config import load_project_config

    catalog = load_project_config().stages
    again = StageCatalog.from_frame(catalog.lookup_frame())
    assert again.names == sorted(catalog.names)
    for p in catalog:
        q = again[p.name]
        assert (q.open_stages, q.won_stage, q.lost_stage) == (p.open_stages, p.won_stage, p.lost_stage)
        assert q.probabilities == p.probabilities


def _config_with(tmp_path, text: str):
    path = tmp_path / "dealcast.toml"
    path.write_text(text)
    return load_project_config(path)


def test_configured_stall_days_expand_to_each_pipeline_with_the_stage(tmp_path):
    cfg = _config_with(
        tmp_path,
        '[analytics]\nask_stages = ["Quote"]\n'
        '[analytics.stall_days]\n"Demo" = 21\n"Quote" = 14\n"Qualify" = 5\n'
        '[analytics.stall_days."Renewal"]\n"Quote" = 45\n"Demo" = 9\n',
    )
    catalog = StageCatalog(
        [PipelineStages("New", ("Demo", "Quote")), PipelineStages("Renewal", ("Quote", "Sign"))]
    )
    thresholds, unmatched = cfg.analytics.stall_thresholds(catalog)
    # "Demo" and "Quote" apply wherever the stage exists; Renewal's own "Quote" wins over the
    # stage-wide 14; "Qualify" and Renewal's "Demo" name no stage of these pipelines.
    assert thresholds == {("New", "Demo"): 21.0, ("New", "Quote"): 14.0, ("Renewal", "Quote"): 45.0}
    assert unmatched == ["Qualify", "Renewal / Demo"]
    assert cfg.analytics.ask_stages == ("Quote",)


@pytest.mark.parametrize(
    "text, message",
    [
        ('[analytics.stall_days]\n"Demo" = 0\n', r"stall_days.Demo must be a number of days above 0, got 0"),
        ('[analytics.stall_days]\n"Demo" = "a week"\n', r"stall_days.Demo must be a number of days above 0"),
        ('[analytics.stall_days.Renewal]\n"Quote" = -3\n', r"stall_days.Renewal.Quote must be a number of days above 0"),
        ('[analytics]\nask_stages = "Quote"\n', r"ask_stages must be a list of stage names"),
        ('[analytics]\nstall_day = 3\n', r"unknown setting\(s\) \['stall_day'\]"),
    ],
)
def test_bad_analytics_settings_are_named(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        _config_with(tmp_path, text)


def test_without_an_analytics_section_nothing_is_configured(tmp_path):
    cfg = _config_with(tmp_path, "[reporting]\ncurrency = 'EUR'\n")
    assert cfg.analytics.stall_days == {} and cfg.analytics.ask_stages == ()
    assert cfg.analytics.stall_thresholds(StageCatalog([PipelineStages("P", ("A",))])) == ({}, [])


def test_annotate_gives_each_row_its_pairs_order_status_and_probability():
    """Each row gets the stage_order, stage_status and stage_probability of its own (pipeline, stage)
    pair, whatever the frame's index, with pairs repeated, unknown or missing (NaN)."""
    import pandas as pd

    catalog = StageCatalog([PipelineStages("P", ("A", "B"), probabilities={"A": 0.2, "B": 0.6}), PipelineStages("Q", ("B",))])
    frame = pd.DataFrame(
        {
            "deal": ["d1", "d2", "d3", "d4", "d5", "d6", "d7"],
            "pipeline": ["Q", "P", "P", "X", "P", "P", None],
            "stage": ["B", "B", "Closed Lost", "A", None, "B", "A"],
        },
        index=[70, 60, 50, 40, 30, 20, 10],
    )
    out = catalog.annotate(frame)
    assert list(out.columns) == ["deal", "pipeline", "stage", "stage_order", "stage_status", "stage_probability"]
    assert list(out.index) == list(range(7))
    assert out["deal"].tolist() == ["d1", "d2", "d3", "d4", "d5", "d6", "d7"]
    # Q: B is its only open stage (1), won 2, lost 3; P: A 1, B 2, won 3, lost 4.
    orders = [None if pd.isna(v) else int(v) for v in out["stage_order"]]
    assert orders == [1, 2, 4, None, None, 2, None]
    statuses = [None if pd.isna(v) else v for v in out["stage_status"]]
    assert statuses == ["open", "open", "lost", None, None, "open", None]
    probabilities = [None if pd.isna(v) else v for v in out["stage_probability"]]
    assert probabilities[1:3] == [0.6, 0.0] and probabilities[5] == 0.6
    assert all(p is None for p in (probabilities[0], probabilities[3], probabilities[4], probabilities[6]))
    # Every row of a known pair: the order stays whole numbers.
    known = catalog.annotate(frame.iloc[[1, 2, 5]])
    assert str(known["stage_order"].dtype) == "int64" and known["stage_order"].tolist() == [2, 4, 2]
