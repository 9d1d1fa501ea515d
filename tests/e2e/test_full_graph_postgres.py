"""The whole asset graph into PostgreSQL, checked as tests/e2e/test_full_graph.py checks SQLite. A file of
its own: the two longest tests of the suite run on the two xdist workers side by side (tests/conftest.py)."""

import pytest

from .conftest import project_config
from .test_full_graph import run_twice_and_check

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_whole_graph_into_postgres(sample_exports, pg_url, pg_schema, tmp_path):
    run_twice_and_check(sample_exports, pg_url, project_config(tmp_path), pg_schema)
