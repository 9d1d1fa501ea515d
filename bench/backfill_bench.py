"""Benchmark a backfill of several nights the way docs/partitions.md runs one: `dagster job backfill`
queued through a Dagster daemon, under the instance's concurrency cap (dagster_home/dagster.yaml: at most
two runs of a backfill at once).

    python bench/backfill_bench.py --deals 100000 --nights 7 [--executors celery in_process] [--workers 2]

For a generated Salesforce export of the given size, each executor gets its own fresh Dagster instance,
store and SQLite warehouse, and backfills the same nights (the last one `--as-of`):

- `celery`: `--workers` Celery worker processes (each `--concurrency 1`) on a private queue of the local
  Redis (127.0.0.1:6379, or DEALCAST_CELERY_BROKER) execute every step; the runs only submit them;
- `in_process`: every step runs in its run's own process;
- `multiprocess`: Dagster's default, a process per step.

It prints, per executor, the wall time from queuing the backfill to its last run finishing, each run's
wall time, and whether every run succeeded. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sample_crm.files import OPPORTUNITY_FILE  # noqa: E402
from sample_crm.generate import generate_sample  # noqa: E402

BIN = Path(sys.executable).parent
JOB = "nightly_job"
EXECUTORS = ("celery", "in_process", "multiprocess")
POLL_SECONDS = 2.0


def _wait_for(log: Path, text: str, process: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if log.is_file() and text in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            break
        time.sleep(0.5)
    raise RuntimeError(f"{log} never reported {text!r}:\n{log.read_text(errors='replace')[-3000:] if log.is_file() else ''}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


def _runs(dagster_home: Path) -> list[tuple[str, str, float | None, float | None]]:
    """(partition, status, start, end) of every run in the instance."""
    import dagster as dg

    previous = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    try:
        with dg.DagsterInstance.get() as instance:
            return [
                (r.dagster_run.tags.get("dagster/partition", "?"), r.dagster_run.status.value, r.start_time, r.end_time)
                for r in instance.get_run_records()
            ]
    finally:
        if previous is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = previous


FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


def run_backfill(executor: str, nights: list[dt.date], exports: Path, work: Path, workers: int) -> dict:
    home = work / executor / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    # Create the instance's storage here, before the daemon and the backfill command open it together.
    _runs(home)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DEALCAST_EXPORTS_DIR": str(exports),
        "DEALCAST_WAREHOUSE_URL": f"sqlite:///{work / executor / 'warehouse.sqlite'}",
        "DEALCAST_STORE_URL": str(work / executor / "store"),
    }
    env.pop("DEALCAST_MODEL_DIR", None)  # models go to the store, which every worker reaches
    env.pop("DEALCAST_AS_OF", None)
    if executor == "multiprocess":
        env.pop("DEALCAST_EXECUTOR", None)
    else:
        env["DEALCAST_EXECUTOR"] = executor
    started_processes: list[subprocess.Popen] = []
    logs = work / executor / "logs"
    logs.mkdir()
    try:
        if executor == "celery":
            queue = f"dealcast-bench-{uuid.uuid4().hex[:10]}"
            env["DEALCAST_CELERY_QUEUE"] = queue
            for number in range(workers):
                log = logs / f"worker{number}.log"
                worker = subprocess.Popen(
                    [str(BIN / "celery"), "-A", "assets.celery_app", "worker", "-Q", queue, "-n", f"{queue}-{number}@localhost",
                     "--concurrency=1", "--loglevel=INFO", f"--logfile={log}", "--without-gossip", "--without-mingle"],
                    cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                )
                started_processes.append(worker)
                _wait_for(log, "ready.", worker, seconds=120)
        daemon_log = logs / "daemon.log"
        with daemon_log.open("wb") as out:
            daemon = subprocess.Popen(
                [str(BIN / "dagster-daemon"), "run", "-m", "assets.definitions"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        started_processes.append(daemon)
        started = time.perf_counter()
        queued = subprocess.run(
            [str(BIN / "dagster"), "job", "backfill", "-m", "assets.definitions", "-j", JOB,
             "--partitions", ",".join(night.isoformat() for night in nights), "--noprompt"],
            cwd=ROOT, env=env, capture_output=True, text=True,
        )
        if queued.returncode != 0:
            raise RuntimeError(f"dagster job backfill failed (exit {queued.returncode}):\n{queued.stdout[-2000:]}{queued.stderr[-2000:]}")
        while True:
            runs = _runs(home)
            if len(runs) == len(nights) and all(status in FINISHED for _, status, _, _ in runs):
                break
            if daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited:\n{daemon_log.read_text(errors='replace')[-3000:]}")
            time.sleep(POLL_SECONDS)
        wall = time.perf_counter() - started
    finally:
        for process in reversed(started_processes):
            _stop(process)
    return {"executor": executor, "wall": wall, "runs": sorted(runs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deals", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--as-of", type=dt.date.fromisoformat, default=dt.date(2026, 11, 15), help="the last night")
    parser.add_argument("--nights", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2, help="Celery worker processes")
    parser.add_argument("--executors", nargs="+", choices=EXECUTORS, default=["celery", "in_process"])
    parser.add_argument("--exports", type=Path, default=None, help="reuse (or keep) a generated export here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dealcast-backfill-"))
    exports = args.exports or work / "exports"
    if not (exports / OPPORTUNITY_FILE).is_file():
        generate_sample(exports, n_deals=args.deals, seed=args.seed, end_date=args.as_of)
    nights = [args.as_of - dt.timedelta(days=args.nights - 1 - i) for i in range(args.nights)]
    print(f"backfill of {len(nights)} nights ({nights[0]}..{nights[-1]}), {args.deals:,}-deal export in {exports}")
    print(f"{os.cpu_count()} cores; at most 2 runs of a backfill at once (dagster_home/dagster.yaml)", flush=True)
    results = []
    for executor in args.executors:
        load_before = os.getloadavg()[0]
        result = run_backfill(executor, nights, exports, work, args.workers)
        results.append(result)
        ok = sum(1 for _, status, _, _ in result["runs"] if status == "SUCCESS")
        label = f"{executor} ({args.workers} workers)" if executor == "celery" else executor
        print(f"\n{label}: {result['wall']:,.1f} s wall, {ok}/{len(result['runs'])} runs succeeded "
              f"(load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end)")
        for partition, status, start, end in result["runs"]:
            seconds = f"{end - start:,.1f} s" if start and end else "-"
            print(f"  {partition}  {status:<8} {seconds:>10}")
        sys.stdout.flush()
    print(f"\nwork folder: {work}")
    return 0 if all(all(s == "SUCCESS" for _, s, _, _ in r["runs"]) for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
