"""How many native threads a step may use, and the limit applied inside a step."""

import pytest

import dagster as dg

from assets.execution import ENV_EXECUTOR, ENV_STEP_THREADS, runs_executing, step_thread_limit, step_threads
from etl.config import ConfigError


def test_the_multiprocess_executor_gives_each_step_one_thread(monkeypatch):
    monkeypatch.delenv(ENV_STEP_THREADS, raising=False)
    monkeypatch.delenv(ENV_EXECUTOR, raising=False)
    assert step_threads() == 1
    monkeypatch.setenv(ENV_EXECUTOR, "multiprocess")
    assert step_threads() == 1


@pytest.mark.parametrize("executor", ["in_process", "celery", "k8s"])
def test_other_executors_leave_the_threads_alone(monkeypatch, executor):
    monkeypatch.delenv(ENV_STEP_THREADS, raising=False)
    monkeypatch.setenv(ENV_EXECUTOR, executor)
    assert step_threads() is None
    with step_thread_limit() as threads:
        assert threads is None


def test_in_process_runs_at_once_share_the_cores(monkeypatch):
    monkeypatch.delenv(ENV_STEP_THREADS, raising=False)
    monkeypatch.setenv(ENV_EXECUTOR, "in_process")
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    # alone: no limit; 2 runs on 8 cores: 4 threads each; 3 runs: 8 // 3 = 2; 10 runs: at least 1
    assert step_threads(1) is None
    assert [step_threads(n) for n in (2, 3, 10)] == [4, 2, 1]
    # the other executors do not count runs
    monkeypatch.setenv(ENV_EXECUTOR, "celery")
    assert step_threads(3) is None
    monkeypatch.setenv(ENV_EXECUTOR, "multiprocess")
    assert step_threads(3) == 1


def test_runs_executing_counts_the_started_runs_of_the_instance():
    with dg.DagsterInstance.ephemeral() as instance:
        for status in (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.SUCCESS,
                       dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.NOT_STARTED):
            instance.add_run(dg.DagsterRun(job_name="nightly_job", status=status))
        assert runs_executing(instance) == 2


def test_the_setting_wins_and_must_be_a_positive_whole_number(monkeypatch):
    monkeypatch.setenv(ENV_EXECUTOR, "in_process")
    monkeypatch.setenv(ENV_STEP_THREADS, "3")
    assert step_threads() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(ENV_STEP_THREADS, bad)
        with pytest.raises(ConfigError, match=ENV_STEP_THREADS):
            step_threads()


def test_openmp_keeps_to_the_limit_inside_the_block(monkeypatch):
    from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: F401  (loads scikit-learn's OpenMP runtime)
    from threadpoolctl import threadpool_info

    monkeypatch.delenv(ENV_STEP_THREADS, raising=False)
    monkeypatch.delenv(ENV_EXECUTOR, raising=False)
    openmp = [p for p in threadpool_info() if p["user_api"] == "openmp"]
    if not openmp:
        pytest.skip("no OpenMP runtime loaded")
    with step_thread_limit() as threads:
        assert threads == 1
        assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "openmp")
