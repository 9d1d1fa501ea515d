"""Time and measure the deal-scoring steps on a generated CRM (issue target: training set, training
and scoring for 100,000 deals in at most 2 minutes; for 1,000,000 deals in at most 10 minutes with
at most 8 GB peak memory on 2 cores).

    python bench/scoring_bench.py --deals 1000000 [--exports DIR]

`--exports` reuses (or keeps) a generated export in DIR. Reading the export and rebuilding the
history are ingest's work, shared with every other asset: they are timed and reported apart. The
steps run in one process, as the `deal_scores` step of a nightly run would hold them; each step's
peak is the process's high-water mark during that step (reset before it), so it includes the
deals and history every step holds.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import Steps, part_bench_exports  # noqa: E402  (bench/bench.py, next to this script)
from etl.config import load_project_config  # noqa: E402
from etl.ingest.exports import read_exports  # noqa: E402
from etl.pipeline_state import prepare_history  # noqa: E402
from models.deal_scores import build_deal_scores  # noqa: E402
from models.scoring import train_scorer  # noqa: E402
from models.timing import CloseTiming  # noqa: E402
from models.training_set import build_training_set  # noqa: E402

SCORING_STEPS = ("training set", "train", "close timing", "score")


def main() -> int:
    args, exports = part_bench_exports(__doc__, "scoring")
    project = load_project_config()
    as_of = args.as_of
    steps = Steps()
    print(f"Deal-scoring benchmark: {args.deals:,} deals, as_of {as_of}")

    with steps.step("read + history") as r:
        ingest = read_exports(exports, project, as_of=as_of)
        deals, stages = ingest.deals, ingest.stages
        history = prepare_history(deals, ingest.history, stages)
        del ingest
        r["detail"] = f"{len(deals):,} deals, {len(history):,} history rows (ingest's work, not counted)"
    gc.collect()

    with steps.step("training set") as r:
        training = build_training_set(
            deals, history, stages, as_of, frequency=project.model.snapshot_frequency,
            fiscal_year_start_month=project.fiscal_year_start_month,
        )
        r["detail"] = f"{len(training.frame):,} as-of snapshot rows, {training.won_deals:,} won / {training.lost_deals:,} lost deals"
    with steps.step("train") as r:
        result = train_scorer(training, project.model, as_of)
        m = result.metrics
        losses = ", ".join(f"{c['method']} {c['log_loss']:.3f}" for c in m["candidates"] if c["log_loss"] is not None)
        calibration = m["params"].get("calibration_method")
        calibrated = f", calibration {calibration} on {m['calibration_rows']:,} rows" if calibration else ""
        r["detail"] = f"published {result.scorer.scoring_method} ({m['split_rule']} split{calibrated}); held-out log loss: {losses}"
    del training
    gc.collect()
    with steps.step("close timing") as r:
        timing = CloseTiming.fit(deals, history, stages, as_of, frequency=project.model.snapshot_frequency)
        r["detail"] = f"{timing.won_deals:,} won deals, {timing.snapshot_rows:,} snapshot rows"
    with steps.step("score") as r:
        scores = build_deal_scores(
            deals, history, stages, as_of, result.scorer, timing, project.fiscal_year_start_month
        )
        r["detail"] = f"{len(scores):,} open deals scored, with this-quarter probability and reasons"

    scoring = [row for row in steps.rows if row["step"] in SCORING_STEPS]
    print()
    print(steps.table())
    seconds = sum(row["seconds"] for row in scoring)
    peak = max(row["peak_rss_mb"] for row in scoring)
    print(f"\nTraining set + train + close timing + score: {seconds:.1f} s, peak RSS {peak:,.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
