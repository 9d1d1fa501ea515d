"""Fault tests with real processes, on SQLite and PostgreSQL: a Dagster run killed with SIGKILL in
the middle of a write and in the middle of the graph, a re-run after a kill (refused while the
dead run's lease is live, then after `dealcast release` or once the lease lapsed), and two Dagster
instances (two DAGSTER_HOME folders) running the same night on one warehouse.

Each run is a child process materialising the ingest assets, two analytics assets and the
published_night manifest with a real persistent Dagster instance. A child is made to pause inside
a chosen table's write transaction (DEALCAST_TEST_PAUSE_IN_WRITE, read only by the warehouse's
test hook) and writes a marker file when it gets there, so the kill lands at a known point."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from assets.analytics import TABLE_ASSETS, deals_at_as_of
from assets.ingest import crm_exports, crm_tables
from assets.publication import published_night_asset
from sample_crm.generate import generate_sample
from etl.warehouse import Warehouse

from .conftest import ROOT, materialize_graph, project_config

pytestmark = pytest.mark.slow

FIRST_NIGHT = dt.date(2026, 6, 29)
SECOND_NIGHT = dt.date(2026, 6, 30)
GRAPH_TABLES = ["deals", "deal_history", "stage_events", "pipeline_stages", "quarantine", "data_quality_results",
                "reconciliation", "stage_conversion", "stage_durations"]
VIEWS = ["latest_quarantine", "latest_data_quality_results", "latest_reconciliation", "latest_stage_conversion",
         "latest_velocity"]

# The child: one run of the small graph on a persistent Dagster instance (DAGSTER_HOME), printing
# its outcome as JSON on its last line.
CHILD = """
import json, sys
import dagster as dg
from assets.analytics import TABLE_ASSETS, deals_at_as_of
from assets.ingest import crm_exports, crm_tables
from assets.publication import published_night_asset
from assets.resources import DealcastSettings, WarehouseResource
args = json.loads(sys.argv[1])
graph = [crm_exports, crm_tables, deals_at_as_of, TABLE_ASSETS["stage_conversion"], TABLE_ASSETS["stage_durations"]]
graph.append(published_night_asset(graph))
result = dg.materialize(
    graph,
    partition_key=args["as_of"],
    resources={
        "settings": DealcastSettings(exports_dir=args["exports"], config_file=args["config"]),
        "warehouse": WarehouseResource(url=args["url"], schema_name=args["schema"], lease_seconds=args["lease"]),
    },
    instance=dg.DagsterInstance.get(),
    raise_on_error=False,
)
failures = [str(e.event_specific_data.error.message) for e in result.get_step_failure_events()]
print(json.dumps({"success": result.success, "run_id": result.run_id, "failures": failures}))
"""


def graph():
    assets = [crm_exports, crm_tables, deals_at_as_of, TABLE_ASSETS["stage_conversion"], TABLE_ASSETS["stage_durations"]]
    return [*assets, published_night_asset(assets)]


class Night:
    """One warehouse with a published first night, and the means to start runs of the second."""

    def __init__(self, tmp_path: Path, url: str, schema: str, exports: Path) -> None:
        self.tmp_path, self.url, self.schema, self.exports = tmp_path, url, schema, exports
        self.config = project_config(tmp_path)
        self.warehouse = Warehouse(url, schema=schema)

    def publish_first_night(self) -> None:
        result = materialize_graph(self.exports, FIRST_NIGHT, self.config, self.url, self.schema, assets=graph())
        assert result.success
        assert self.warehouse.published_as_of() == FIRST_NIGHT

    def start(self, home: str, lease: float = 600.0, pause: str | None = None, resume: Path | None = None) -> tuple[subprocess.Popen, Path]:
        """A child run of the second night on the Dagster instance in `tmp_path / home`."""
        dagster_home = self.tmp_path / home
        dagster_home.mkdir(exist_ok=True)
        marker = self.tmp_path / f"{home}-{time.monotonic_ns()}.paused"
        env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "DEALCAST_MODEL_DIR": str(self.tmp_path / "models")}
        env.pop("DEALCAST_TEST_PAUSE_IN_WRITE", None)
        if pause:
            env["DEALCAST_TEST_PAUSE_IN_WRITE"] = pause
            env["DEALCAST_TEST_PAUSE_IN_WRITE_MARKER"] = str(marker)
            if resume is not None:
                env["DEALCAST_TEST_PAUSE_IN_WRITE_RESUME"] = str(resume)
        args = {"exports": str(self.exports), "as_of": SECOND_NIGHT.isoformat(), "config": str(self.config),
                "url": self.url, "schema": self.schema, "lease": lease}
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(args)], cwd=ROOT, env=env, start_new_session=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        return child, marker

    @staticmethod
    def wait_for(marker: Path, child: subprocess.Popen, limit: float = 240.0) -> None:
        deadline = time.monotonic() + limit
        while not marker.exists():
            if child.poll() is not None:
                raise AssertionError(f"the run ended before pausing: {child.communicate()[1][-3000:]}")
            if time.monotonic() > deadline:
                os.killpg(child.pid, signal.SIGKILL)
                raise AssertionError("the run never reached its pause")
            time.sleep(0.2)

    @staticmethod
    def kill(child: subprocess.Popen) -> None:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
        assert child.returncode == -signal.SIGKILL

    @staticmethod
    def outcome(child: subprocess.Popen) -> dict:
        out, err = child.communicate(timeout=600)
        assert child.returncode == 0, err[-3000:]
        return json.loads(out.strip().splitlines()[-1])

    def views_show(self) -> set:
        """The as_ofs every latest_* view shows (empty views add nothing)."""
        shown = set()
        with self.warehouse.engine.connect() as conn:
            for view in VIEWS:
                name = f'"{self.schema}".{view}' if self.warehouse.dialect == "postgresql" else view
                shown |= {str(r[0])[:10] for r in conn.exec_driver_sql(f"SELECT DISTINCT as_of FROM {name}")}
        return shown

    def written_by(self, as_of: dt.date) -> dict[str, str]:
        """table -> the run that wrote it for `as_of` (night_writes)."""
        from etl.warehouse import night_writes

        import sqlalchemy as sa

        with self.warehouse.engine.connect() as conn:
            rows = conn.execute(sa.select(night_writes.c.table_name, night_writes.c.run_id).where(night_writes.c.as_of == as_of))
            return dict(rows.fetchall())

    def release_cli(self) -> str:
        env = {**os.environ, "DEALCAST_WAREHOUSE_URL": self.url}
        done = subprocess.run(
            [sys.executable, "-m", "etl.cli", "release", "--as-of", SECOND_NIGHT.isoformat(), "--schema", self.schema],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture(scope="module")
def small_exports(tmp_path_factory):
    out = tmp_path_factory.mktemp("fault_exports")
    generate_sample(out, n_deals=400, seed=13, end_date=SECOND_NIGHT)
    return out


@pytest.fixture
def night(warehouse_target, small_exports, tmp_path):
    url, schema = warehouse_target
    if schema is None:
        url = f"sqlite:///{tmp_path / 'faults.sqlite'}"
    state = Night(tmp_path, url, schema or "dealcast", small_exports)
    state.publish_first_night()
    yield state
    state.warehouse.dispose()


def test_a_kill_mid_write_and_mid_graph_leaves_the_published_night_then_a_rerun_completes(night):
    # Killed inside stage_durations' write, after the second night's ingest was written.
    child, marker = night.start("instance", pause="stage_durations:120")
    night.wait_for(marker, child)
    night.kill(child)

    wh = night.warehouse
    assert wh.row_count("stage_durations", SECOND_NIGHT) == 0  # the killed transaction left nothing
    assert wh.row_count("stage_durations", FIRST_NIGHT) > 0
    # Mid-graph: the second night's ingest was written (the current-state deals too).
    assert wh.row_count("data_quality_results", SECOND_NIGHT) > 0
    assert set(wh.read("deals")["as_of"].dt.date) == {SECOND_NIGHT}
    assert wh.published_as_of() == FIRST_NIGHT
    assert night.views_show() == {FIRST_NIGHT.isoformat()}  # never half the new night
    killed = wh.claim_of(SECOND_NIGHT)
    assert killed.released_at is None and killed.live(dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))

    # Re-run on the same instance, where the killed run is still STARTED: refused while its lease is live.
    refused = night.outcome(night.start("instance")[0])
    assert not refused["success"]
    assert any(f"being written by run {killed.run_id}" in f and "dealcast release --as-of 2026-06-30" in f
               for f in refused["failures"]), refused["failures"]
    assert wh.claimant(SECOND_NIGHT) == killed.run_id
    assert night.views_show() == {FIRST_NIGHT.isoformat()}

    # The documented way out, then the re-run publishes the whole night from one run.
    assert f"released as_of 2026-06-30 from run {killed.run_id}" in night.release_cli()
    rerun = night.outcome(night.start("instance")[0])
    assert rerun["success"], rerun["failures"]
    assert wh.published_as_of() == SECOND_NIGHT
    assert night.views_show() == {SECOND_NIGHT.isoformat()}
    assert set(night.written_by(SECOND_NIGHT).items()) == {(t, rerun["run_id"]) for t in GRAPH_TABLES}


def test_a_killed_runs_lease_lapses_and_the_next_run_takes_over(night):
    child, marker = night.start("instance", lease=3.0, pause="stage_conversion:120")
    night.wait_for(marker, child)
    night.kill(child)
    killed = night.warehouse.claimant(SECOND_NIGHT)
    time.sleep(3.5)
    rerun = night.outcome(night.start("instance", lease=3.0)[0])
    assert rerun["success"], rerun["failures"]
    assert rerun["run_id"] != killed
    assert night.views_show() == {SECOND_NIGHT.isoformat()}
    assert set(night.written_by(SECOND_NIGHT).values()) == {rerun["run_id"]}


def test_two_instances_on_one_warehouse_one_wins_and_nothing_interleaves(night):
    # The first run holds the night's claim (paused just before a write, no lock held) while the
    # second instance runs the same night from start to end.
    resume = night.tmp_path / "resume-first"
    first, marker = night.start("instance-one", pause="stage_conversion:300:before", resume=resume)
    night.wait_for(marker, first)
    second = night.outcome(night.start("instance-two")[0])
    resume.write_text("go")
    winner = night.outcome(first)
    assert winner["success"], winner["failures"]
    assert not second["success"]
    assert any(f"being written by run {winner['run_id']}" in f for f in second["failures"]), second["failures"]
    assert night.warehouse.published_as_of() == SECOND_NIGHT
    assert set(night.written_by(SECOND_NIGHT).items()) == {(t, winner["run_id"]) for t in GRAPH_TABLES}
    # The current-state deals and the night's analytics come from the same run, the same as_of.
    assert set(night.warehouse.read("deals")["as_of"].dt.date) == {SECOND_NIGHT}
