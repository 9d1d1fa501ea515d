"""Shared synthetic worlds for the model tests (built once per test session)."""

from __future__ import annotations

import datetime as dt

import pytest
from threadpoolctl import threadpool_limits

from etl.config import ModelConfig
from etl.pipeline_state import prepare_history
from models.scoring import train_scorer
from models.training_set import build_training_set
from tests.models.synthetic import CATALOG, make_crm

AS_OF = dt.date(2024, 12, 31)
# Fewer boosting rounds than production keep the tests fast; the rounds are chosen on the
# calibration slice anyway.
TEST_CONFIG = ModelConfig(min_won=100, min_lost=100, params={"max_iter": 120, "learning_rate": 0.08})


@pytest.fixture(scope="session", autouse=True)
def one_openmp_thread():
    """Gradient boosting's OpenMP threads crawl when the CI machine's cores are busy with other
    test processes; one thread per process keeps these tests fast and their results identical."""
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


@pytest.fixture(scope="session")
def world():
    deals, history = make_crm(1500, seed=1)
    return deals, prepare_history(deals, history, CATALOG)


@pytest.fixture(scope="session")
def training(world):
    deals, history = world
    return build_training_set(deals, history, CATALOG, AS_OF)


@pytest.fixture(scope="session")
def trained(training):
    return train_scorer(training, TEST_CONFIG, AS_OF)
