"""Time every pipeline-analytics table on a generated CRM (issue target: all of them for 1,000,000
deals in at most 60 s on 2 cores), each as the nightly assets compute it.

    python bench/analytics_bench.py --deals 1000000 [--exports DIR]

`--exports` reuses (or keeps) a generated export in DIR. Reading the export and rebuilding the
history are timed separately: they are ingest's work, shared with every other asset. The deals as
they stood at as_of are built once (`deals_at_as_of`, timed as its own step) and shared by the
tables, as in the asset graph. Velocity runs
without model scores (its weighted_pipeline_model column needs the scoring step).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import _peak_rss_mb, part_bench_exports  # noqa: E402  (bench/bench.py, next to this script)
from etl import quality_warnings  # noqa: E402
from etl.analytics import coaching, funnel, health, kernel, velocity  # noqa: E402
from etl.config import load_project_config  # noqa: E402
from etl.ingest.exports import read_exports  # noqa: E402
from etl.pipeline_state import prepare_history, stage_events  # noqa: E402
from etl.quotas import load_quotas  # noqa: E402


def main() -> int:
    args, exports = part_bench_exports(__doc__, "analytics")
    project = load_project_config()
    fiscal = project.fiscal_year_start_month
    as_of = args.as_of

    start = time.perf_counter()
    ingest = read_exports(exports, project, as_of=as_of)
    deals, stages = ingest.deals, ingest.stages
    history = prepare_history(deals, ingest.history, stages)
    events = stage_events(history, as_of)
    prepare_seconds = time.perf_counter() - start
    quotas = load_quotas(exports / "quotas.csv" if (exports / "quotas.csv").is_file() else None)

    results: dict[str, object] = {}
    steps = [
        ("deals_at_as_of", lambda: kernel.deals_at_as_of(deals, history, as_of)),
        ("stage_conversion", lambda: funnel.stage_conversion(deals, history, stages, as_of, fiscal, at=results["deals_at_as_of"])),
        ("stage_durations", lambda: velocity.stage_durations(deals, events, stages, as_of)),
        ("velocity", lambda: velocity.velocity(deals, history, stages, as_of, fiscal, at=results["deals_at_as_of"])),
        ("pipeline_snapshots", lambda: health.pipeline_snapshots(deals, history, stages, as_of, results["stage_durations"], at=results["deals_at_as_of"])),
        ("pipeline_waterfall", lambda: health.pipeline_waterfall(deals, history, as_of, fiscal, at=results["deals_at_as_of"])),
        ("stalled_deals", lambda: health.stalled_deals(deals, history, results["stage_durations"], as_of, at=results["deals_at_as_of"])),
        ("close_date_slips", lambda: health.close_date_slips(deals, history, as_of, fiscal, at=results["deals_at_as_of"])),
        ("rep_funnel", lambda: coaching.rep_funnel(results["stage_conversion"], deals, as_of)),
        ("deal_value_spread", lambda: coaching.deal_value_spread(deals, history, as_of, fiscal, at=results["deals_at_as_of"])),
        ("product_mix", lambda: coaching.product_mix(deals, history, as_of, fiscal, at=results["deals_at_as_of"])),
        ("revenue_growth", lambda: coaching.revenue_growth(deals, history, as_of, fiscal, at=results["deals_at_as_of"])),
        ("ask_to_decision", lambda: coaching.ask_to_decision(deals, history, stages, as_of, fiscal, at=results["deals_at_as_of"])),
        ("pipeline_coverage", lambda: coaching.pipeline_coverage(deals, history, results["stage_conversion"], quotas, as_of, fiscal, at=results["deals_at_as_of"])),
        ("data_quality_warnings", lambda: quality_warnings.data_quality_warnings(
            deals, history, results["stalled_deals"], as_of, project.warnings)),
    ]
    print(f"{len(deals):,} deals, {len(history):,} history rows, {len(events):,} stage events "
          f"(read + history rebuild {prepare_seconds:.1f} s, not counted below)")
    print("| table | seconds | rows |")
    print("|---|---:|---:|")
    total = 0.0
    for name, build in steps:
        start = time.perf_counter()
        results[name] = frame = build()
        seconds = time.perf_counter() - start
        total += seconds
        print(f"| {name} | {seconds:.1f} | {len(frame):,} |", flush=True)
    print(f"| **all analytics tables** | **{total:.1f}** | |")
    print(f"peak RSS {_peak_rss_mb():,.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
