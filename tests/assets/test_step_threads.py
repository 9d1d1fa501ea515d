"""How many native threads a step may use, and the limit applied inside a step."""

import pytest

from assets.execution import ENV_EXECUTOR, ENV_STEP_THREADS, step_thread_limit, step_threads
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
