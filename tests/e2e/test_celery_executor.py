"""The same Definitions on Dagster's Celery executor: a real Celery worker process, started here
against the local Redis, executes every step of the night; the run's process only submits them.
The steps share nothing but the SQLite warehouse, the Parquet store and the Dagster instance on
this disk, as workers on several machines would share a database, a bucket and a run storage.
"""

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from assets.definitions import defs
from assets.execution import DEFAULT_BROKER
from sample_crm.generate import generate_sample
from etl.warehouse import Warehouse

from .conftest import AS_OF, ROOT, project_config
from .test_full_graph import stored_files

pytestmark = pytest.mark.slow

CELERY_DEALS = 800
BIN = Path(sys.executable).parent


def require_redis(url: str) -> None:
    """Fail (not skip) when Redis is unreachable and the services are required."""
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        message = f"Redis at {url} is unreachable ({exc}); the Celery executor test needs it as its broker"
        if os.environ.get("DEALCAST_REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)


def wait_for(log: Path, text: str, worker: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if log.is_file() and text in log.read_text(encoding="utf-8", errors="replace"):
            return
        if worker.poll() is not None:
            break
        time.sleep(0.5)
    raise AssertionError(f"the Celery worker did not report {text!r}:\n{log.read_text(errors='replace')[-4000:]}")


def stop(worker: subprocess.Popen) -> int:
    """Warm shutdown: the worker finishes what it holds and exits."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
    try:
        return worker.wait(timeout=60)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(timeout=30)
        raise


def test_every_step_runs_on_a_real_celery_worker(tmp_path, monkeypatch):
    require_redis(DEFAULT_BROKER)
    exports = tmp_path / "exports"
    generate_sample(exports, n_deals=CELERY_DEALS, seed=5, end_date=AS_OF)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    queue = f"dealcast-test-{uuid.uuid4().hex[:12]}"
    worker_name = f"{queue}@localhost"
    warehouse_url = f"sqlite:///{tmp_path / 'warehouse.sqlite'}"
    store = tmp_path / "store"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DEALCAST_EXECUTOR": "celery",
        "DEALCAST_CELERY_QUEUE": queue,
        "DEALCAST_EXPORTS_DIR": str(exports),
        "DEALCAST_CONFIG": str(project_config(tmp_path)),
        "DEALCAST_WAREHOUSE_URL": warehouse_url,
        "DEALCAST_STORE_URL": str(store),
    }
    env.pop("DEALCAST_MODEL_DIR", None)  # the models go to the store's model_store
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [str(BIN / "celery"), "-A", "assets.celery_app", "worker", "-Q", queue, "-n", worker_name,
         "--concurrency=2", "--loglevel=INFO", f"--logfile={log}", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    try:
        wait_for(log, "ready.", worker, seconds=90)
        run = subprocess.run(
            [str(BIN / "dagster"), "asset", "materialize", "-m", "assets.definitions", "--select", "*",
             "--partition", AS_OF.isoformat()],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
        )
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    finally:
        exit_code = stop(worker)
    assert exit_code == 0  # stopped cleanly by its warm shutdown

    # Every step that succeeded was executed by the worker, none by the submitting process.
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_run_records()
        assert len(runs) == 1 and runs[0].dagster_run.status == dg.DagsterRunStatus.SUCCESS
        run_id = runs[0].dagster_run.run_id
        events = list(instance.all_logs(run_id))
    succeeded = {e.step_key for e in events if e.dagster_event and e.dagster_event.event_type_value == "STEP_SUCCESS"}
    materialized = {e.dagster_event.asset_key for e in events if e.dagster_event and e.dagster_event.is_step_materialization}
    engine = [e for e in events if e.dagster_event and e.dagster_event.is_engine_event]
    on_worker = {
        e.step_key: e.dagster_event.engine_event_data.metadata["Celery worker"].value
        for e in engine
        if "Celery worker" in e.dagster_event.engine_event_data.metadata
    }
    submitter = {e.dagster_event.pid for e in engine if e.user_message.startswith("Submitting celery task")}
    step_pids = {e.dagster_event.pid for e in events if e.dagster_event and e.dagster_event.event_type_value == "STEP_START"}
    # Every asset of the graph was materialised (several come from one multi-asset step).
    assert materialized == set(defs.resolve_all_asset_keys())
    assert set(on_worker) == succeeded
    assert set(on_worker.values()) == {worker_name}
    assert len(submitter) == 1 and not submitter & step_pids

    # The night is in the warehouse, and it adds up with the export file read here.
    with open(exports / "Opportunity.csv", newline="", encoding="utf-8-sig") as handle:
        exported = sum(1 for _ in csv.DictReader(handle))
    warehouse = Warehouse(warehouse_url)
    try:
        assert warehouse.published_as_of() == AS_OF
        recon = warehouse.read("reconciliation", as_of=AS_OF)
        opportunities = recon[recon["source_file"].str.endswith("Opportunity.csv")].iloc[0]
        assert opportunities["rows_read"] == exported
        deals = warehouse.read("deals")
        assert len(deals) == opportunities["accepted"] and deals["deal_id"].is_unique
        scores = warehouse.read("deal_scores", as_of=AS_OF)
        assert set(scores["deal_id"]) == set(deals.loc[deals["status"] == "open", "deal_id"])
        runs_table = warehouse.read("model_runs")
        assert len(runs_table) == 1
        version = runs_table["model_version"].iloc[0]
        for table in ("stage_conversion", "velocity", "forecast_quarterly", "forecast_backtest", "data_quality_warnings"):
            assert not warehouse.read(table, as_of=AS_OF).empty, table
    finally:
        warehouse.dispose()

    # The values steps handed to each other, and the model, are in the store the workers share.
    files = {p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file()}
    assert files == stored_files(AS_OF) | {f"model_store/deal-scorer-{version}.joblib"}


def test_an_unreachable_broker_fails_the_suite_when_services_are_required(monkeypatch):
    monkeypatch.setenv("DEALCAST_REQUIRE_POSTGRES", "1")
    with pytest.raises(pytest.fail.Exception, match="redis://127.0.0.1:1/0 is unreachable"):
        require_redis("redis://127.0.0.1:1/0")
