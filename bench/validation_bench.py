"""Time data validation on a generated CRM: the raw suites the readers run on the files as written,
the canonical deals/history suites and the stage-events suite, and how much of it is spent inside
Great Expectations itself.

    python bench/validation_bench.py --deals 1000000 [--exports DIR]

`--exports` reuses (or keeps) a generated export in DIR. Prints one markdown table.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import part_bench_exports  # noqa: E402  (bench/bench.py, next to this script)
from etl.config import load_project_config  # noqa: E402
from etl.ingest.crm_load import file_counts  # noqa: E402
from etl.ingest.exports import read_exports  # noqa: E402
from etl.pipeline_state import as_of_end, prepare_history, stage_events  # noqa: E402
from etl.validation import canonical, gx_session  # noqa: E402
from etl.validation.stage_events import validate_stage_events  # noqa: E402


class GxClock:
    """Accumulates the wall time spent in Great Expectations (`GxSession.validate`)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._validate = gx_session.GxSession.validate
        clock = self

        def timed(session, *args, **kwargs):
            start = time.perf_counter()
            try:
                return clock._validate(session, *args, **kwargs)
            finally:
                clock.seconds += time.perf_counter() - start

        gx_session.GxSession.validate = timed

    def lap(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


class RawClock:
    """Accumulates the wall time of the raw suites: the readers declaring them (`declare_raw_suite`,
    which encodes the values as written) and their one Great Expectations run (`run_raw_suites`)."""

    def __init__(self) -> None:
        from etl.ingest import csvfiles, exports

        self.seconds = 0.0
        clock = self

        def timed(run):
            def wrapper(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return run(*args, **kwargs)
                finally:
                    clock.seconds += time.perf_counter() - start

            return wrapper

        csvfiles.declare_raw_suite = timed(csvfiles.declare_raw_suite)
        exports.run_raw_suites = timed(exports.run_raw_suites)


def main() -> int:
    args, exports = part_bench_exports(__doc__, "validation")
    project = load_project_config()
    gx = GxClock()
    raw = RawClock()

    start = time.perf_counter()
    ingest = read_exports(exports, project, as_of=args.as_of)
    ingest_seconds = time.perf_counter() - start
    raw_gx = gx.lap()

    start = time.perf_counter()
    outcome = canonical.validate_crm(
        ingest.deals, ingest.history, ingest.quarantine, file_counts(ingest), ingest.stages,
        project.validation, args.as_of, raw_results=ingest.raw_checks, currencies=ingest.currencies,
    )
    canonical_seconds = time.perf_counter() - start
    canonical_gx = gx.lap()

    history = prepare_history(outcome.deals, outcome.history, ingest.stages)
    events = stage_events(history, args.as_of)
    start = time.perf_counter()
    results, _ = validate_stage_events(events, outcome.deals, as_of_end(args.as_of))
    events_seconds = time.perf_counter() - start
    events_gx = gx.lap()

    print(f"{len(ingest.deals):,} deals, {len(ingest.history):,} history rows, {len(events):,} stage events")
    print("| step | seconds | of which Great Expectations |")
    print("|---|---:|---:|")
    print(f"| read exports (parsing, without the raw suites) | {ingest_seconds - raw.seconds:.1f} | |")
    print(f"| raw suites (inside the readers) | {raw.seconds:.1f} | {raw_gx:.1f} |")
    print(f"| canonical deals + history suites | {canonical_seconds:.1f} | {canonical_gx:.1f} |")
    print(f"| stage_events suite | {events_seconds:.1f} | {events_gx:.1f} |")
    validation_seconds = raw.seconds + canonical_seconds + events_seconds
    gx_seconds = raw_gx + canonical_gx + events_gx
    print(f"| **all validation** | **{validation_seconds:.1f}** | **{gx_seconds:.1f}** |")
    print(f"{len(outcome.results)} checks ({int((~outcome.results['passed']).sum())} failed), "
          f"{len(outcome.quarantine):,} rows quarantined")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
