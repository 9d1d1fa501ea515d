"""Deal scoring: the calibrated win-probability model, close timing, per-deal scores and the model registry."""


import datetime as dt

import dagster as dg
import pandas as pd

from assets.partitions import NIGHTS
from assets.resources import DealcastSettings, WarehouseResource
from assets.runs import run_settings
from etl.report import calibration_chart, image_markdown, markdown_table
from etl.stages import StageCatalog
from models.deal_scores import build_deal_scores
from models.registry import artifact_file, choose_scorer, model_runs_row, save_artifact
from models.scoring import ScorerResult, train_scorer
from models.timing import CloseTiming
from models.training_set import build_training_set


@dg.asset(partitions_def=NIGHTS, group_name="scoring", kinds={"scikitlearn"})
def deal_scoring_model(
    context: dg.AssetExecutionContext,
    settings: DealcastSettings,
    deals: pd.DataFrame,
    deal_history: pd.DataFrame,
    pipeline_stages: pd.DataFrame,
) -> dg.Output[ScorerResult]:
    """The win-probability model, trained on as-of snapshots with a time split, calibrated and measured against two baselines."""
    resolved = run_settings(context, settings)
    model_cfg = resolved.project.model
    training = build_training_set(
        deals, deal_history, StageCatalog.from_frame(pipeline_stages), resolved.as_of, frequency=model_cfg.snapshot_frequency
    )
    result = train_scorer(training, model_cfg, resolved.as_of)
    artifact = save_artifact(result.scorer, resolved.model_dir)
    metrics = result.metrics
    if not metrics["eligible"]:
        context.log.warning(f"no model trained, scoring with the empirical stage rates: {metrics['fallback_reason']}")
    elif not metrics["beats_baselines"]:
        context.log.warning("the model does not beat the better baseline on log loss; scores use that baseline")
    comparison = pd.DataFrame(
        [
            {"scorer": "model", "log_loss": metrics["log_loss"], "auc": metrics["auc"], "brier": metrics["brier"]},
            {"scorer": "CRM stage probability", "log_loss": metrics["crm_baseline_log_loss"], "auc": metrics["crm_baseline_auc"], "brier": metrics["crm_baseline_brier"]},
            {"scorer": "empirical stage x age rate", "log_loss": metrics["stage_rate_baseline_log_loss"], "auc": metrics["stage_rate_baseline_auc"], "brier": metrics["stage_rate_baseline_brier"]},
        ]
    )
    metadata = {
        "model_version": result.scorer.version,
        "scoring_method": result.scorer.scoring_method,
        "artifact": str(artifact),
        "train_rows": metrics["train_rows"],
        "test_rows": metrics["test_rows"],
        "ece": metrics["ece"],
        "base_rate_brier": metrics["base_rate_brier"],
        "against_baselines": dg.MetadataValue.md(markdown_table(comparison)),
    }
    if not result.reliability.empty:
        metadata["calibration"] = dg.MetadataValue.md(image_markdown(calibration_chart(result.reliability), "calibration"))
        metadata["reliability"] = dg.MetadataValue.md(markdown_table(result.reliability))
    return dg.Output(result, metadata={k: v for k, v in metadata.items() if v is not None})


@dg.asset(partitions_def=NIGHTS, group_name="scoring", kinds={"pandas"})
def close_timing(
    context: dg.AssetExecutionContext,
    settings: DealcastSettings,
    deals: pd.DataFrame,
    deal_history: pd.DataFrame,
    pipeline_stages: pd.DataFrame,
) -> CloseTiming:
    """How soon deals that will win actually close, by pipeline, stage and age: turns win probability into win-this-quarter probability."""
    resolved = run_settings(context, settings)
    return CloseTiming.fit(
        deals, deal_history, StageCatalog.from_frame(pipeline_stages), resolved.as_of,
        frequency=resolved.project.model.snapshot_frequency,
    )


@dg.asset(partitions_def=NIGHTS, group_name="scoring", kinds={"pandas", "sql"})
def deal_scores(
    context: dg.AssetExecutionContext,
    settings: DealcastSettings,
    warehouse: WarehouseResource,
    deals: pd.DataFrame,
    deal_history: pd.DataFrame,
    pipeline_stages: pd.DataFrame,
    deal_scoring_model: ScorerResult,
    close_timing: CloseTiming,
) -> dg.Output[pd.DataFrame]:
    """Every open deal's calibrated win probability, probability of winning this quarter, and its top reasons, from the latest model eligible for scoring."""
    resolved = run_settings(context, settings)
    choice = choose_scorer(deal_scoring_model, resolved.as_of, warehouse.warehouse.read("model_runs"), resolved.model_dir)
    if choice.reason:
        context.log.warning(f"deal scores use {choice.scored_with} {choice.model_version}: {choice.reason}")
    else:
        context.log.info(f"deal scores use this run's model {choice.model_version}")
    frame = build_deal_scores(
        deals, deal_history, StageCatalog.from_frame(pipeline_stages), resolved.as_of,
        choice.scorer, close_timing, resolved.project.fiscal_year_start_month,
        scored_with=choice.scored_with, scoring_reason=choice.reason,
    )
    warehouse.publish(context, resolved.as_of, "deal_scores", frame)
    bands = frame.groupby("score_band").agg(deals=("deal_id", "size"), expected_value=("expected_value", "sum")).reset_index()
    return dg.Output(
        frame,
        metadata={
            "dagster/row_count": len(frame),
            "model_version": choice.model_version,
            "scoring_method": choice.scorer.scoring_method,
            "scored_with": choice.scored_with,
            "model_as_of": str(choice.model_as_of),
            "scoring_reason": choice.reason or "",
            "by_band": dg.MetadataValue.md(markdown_table(bands)),
            "top_deals": dg.MetadataValue.md(
                markdown_table(
                    frame.sort_values("expected_value", ascending=False)[
                        ["deal_id", "stage", "amount_reporting", "win_probability", "win_this_quarter_probability", "top_factors_text"]
                    ],
                    max_rows=10,
                )
            ),
        },
    )


@dg.asset(partitions_def=NIGHTS, group_name="scoring", kinds={"sql"})
def model_runs(
    context: dg.AssetExecutionContext,
    settings: DealcastSettings,
    warehouse: WarehouseResource,
    deal_scoring_model: ScorerResult,
) -> dg.MaterializeResult:
    """The model registry: each trained model's version, data window, parameters, features and test metrics against the baselines."""
    resolved = run_settings(context, settings)
    trained_at = pd.Timestamp(dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))
    row = model_runs_row(deal_scoring_model, resolved.as_of, trained_at, artifact_path=artifact_file(resolved.model_dir, deal_scoring_model.version))
    warehouse.publish(context, resolved.as_of, "model_runs", pd.DataFrame([row]))
    return dg.MaterializeResult(
        metadata={
            "model_version": row["model_version"],
            "scoring_method": row["scoring_method"],
            "log_loss": row["log_loss"],
            "auc": row["auc"],
        }
    )
