"""Benchmark every step of the pipeline on a generated CRM of a given size.

    python bench/bench.py --deals 100000 [--warehouse-url postgresql+psycopg://...] [--keep DIR]

Prints one table: wall time and peak resident memory of each step (generate, ingest, validate,
history, metrics, coaching, training set, train, score, forecast, write) and the sizes involved. Peak memory is
the process's high-water mark during that step (Linux: reset before each step through
/proc/self/clear_refs), so it includes what earlier steps still hold.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from etl.analytics import coaching, funnel, health, velocity  # noqa: E402
from etl.config import load_project_config  # noqa: E402
from etl.ingest.exports import read_exports  # noqa: E402
from etl.pipeline_state import prepare_history, stage_events  # noqa: E402
from etl.quotas import load_quotas  # noqa: E402
from sample_crm.generate import generate_sample  # noqa: E402
from etl.ingest.crm_load import file_counts  # noqa: E402
from etl.validation.canonical import validate_crm  # noqa: E402
from etl.warehouse import Warehouse  # noqa: E402
from models.deal_scores import build_deal_scores  # noqa: E402
from models.forecast import forecast_quarterly  # noqa: E402
from models.scoring import train_scorer  # noqa: E402
from models.timing import CloseTiming  # noqa: E402
from models.training_set import build_training_set  # noqa: E402


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def part_bench_exports(doc: str, name: str) -> tuple[argparse.Namespace, Path]:
    """Arguments of the part benchmarks (--deals, --seed, --as-of, --exports) and the export folder
    to read: `--exports` when it holds an export, else a sample generated there (or in a new
    temporary folder)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deals", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--as-of", type=dt.date.fromisoformat, default=dt.date(2026, 11, 15))
    parser.add_argument("--exports", type=Path, default=None, help="reuse (or keep) a generated export here")
    args = parser.parse_args()
    exports = args.exports or Path(tempfile.mkdtemp(prefix=f"dealcast-{name}-")) / "exports"
    if not (exports / "Opportunity.csv").is_file():
        generate_sample(exports, n_deals=args.deals, seed=args.seed, end_date=args.as_of)
    return args, exports


class Steps:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    @contextmanager
    def step(self, name: str, detail: str = ""):
        _reset_peak()
        start = time.perf_counter()
        record = {"step": name, "detail": detail}
        yield record
        record["seconds"] = time.perf_counter() - start
        record["peak_rss_mb"] = _peak_rss_mb()
        self.rows.append(record)
        print(f"  {name:<13} {record['seconds']:8.1f} s  {record['peak_rss_mb']:8.0f} MB  {record['detail']}", flush=True)

    def table(self) -> str:
        lines = ["| step | seconds | peak RSS (MB) | detail |", "|---|---:|---:|---|"]
        for r in self.rows:
            lines.append(f"| {r['step']} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | {r['detail']} |")
        total = sum(r["seconds"] for r in self.rows)
        lines.append(f"| **total** | **{total:.1f}** | **{max(r['peak_rss_mb'] for r in self.rows):.0f}** | |")
        return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deals", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--as-of", type=dt.date.fromisoformat, default=dt.date(2026, 11, 15))
    parser.add_argument("--warehouse-url", default=None, help="default: a temporary SQLite file")
    parser.add_argument("--keep", type=Path, default=None, help="keep the generated exports in this folder")
    args = parser.parse_args()

    project = load_project_config()
    steps = Steps()
    workdir = Path(tempfile.mkdtemp(prefix="dealcast-bench-"))
    exports = args.keep or workdir / "exports"
    url = args.warehouse_url or f"sqlite:///{workdir / 'bench.sqlite'}"
    print(f"Dealcast benchmark: {args.deals:,} deals, as_of {args.as_of}, {os.cpu_count()} cores")

    with steps.step("generate") as r:
        sample = generate_sample(exports, n_deals=args.deals, seed=args.seed, end_date=args.as_of)
        r["detail"] = f"{sample.n_deals:,} deals, {sample.n_history_rows:,} history rows"
    with steps.step("ingest") as r:
        ingest = read_exports(exports, project, as_of=args.as_of)
        r["detail"] = f"{len(ingest.deals):,} deals, {len(ingest.history):,} history rows read"
    with steps.step("validate") as r:
        outcome = validate_crm(
            ingest.deals, ingest.history, ingest.quarantine,
            file_counts(ingest),
            ingest.stages, project.validation, args.as_of, raw_results=ingest.raw_checks, currencies=ingest.currencies,
        )
        r["detail"] = f"{len(outcome.results)} checks, {len(outcome.quarantine):,} rows quarantined"
    stages = ingest.stages
    deals = outcome.deals
    with steps.step("history") as r:
        history = prepare_history(deals, outcome.history, stages)
        events = stage_events(history, args.as_of)
        r["detail"] = f"{len(events):,} stage events"
    with steps.step("metrics") as r:
        conversion = funnel.stage_conversion(deals, history, stages, args.as_of, project.fiscal_year_start_month)
        durations = velocity.stage_durations(deals, events, stages, args.as_of)
        r["detail"] = f"{len(conversion):,} conversion + {len(durations):,} duration rows (velocity after scoring)"
    with steps.step("coaching") as r:
        # As the Dagster assets run them: each table rebuilds the as_of state itself.
        quota_file = exports / "quotas.csv"
        quotas = load_quotas(quota_file if quota_file.is_file() else None)
        fiscal = project.fiscal_year_start_month
        coaching_frames, coaching_seconds = {}, []
        for name, build in [
            ("rep_funnel", lambda: coaching.rep_funnel(conversion, deals, args.as_of)),
            ("deal_value_spread", lambda: coaching.deal_value_spread(deals, history, args.as_of, fiscal)),
            ("product_mix", lambda: coaching.product_mix(deals, history, args.as_of, fiscal)),
            ("revenue_growth", lambda: coaching.revenue_growth(deals, history, args.as_of, fiscal)),
            ("ask_to_decision", lambda: coaching.ask_to_decision(deals, history, stages, args.as_of, fiscal)),
            ("pipeline_coverage", lambda: coaching.pipeline_coverage(deals, history, conversion, quotas, args.as_of, fiscal)),
        ]:
            started = time.perf_counter()
            coaching_frames[name] = build()
            coaching_seconds.append(f"{name} {time.perf_counter() - started:.1f}s")
        r["detail"] = f"{sum(len(f) for f in coaching_frames.values()):,} rows: " + ", ".join(coaching_seconds)
    with steps.step("snapshots") as r:
        snapshots = health.pipeline_snapshots(deals, history, stages, args.as_of, durations)
        r["detail"] = f"{len(snapshots):,} rows ({snapshots['snapshot_date'].nunique()} month ends + as_of)"
    with steps.step("waterfall") as r:
        waterfall = health.pipeline_waterfall(deals, history, args.as_of, project.fiscal_year_start_month)
        r["detail"] = f"{len(waterfall):,} rows, balanced to the cent"
    with steps.step("stalled") as r:
        stalled = health.stalled_deals(deals, history, durations, args.as_of)
        slips = health.close_date_slips(deals, history, args.as_of, project.fiscal_year_start_month)
        r["detail"] = f"{len(stalled):,} stalled or aged deals, {len(slips):,} close-date slips"
    with steps.step("training set") as r:
        training = build_training_set(deals, history, stages, args.as_of, frequency=project.model.snapshot_frequency)
        r["detail"] = f"{len(training.frame):,} as-of snapshot rows"
    with steps.step("train") as r:
        result = train_scorer(training, project.model, args.as_of)
        m = result.metrics
        r["detail"] = f"{result.scorer.scoring_method}; test log loss {m['log_loss']:.3f}, AUC {m['auc']:.3f}"
    with steps.step("score") as r:
        timing = CloseTiming.fit(deals, history, stages, args.as_of, frequency=project.model.snapshot_frequency)
        scores = build_deal_scores(deals, history, stages, args.as_of, result.scorer, timing, project.fiscal_year_start_month)
        r["detail"] = f"{len(scores):,} open deals scored (with close timing and reasons)"
    with steps.step("velocity") as r:
        speed = velocity.velocity(
            deals, history, stages, args.as_of, project.fiscal_year_start_month,
            model_scores=scores[["deal_id", "win_probability"]],
        )
        r["detail"] = f"{len(speed):,} rows"
    with steps.step("forecast") as r:
        forecast = forecast_quarterly(
            deals, history, stages, args.as_of, scores=scores[["deal_id", "win_probability"]], timing=timing,
            quotas=pd.DataFrame(columns=["quarter", "segment_type", "segment", "amount"]),
            fiscal_year_start_month=project.fiscal_year_start_month, draws=project.forecast.draws,
            seed=project.forecast.seed, model_version=result.scorer.version,
        )
        r["detail"] = f"{len(forecast):,} rows, {project.forecast.draws:,} draws"
    with steps.step("write") as r:
        from etl.ingest.crm_load import table_frame

        warehouse = Warehouse(url)
        warehouse.create_all()
        run_id = "bench"
        warehouse.claim(args.as_of, run_id)
        frames = {
            "deals": table_frame("deals", deals),
            "deal_history": table_frame("deal_history", history),
            "stage_events": table_frame("stage_events", events),
            "stage_conversion": conversion,
            "stage_durations": durations,
            "velocity": speed,
            "pipeline_snapshots": snapshots,
            "pipeline_waterfall": waterfall,
            "stalled_deals": stalled,
            "close_date_slips": slips,
            **coaching_frames,
            "deal_scores": scores,
            "forecast_quarterly": forecast,
        }
        written = warehouse.write_many(frames, as_of=args.as_of, run_id=run_id)
        warehouse.dispose()
        r["detail"] = f"{sum(written.values()):,} rows into {warehouse.dialect}"

    print()
    print(steps.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
