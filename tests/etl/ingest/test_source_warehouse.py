"""The CRM read straight from a warehouse schema (`[sources.warehouse]`, etl.ingest.source_warehouse):
settings, the password kept out of messages, and the hand-made Fivetran tables of
tests/fixtures/fivetran_salesforce written to PostgreSQL with Fivetran's types and read back with
the same numbers as from the CSV files (see test_fivetran_tables.py for how they are worked out)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from etl.config import ConfigError, Settings, load_project_config
from etl.ingest.crm_load import load_crm
from etl.ingest.source_warehouse import ENV_SOURCE_URL, SourceError, fingerprint, warehouse_source
from tests.fivetran_kit import typed, write_tables

FIXTURE = Path(__file__).parents[2] / "fixtures" / "fivetran_salesforce"
AS_OF = dt.date(2026, 6, 30)
T = pd.Timestamp


def _config(tmp_path: Path, section: str) -> Path:
    path = tmp_path / "dealcast.toml"
    path.write_text('[reporting]\ncurrency = "USD"\n' + section, encoding="utf-8")
    return path


def test_no_section_and_no_environment_means_files(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_SOURCE_URL, raising=False)
    assert warehouse_source(load_project_config(_config(tmp_path, ""))) is None


def test_settings_defaults_and_the_environment_url(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_SOURCE_URL, raising=False)
    section = '[sources.warehouse]\nurl = "postgresql+psycopg://reader:pw1@db/a"\nschema = "sf"\ntables = { user = "users" }\n'
    source = warehouse_source(load_project_config(_config(tmp_path, section)))
    assert source.url.endswith("pw1@db/a") and source.schema == "sf" and source.crm == "salesforce"
    assert source.tables == {
        "opportunity": "opportunity", "opportunity_history": "opportunity_history", "user": "users", "account": "account",
    }  # fmt: skip
    assert source.safe_url == "postgresql+psycopg://reader:***@db/a" and "pw1" not in repr(source)
    monkeypatch.setenv(ENV_SOURCE_URL, "postgresql+psycopg://other:pw2@db2/b")
    assert warehouse_source(load_project_config(_config(tmp_path, section))).url.endswith("pw2@db2/b")


@pytest.mark.parametrize(
    "section, message",
    [
        ('[sources.warehouse]\nschema = "sf"\n', "no url; set url"),
        ('[sources.warehouse]\nurl = "postgresql://h/d"\ncrm = "pipedrive"\n', "crm = 'pipedrive' is not read from a warehouse"),
        ('[sources.warehouse]\nurl = "postgresql://h/d"\ntables = { deals = "d" }\n', "unknown role(s) ['deals']"),
        ('[sources.warehouse]\nurl = "postgresql://h/d"\nshema = "sf"\n', "unknown setting(s) ['shema']"),
        ('[sources.warehouse]\nurl = "not a url :pw9@"\n', "url is not a SQLAlchemy database URL"),
    ],
)
def test_settings_it_cannot_use_are_named(tmp_path, monkeypatch, section, message):
    monkeypatch.delenv(ENV_SOURCE_URL, raising=False)
    with pytest.raises(ConfigError, match="sources.warehouse") as error:
        warehouse_source(load_project_config(_config(tmp_path, section)))
    assert message in str(error.value) and "pw9" not in str(error.value)


@pytest.mark.postgres
def test_an_unreachable_source_is_named_without_its_password(tmp_path, monkeypatch, pg_url):
    monkeypatch.setenv(ENV_SOURCE_URL, "postgresql+psycopg://postgres:Secr3tPw@127.0.0.1:5432/no_such_db_dealcast")
    source = warehouse_source(load_project_config(_config(tmp_path, '[sources.warehouse]\nschema = "sf"\n')))
    with pytest.raises(SourceError) as error:
        fingerprint(source)
    text = str(error.value)
    assert "Secr3tPw" not in text and "postgres:***@127.0.0.1:5432/no_such_db_dealcast" in text
    assert "connecting failed" in text


def _fixture_tables() -> dict[str, pd.DataFrame]:
    return {
        name: typed(pd.read_csv(FIXTURE / f"{name}.csv", dtype=str, keep_default_na=False))
        for name in ("opportunity", "opportunity_history", "user")
    }


@pytest.mark.postgres
def test_fivetran_tables_in_postgres_read_like_their_csv_files(tmp_path, monkeypatch, pg_url, pg_schema):
    monkeypatch.delenv(ENV_SOURCE_URL, raising=False)
    write_tables(pg_url, pg_schema, _fixture_tables())
    config = _config(tmp_path, f'[sources.warehouse]\nurl = "{pg_url}"\nschema = "{pg_schema}"\n')
    project = load_project_config(config)
    settings = Settings(project=project, exports_dir=tmp_path, exports_are_sample=False, as_of=AS_OF, project_dir=tmp_path)
    crm = load_crm(settings)
    assert crm.publishable
    deals = crm.deals.set_index("deal_id").sort_index()
    assert deals.index.tolist() == ["006A", "006B", "006C"]
    assert deals["amount"].tolist() == [1000.0, 5000.0, 700.0]
    assert deals.loc["006A", "owner"] == "Ana Ruiz" and deals.loc["006C", "lost_reason"] == "Price"
    assert deals.loc["006B", "crm_close_date"] == T("2026-03-20") and deals.loc["006B", "closed_at"] == T("2026-04-02 16:00:00")
    assert set(deals["source_file"]) == {f"{pg_schema}.opportunity"}
    assert len(crm.history) == 7
    # 09:00 at +01:00 in the CSV: a timestamptz in PostgreSQL, read back as 08:00 UTC.
    assert T("2026-02-01 08:00:00") in set(crm.history.loc[crm.history["deal_id"] == "006A", "changed_at"])
    q = crm.validation.quarantine
    assert sorted(zip(q["source_file"], q["source_row"], q["reason_code"])) == [
        (f"{pg_schema}.opportunity", 2, "inactive_version"),
        (f"{pg_schema}.opportunity", 6, "deleted_in_crm"),
        (f"{pg_schema}.opportunity", 7, "deleted_in_crm"),
        (f"{pg_schema}.opportunity_history", 9, "deleted_in_crm"),
        (f"{pg_schema}.opportunity_history", 10, "deleted_in_crm"),
        (f"{pg_schema}.opportunity_history", 11, "deleted_in_crm"),
    ]
    recon = crm.validation.reconciliation.set_index("source_file")
    counts = ["rows_read", "accepted", "quarantined", "excluded"]
    assert recon.loc[f"{pg_schema}.opportunity", counts].tolist() == [6, 3, 3, 3]
    assert recon.loc[f"{pg_schema}.opportunity_history", counts].tolist() == [10, 7, 3, 3]
    assert recon.loc[f"{pg_schema}.user", ["rows_read", "accepted", "quarantined"]].tolist() == [1, 1, 0]
    names = crm.validation.results["check_name"].astype(str)
    assert names.str.startswith(f"raw[{pg_schema}.opportunity]").any() and not names.str.contains(r"\[opportunity\.csv\]").any()


@pytest.mark.postgres
def test_the_fingerprint_follows_the_latest_sync(tmp_path, monkeypatch, pg_url, pg_schema):
    import sqlalchemy as sa

    monkeypatch.delenv(ENV_SOURCE_URL, raising=False)
    write_tables(pg_url, pg_schema, _fixture_tables())
    config = _config(tmp_path, f'[sources.warehouse]\nurl = "{pg_url}"\nschema = "{pg_schema}"\n')
    source = warehouse_source(load_project_config(config))
    before = {t["role"]: (t["rows"], t["synced"]) for t in fingerprint(source)}
    assert before == {
        "opportunity": (6, "2026-06-30 02:00:00+00:00"),
        "opportunity_history": (10, "2026-06-30 02:00:00+00:00"),
        "user": (1, "2026-06-30 02:00:00+00:00"),
    }
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"UPDATE \"{pg_schema}\".opportunity SET _fivetran_synced = '2026-07-01 02:00:00+00', amount = 1100 WHERE id = '006B'"
        )
    engine.dispose()
    after = {t["role"]: (t["rows"], t["synced"]) for t in fingerprint(source)}
    assert after["opportunity"] == (6, "2026-07-01 02:00:00+00:00") and after["user"] == before["user"]


@pytest.mark.postgres
def test_hubspot_tables_in_postgres_read_like_their_csv_files(tmp_path, monkeypatch, pg_url, pg_schema):
    # tests/fixtures/fivetran_hubspot (see test_hubspot_tables.py for the hand-worked numbers).
    monkeypatch.delenv(ENV_SOURCE_URL, raising=False)
    folder = Path(__file__).parents[2] / "fixtures" / "fivetran_hubspot"
    tables = {
        name: typed(pd.read_csv(folder / f"{name}.csv", dtype=str, keep_default_na=False))
        for name in ("deal", "deal_stage", "deal_pipeline", "deal_pipeline_stage")
    }
    # HubSpot ids are numbers in the warehouse.
    tables["deal"]["deal_id"] = tables["deal"]["deal_id"].astype("int64")
    tables["deal_stage"]["deal_id"] = tables["deal_stage"]["deal_id"].astype("int64")
    write_tables(pg_url, pg_schema, tables)
    config = _config(tmp_path, f'[sources.warehouse]\nurl = "{pg_url}"\nschema = "{pg_schema}"\ncrm = "hubspot"\n')
    project = load_project_config(config)
    settings = Settings(project=project, exports_dir=tmp_path, exports_are_sample=False, as_of=AS_OF, project_dir=tmp_path)
    crm = load_crm(settings)
    assert crm.publishable
    deals = crm.deals.set_index("deal_id").sort_index()
    assert deals.index.tolist() == ["101", "102", "103"]
    assert deals["status"].tolist() == ["open", "won", "lost"]
    assert deals.loc["102", "closed_at"] == T("2026-04-02 16:00:00")
    recon = crm.validation.reconciliation.set_index("source_file")
    assert recon.loc[f"{pg_schema}.deal", ["rows_read", "accepted", "quarantined"]].tolist() == [5, 3, 2]
    assert recon.loc[f"{pg_schema}.deal_stage", ["rows_read", "accepted", "quarantined", "excluded"]].tolist() == [9, 7, 2, 1]
    stages = crm.pipeline_stages.sort_values("stage_order")["stage"].tolist()
    assert stages == ["Appointment scheduled", "Qualified to buy", "Contract sent", "Closed won", "Closed lost"]
