import datetime as dt
from pathlib import Path

import pytest

from sample_crm.generate import generate_sample

AS_OF = dt.date(2026, 11, 15)
SAMPLE_DEALS = 3000


@pytest.fixture(scope="session")
def sample_exports(tmp_path_factory):
    """A small generated CRM export (Salesforce format) ending on AS_OF, shared by the end-to-end tests."""
    out = tmp_path_factory.mktemp("sample_exports")
    generate_sample(out, n_deals=SAMPLE_DEALS, seed=11, end_date=AS_OF)
    return out


@pytest.fixture(autouse=True)
def _model_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DEALCAST_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.delenv("DEALCAST_AS_OF", raising=False)
    monkeypatch.delenv("DEALCAST_EXPORTS_DIR", raising=False)


ROOT = Path(__file__).resolve().parents[2]
E2E_BACKTEST_QUARTERS = 2


def project_config(tmp_path: Path, extra: str = "") -> Path:
    """The project's dealcast.toml, backtesting only the last two quarters (the nightly default is
    eight: the same code, a quarter of the time), with `extra` prepended."""
    text = (ROOT / "dealcast.toml").read_text(encoding="utf-8")
    assert "backtest_quarters = 8" in text
    text = text.replace("backtest_quarters = 8", f"backtest_quarters = {E2E_BACKTEST_QUARTERS}", 1)
    config = tmp_path / "dealcast.toml"
    config.write_text(extra + text, encoding="utf-8")
    return config


def materialize_graph(
    exports: Path,
    as_of: dt.date,
    config: Path,
    url: str,
    schema: str = "dealcast",
    *,
    assets=None,
    selection=None,
    instance=None,
    raise_on_error: bool = True,
    store: Path | None = None,
):
    """The assets (default: every asset) materialised for real, as the night `as_of` (its partition
    key), in an in-process Dagster run on `instance` (default: an ephemeral one), from the exports in
    `exports`, into the warehouse at `url` (PostgreSQL schema `schema`), with the project file `config`,
    the steps handing their values over through the Parquet store `store` (default: beside `config`)."""
    import dagster as dg

    from assets.definitions import ALL_ASSETS
    from assets.resources import DealcastSettings, WarehouseResource
    from assets.store import DealcastStore

    return dg.materialize(
        ALL_ASSETS if assets is None else assets,
        selection=selection,
        partition_key=as_of.isoformat(),
        resources={
            "settings": DealcastSettings(exports_dir=str(exports), config_file=str(config)),
            "warehouse": WarehouseResource(url=url, schema_name=schema),
            "io_manager": DealcastStore(base_url=str(store or Path(config).parent / "store")),
        },
        instance=instance or dg.DagsterInstance.ephemeral(),
        raise_on_error=raise_on_error,
    )
