"""Benchmark the night the way a data engineer runs it: the whole default asset graph through Dagster.

    python bench/night_bench.py --deals 1000000 [--nights 2] [--exports DIR] [--warehouse-url URL]

For a generated Salesforce export of the given size it measures, in one script:

- a bare pyarrow `read_csv` of Opportunity.csv and OpportunityHistory.csv, the floor any night pays;
- each night: `dagster asset materialize -m assets.definitions --select '*' --partition <as_of>` in its
  own process, with a fresh Dagster instance (DAGSTER_HOME in a temporary folder), and
  the warehouse in DEALCAST_WAREHOUSE_URL (a SQLite file by default). Wall time, the peak resident memory
  of every process of the run (the CLI, the run worker and each step's process, polled from /proc every
  0.1 s; a process's own high-water mark VmHWM is read, so a peak between two polls is not missed while the
  process lives), and each step's duration from Dagster's event log.

`--nights 2` runs a following night one day later on the same warehouse and Dagster instance, so work a
night can reuse from the one before (past backtest quarters, for instance) shows in the second figure.
Prints a table of numbers; nothing is asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.csv as pacsv

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sample_crm.files import HISTORY_FILE, OPPORTUNITY_FILE  # noqa: E402
from sample_crm.generate import generate_sample  # noqa: E402

POLL_SECONDS = 0.1


@dataclass
class NightResult:
    as_of: dt.date
    wall_seconds: float
    exit_code: int
    # The machine's 1-minute load average at the start and end of the night (other work shows here).
    load: tuple[float, float]
    peak_mb_by_process: dict[str, float] = field(default_factory=dict)
    step_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def peak_mb(self) -> float:
        return max(self.peak_mb_by_process.values(), default=float("nan"))


def _children(pid: int) -> list[int]:
    """Every descendant of `pid`, from /proc/<pid>/task/*/children."""
    found: list[int] = []
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    kids = [int(k) for k in handle.read().split()]
            except OSError:
                continue
            found.extend(kids)
            stack.extend(kids)
    return found


def _high_water_mb(pid: int) -> tuple[str, float] | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            command = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    hwm = fields.get("VmHWM")
    if hwm is None:
        return None
    return command, int(hwm.split()[0]) / 1024


def _label(command: str) -> str | None:
    """What a process of the run is, or None for helpers that are not Python (e.g. `file`)."""
    if "asset materialize" in command:
        return "dagster CLI"
    if "multiprocessing.spawn" in command or "execute_step" in command:
        return "step process"
    if "execute_run" in command:
        return "run worker"
    if "python" in command or "dagster" in command:
        return command[:60]
    return None


def run_night(as_of: dt.date, env: dict[str, str]) -> NightResult:
    """One materialisation of every asset, with the memory of each process it starts."""
    command = [
        str(Path(sys.executable).with_name("dagster")), "asset", "materialize", "-m", "assets.definitions",
        "--select", "*", "--partition", as_of.isoformat(),
    ]
    night_env = {key: value for key, value in env.items() if key != "DEALCAST_AS_OF"}
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=night_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peaks: dict[int, tuple[str, float]] = {}
    log_lines: list[bytes] = []
    os.set_blocking(process.stdout.fileno(), False)
    while process.poll() is None:
        for pid in [process.pid, *_children(process.pid)]:
            seen = _high_water_mb(pid)
            if seen is not None and seen[1] >= peaks.get(pid, ("", 0.0))[1]:
                peaks[pid] = seen
        chunk = process.stdout.read()
        if chunk:
            log_lines.append(chunk)
        time.sleep(POLL_SECONDS)
    wall = time.perf_counter() - started
    rest = process.stdout.read()
    if rest:
        log_lines.append(rest)
    if process.returncode != 0:
        tail = b"".join(log_lines).decode(errors="replace")[-4000:]
        print(f"night {as_of} failed (exit {process.returncode}); the end of its log:\n{tail}", file=sys.stderr)
    by_label: dict[str, float] = {}
    for command_text, mb in peaks.values():
        label = _label(command_text)
        if label is None:
            continue
        by_label[label] = max(by_label.get(label, 0.0), mb)
    load = (load_before, os.getloadavg()[0])
    return NightResult(as_of, wall, process.returncode, load, by_label, _step_seconds(env["DAGSTER_HOME"]))


def _step_seconds(dagster_home: str) -> dict[str, float]:
    """Duration of each step of the newest run in the instance at `dagster_home`."""
    previous = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = dagster_home
    try:
        import dagster as dg

        with dg.DagsterInstance.get() as instance:
            records = instance.get_run_records(limit=1)
            if not records:
                return {}
            stats = instance.get_run_step_stats(records[0].dagster_run.run_id)
            return {s.step_key: (s.end_time or 0) - (s.start_time or 0) for s in stats if s.start_time}
    finally:
        if previous is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = previous


def bare_read_seconds(exports: Path) -> tuple[float, int, int]:
    started = time.perf_counter()
    deals = pacsv.read_csv(exports / OPPORTUNITY_FILE)
    history = pacsv.read_csv(exports / HISTORY_FILE)
    return time.perf_counter() - started, deals.num_rows, history.num_rows


def _bare_read_in_child(exports: Path) -> tuple[float, int, int]:
    """`bare_read_seconds` in a process of its own: the two tables (GBs at 1M deals) are not kept
    in this process's memory while the nights run."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(bare_read_seconds, (exports,))


def _print_night(label: str, night: NightResult, read_s: float) -> None:
    status = "ok" if night.exit_code == 0 else f"FAILED (exit {night.exit_code})"
    print()
    print(f"{label} (as_of {night.as_of}): {status}")
    print(f"  wall {night.wall_seconds:,.1f} s = {night.wall_seconds / read_s:,.0f} x the bare read")
    print(f"  peak memory of any process {night.peak_mb:,.0f} MB")
    print(f"  load average (1 min) at start {night.load[0]:.1f}, at end {night.load[1]:.1f} ({os.cpu_count()} cores)")
    for process, mb in sorted(night.peak_mb_by_process.items(), key=lambda kv: -kv[1])[:5]:
        print(f"    {process:<30} {mb:>9,.0f} MB")
    print(f"  {'step':<40} {'s':>9}")
    for step, seconds in sorted(night.step_seconds.items(), key=lambda kv: -kv[1]):
        print(f"  {step:<40} {seconds:>9,.1f}")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deals", type=int, default=100_000, help="deals in the generated export")
    parser.add_argument("--seed", type=int, default=7, help="seed of the generated export")
    parser.add_argument("--as-of", type=dt.date.fromisoformat, default=dt.date(2026, 11, 15), help="first night's date")
    parser.add_argument("--nights", type=int, default=2, choices=(1, 2), help="1: first night only; 2: and the next")
    parser.add_argument("--exports", type=Path, default=None, help="reuse (or keep) a generated export here")
    parser.add_argument("--warehouse-url", default=None, help="default: a SQLite file in the work folder")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dealcast-night-"))
    exports = args.exports or work / "exports"
    if not (exports / OPPORTUNITY_FILE).is_file():
        started = time.perf_counter()
        generate_sample(exports, n_deals=args.deals, seed=args.seed, end_date=args.as_of)
        print(f"generated {args.deals:,} deals in {exports} ({time.perf_counter() - started:.1f} s)")
    size_mb = sum(f.stat().st_size for f in exports.glob("*.csv")) / 1e6
    read_s, deal_rows, history_rows = _bare_read_in_child(exports)

    dagster_home = work / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "DEALCAST_EXPORTS_DIR": str(exports),
        "DEALCAST_WAREHOUSE_URL": args.warehouse_url or f"sqlite:///{work / 'warehouse.sqlite'}",
        "DEALCAST_MODEL_DIR": str(work / "model_store"),
    }
    print(f"export: {deal_rows:,} deals, {history_rows:,} history rows, {size_mb:,.0f} MB of CSV in {exports}")
    print(f"bare pyarrow read of the two files: {read_s:.1f} s", flush=True)
    nights = []
    # Each night is printed as soon as it has run: a following night that is stopped still leaves the first's figures.
    for label, day in zip(("first night", "following night"), range(args.nights)):
        night = run_night(args.as_of + dt.timedelta(days=day), env)
        nights.append(night)
        _print_night(label, night, read_s)
    print(f"\nwork folder (warehouse, Dagster instance): {work}")
    return 0 if all(n.exit_code == 0 for n in nights) else 1


if __name__ == "__main__":
    raise SystemExit(main())
