# Dealcast: `make demo` runs the whole pipeline on a generated sample CRM for tonight (or the night
# DEALCAST_AS_OF names); `make test` runs the tests.
# Needs Python 3.10+ and make; everything else is installed into .venv.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEALS  ?= 10000
export DAGSTER_HOME := $(CURDIR)/dagster_home

.PHONY: install demo test bench ui worker clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	night=$$($(BIN)/python -m assets.partitions) && \
		$(BIN)/dagster asset materialize -m assets.definitions --select '*' --partition "$$night"
	$(BIN)/dealcast summary

test: install
	$(BIN)/pytest -n auto

bench: install
	$(BIN)/python bench/bench.py --deals $(DEALS)

ui: install
	$(BIN)/dagster dev -m assets.definitions

# A Celery worker for runs with DEALCAST_EXECUTOR=celery (docs/deployment.md).
WORKER_CONCURRENCY ?= 2
worker: install
	$(BIN)/celery -A assets.celery_app worker -Q $${DEALCAST_CELERY_QUEUE:-dagster} --concurrency $(WORKER_CONCURRENCY) --loglevel INFO

clean:
	rm -rf warehouse sample_exports model_store bench_output
	find dagster_home -mindepth 1 ! -name dagster.yaml -exec rm -rf {} +
