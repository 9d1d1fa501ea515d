"""The exports sensor: a run for each new state of the export files, none for the same files twice,
none while a file is still being written, and a reason whenever it skips."""

import datetime as dt
import hashlib
import json
import os
from pathlib import Path

import dagster as dg
import pytest

import assets.sensors as sensors
from assets.resources import DealcastSettings
from assets.sensors import FINGERPRINT_TAG, exports_sensor

NOW = dt.datetime(2026, 11, 24, 10, 0, tzinfo=dt.timezone.utc)
OPPORTUNITIES = b"Id,Name,StageName,Amount\n006A,Acme,Prospecting,1000\n"
HISTORY = b"Id,OpportunityId,StageName\n008A,006A,Prospecting\n"


@pytest.fixture
def exports(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "exports"
    folder.mkdir()
    monkeypatch.setenv("DEALCAST_EXPORTS_DIR", str(folder))
    monkeypatch.delenv("DEALCAST_AS_OF", raising=False)
    monkeypatch.setattr(sensors, "_now", lambda: NOW)
    return folder


def _write(path: Path, content: bytes, age_seconds: float) -> None:
    path.write_bytes(content)
    stamp = NOW.timestamp() - age_seconds
    os.utime(path, (stamp, stamp))


def _tick(cursor: str | None = None, sensor: dg.SensorDefinition | None = None):
    sensor = sensor or exports_sensor(minimum_age_seconds=30)
    with dg.build_sensor_context(cursor=cursor, resources={"settings": DealcastSettings()}) as context:
        return sensor(context)


def _requests(outcome) -> list[dg.RunRequest]:
    assert isinstance(outcome, dg.SensorResult), f"expected a run request, got {outcome}"
    return list(outcome.run_requests or [])


def _skip_message(outcome) -> str:
    if isinstance(outcome, dg.SkipReason):
        return outcome.skip_message or ""
    assert isinstance(outcome, dg.SensorResult) and not outcome.run_requests, f"expected a skip, got {outcome}"
    return outcome.skip_reason.skip_message or ""


def test_first_tick_requests_one_run_for_the_day_with_the_files_fingerprint(exports):
    _write(exports / "Opportunity.csv", OPPORTUNITIES, age_seconds=3600)
    _write(exports / "OpportunityHistory.csv", HISTORY, age_seconds=3600)

    outcome = _tick()
    (request,) = _requests(outcome)
    assert request.partition_key == "2026-11-24"  # tonight: the night NOW (10:00 UTC) falls in
    assert not request.run_config  # the night is the partition, nothing in the run config
    assert request.tags == {FINGERPRINT_TAG: request.run_key}

    stored = json.loads(outcome.cursor)["files"]
    assert [f["file"] for f in stored] == ["Opportunity.csv", "OpportunityHistory.csv"]
    assert [f["bytes"] for f in stored] == [len(OPPORTUNITIES), len(HISTORY)]
    expected_hashes = [hashlib.sha256(OPPORTUNITIES).hexdigest(), hashlib.sha256(HISTORY).hexdigest()]
    assert [f["sha256"] for f in stored] == expected_hashes
    assert stored[0]["mtime_ns"] == (exports / "Opportunity.csv").stat().st_mtime_ns


def test_the_same_files_again_skip_without_reading_them(exports, monkeypatch):
    _write(exports / "Opportunity.csv", OPPORTUNITIES, age_seconds=3600)
    first = _tick()

    def no_hashing(folder):
        raise AssertionError("unchanged files must not be hashed again")

    monkeypatch.setattr(sensors, "describe_exports", no_hashing)
    message = _skip_message(_tick(first.cursor))
    assert "unchanged" in message and "1 export file(s)" in message


def test_a_retried_tick_asks_for_the_same_run_key(exports):
    _write(exports / "Opportunity.csv", OPPORTUNITIES, age_seconds=3600)
    first = _requests(_tick())[0]
    retried = _requests(_tick())[0]
    assert retried.run_key == first.run_key


def test_a_changed_file_starts_a_new_run_with_a_new_run_key(exports):
    _write(exports / "Opportunity.csv", OPPORTUNITIES, age_seconds=3600)
    first = _tick()
    _write(exports / "Opportunity.csv", OPPORTUNITIES + b"006B,Globex,Closed Won,2500\n", age_seconds=600)

    outcome = _tick(first.cursor)
    (request,) = _requests(outcome)
    assert request.run_key != first.run_requests[0].run_key
    stored = json.loads(outcome.cursor)["files"]
    assert stored[0]["sha256"] != hashlib.sha256(OPPORTUNITIES).hexdigest()


def test_a_new_file_starts_a_run(exports):
    _write(exports / "Opportunity.csv", OPPORTUNITIES, age_seconds=3600)
    first = _tick()
    _write(exports / "OpportunityHistory.csv", HISTORY, age_seconds=600)

    (request,) = _requests(_tick(first.cursor))
    assert request.run_key != first.run_requests[0].run_key


def test_a_removed_file_starts_a_run(exports):
    _write(exports / "Opportunity.csv", OPPORTUNITIES, age_seconds=3600)
    _write(exports / "OpportunityHistory.csv", HISTORY, age_seconds=3600)
    first = _tick()
    (exports / "OpportunityHistory.csv").unlink()

    assert len(_requests(_tick(first.cursor))) == 1


def test_a_file_modified_a_second_ago_is_still_being_written(exports):
    _write(exports / "Opportunity.csv", OPPORTUNITIES, age_seconds=3600)
    _write(exports / "OpportunityHistory.csv", HISTORY, age_seconds=1)

    outcome = _tick()
    message = _skip_message(outcome)
    assert "still being written" in message and "OpportunityHistory.csv" in message
    assert isinstance(outcome, dg.SkipReason)  # the cursor does not move, so the next tick looks again

    _write(exports / "OpportunityHistory.csv", HISTORY, age_seconds=31)
    assert len(_requests(_tick())) == 1


def test_minimum_age_is_configurable(exports):
    _write(exports / "Opportunity.csv", OPPORTUNITIES, age_seconds=1)
    assert len(_requests(_tick(sensor=exports_sensor(minimum_age_seconds=0)))) == 1
    assert "still being written" in _skip_message(_tick(sensor=exports_sensor(minimum_age_seconds=5)))


def test_a_touched_file_with_the_same_content_moves_the_cursor_without_a_run(exports):
    _write(exports / "Opportunity.csv", OPPORTUNITIES, age_seconds=3600)
    first = _tick()
    _write(exports / "Opportunity.csv", OPPORTUNITIES, age_seconds=600)

    outcome = _tick(first.cursor)
    assert "content is unchanged" in _skip_message(outcome)
    assert outcome.cursor != first.cursor
    assert "unchanged since the last check" in _skip_message(_tick(outcome.cursor))


def test_a_folder_back_to_earlier_content_gets_its_own_run(exports):
    _write(exports / "Opportunity.csv", OPPORTUNITIES, age_seconds=3600)
    first = _tick()
    _write(exports / "Opportunity.csv", OPPORTUNITIES + b"006B,Globex,Closed Won,2500\n", age_seconds=1800)
    second = _tick(first.cursor)
    _write(exports / "Opportunity.csv", OPPORTUNITIES, age_seconds=600)

    (request,) = _requests(_tick(second.cursor))
    assert request.run_key not in {first.run_requests[0].run_key, second.run_requests[0].run_key}


def test_missing_and_empty_folders_skip_with_a_reason(exports, monkeypatch):
    assert "is empty" in _skip_message(_tick())
    monkeypatch.setenv("DEALCAST_EXPORTS_DIR", str(exports / "not_there"))
    message = _skip_message(_tick())
    assert "does not exist" in message and "not_there" in message


def test_an_unreadable_cursor_counts_as_a_first_tick(exports):
    _write(exports / "Opportunity.csv", OPPORTUNITIES, age_seconds=3600)
    assert len(_requests(_tick("not json"))) == 1
    assert len(_requests(_tick(json.dumps({"version": 99, "files": []})))) == 1


def test_a_negative_minimum_age_is_refused():
    with pytest.raises(ValueError, match="minimum_age_seconds"):
        exports_sensor(minimum_age_seconds=-1)


def test_a_tick_just_before_midnight_asks_for_that_day_and_just_after_for_the_next(exports, monkeypatch):
    _write(exports / "Opportunity.csv", OPPORTUNITIES, age_seconds=3600)
    late = dt.datetime(2026, 11, 24, 23, 59, 30, tzinfo=dt.timezone.utc)
    monkeypatch.setattr(sensors, "_now", lambda: late)
    (request,) = _requests(_tick())
    assert request.partition_key == "2026-11-24"
    early = dt.datetime(2026, 11, 25, 0, 0, 30, tzinfo=dt.timezone.utc)
    monkeypatch.setattr(sensors, "_now", lambda: early)
    _write(exports / "Opportunity.csv", OPPORTUNITIES + b"006B,Beta,Prospecting,5\n", age_seconds=3600)
    (request,) = _requests(_tick())
    assert request.partition_key == "2026-11-25"


def test_the_requested_night_is_a_partition_of_the_job_the_sensor_starts(exports):
    from assets.definitions import defs

    _write(exports / "Opportunity.csv", OPPORTUNITIES, age_seconds=3600)
    sensor = defs.resolve_sensor_def("new_exports_sensor")
    (request,) = _requests(_tick(sensor=sensor))
    job = defs.resolve_job_def(sensor.job_name)
    with dg.partition_loading_context(effective_dt=NOW):
        assert job.partitions_def.has_partition_key(request.partition_key)
    # The day after NOW is not a night yet.
    with dg.partition_loading_context(effective_dt=NOW):
        assert not job.partitions_def.has_partition_key("2026-11-25")
