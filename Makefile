# Dealcast: `make demo` writes the sample CRM (`dealcast-sample`) and runs the whole pipeline on it for
# tonight (or the night DEALCAST_AS_OF names); `make test` runs the tests.
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

# Without DEALCAST_EXPORTS_DIR, `make demo` first writes the sample CRM for the night into sample_exports/
# (the pipeline never generates data itself; the same seed, size and night give the same files, so running
# it again rewrites them unchanged). With DEALCAST_EXPORTS_DIR set it runs on those files and writes no sample.
SAMPLE_EXPORTS := $(CURDIR)/sample_exports
SAMPLE_DEALS   ?= 10000

demo: install
	night=$$($(BIN)/python -m assets.partitions) && \
	if [ -z "$$DEALCAST_EXPORTS_DIR" ]; then \
		$(BIN)/dealcast-sample --out "$(SAMPLE_EXPORTS)" --deals $(SAMPLE_DEALS) --seed 7 --end-date "$$night" && \
		export DEALCAST_EXPORTS_DIR="$(SAMPLE_EXPORTS)"; \
	fi && \
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
