"""How many native threads a step may use, and the limit applied inside a step."""

import subprocess
import sys
import threading

import pytest

import dagster as dg

from assets.execution import (
    ENV_EXECUTOR,
    ENV_STEP_THREADS,
    runs_executing,
    step_thread_limit,
    step_threads,
    steps_on_machine,
)
from etl.config import ConfigError


def test_the_multiprocess_executor_gives_each_step_one_thread(monkeypatch):
    monkeypatch.delenv(ENV_STEP_THREADS, raising=False)
    monkeypatch.delenv(ENV_EXECUTOR, raising=False)
    assert step_threads() == 1
    monkeypatch.setenv(ENV_EXECUTOR, "multiprocess")
    assert step_threads() == 1


@pytest.mark.parametrize("executor", ["in_process", "celery", "k8s"])
def test_other_executors_leave_the_threads_alone(monkeypatch, tmp_path, executor):
    monkeypatch.delenv(ENV_STEP_THREADS, raising=False)
    monkeypatch.setenv(ENV_EXECUTOR, executor)
    monkeypatch.setattr("assets.execution._steps_folder", lambda: tmp_path)  # no other step on this "machine"
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
    # Celery shares them among the steps on the worker's machine the same way; k8s pods do not count
    monkeypatch.setenv(ENV_EXECUTOR, "celery")
    assert step_threads(1) is None
    assert [step_threads(n) for n in (2, 3, 10)] == [4, 2, 1]
    monkeypatch.setenv(ENV_EXECUTOR, "k8s")
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


_OTHER_STEP = """
import sys, time
from pathlib import Path
from assets.execution import steps_on_machine
with steps_on_machine(Path(sys.argv[1])) as count:
    print(count, flush=True)
    sys.stdin.readline()
"""


def test_steps_on_machine_counts_the_steps_executing_and_forgets_ended_ones(tmp_path):
    # A step of another process (a second Celery worker) holds its file while it runs.
    other = subprocess.Popen(
        [sys.executable, "-c", _OTHER_STEP, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout.readline().strip() == "1"  # alone when it started
        # A worker killed inside a step left its file behind, unlocked: not a step executing.
        (tmp_path / "999999-1.step").write_text("")
        with steps_on_machine(tmp_path) as count:
            assert count == 2  # the other process's step and this one
            assert not (tmp_path / "999999-1.step").exists()
            # a third, in another thread of this process (a Celery worker with --concurrency 2)
            seen = []
            thread = threading.Thread(target=lambda: seen.append(_enter_and_count(tmp_path)))
            thread.start()
            thread.join()
            assert seen == [3]
        other.stdin.write("\n")
        other.stdin.flush()
        assert other.wait(timeout=30) == 0
        with steps_on_machine(tmp_path) as count:
            assert count == 1  # both ended: alone again
        assert list(tmp_path.glob("*.step")) == []
    finally:
        other.kill()


def _enter_and_count(folder):
    with steps_on_machine(folder) as count:
        return count


def test_a_celery_step_shares_the_cores_with_the_steps_on_its_machine(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_STEP_THREADS, raising=False)
    monkeypatch.setenv(ENV_EXECUTOR, "celery")
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    monkeypatch.setattr("assets.execution._steps_folder", lambda: tmp_path)
    with step_thread_limit() as alone:
        assert alone is None
        with step_thread_limit() as second:  # another step starts while the first executes: 8 // 2
            assert second == 4
