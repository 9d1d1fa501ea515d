"""The warehouse tables Dealcast writes: names, columns and types are a public interface that
finance and BI tools read (documented column by column in docs/warehouse.md).

Each table declares how a run replaces its rows:
- `as_of`  : history tables; a run replaces exactly the rows of its as_of (delete-then-insert).
- `whole`  : current-state tables; a run replaces every row (they describe the latest run's as_of).
- `key`    : registry tables; a run replaces the rows whose key it writes (e.g. one model_version).
Views `latest_<table>` show the newest as_of of every `as_of` table.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

MONEY = sa.Numeric(18, 2, asdecimal=False)
RATE = sa.Float()
DAYS = sa.Float()
TEXT = sa.Text()
NAME = sa.String(255)
ID = sa.String(64)
TS = sa.DateTime(timezone=False)  # UTC, timezone-naive

metadata = sa.MetaData()


def _table(name: str, *columns: sa.Column, comment: str) -> sa.Table:
    return sa.Table(name, metadata, *columns, comment=comment)


deals = _table(
    "deals",
    sa.Column("deal_id", ID, primary_key=True),
    sa.Column("source_system", NAME, nullable=False),
    sa.Column("source_file", TEXT),
    sa.Column("source_row", sa.BigInteger),
    sa.Column("pipeline", NAME, nullable=False),
    sa.Column("deal_name", TEXT),
    sa.Column("account", TEXT),
    sa.Column("owner", NAME),
    sa.Column("team", NAME),
    sa.Column("product", NAME),
    sa.Column("region", NAME),
    sa.Column("account_segment", NAME),
    sa.Column("lead_source", NAME),
    sa.Column("deal_type", NAME),
    sa.Column("amount", MONEY),
    sa.Column("currency", sa.String(3)),
    sa.Column("amount_reporting", MONEY),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("expected_close_date", sa.Date),
    sa.Column("closed_at", TS),
    sa.Column("stage", NAME, nullable=False),
    sa.Column("stage_order", sa.Integer),
    sa.Column("status", sa.String(8), nullable=False),
    sa.Column("lost_reason", TEXT),
    sa.Column("forecast_category", NAME),
    sa.Column("crm_probability", RATE),
    sa.Column("last_stage_change_at", TS),
    sa.Column("push_count", sa.Integer, nullable=False),
    sa.Column("has_history", sa.Boolean, nullable=False),
    sa.Column("as_of", sa.Date, nullable=False),
    comment="One row per accepted deal as of the latest run.",
)

deal_history = _table(
    "deal_history",
    sa.Column("deal_id", ID, primary_key=True),
    sa.Column("changed_at", TS, primary_key=True),
    sa.Column("source_row", sa.BigInteger, primary_key=True),
    sa.Column("pipeline", NAME, nullable=False),
    sa.Column("stage", NAME),
    sa.Column("stage_order", sa.Integer),
    sa.Column("amount", MONEY),
    sa.Column("amount_reporting", MONEY),
    sa.Column("expected_close_date", sa.Date),
    sa.Column("crm_probability", RATE),
    sa.Column("forecast_category", NAME),
    sa.Column("is_stage_change", sa.Boolean, nullable=False),
    sa.Column("is_backward", sa.Boolean, nullable=False),
    sa.Column("is_push", sa.Boolean, nullable=False),
    sa.Column("source_file", TEXT),
    sa.Column("as_of", sa.Date, nullable=False),
    comment="Every recorded change of a deal (stage, amount, close date, probability), the deal's full state from changed_at on.",
)

stage_events = _table(
    "stage_events",
    sa.Column("deal_id", ID, primary_key=True),
    sa.Column("entered_at", TS, primary_key=True),
    sa.Column("stage", NAME, primary_key=True),
    sa.Column("pipeline", NAME, nullable=False),
    sa.Column("stage_order", sa.Integer),
    sa.Column("exited_at", TS),
    sa.Column("days_in_stage", DAYS),
    sa.Column("amount_at_entry", MONEY),
    sa.Column("expected_close_at_entry", sa.Date),
    sa.Column("is_backward", sa.Boolean, nullable=False),
    sa.Column("is_current", sa.Boolean, nullable=False),
    sa.Column("as_of", sa.Date, nullable=False),
    comment="One row per stay of a deal in a stage, up to the end of the latest run's as_of.",
)

quarantine = _table(
    "quarantine",
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("source_file", sa.String(512), primary_key=True),
    sa.Column("source_row", sa.BigInteger, primary_key=True),
    sa.Column("reason_code", sa.String(64), nullable=False),
    sa.Column("reason", TEXT, nullable=False),
    sa.Column("column", NAME),
    sa.Column("raw_record", TEXT, nullable=False),
    sa.Column("run_id", ID, nullable=False),
    sa.Column("quarantined_at", TS, nullable=False),
    comment="Input rows that were not accepted, with the reason; rows read = accepted + quarantined.",
)

data_quality_results = _table(
    "data_quality_results",
    sa.Column("run_id", ID, primary_key=True),
    sa.Column("check_name", sa.String(255), primary_key=True),
    sa.Column("as_of", sa.Date, nullable=False),
    sa.Column("asset", NAME, nullable=False),
    sa.Column("passed", sa.Boolean, nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("observed", TEXT),
    sa.Column("expected", TEXT),
    sa.Column("failing_rows", sa.BigInteger, nullable=False),
    sa.Column("checked_at", TS, nullable=False),
    comment="The result of every data-quality expectation and reconciliation, per run.",
)

stage_conversion = _table(
    "stage_conversion",
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("pipeline", NAME, primary_key=True),
    sa.Column("period_grain", sa.String(8), primary_key=True),
    sa.Column("period", sa.String(16), primary_key=True),
    sa.Column("segment_type", sa.String(16), primary_key=True),
    sa.Column("segment", NAME, primary_key=True),
    sa.Column("funnel_mode", sa.String(16), primary_key=True),
    sa.Column("stage", NAME, primary_key=True),
    sa.Column("stage_order", sa.Integer, nullable=False),
    sa.Column("reached", sa.BigInteger, nullable=False),
    sa.Column("advanced", sa.BigInteger, nullable=False),
    sa.Column("won", sa.BigInteger, nullable=False),
    sa.Column("lost_here", sa.BigInteger, nullable=False),
    sa.Column("next_step_rate", RATE),
    sa.Column("stage_to_won_rate", RATE),
    sa.Column("drop_off_rate", RATE),
    comment="Funnel: deals that reached each stage, advanced past it, won, or were lost in it, by creation period and segment.",
)

stage_durations = _table(
    "stage_durations",
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("pipeline", NAME, primary_key=True),
    sa.Column("segment_type", sa.String(16), primary_key=True),
    sa.Column("segment", NAME, primary_key=True),
    sa.Column("stage", NAME, primary_key=True),
    sa.Column("stage_order", sa.Integer, nullable=False),
    sa.Column("deals", sa.BigInteger, nullable=False),
    sa.Column("median_days", DAYS),
    sa.Column("mean_days", DAYS),
    sa.Column("p90_days", DAYS),
    sa.Column("stall_threshold_days", DAYS),
    sa.Column("threshold_source", sa.String(16)),
    sa.Column("backward_moves", sa.BigInteger, nullable=False),
    comment="Days spent in each stage by deals that left it, and the stall threshold per stage.",
)

velocity = _table(
    "velocity",
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("period_grain", sa.String(8), primary_key=True),
    sa.Column("period", sa.String(16), primary_key=True),
    sa.Column("segment_type", sa.String(16), primary_key=True),
    sa.Column("segment", NAME, primary_key=True),
    sa.Column("created_count", sa.BigInteger, nullable=False),
    sa.Column("open_deals", sa.BigInteger, nullable=False),
    sa.Column("pipeline_value", MONEY, nullable=False),
    sa.Column("weighted_pipeline_crm", MONEY),
    sa.Column("weighted_pipeline_model", MONEY),
    sa.Column("won_count", sa.BigInteger, nullable=False),
    sa.Column("lost_count", sa.BigInteger, nullable=False),
    sa.Column("won_amount", MONEY, nullable=False),
    sa.Column("lost_amount", MONEY, nullable=False),
    sa.Column("avg_deal_value", MONEY),
    sa.Column("win_rate", RATE),
    sa.Column("win_rate_value", RATE),
    sa.Column("cycle_days_median", DAYS),
    sa.Column("cycle_days_mean", DAYS),
    sa.Column("cycle_days_p90", DAYS),
    sa.Column("velocity_per_day", MONEY),
    comment="Pipeline, wins, losses, cycle length and sales velocity per month and quarter (closed deals by close date, open pipeline at period end).",
)

deal_scores = _table(
    "deal_scores",
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("deal_id", ID, primary_key=True),
    sa.Column("pipeline", NAME, nullable=False),
    sa.Column("stage", NAME),
    sa.Column("owner", NAME),
    sa.Column("amount_reporting", MONEY),
    sa.Column("expected_close_date", sa.Date),
    sa.Column("win_probability", RATE, nullable=False),
    sa.Column("win_this_quarter_probability", RATE, nullable=False),
    sa.Column("expected_value", MONEY, nullable=False),
    sa.Column("score_band", sa.String(16), nullable=False),
    sa.Column("top_factors", TEXT, nullable=False),
    sa.Column("top_factors_text", TEXT, nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("scoring_method", sa.String(32), nullable=False),
    comment="Calibrated win probability of every open deal, with its reasons, per as_of.",
)

forecast_quarterly = _table(
    "forecast_quarterly",
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("quarter", sa.String(8), primary_key=True),
    sa.Column("segment_type", sa.String(16), primary_key=True),
    sa.Column("segment", NAME, primary_key=True),
    sa.Column("closed_won_to_date", MONEY, nullable=False),
    sa.Column("expected", MONEY, nullable=False),
    sa.Column("p10", MONEY, nullable=False),
    sa.Column("p50", MONEY, nullable=False),
    sa.Column("p90", MONEY, nullable=False),
    sa.Column("weighted_pipeline_crm", MONEY, nullable=False),
    sa.Column("open_deals", sa.BigInteger, nullable=False),
    sa.Column("open_pipeline", MONEY, nullable=False),
    sa.Column("new_deals_expected", MONEY, nullable=False),
    sa.Column("quota", MONEY),
    sa.Column("gap", MONEY),
    sa.Column("coverage", RATE),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("draws", sa.Integer, nullable=False),
    comment="Revenue forecast per quarter and segment with P10/P50/P90 ranges, quota, gap and coverage, per as_of.",
)

model_runs = _table(
    "model_runs",
    sa.Column("model_version", sa.String(64), primary_key=True),
    sa.Column("as_of", sa.Date, nullable=False),
    sa.Column("trained_at", TS, nullable=False),
    sa.Column("scoring_method", sa.String(32), nullable=False),
    sa.Column("eligible", sa.Boolean, nullable=False),
    sa.Column("fallback_reason", TEXT),
    sa.Column("has_history", sa.Boolean, nullable=False),
    sa.Column("data_window", sa.String(64), nullable=False),
    sa.Column("train_rows", sa.BigInteger, nullable=False),
    sa.Column("calibration_rows", sa.BigInteger, nullable=False),
    sa.Column("test_rows", sa.BigInteger, nullable=False),
    sa.Column("auc", RATE),
    sa.Column("log_loss", RATE),
    sa.Column("brier", RATE),
    sa.Column("base_rate_brier", RATE),
    sa.Column("ece", RATE),
    sa.Column("crm_baseline_auc", RATE),
    sa.Column("crm_baseline_log_loss", RATE),
    sa.Column("crm_baseline_brier", RATE),
    sa.Column("stage_rate_baseline_auc", RATE),
    sa.Column("stage_rate_baseline_log_loss", RATE),
    sa.Column("stage_rate_baseline_brier", RATE),
    sa.Column("beats_baselines", sa.Boolean),
    sa.Column("reliability", TEXT, nullable=False),
    sa.Column("features", TEXT, nullable=False),
    sa.Column("params", TEXT, nullable=False),
    sa.Column("artifact_path", TEXT),
    comment="Every trained deal-scoring model: data window, parameters, features and honest test metrics against both baselines.",
)


@dataclass(frozen=True)
class TableSpec:
    table: sa.Table
    replace: str  # "as_of" | "whole" | "key"
    key: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.table.name

    @property
    def columns(self) -> list[str]:
        return [c.name for c in self.table.columns]


TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec(deals, "whole"),
        TableSpec(deal_history, "whole"),
        TableSpec(stage_events, "whole"),
        TableSpec(quarantine, "as_of"),
        TableSpec(data_quality_results, "as_of"),
        TableSpec(stage_conversion, "as_of"),
        TableSpec(stage_durations, "as_of"),
        TableSpec(velocity, "as_of"),
        TableSpec(deal_scores, "as_of"),
        TableSpec(forecast_quarterly, "as_of"),
        TableSpec(model_runs, "key", key=("model_version",)),
    )
}
