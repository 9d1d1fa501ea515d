import csv
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
# The end-to-end tests check what the graph does with a model and a forecast (every open deal scored
# once, ranges ordered, tables that add up, runs that repeat exactly), not how accurate they are
# (tests/models does, with the project's settings): the same code runs with fewer backtested quarters,
# boosting rounds and Monte Carlo draws than a night does.
E2E_SETTINGS = {
    "backtest_quarters = 8": f"backtest_quarters = {E2E_BACKTEST_QUARTERS}",
    "max_iter = 300": "max_iter = 100",
    "draws = 10000": "draws = 2000",
}


def project_config(tmp_path: Path, extra: str = "") -> Path:
    """The project's dealcast.toml with `E2E_SETTINGS` (two backtested quarters instead of eight, 100
    boosting rounds instead of 300, 2,000 forecast draws instead of 10,000), with `extra` prepended."""
    text = (ROOT / "dealcast.toml").read_text(encoding="utf-8")
    for nightly, e2e in E2E_SETTINGS.items():
        assert text.count(nightly) == 1, f"dealcast.toml no longer holds {nightly!r} once"
        text = text.replace(nightly, e2e)
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


def won_in_quarter_from_export(exports: Path, as_of: dt.date) -> float:
    """Won amount with a close date in as_of's calendar quarter, up to as_of, read straight from the
    export's Opportunity.csv with the csv module (not through the pipeline)."""
    start = dt.date(as_of.year, 3 * ((as_of.month - 1) // 3) + 1, 1)
    total = 0.0
    with open(exports / "Opportunity.csv", newline="", encoding="utf-8-sig") as handle:
        for row in csv.DictReader(handle):
            close = dt.date.fromisoformat(row["CloseDate"][:10])
            if row["IsWon"] == "1" and row["IsDeleted"] == "0" and start <= close <= as_of:
                total += float(row["Amount"])
    return total
