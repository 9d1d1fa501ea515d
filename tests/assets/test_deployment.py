"""The executors at the configuration level: the Definitions as `dagster` loads them with
DEALCAST_EXECUTOR unset, `celery` or `k8s`, and the Kubernetes files shipped in deploy/k8s."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from etl.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]

# Loads the Definitions in a fresh interpreter (as `dagster` and a Celery worker do) and prints
# the executor, its resolved config and each step's Kubernetes pod config from its tags.
PROBE = """
import json
from dagster_k8s.job import get_user_defined_k8s_config
import assets.definitions as definitions

job = definitions.defs.resolve_implicit_global_asset_job_def()
executor = job.executor_def
resolved = executor.apply_config_mapping({})
pods = {}
for node in job.graph.node_defs:
    k8s = get_user_defined_k8s_config(node.tags)
    pods[node.name] = k8s.container_config.get("resources") if k8s.container_config else None
print(json.dumps({
    "executor": executor.name,
    "config_ok": resolved.success,
    "config": (resolved.value or {}).get("config") if resolved.success else str(resolved.errors),
    "io_manager": type(definitions.defs.resources["io_manager"]).__name__,
    "pods": pods,
}))
"""


def load(executor: str | None, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEALCAST_")}
    if executor is not None:
        env["DEALCAST_EXECUTOR"] = executor
    env.update(extra)
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


HEAVY = {"crm_tables", "deal_scoring_model", "forecast_backtest"}


def test_single_machine_is_the_default():
    loaded = load(None)
    assert loaded["executor"] == "multi_or_in_process_executor"
    assert loaded["io_manager"] == "DealcastStore"


def test_kubernetes_runs_each_step_as_a_job_with_more_for_the_heavy_steps():
    loaded = load("k8s")
    assert loaded["executor"] == "dealcast_k8s" and loaded["config_ok"], loaded["config"]
    config = loaded["config"]
    assert config["job_namespace"] == "dealcast"
    assert config["env_config_maps"] == ["dealcast-env"] and config["env_secrets"] == ["dealcast-secrets"]
    default = config["step_k8s_config"]["container_config"]["resources"]
    assert default == {"requests": {"cpu": "250m", "memory": "1Gi"}, "limits": {"memory": "3Gi"}}
    pods = loaded["pods"]
    assert {name for name, resources in pods.items() if resources} == HEAVY
    assert pods["crm_tables"] == {"requests": {"cpu": "1", "memory": "6Gi"}, "limits": {"memory": "10Gi"}}
    assert pods["deal_scoring_model"] == {"requests": {"cpu": "2", "memory": "6Gi"}, "limits": {"memory": "10Gi"}}
    assert pods["forecast_backtest"] == {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}


def test_an_executor_config_of_ones_own_is_validated(tmp_path):
    broken = tmp_path / "executor.yaml"
    broken.write_text("execution:\n  config:\n    max_concurrent: many\n", encoding="utf-8")
    loaded = load("k8s", DEALCAST_K8S_EXECUTOR_CONFIG=str(broken))
    assert not loaded["config_ok"] and "max_concurrent" in loaded["config"]


def test_celery_submits_to_the_configured_broker_and_queue():
    loaded = load("celery", DEALCAST_CELERY_QUEUE="nightly")
    assert loaded["executor"] == "dealcast_celery" and loaded["config_ok"]
    assert loaded["config"]["broker"] == "redis://127.0.0.1:6379/0"
    assert loaded["config"]["backend"] == "redis://127.0.0.1:6379/0"
    assert loaded["config"]["config_source"]["task_default_queue"] == "nightly"


def test_an_unknown_executor_or_a_missing_k8s_file_is_named(tmp_path, monkeypatch):
    from assets.execution import executor_from_env

    monkeypatch.setenv("DEALCAST_EXECUTOR", "spark")
    with pytest.raises(ConfigError, match="DEALCAST_EXECUTOR='spark'.*multiprocess, in_process, celery, k8s"):
        executor_from_env()
    monkeypatch.setenv("DEALCAST_EXECUTOR", "k8s")
    monkeypatch.setenv("DEALCAST_K8S_EXECUTOR_CONFIG", str(tmp_path / "nowhere.yaml"))
    with pytest.raises(ConfigError, match="nowhere.yaml does not exist"):
        executor_from_env()


def test_the_shipped_kubernetes_files_share_nothing_but_the_database_and_the_bucket():
    from dagster._config import validate_config
    from dagster_k8s import K8sRunLauncher

    from etl.storage import is_local

    instance = yaml.safe_load((ROOT / "deploy" / "k8s" / "dagster.yaml").read_text(encoding="utf-8"))
    launcher = instance["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    assert validate_config(K8sRunLauncher.config_type(), launcher["config"]).success
    assert "postgres" in instance["storage"]  # run history every pod can reach, not a pod's SQLite file
    env = yaml.safe_load((ROOT / "deploy" / "k8s" / "dealcast-env.yaml").read_text(encoding="utf-8"))["data"]
    assert env["DEALCAST_EXECUTOR"] == "k8s"
    assert not is_local(env["DEALCAST_STORE_URL"])
    assert "DEALCAST_WAREHOUSE_URL" not in env  # a secret: it holds the password
    assert env["DEALCAST_K8S_EXECUTOR_CONFIG"].endswith("deploy/k8s/executor.yaml")


def test_the_longest_steps_start_first_when_slots_are_short():
    """After ingest several steps are ready at once and the multiprocess executor runs as many as
    there are cores: the backtest, then the scoring model (which heads scores -> forecast), must
    be picked before the short analytics steps, whatever their order in the graph."""
    from dagster._core.execution.plan.active import _default_sort_key
    from dagster._core.execution.plan.plan import ExecutionPlan
    from dagster._core.execution.api import create_execution_plan

    import assets.definitions as definitions

    job = definitions.defs.resolve_implicit_global_asset_job_def()
    plan: ExecutionPlan = create_execution_plan(job, tags={"dagster/partition": "2026-11-15"})
    ready_after_ingest = [
        step for step in plan.get_all_steps_in_topo_order()
        if step.get_execution_dependency_keys() == {"crm_tables"}
    ]
    order = [step.key for step in sorted(ready_after_ingest, key=_default_sort_key)]
    assert len(order) > 3
    assert order[:2] == ["forecast_backtest", "deal_scoring_model"], order
