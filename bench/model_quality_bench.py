"""How good the published deal scorer is against the ground truth of the sample CRM, on seeds the
scorer was never tuned on: prints tables of numbers (run it under `flock`, it fits many models).

    python bench/model_quality_bench.py [--sim-seeds 101 102 103] [--sim-deals 10000]
                                        [--messy-seeds 201 202 203 204 205] [--messy-deals 300 600 900 1200 1500]
                                        [--open-deals 1 2 3] [--stability [--stability-deals 5000]]

1. Simulator (clean profile), unseen seeds: on the held-out rows of each run, the published
   scorer's log loss and ECE beside those of the true probabilities of the labels' event, a win
   within the label horizon (`SampleWorld.true_win_within_probability`); the truth's
   ECE is the noise floor (the calibration error that sampling alone gives on these rows).
   Targets: log loss <= 1.03 x the truth's; ECE <= the truth's ECE + 0.005.
   Beside them, what learning a calibration from these labels costs by itself: the truth
   recalibrated on the training rows' labels (a logistic regression of the label on the truth's
   log-odds, its level alone or level and slope, with the recency weights the published
   calibration uses, and the level alone unweighted), a learner that knows every row's true
   ranking and learns only its level from the labels the scorer had; its ECE above the truth's
   (`truth_level_gap`, `truth_level_slope_gap`, `truth_level_unweighted_gap`). Also the held-out
   scores' mean minus the truth's (`score_minus_truth`) and the training labels' weighted mean
   minus the truth's (`train_label_minus_truth`): the level the training outcomes' luck carries.
2. Messy real-org profile, at least five seeds of 300-1,500 simulated deals: the published
   scorer's held-out log loss beside the constant rate's and the CRM probability's (target: it is
   at most both: the ladder publishes the best), and that of the true probability of an eventual
   win (`SampleTruth`; not the labels' event, won within the horizon, so only a reference).
3. `--open-deals 1 2 3 4 5 6`: messy samples scored as the night of `--open-as-of` (2026-06-30, the
   eve of the backtested quarter) would; the open deals' mean score beside the share that was won
   within the label horizon, in the next quarter and by the sample's end, for all open deals and
   for those more than 90 days in their stage.
4. `--stability`: nightly runs one day and one week apart on one simulator sample (`--stability-deals`,
   5,000 by default; 30,000 reaches the calibration's bends) and one messy sample;
   among open deals whose stage, amount, expected close date and age bucket did not change, the
   share that moved by more than 0.10 and the largest move, and whether the published tier changed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from etl.config import load_project_config  # noqa: E402
from etl.ingest.exports import read_exports  # noqa: E402
from etl.pipeline_state import pipeline_at_many, prepare_history  # noqa: E402
from sample_crm.generate import generate_sample  # noqa: E402
from sample_crm.truth import SampleTruth  # noqa: E402
from sample_crm.world import SampleWorld  # noqa: E402
from models.evaluation import expected_calibration_error, reliability_table  # noqa: E402
from models.scoring import CALIBRATION_HALF_LIFE_DAYS, age_buckets, recency_weights, train_scorer  # noqa: E402
from models.training_set import build_training_set, snapshot_features  # noqa: E402

END = dt.date(2026, 11, 15)
SIM_YEARS = 3.5


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def ece(y: np.ndarray, p: np.ndarray) -> float:
    return float(expected_calibration_error(reliability_table(y, np.clip(p, 0.0, 1.0))))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def fit_recalibration(x: np.ndarray, y: np.ndarray, weights: np.ndarray, slope: bool = True) -> tuple[float, float]:
    """(intercept, slope) of the weighted logistic regression of `y` on `x` (slope fixed at 1, the
    intercept alone fitted, when `slope` is False), by Newton's method."""
    design = np.column_stack([np.ones(len(x)), x]) if slope else np.ones((len(x), 1))
    offset = np.zeros(len(x)) if slope else x
    beta = np.zeros(design.shape[1])
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(design @ beta + offset)))
        gradient = design.T @ (weights * (y - p))
        hessian = (design * (weights * p * (1 - p))[:, None]).T @ design
        step = np.linalg.solve(hessian, gradient)
        beta += step
        if np.abs(step).max() < 1e-10:
            break
    return (float(beta[0]), float(beta[1])) if slope else (float(beta[0]), 1.0)


def recalibrated_truth(train_truth, train_y, test_truth, weights, slope: bool = True) -> np.ndarray:
    """The true probabilities recalibrated on the training rows' labels (a logistic regression of
    the label on the truth's log-odds, weighted as the published calibration weighs its rows): a
    learner that knows every deal's true ranking and learns only the level (and slope) from the
    same labels the published scorer had. Its ECE above the truth's is what learning a calibration
    from these labels costs by itself, whatever the model."""
    intercept, b = fit_recalibration(_logit(train_truth), np.asarray(train_y, dtype=float), weights, slope)
    return 1.0 / (1.0 + np.exp(-(intercept + b * _logit(test_truth))))


def load(out: Path, project, as_of: dt.date):
    export = read_exports(out, project, as_of=as_of)
    history = prepare_history(export.deals, export.history, export.stages)
    return export, history


def train(export, history, project, as_of: dt.date):
    training = build_training_set(
        export.deals, history, export.stages, as_of, frequency=project.model.snapshot_frequency,
        fiscal_year_start_month=project.fiscal_year_start_month,
    )
    return training, train_scorer(training, project.model, as_of)


def simulator_rows(seeds, n_deals: int, project, work: Path) -> list[dict]:
    rows = []
    for seed in seeds:
        out = work / f"sim{seed}"
        generate_sample(out, n_deals=n_deals, seed=seed, end_date=END, years=SIM_YEARS)
        export, history = load(out, project, END)
        training, result = train(export, history, project, END)
        test = result.test_predictions
        states = pipeline_at_many(export.deals, history, sorted(test["snapshot_at"].unique()))
        world = SampleWorld.build(seed=seed, n_deals=n_deals, end_date=END, years=SIM_YEARS)
        # The truth of the event the labels record: won within the label horizon.
        states["truth"] = world.true_win_within_probability(states, training.maturity_days)
        test = test.merge(states[["snapshot_at", "deal_id", "truth"]], on=["snapshot_at", "deal_id"], how="left")
        y, p, t = test["label"].to_numpy(float), test["published"].to_numpy(float), test["truth"].to_numpy(float)
        # The training side of the split: the rows dated before the first held-out date.
        train_rows = training.frame.loc[training.frame["snapshot_at"] < test["snapshot_at"].min(), ["snapshot_at", "deal_id", "label"]]
        train_states = pipeline_at_many(export.deals, history, sorted(train_rows["snapshot_at"].unique()))
        train_states["truth"] = world.true_win_within_probability(train_states, training.maturity_days)
        train_rows = train_rows.merge(train_states[["snapshot_at", "deal_id", "truth"]], on=["snapshot_at", "deal_id"], how="left")
        weights = recency_weights(train_rows["snapshot_at"], CALIBRATION_HALF_LIFE_DAYS)
        weights = np.ones(len(train_rows)) if weights is None else weights
        recalibrated = {
            name: recalibrated_truth(train_rows["truth"].to_numpy(float), train_rows["label"].to_numpy(float), t, w, slope)
            for name, slope, w in (
                ("level", False, weights), ("level_slope", True, weights), ("level_unweighted", False, np.ones(len(train_rows))),
            )
        }
        m = result.metrics
        rows.append({
            "seed": seed, "deals": n_deals, "horizon_days": training.maturity_days, "published": m["scoring_method"], "test_rows": len(test),
            "log_loss": log_loss(y, p), "truth_log_loss": log_loss(y, t), "ratio": log_loss(y, p) / log_loss(y, t),
            "ece": ece(y, p), "truth_ece": ece(y, t), "ece_gap": ece(y, p) - ece(y, t),
            "truth_level_gap": ece(y, recalibrated["level"]) - ece(y, t),
            "truth_level_slope_gap": ece(y, recalibrated["level_slope"]) - ece(y, t),
            "truth_level_unweighted_gap": ece(y, recalibrated["level_unweighted"]) - ece(y, t),
            "score_minus_truth": float(np.mean(p - t)),
            "train_label_minus_truth": float(np.average(train_rows["label"] - train_rows["truth"], weights=weights)),
            "target_met": bool(log_loss(y, p) <= 1.03 * log_loss(y, t) and ece(y, p) <= ece(y, t) + 0.005),
        })
        print(pd.DataFrame(rows[-1:]).round(4).to_string(index=False), flush=True)
    return rows


def messy_rows(seeds, sizes, project, work: Path) -> list[dict]:
    rows = []
    for seed, size in zip(seeds, sizes, strict=True):
        out = work / f"messy{seed}"
        generate_sample(out, n_deals=size, seed=seed, end_date=END, profile="messy")
        truth = SampleTruth.load(out)
        export, history = load(out, project, END)
        training, result = train(export, history, project, END)
        m = result.metrics
        test = result.test_predictions
        y = test["label"].to_numpy(float)
        losses = {c["method"]: c["log_loss"] for c in m["candidates"]}
        truth_p = truth.true_win_probability(test[["deal_id", "snapshot_at"]]).to_numpy(float) if len(test) else np.zeros(0)
        crm = losses.get("crm_probability")
        rows.append({
            "seed": seed, "real_deals": size, "exported": len(export.deals),
            "train_won/lost": f"{m['train_won_deals']}/{m['train_lost_deals']}",
            "creation_rows": m["creation_rows"], "split": m["split_rule"], "test_rows": m["test_rows"],
            "published": m["scoring_method"], "log_loss": m["log_loss"], "constant": losses.get("constant_rate"),
            "crm": crm, "truth_eventual": log_loss(y, truth_p) if len(test) else None,
            "beats_both": bool(m["log_loss"] is not None and m["log_loss"] <= losses["constant_rate"] and (crm is None or m["log_loss"] <= crm)),
        })
        print(pd.DataFrame(rows[-1:]).round(4).to_string(index=False), flush=True)
    return rows


def open_deal_rows(seeds, project, as_of: dt.date) -> list[dict]:
    """Messy samples of the default size: the deals open at `as_of`, scored as that night's run
    would, against what they did within the label horizon, in the next quarter and by `END`; all
    of them, those more than 90 days in their stage and the others."""
    rows = []
    for seed in seeds:
        out = Path(tempfile.mkdtemp(prefix=f"dealcast-open-{seed}-"))
        generate_sample(out, seed=seed, end_date=END, profile="messy")
        export, history = load(out, project, END)
        training, result = train(export, history, project, as_of)
        features = snapshot_features(export.deals, history, export.stages, as_of, fiscal_year_start_month=project.fiscal_year_start_month)
        features["p"] = result.scorer.predict_proba(features)
        final = pipeline_at_many(export.deals, history, [pd.Timestamp(END) + pd.Timedelta(days=1) - pd.Timedelta(microseconds=1)])
        won_at = final.loc[final["status"] == "won"].set_index("deal_id")["closed_at"]
        won = pd.to_datetime(features["deal_id"].map(won_at))
        start = pd.Timestamp(as_of) + pd.Timedelta(days=1)
        features["won_within_h"] = (won < start + pd.Timedelta(days=training.maturity_days)).fillna(False)
        features["won_next_quarter"] = (won < start + pd.offsets.QuarterBegin(startingMonth=1)).fillna(False)
        features["won_by_end"] = won.notna()
        stale = (features["days_in_stage"] > 90).to_numpy()
        for group, mask in (("all open", np.ones(len(features), dtype=bool)), ("> 90 days in stage", stale), ("<= 90 days", ~stale)):
            part = features.loc[mask]
            rows.append({
                "seed": seed, "horizon_days": training.maturity_days, "published": result.metrics["scoring_method"],
                "group": group, "deals": len(part), "mean_p": part["p"].mean(), "won_within_h": part["won_within_h"].mean(),
                "won_next_quarter": part["won_next_quarter"].mean(), "won_by_end": part["won_by_end"].mean(),
            })
            print(pd.DataFrame(rows[-1:]).round(3).to_string(index=False), flush=True)
    return rows


def unchanged_moves(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Open deals at both runs whose stage, amount, expected close date and age bucket are the
    same, with their two scores."""
    def keyed(frame):
        close = (frame["snapshot_at"] + pd.to_timedelta(frame["days_to_expected_close"], unit="D")).dt.normalize()
        return pd.DataFrame({
            "deal_id": frame["deal_id"], "stage": frame["stage"].astype("string"),
            "amount": frame["log_amount_reporting"].round(9), "close": close,
            "bucket": age_buckets(frame["age_days"]), "p": frame["p"],
        })
    both = keyed(before).merge(keyed(after), on="deal_id", suffixes=("_0", "_1"))
    same = (
        (both["stage_0"] == both["stage_1"]).fillna(False) & (both["amount_0"] == both["amount_1"]).fillna(False)
        & (both["close_0"] == both["close_1"]).fillna(False) & (both["bucket_0"] == both["bucket_1"])
    )
    return both.loc[same.to_numpy(dtype=bool)]


def stability_rows(project, work: Path, sim_deals: int = 5000) -> list[dict]:
    rows = []
    samples = [("simulator", work / "stab_sim", dict(n_deals=sim_deals, seed=301, end_date=END, years=SIM_YEARS)),
               ("messy", work / "stab_messy", dict(n_deals=900, seed=302, end_date=END, profile="messy"))]
    for name, out, kwargs in samples:
        generate_sample(out, **kwargs)
        export, history = load(out, project, END)
        scored = {}
        for lag in (7, 1, 0):
            as_of = END - dt.timedelta(days=lag)
            _, result = train(export, history, project, as_of)
            features = snapshot_features(export.deals, history, export.stages, as_of, fiscal_year_start_month=project.fiscal_year_start_month)
            features["p"] = result.scorer.predict_proba(features)
            scored[lag] = (result.scorer.scoring_method, features)
        for label, lag in (("one day", 1), ("one week", 7)):
            (m0, f0), (m1, f1) = scored[lag], scored[0]
            moved = unchanged_moves(f0, f1)
            delta = (moved["p_1"] - moved["p_0"]).abs()
            rows.append({
                "sample": name, "apart": label, "tier_before": m0, "tier_after": m1, "tier_changed": m0 != m1,
                "unchanged_deals": len(moved), "moved_over_0.10": int((delta > 0.10).sum()),
                "max_move": float(delta.max()) if len(delta) else None,
                "mean_move": float(delta.mean()) if len(delta) else None,
            })
            print(pd.DataFrame(rows[-1:]).round(4).to_string(index=False), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sim-seeds", type=int, nargs="*", default=[101, 102, 103])
    parser.add_argument("--sim-deals", type=int, default=10_000)
    parser.add_argument("--messy-seeds", type=int, nargs="*", default=[201, 202, 203, 204, 205])
    parser.add_argument("--messy-deals", type=int, nargs="*", default=[300, 600, 900, 1200, 1500])
    parser.add_argument("--stability", action="store_true")
    parser.add_argument("--stability-deals", type=int, default=5000, help="deals of the --stability simulator sample")
    parser.add_argument("--open-deals", type=int, nargs="*", default=[], metavar="SEED",
                        help="messy seeds whose deals open at --open-as-of are scored and compared with what they did")
    parser.add_argument("--open-as-of", type=dt.date.fromisoformat, default=dt.date(2026, 6, 30))
    parser.add_argument("--work", type=Path, default=None, help="folder for the generated samples")
    args = parser.parse_args()
    if len(args.messy_seeds) != len(args.messy_deals):
        parser.error("--messy-seeds and --messy-deals need the same number of values")
    work = args.work or Path(tempfile.mkdtemp(prefix="dealcast-quality-"))
    project = load_project_config()
    with threadpool_limits(limits=1, user_api="openmp"):
        sections = []
        if args.sim_seeds:
            print("\n== Simulator, unseen seeds ==", flush=True)
            sections.append(("Simulator, unseen seeds (targets: ratio <= 1.03, ece_gap <= 0.005)", simulator_rows(args.sim_seeds, args.sim_deals, project, work)))
        if args.messy_seeds:
            print("\n== Messy real-org samples ==", flush=True)
            sections.append(("Messy real-org samples (target: log_loss <= constant and crm)", messy_rows(args.messy_seeds, args.messy_deals, project, work)))
        if args.open_deals:
            print("\n== Open deals of messy samples against what they did ==", flush=True)
            sections.append((f"Deals open at {args.open_as_of} (target: mean_p close to won_within_h)", open_deal_rows(args.open_deals, project, args.open_as_of)))
        if args.stability:
            print("\n== Stability of unchanged open deals ==", flush=True)
            sections.append(("Stability (target: no unchanged deal moves > 0.10 unless the tier changed)", stability_rows(project, work, args.stability_deals)))
    print()
    for title, rows in sections:
        print(title)
        print(pd.DataFrame(rows).round(4).to_string(index=False))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
