"""Where a run's steps execute, chosen by DEALCAST_EXECUTOR when the Definitions load.

- unset (default): Dagster's multiprocess executor, every step a process on this machine;
- `in_process`: every step in the run's own process (debugging);
- `celery`: steps are Celery tasks executed by `dealcast-worker`s on any machine, through a broker
  (DEALCAST_CELERY_BROKER, default the local Redis redis://127.0.0.1:6379/0), results through
  DEALCAST_CELERY_BACKEND (default the broker), on the queue DEALCAST_CELERY_QUEUE (default `dagster`);
- `k8s`: each step a Kubernetes Job (dagster-k8s `k8s_job_executor`), configured by the YAML file
  DEALCAST_K8S_EXECUTOR_CONFIG (default deploy/k8s/executor.yaml in the project).

The heavy steps carry `HEAVY_STEP_TAGS`: the CPU and memory their Kubernetes pod requests. Every
other executor ignores those tags. The Celery and Kubernetes executors are optional extras of the
package (`dealcast[celery]`, `dealcast[k8s]`), imported only when chosen.

The compute-heavy steps (scoring model, close timing, deal scores, forecast, backtest) run inside
`step_thread_limit`: the multiprocess executor runs as many steps at once as the machine has cores,
so each step keeps to `step_threads()` native threads (OpenMP of the gradient boosting, BLAS, the
forecast's simulation threads). Two steps that each start a thread per core leave OpenMP threads
spinning for cores the other step holds: at 1M deals the scoring model took 272 s beside the
backtest instead of about 30 s alone. The in_process executor runs one step at a time, but a
backfill runs several nights at once: its steps share the cores among the runs executing. Celery
workers (several on a machine, or one with `--concurrency` above 1) run several steps at once on
one machine: a Celery step shares the cores among the heavy steps executing on its machine
(`steps_on_machine`).
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from etl.config import ConfigError, project_dir

ENV_EXECUTOR = "DEALCAST_EXECUTOR"
ENV_CELERY_BROKER = "DEALCAST_CELERY_BROKER"
ENV_CELERY_BACKEND = "DEALCAST_CELERY_BACKEND"
ENV_CELERY_QUEUE = "DEALCAST_CELERY_QUEUE"
ENV_K8S_EXECUTOR_CONFIG = "DEALCAST_K8S_EXECUTOR_CONFIG"
ENV_STEP_THREADS = "DEALCAST_STEP_THREADS"

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
DEFAULT_QUEUE = "dagster"
K8S_EXECUTOR_CONFIG = Path("deploy") / "k8s" / "executor.yaml"
EXECUTORS = ("multiprocess", "in_process", "celery", "k8s")

K8S_CONFIG_TAG = "dagster-k8s/config"


def _pod_resources(cpu: str, memory: str, memory_limit: str) -> dict[str, str]:
    resources = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory_limit}}
    return {K8S_CONFIG_TAG: json.dumps({"container_config": {"resources": resources}})}


# What the heavy steps' pods request, sized from the 1M-deal night (crm_tables and the scoring
# model peak at a few GB; the backtest retrains one model per past quarter). Steps not named here
# get the executor's default `step_k8s_config` from deploy/k8s/executor.yaml.
#
# `dagster/priority` orders the steps that are ready when the executor has fewer slots than ready
# steps (the multiprocess executor runs as many steps as the machine has cores): the longest step
# starts first. The backtest is the night's longest step (minutes at 1M deals on a first night) and
# the scoring model heads the chain scores -> forecast; started behind a dozen short analytics steps,
# they would finish last and hold up the whole night.
PRIORITY_TAG = "dagster/priority"
HEAVY_STEP_TAGS: dict[str, dict[str, str]] = {
    "ingest": _pod_resources(cpu="1", memory="6Gi", memory_limit="10Gi"),
    "scoring_model": {**_pod_resources(cpu="2", memory="6Gi", memory_limit="10Gi"), PRIORITY_TAG: "1"},
    "backtest": {**_pod_resources(cpu="2", memory="4Gi", memory_limit="8Gi"), PRIORITY_TAG: "2"},
}


def celery_config() -> dict[str, Any]:
    """The Celery executor's config from the environment (the workers read the same variables)."""
    broker = os.environ.get(ENV_CELERY_BROKER) or DEFAULT_BROKER
    return {
        "broker": broker,
        "backend": os.environ.get(ENV_CELERY_BACKEND) or broker,
        "config_source": {"task_default_queue": os.environ.get(ENV_CELERY_QUEUE) or DEFAULT_QUEUE},
    }


def k8s_executor_config(path: str | Path | None = None) -> dict[str, Any]:
    """The `k8s_job_executor` config shipped in deploy/k8s/executor.yaml (or the file named)."""
    file = Path(path or os.environ.get(ENV_K8S_EXECUTOR_CONFIG) or project_dir() / K8S_EXECUTOR_CONFIG)
    if not file.is_file():
        raise ConfigError(f"{ENV_K8S_EXECUTOR_CONFIG}: {file} does not exist (expected the k8s_job_executor config YAML)")
    parsed = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    config = parsed.get("execution", {}).get("config") if isinstance(parsed, dict) else None
    if not isinstance(config, dict):
        raise ConfigError(f"{file}: expected `execution: config: {{...}}` holding the k8s_job_executor config")
    return config


def executor_from_env() -> dg.ExecutorDefinition | None:
    """The executor DEALCAST_EXECUTOR names (None: Dagster's default multiprocess executor)."""
    name = (os.environ.get(ENV_EXECUTOR) or "multiprocess").strip().lower()
    if name == "multiprocess":
        return None
    if name == "in_process":
        return dg.in_process_executor
    if name == "celery":
        try:
            from dagster_celery import celery_executor
        except ImportError as exc:
            raise ConfigError(f"{ENV_EXECUTOR}=celery needs the celery extra: pip install 'dealcast[celery]' ({exc})") from exc
        return celery_executor.configured(celery_config(), name="dealcast_celery")
    if name == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError as exc:
            raise ConfigError(f"{ENV_EXECUTOR}=k8s needs the k8s extra: pip install 'dealcast[k8s]' ({exc})") from exc
        return k8s_job_executor.configured(k8s_executor_config(), name="dealcast_k8s")
    raise ConfigError(f"{ENV_EXECUTOR}={name!r}: expected one of {', '.join(EXECUTORS)}")


def step_threads(runs_at_once: int = 1) -> int | None:
    """Native threads one step may use: DEALCAST_STEP_THREADS when set (a whole number, at least 1);
    else, with the multiprocess executor (the default), the machine's cores shared by the steps it
    runs at once, one per core: 1; with in_process, the cores shared by the `runs_at_once` runs
    executing on the instance (a backfill runs two nights at once), and with Celery by the
    `runs_at_once` heavy steps executing on the worker's machine: cores // runs, at least 1, and no
    limit (None) for one alone; else None (a Kubernetes pod has the cores it was given)."""
    value = os.environ.get(ENV_STEP_THREADS, "").strip()
    if value:
        try:
            threads = int(value)
        except ValueError:
            threads = 0
        if threads < 1:
            raise ConfigError(f"{ENV_STEP_THREADS}={value!r}: expected a whole number of threads, at least 1")
        return threads
    name = _executor_name()
    if name == "multiprocess":
        return 1
    if name in ("in_process", "celery") and runs_at_once > 1:
        return max(1, (os.cpu_count() or 1) // runs_at_once)
    return None


def _executor_name() -> str:
    return (os.environ.get(ENV_EXECUTOR) or "multiprocess").strip().lower()


def runs_executing(instance: dg.DagsterInstance) -> int:
    """Runs the instance has started and not finished (this one among them)."""
    return instance.get_runs_count(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))


def _steps_folder() -> Path:
    return Path(tempfile.gettempdir()) / f"dealcast-steps-{os.getuid() if hasattr(os, 'getuid') else 'user'}"


@contextmanager
def steps_on_machine(folder: Path | None = None) -> Iterator[int]:
    """Registers this step among the heavy Dealcast steps executing on this machine until the block
    ends, and yields how many are (this one among them) as it starts. Each step holds an exclusive
    lock on a file of its own in `folder` (default a folder of the system's temporary directory);
    a file whose lock is free belongs to a step that ended without removing it (a killed worker)
    and is removed, so a crash never counts. Without POSIX file locks (Windows), 1."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield 1
        return
    folder = _steps_folder() if folder is None else folder
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{os.getpid()}-{uuid.uuid4().hex}"
    mine = folder / f"{name}.step"
    # Locked before it takes the name the others look for, so none ever sees it unlocked.
    with open(folder / f"{name}.new", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        os.replace(folder / f"{name}.new", mine)
        try:
            executing = 0
            for path in folder.glob("*.step"):
                try:
                    with open(path) as other:
                        try:
                            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        except BlockingIOError:
                            executing += 1
                            continue
                        path.unlink(missing_ok=True)
                except FileNotFoundError:
                    continue
            yield max(1, executing)
        finally:
            mine.unlink(missing_ok=True)


@contextmanager
def step_thread_limit(context: dg.AssetExecutionContext | None = None) -> Iterator[int | None]:
    """Native thread pools (OpenMP, BLAS) limited to `step_threads()` inside the block; yields that
    number, for the thread pools Dealcast starts itself (the forecast's `workers`). With `context`,
    an in_process run counts the runs executing on its instance when the step starts: two nights
    of a backfill, each with an OpenMP thread per core, spin for the cores the other holds (a
    4-night backfill at 40,000 deals on 2 cores: 181 s with a thread per core, 116 s with one).
    A Celery step counts the heavy steps executing on its machine (`steps_on_machine`): two
    workers on 2 cores took a 7-night backfill at 100,000 deals in 1,587 s with a thread per core
    for every step, 644 s with the cores shared (635 s in-process)."""
    with ExitStack() as stack:
        name = _executor_name()
        if name == "celery":
            sharing = stack.enter_context(steps_on_machine())
        elif context is not None and name == "in_process":
            sharing = runs_executing(context.instance)
        else:
            sharing = 1
        threads = step_threads(sharing)
        if threads is None:
            yield None
            return
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=threads):
            yield threads
