"""The intermediate-data store: values cross steps as Parquet or joblib files on a UPath, per
partition, on a local folder or an object store; model artifacts travel the same way."""

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from upath import UPath

from assets.store import DealcastStore, EncodedFrame, StoreError, default_store_location, encoded
from etl.config import resolve_settings
from models.scoring import Scorer


def messy_frame() -> pd.DataFrame:
    """The dtypes real CRM frames carry, with the gaps real exports have."""
    return pd.DataFrame(
        {
            "deal_id": pd.array(["D1", "D2", None], dtype="string"),
            "stage": pd.Categorical(["Won", None, "Qualify"], categories=["Qualify", "Won"], ordered=True),
            "amount": [1200.5, np.nan, 0.0],
            "units": pd.array([3, None, 7], dtype="Int64"),
            "is_won": [True, False, False],
            "closed_at": pd.to_datetime(["2026-11-02 10:15", None, "2026-01-31 00:00"]),
            "note": ["ñandú €", None, ""],
        },
        index=pd.Index([10, 11, 12], name="row"),
    )


@dataclass
class Fitted:
    rates: dict
    as_of: dt.date


def graph(checks: dict):
    @dg.asset
    def frame() -> pd.DataFrame:
        return messy_frame()

    @dg.asset
    def fitted() -> Fitted:
        return Fitted({"Qualify": 0.25, "Won": 1.0}, dt.date(2026, 11, 15))

    @dg.asset
    def reader(frame: pd.DataFrame, fitted: Fitted) -> dg.MaterializeResult:
        checks["frame"], checks["fitted"] = frame, fitted
        return dg.MaterializeResult()

    return [frame, fitted, reader]


def test_frames_and_objects_round_trip_through_a_local_folder(tmp_path):
    checks: dict = {}
    store = tmp_path / "store"
    result = dg.materialize(graph(checks), resources={"io_manager": DealcastStore(base_url=str(store))})
    assert result.success
    pd.testing.assert_frame_equal(checks["frame"], messy_frame())
    assert checks["fitted"] == Fitted({"Qualify": 0.25, "Won": 1.0}, dt.date(2026, 11, 15))
    # The reader returned a MaterializeResult: nothing is stored for it.
    assert sorted(p.name for p in store.iterdir()) == ["fitted.joblib", "frame.parquet"]
    assert pd.read_parquet(store / "frame.parquet")["units"].tolist()[0] == 3
    materialization = result.asset_materializations_for_node("frame")[0]
    assert materialization.metadata["stored_as"].value == "parquet"
    assert materialization.metadata["stored_bytes"].value == (store / "frame.parquet").stat().st_size


def test_an_object_store_url_keeps_every_value_off_the_local_disk(tmp_path, monkeypatch):
    """memory:// stands in for s3:// and gs://: the same fsspec path, no disk of this machine."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    checks: dict = {}
    url = "memory://dealcast-test-object-store/night"
    result = dg.materialize(graph(checks), resources={"io_manager": DealcastStore(base_url=url)})
    assert result.success
    pd.testing.assert_frame_equal(checks["frame"], messy_frame())
    stored = sorted(p.name for p in UPath(url).iterdir())
    assert stored == ["fitted.joblib", "frame.parquet"]
    assert not (tmp_path / "home").exists() and list(tmp_path.iterdir()) == []
    UPath(url).fs.rm(url, recursive=True)


def test_each_partition_is_its_own_file_and_a_reader_gets_every_partition(tmp_path):
    days = dg.DailyPartitionsDefinition(start_date="2026-11-13", end_date="2026-11-15")
    seen: dict = {}

    @dg.asset(partitions_def=days)
    def nightly(context: dg.AssetExecutionContext) -> pd.DataFrame:
        return pd.DataFrame({"night": [context.partition_key], "deals": [len(context.partition_key)]})

    @dg.asset
    def all_nights(nightly: dict[str, pd.DataFrame]) -> dg.MaterializeResult:
        seen.update(nightly)
        return dg.MaterializeResult()

    store = DealcastStore(base_url=str(tmp_path / "store"))
    for day in ["2026-11-13", "2026-11-14"]:
        assert dg.materialize([nightly], partition_key=day, resources={"io_manager": store}).success
    assert sorted(p.name for p in (tmp_path / "store" / "nightly").iterdir()) == ["2026-11-13.parquet", "2026-11-14.parquet"]
    assert dg.materialize([nightly, all_nights], selection=[all_nights], resources={"io_manager": store}).success
    assert sorted(seen) == ["2026-11-13", "2026-11-14"]
    assert seen["2026-11-14"]["night"].tolist() == ["2026-11-14"]


def test_a_frame_parquet_cannot_hold_fails_naming_the_asset_and_column(tmp_path):
    @dg.asset
    def mixed() -> pd.DataFrame:
        return pd.DataFrame({"amount": [1, "one thousand"]})

    result = dg.materialize([mixed], resources={"io_manager": DealcastStore(base_url=str(tmp_path))}, raise_on_error=False)
    assert not result.success
    error, chain = result.failure_data_for_node("mixed").error, []
    while error is not None:
        chain.append(error)
        error = error.cause
    store_error = next(e for e in chain if e.cls_name == "StoreError")
    assert "asset mixed" in store_error.message and "column amount" in store_error.message
    assert list(tmp_path.iterdir()) == []


def test_a_frame_encoded_beforehand_is_stored_as_that_file(tmp_path):
    """A step that made its outputs' Parquet files while it did other work hands them over with
    the frames: the store writes those files, and reads them back as the frames they encode."""
    made = encoded({"frame": messy_frame(), "other": pd.DataFrame({"x": [1, 2, 3]})})

    @dg.asset
    def frame() -> pd.DataFrame:
        return made["frame"]

    @dg.asset
    def swapped() -> pd.DataFrame:
        # The file of another frame: what is written is the file that came with the value.
        value = EncodedFrame(messy_frame())
        value.parquet = made["other"].parquet
        return value

    result = dg.materialize([frame, swapped], resources={"io_manager": DealcastStore(base_url=str(tmp_path))})
    assert result.success
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "frame.parquet"), messy_frame())
    assert pd.read_parquet(tmp_path / "swapped.parquet")["x"].tolist() == [1, 2, 3]


def test_what_pandas_derives_from_an_encoded_frame_carries_no_file():
    made = encoded({"frame": messy_frame()})["frame"]
    assert isinstance(made, EncodedFrame)
    for derived in (made[["deal_id"]], made.assign(amount=0.0), made.copy(), made.iloc[:1], made.reset_index()):
        assert type(derived) is pd.DataFrame
        assert getattr(derived, "parquet", None) is None


def test_a_frame_parquet_cannot_hold_is_not_encoded_beforehand_and_the_store_names_it(tmp_path):
    made = encoded({"mixed": pd.DataFrame({"amount": [1, "one thousand"]})})["mixed"]
    assert type(made) is pd.DataFrame

    @dg.asset
    def mixed() -> pd.DataFrame:
        return made

    result = dg.materialize([mixed], resources={"io_manager": DealcastStore(base_url=str(tmp_path))}, raise_on_error=False)
    assert not result.success and "asset mixed" in result.failure_data_for_node("mixed").error.cause.message


def test_a_missing_value_names_both_files_and_the_store(tmp_path):
    @dg.asset
    def upstream() -> pd.DataFrame:
        return pd.DataFrame({"x": [1]})

    @dg.asset
    def downstream(upstream: pd.DataFrame) -> None:
        return None

    store = DealcastStore(base_url=str(tmp_path / "elsewhere"))
    result = dg.materialize([upstream, downstream], selection=[downstream], resources={"io_manager": store}, raise_on_error=False)
    assert not result.success
    message = result.failure_data_for_node("downstream").error.cause.message
    assert "upstream.parquet" in message and "upstream.joblib" in message and "same store" in message


def test_a_value_whose_type_changed_leaves_no_stale_file(tmp_path):
    flip = {"frame": True}

    @dg.asset
    def shifting():
        return pd.DataFrame({"x": [1]}) if flip["frame"] else {"x": 1}

    store = DealcastStore(base_url=str(tmp_path))
    assert dg.materialize([shifting], resources={"io_manager": store}).success
    flip["frame"] = False
    assert dg.materialize([shifting], resources={"io_manager": store}).success
    assert [p.name for p in tmp_path.iterdir()] == ["shifting.joblib"]


def test_where_the_store_is(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DEALCAST_STORE_URL", raising=False)
    assert DealcastStore().location() == tmp_path / "home" / "storage" / "dealcast_store"
    monkeypatch.setenv("DEALCAST_STORE_URL", "s3://bucket/dealcast")
    assert str(DealcastStore().location()) == "s3://bucket/dealcast"
    assert str(DealcastStore(base_url="gs://other/x").location()) == "gs://other/x"
    monkeypatch.delenv("DAGSTER_HOME")
    with dg.DagsterInstance.ephemeral() as instance:
        assert default_store_location(instance) == Path(instance.storage_directory()) / "dealcast_store"


def test_model_artifacts_follow_the_store(tmp_path, monkeypatch):
    monkeypatch.delenv("DEALCAST_MODEL_DIR", raising=False)
    monkeypatch.delenv("DEALCAST_STORE_URL", raising=False)
    settings = resolve_settings(exports_dir=tmp_path, as_of="2026-11-15")
    assert settings.model_dir == settings.project_dir / "model_store"
    monkeypatch.setenv("DEALCAST_STORE_URL", "s3://bucket/dealcast")
    assert str(settings.model_dir) == "s3://bucket/dealcast/model_store"
    monkeypatch.setenv("DEALCAST_MODEL_DIR", "gs://models/dealcast")
    assert str(settings.model_dir) == "gs://models/dealcast"
    config = tmp_path / "dealcast.toml"
    config.write_text('[model]\nartifact_dir = "s3://bucket/models"\n', encoding="utf-8")
    monkeypatch.delenv("DEALCAST_MODEL_DIR")
    assert str(resolve_settings(tmp_path, "2026-11-15", config).model_dir) == "s3://bucket/models"


class FixedScorer(Scorer):
    scoring_method = "calibrated_model"

    def _probabilities(self, features: pd.DataFrame) -> np.ndarray:
        return np.full(len(features), 0.5)


def test_a_saved_scorer_is_read_back_from_an_object_store():
    from models.registry import artifact_file, eligible_models, load_artifact, save_artifact

    url = "memory://dealcast-test-models/store"
    scorer = FixedScorer("abc123", ["stage_order"], {"stage_order": 1}, pd.DataFrame())
    path = save_artifact(scorer, url)
    assert str(path) == f"{url}/deal-scorer-abc123.joblib" == str(artifact_file(url, "abc123"))
    loaded = load_artifact(path)
    assert (loaded.version, loaded.scoring_method) == ("abc123", "calibrated_model")
    runs = pd.DataFrame(
        {
            "model_version": ["abc123", "gone"], "as_of": [dt.date(2026, 11, 1)] * 2,
            "trained_at": [pd.Timestamp("2026-11-01")] * 2, "scoring_method": ["calibrated_model"] * 2,
            "eligible": [True, True], "beats_baselines": [True, True], "has_history": [True, True],
        }
    )
    # Only the model whose artifact is in the store is eligible.
    assert eligible_models(runs, dt.date(2026, 11, 15), url, has_history=True)["model_version"].tolist() == ["abc123"]
    with pytest.raises(FileNotFoundError, match="gone"):
        load_artifact(artifact_file(url, "gone"))
    UPath(url).fs.rm(url, recursive=True)
