"""Deal scoring: the calibrated win-probability model, close timing, per-deal scores and the model registry."""


import datetime as dt

import dagster as dg
import pandas as pd

from assets.checks import MODEL_CHECK_SPEC, model_check_result
from assets.execution import HEAVY_STEP_TAGS, step_thread_limit
from assets.partitions import NIGHTS
from assets.publishing import publish_table
from assets.resources import DealcastSettings, WarehouseResource
from assets.runs import run_settings
from etl.charts import calibration_chart, image_markdown, markdown_table
from etl.stages import StageCatalog
from models.deal_scores import build_deal_scores
from models.registry import artifact_file, choose_scorer, model_runs_row, published_tier_change, save_artifact
from models.scoring import ScorerResult, train_scorer
from models.timing import CloseTiming
from models.training_set import build_training_set


@dg.asset(
    partitions_def=NIGHTS, group_name="scoring", kinds={"scikitlearn"}, op_tags=HEAVY_STEP_TAGS["scoring_model"],
    check_specs=[MODEL_CHECK_SPEC],
)  # fmt: skip
def deal_scoring_model(
    context: dg.AssetExecutionContext,
    settings: DealcastSettings,
    deals: pd.DataFrame,
    deal_history: pd.DataFrame,
    pipeline_stages: pd.DataFrame,
):
    """The published win-probability scorer: the ladder's candidates (constant rate, CRM probability, stage rates, logistic, gradient boosting) fitted on as-of snapshots before a time cut, the best held-out log loss published."""
    resolved = run_settings(context, settings)
    model_cfg = resolved.project.model
    with step_thread_limit(context):
        training = build_training_set(
            deals, deal_history, StageCatalog.from_frame(pipeline_stages), resolved.as_of, frequency=model_cfg.snapshot_frequency
        )
        result = train_scorer(training, model_cfg, resolved.as_of)
    artifact = save_artifact(result.scorer, resolved.model_dir)
    metrics = result.metrics
    context.log.info(f"published scorer {result.scorer.scoring_method}: {metrics['selection_reason']}")
    if metrics["split_rule"] == "widened":
        context.log.warning(f"training window widened: {metrics['split_note']}")
    comparison = pd.DataFrame(
        [
            {"scorer": c["method"], "tier": c["tier"], "log_loss": c["log_loss"], "auc": c["auc"], "brier": c["brier"],
             "ece": c["ece"], "not fitted because": c["reason"] or ""}
            for c in metrics["candidates"]
        ]
    )
    metadata = {
        "model_version": result.scorer.version,
        "scoring_method": result.scorer.scoring_method,
        "selection_reason": metrics["selection_reason"],
        "split": f"{metrics['split_rule']}: {metrics['split_note']}",
        "artifact": str(artifact),
        "train_rows": metrics["train_rows"],
        "train_won_lost_deals": f"{metrics['train_won_deals']} / {metrics['train_lost_deals']}",
        "test_rows": metrics["test_rows"],
        "test_won_lost_deals": f"{metrics['test_won_deals']} / {metrics['test_lost_deals']}",
        "creation_rows": metrics["creation_rows"],
        "ece": metrics["ece"],
        "base_rate_brier": metrics["base_rate_brier"],
        "candidates": dg.MetadataValue.md(markdown_table(comparison)),
    }
    if not result.reliability.empty:
        metadata["calibration"] = dg.MetadataValue.md(image_markdown(calibration_chart(result.reliability), "calibration"))
        metadata["reliability"] = dg.MetadataValue.md(markdown_table(result.reliability))
    yield dg.Output(result, metadata={k: v for k, v in metadata.items() if v is not None})
    yield model_check_result(metrics)


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
    with step_thread_limit(context):
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
    # Earlier nights' models (the model_runs registry): history kept in the warehouse across nights, not a
    # value of tonight's graph, so it is read there (tonight's own model is the deal_scoring_model input).
    choice = choose_scorer(deal_scoring_model, resolved.as_of, warehouse.warehouse.read("model_runs"), resolved.model_dir)
    if choice.reason:
        context.log.warning(f"deal scores use {choice.scored_with} {choice.model_version}: {choice.reason}")
    else:
        context.log.info(f"deal scores use this run's model {choice.model_version}")
    with step_thread_limit(context):
        frame = build_deal_scores(
            deals, deal_history, StageCatalog.from_frame(pipeline_stages), resolved.as_of,
            choice.scorer, close_timing, resolved.project.fiscal_year_start_month,
            scored_with=choice.scored_with, scoring_reason=choice.reason,
            label_horizon_days=deal_scoring_model.label_horizon_days,
        )
    bands = frame.groupby("score_band").agg(deals=("deal_id", "size"), expected_value=("expected_value", "sum")).reset_index()
    top = frame.sort_values("expected_value", ascending=False).head(10)
    return publish_table(
        context, warehouse, resolved.as_of, "deal_scores", frame, keep=True,
        previews={
            "by_band": bands,
            "top_deals": top[["deal_id", "stage", "amount_reporting", "win_probability", "win_this_quarter_probability", "top_factors_text"]],
        },
        metadata={
            "model_version": choice.model_version,
            "scoring_method": choice.scorer.scoring_method,
            "scored_with": choice.scored_with,
            "model_as_of": str(choice.model_as_of),
            "scoring_reason": choice.reason or "",
        },
    )  # fmt: skip


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
    # The latest earlier night's published scorer, from the registry this asset appends to.
    change = published_tier_change(warehouse.warehouse.read("model_runs"), resolved.as_of, deal_scoring_model.scorer.scoring_method)
    if change:
        context.log.warning(f"published scorer changed tier: {change}")
    row = model_runs_row(
        deal_scoring_model, resolved.as_of, trained_at,
        artifact_path=artifact_file(resolved.model_dir, deal_scoring_model.version), tier_change=change,
    )
    return publish_table(
        context, warehouse, resolved.as_of, "model_runs", pd.DataFrame([row]),
        metadata={
            "model_version": row["model_version"],
            "scoring_method": row["scoring_method"],
            "log_loss": row["log_loss"],
            "constant_log_loss": row["constant_log_loss"],
            "auc": row["auc"],
            "tier_change": row["tier_change"] or "none",
        },
    )  # fmt: skip
