"""Fixtures shared by every test package: the warehouse on SQLite and on PostgreSQL.

PostgreSQL tests run when DEALCAST_TEST_POSTGRES_URL names a server (for example
postgresql+psycopg://postgres@127.0.0.1:5432/test); otherwise they are skipped with that reason.
With DEALCAST_REQUIRE_POSTGRES=1 (CI) a missing URL fails them instead of skipping.
"""

from __future__ import annotations

import os
import uuid

# Under pytest-xdist each worker gets its share of the cores for OpenMP (scikit-learn's gradient
# boosting) and OpenBLAS threads, set before those libraries load; the processes a test starts (Dagster
# runs, the Celery worker) inherit it. Left at their default, every worker runs one thread per core:
# with two workers on two cores the threads outnumber the cores and the spinning OpenMP threads wait on
# each other (the whole-graph tests took three times as long). An explicit setting is kept.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    _threads = str(max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_variable, _threads)

import pytest
import sqlalchemy as sa

from etl.warehouse import Warehouse

PG_URL_ENV = "DEALCAST_TEST_POSTGRES_URL"
REQUIRE_PG_ENV = "DEALCAST_REQUIRE_POSTGRES"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The order the xdist workers take the test files in. With `--dist loadfile --no-loadscope-reorder`
    (pyproject.toml) each file's tests run on one worker (its module fixtures built once) and the two
    workers take files from one queue in collection order. Files holding a `slow` test are queued first,
    so the long end-to-end runs start at the beginning and the short tests fill in around them, instead
    of a long run starting last while the other worker has nothing left to do."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The PostgreSQL server URL for tests (each test gets its own schema from `pg_schema`)."""
    url = os.environ.get(PG_URL_ENV)
    if not url:
        reason = f"PostgreSQL tests need {PG_URL_ENV}, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test"
        if os.environ.get(REQUIRE_PG_ENV):
            pytest.fail(f"{REQUIRE_PG_ENV} is set but {PG_URL_ENV} is not: {reason}")
        pytest.skip(reason)
    return url


@pytest.fixture
def pg_schema(pg_url: str):
    """A fresh, unique schema name on the test server, dropped (with everything in it) afterwards."""
    name = f"dealcast_test_{uuid.uuid4().hex[:12]}"
    yield name
    engine = sa.create_engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def warehouse_target(request, tmp_path) -> tuple[str, str | None]:
    """(url, schema) of an empty warehouse: a SQLite file in a not-yet-existing folder, or a fresh
    PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'warehouse' / 'dealcast.sqlite'}", None
    return request.getfixturevalue("pg_url"), request.getfixturevalue("pg_schema")


@pytest.fixture
def warehouse(warehouse_target):
    """A `Warehouse` with every table and view created, on SQLite and on PostgreSQL."""
    url, schema = warehouse_target
    wh = Warehouse(url, schema=schema or "dealcast")
    wh.create_all()
    yield wh
    wh.dispose()
