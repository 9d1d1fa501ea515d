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
    sa.Column("deal_id", ID, primary_key=True, comment="The deal's identifier from its CRM export."),
    sa.Column("source_system", NAME, nullable=False, comment="The CRM or export format the deal came from (for example salesforce)."),
    sa.Column("source_file", TEXT, comment="Export file the deal was read from."),
    sa.Column("source_row", sa.BigInteger, comment="Line of the deal in that file (the header is line 1)."),
    sa.Column("pipeline", NAME, nullable=False, comment="Sales pipeline (sales process) the deal belongs to."),
    sa.Column("deal_name", TEXT, comment="The deal's name as written in the CRM."),
    sa.Column("account", TEXT, comment="Customer account (company) of the deal."),
    sa.Column("owner", NAME, comment="Sales rep who owns the deal."),
    sa.Column("team", NAME, comment="Sales team of the owner."),
    sa.Column("product", NAME, comment="Product or product family sold."),
    sa.Column("region", NAME, comment="Region or sales territory."),
    sa.Column("account_segment", NAME, comment="Customer segment of the account (for example SMB, Mid-Market, Enterprise)."),
    sa.Column("lead_source", NAME, comment="Where the deal came from (web, referral, partner, ...)."),
    sa.Column("deal_type", NAME, comment="Kind of deal (for example new business or expansion)."),
    sa.Column("amount", MONEY, comment="Deal amount in the deal's own currency."),
    sa.Column("currency", sa.String(3), comment="ISO 4217 code of amount (for example EUR)."),
    sa.Column("amount_reporting", MONEY, comment="Deal amount converted to the reporting currency."),
    sa.Column("created_at", TS, nullable=False, comment="When the deal was created (UTC)."),
    sa.Column("expected_close_date", sa.Date, comment="The close date the CRM currently expects."),
    sa.Column("closed_at", TS, comment="When the deal was won or lost (UTC); NULL while open."),
    sa.Column("stage", NAME, nullable=False, comment="Current stage."),
    sa.Column("stage_order", sa.Integer, comment="Position of the stage in its pipeline: 1..n open stages, n+1 won, n+2 lost."),
    sa.Column("status", sa.String(8), nullable=False, comment="open, won or lost."),
    sa.Column("lost_reason", TEXT, comment="Why the deal was lost, as recorded in the CRM."),
    sa.Column("forecast_category", NAME, comment="The CRM's forecast category (for example Pipeline, Best Case, Commit, Closed)."),
    sa.Column("crm_probability", RATE, comment="The CRM's win probability for the deal (0-1)."),
    sa.Column("last_stage_change_at", TS, comment="When the deal entered its current stage (UTC)."),
    sa.Column("push_count", sa.Integer, nullable=False, comment="How many times the expected close date moved later."),
    sa.Column("has_history", sa.Boolean, nullable=False, comment="True when the source recorded the deal's stage history."),
    sa.Column("as_of", sa.Date, nullable=False, comment="The run date this table was last written for (every row carries the latest run's as_of)."),
    comment="One row per accepted deal as of the latest run.",
)

deal_history = _table(
    "deal_history",
    sa.Column("deal_id", ID, primary_key=True, comment="The deal that changed."),
    sa.Column("changed_at", TS, primary_key=True, comment="When the change happened (UTC)."),
    sa.Column("source_row", sa.BigInteger, primary_key=True, comment="Line of the change in its export file (the header is line 1)."),
    sa.Column("pipeline", NAME, nullable=False, comment="Pipeline of the deal."),
    sa.Column("stage", NAME, comment="Stage from changed_at on (NULL when the source did not record it)."),
    sa.Column("stage_order", sa.Integer, comment="Position of that stage in its pipeline: 1..n open stages, n+1 won, n+2 lost."),
    sa.Column("amount", MONEY, comment="Deal amount from changed_at on, in the deal's own currency."),
    sa.Column("amount_reporting", MONEY, comment="Deal amount from changed_at on, in the reporting currency."),
    sa.Column("expected_close_date", sa.Date, comment="Expected close date from changed_at on."),
    sa.Column("crm_probability", RATE, comment="The CRM's win probability from changed_at on (0-1)."),
    sa.Column("forecast_category", NAME, comment="The CRM's forecast category from changed_at on."),
    sa.Column("is_stage_change", sa.Boolean, nullable=False, comment="True when this change moved the deal to another stage."),
    sa.Column("is_backward", sa.Boolean, nullable=False, comment="True when this change moved the deal back to an earlier open stage."),
    sa.Column("is_push", sa.Boolean, nullable=False, comment="True when this change moved the expected close date later."),
    sa.Column("source_file", TEXT, comment="Export file the change was read from."),
    sa.Column("as_of", sa.Date, nullable=False, comment="The run date this table was last written for (every row carries the latest run's as_of)."),
    comment="Every recorded change of a deal (stage, amount, close date, probability), the deal's full state from changed_at on.",
)

stage_events = _table(
    "stage_events",
    sa.Column("deal_id", ID, primary_key=True, comment="The deal."),
    sa.Column("entered_at", TS, primary_key=True, comment="When the deal entered the stage (UTC)."),
    sa.Column("stage", NAME, primary_key=True, comment="The stage."),
    sa.Column("pipeline", NAME, nullable=False, comment="Pipeline of the deal."),
    sa.Column("stage_order", sa.Integer, comment="Position of the stage in its pipeline: 1..n open stages, n+1 won, n+2 lost."),
    sa.Column("exited_at", TS, comment="When the deal left the stage (UTC); NULL while it is still there."),
    sa.Column("days_in_stage", DAYS, comment="Days spent in the stage (up to the end of as_of while still there)."),
    sa.Column("amount_at_entry", MONEY, comment="Deal amount in the reporting currency when it entered the stage."),
    sa.Column("expected_close_at_entry", sa.Date, comment="Expected close date when the deal entered the stage."),
    sa.Column("is_backward", sa.Boolean, nullable=False, comment="True when the deal came back to this stage from a later open stage."),
    sa.Column("is_current", sa.Boolean, nullable=False, comment="True for the stage the deal is in at the end of as_of."),
    sa.Column("as_of", sa.Date, nullable=False, comment="The run date this table was last written for (every row carries the latest run's as_of)."),
    comment="One row per stay of a deal in a stage, up to the end of the latest run's as_of.",
)

pipeline_stages = _table(
    "pipeline_stages",
    sa.Column("pipeline", NAME, primary_key=True, comment="Sales pipeline (sales process)."),
    sa.Column("stage", NAME, primary_key=True, comment="A stage of the pipeline, open, won or lost."),
    sa.Column("stage_order", sa.Integer, nullable=False, comment="Position of the stage in its pipeline: 1..n open stages, n+1 won, n+2 lost."),
    sa.Column("stage_status", sa.String(8), nullable=False, comment="open, won or lost: what being in this stage means for the deal."),
    sa.Column("stage_probability", RATE, comment="The CRM's default win probability of the stage (0-1); 1 for won, 0 for lost."),
    sa.Column("as_of", sa.Date, nullable=False, comment="The run date this table was last written for (every row carries the latest run's as_of)."),
    comment="The stage order every table uses: configured in dealcast.toml, or taken from the CRM's own stage order.",
)

quarantine = _table(
    "quarantine",
    sa.Column("as_of", sa.Date, primary_key=True, comment="The run date these rows describe (the end of that day, UTC)."),
    sa.Column("source_file", sa.String(512), primary_key=True, comment="Export file the rejected row came from."),
    sa.Column("source_row", sa.BigInteger, primary_key=True, comment="Line of the rejected row in that file (the header is line 1)."),
    sa.Column("reason_code", sa.String(64), nullable=False, comment="Stable code of the first failed check (for example duplicate_id, implausible_date)."),
    sa.Column("reason", TEXT, nullable=False, comment="Every failed check of the row, with the offending value, in words."),
    sa.Column("column", NAME, comment="The column at fault, when one column is."),
    sa.Column("raw_record", TEXT, nullable=False, comment="The row exactly as read, as a JSON object of column name to text."),
    sa.Column("run_id", ID, nullable=False, comment="The pipeline run that rejected the row."),
    sa.Column("quarantined_at", TS, nullable=False, comment="When the row was rejected (UTC)."),
    comment="Input rows that were not accepted, with the reason; rows read = accepted + quarantined.",
)

data_quality_results = _table(
    "data_quality_results",
    sa.Column("run_id", ID, primary_key=True, comment="The pipeline run that ran the check."),
    sa.Column("check_name", sa.String(255), primary_key=True, comment="Name of the expectation or reconciliation (for example deals.quarantine_share)."),
    sa.Column("as_of", sa.Date, nullable=False, comment="The run date these rows describe (the end of that day, UTC)."),
    sa.Column("asset", NAME, nullable=False, comment="The data set checked (for example deals, deal_history, crm_exports)."),
    sa.Column("passed", sa.Boolean, nullable=False, comment="True when the check passed."),
    sa.Column("severity", sa.String(16), nullable=False, comment="error (a failure stops the run), row (failing rows were quarantined) or warning."),
    sa.Column("observed", TEXT, comment="What the data showed."),
    sa.Column("expected", TEXT, comment="What the check required."),
    sa.Column("failing_rows", sa.BigInteger, nullable=False, comment="Rows that failed the check."),
    sa.Column("checked_at", TS, nullable=False, comment="When the check ran (UTC)."),
    comment="The result of every data-quality expectation and reconciliation, per run.",
)

reconciliation = _table(
    "reconciliation",
    sa.Column("as_of", sa.Date, primary_key=True, comment="The run date these rows describe (the end of that day, UTC)."),
    sa.Column("source_file", sa.String(512), primary_key=True, comment="An input export file."),
    sa.Column("file_format", sa.String(64), comment="The export format detected from the file's header (for example salesforce_opportunity)."),
    sa.Column("content", sa.String(16), nullable=False, comment="What the file's rows became: deals, history or lookup (owner and account names)."),
    sa.Column("rows_read", sa.BigInteger, nullable=False, comment="Data rows read from the file."),
    sa.Column("accepted", sa.BigInteger, nullable=False, comment="Rows that became canonical deals or history rows."),
    sa.Column("quarantined", sa.BigInteger, nullable=False, comment="Rows sent to the quarantine table, each with its reason."),
    sa.Column("balanced", sa.Boolean, nullable=False, comment="True when rows_read = accepted + quarantined."),
    sa.Column("run_id", ID, nullable=False, comment="The pipeline run that read the file."),
    comment="Per input file and run: rows read = rows accepted + rows quarantined, so no row is ever lost silently.",
)

stage_conversion = _table(
    "stage_conversion",
    sa.Column("as_of", sa.Date, primary_key=True, comment="The run date these rows describe (the end of that day, UTC)."),
    sa.Column("pipeline", NAME, primary_key=True, comment="The pipeline whose stages the row describes."),
    sa.Column("period_grain", sa.String(8), primary_key=True, comment="all (every deal that existed at as_of) or quarter (deals created in the quarter)."),
    sa.Column("period", sa.String(16), primary_key=True, comment="all, or the fiscal quarter the deals were created in (for example 2026-Q4)."),
    sa.Column("segment_type", sa.String(16), primary_key=True, comment="Segment type: all, pipeline, owner, team, product, region, lead_source or deal_type."),
    sa.Column("segment", NAME, primary_key=True, comment="Segment value within segment_type (all for the company total, (unknown) for blanks)."),
    sa.Column("funnel_mode", sa.String(16), primary_key=True, comment="any_order (skipped stages count as reached) or in_order (every earlier stage entered)."),
    sa.Column("stage", NAME, primary_key=True, comment="The open stage S."),
    sa.Column("stage_order", sa.Integer, nullable=False, comment="Position of S in its pipeline (1 = first open stage)."),
    sa.Column("reached", sa.BigInteger, nullable=False, comment="Deals that reached S."),
    sa.Column("advanced", sa.BigInteger, nullable=False, comment="Deals that reached the next stage (for the last open stage: won)."),
    sa.Column("won", sa.BigInteger, nullable=False, comment="Deals that reached S and were won."),
    sa.Column("lost_here", sa.BigInteger, nullable=False, comment="Deals lost while in S."),
    # The denominators of the two rates below, so every rate can be recomputed from its row:
    # decided = reached and then advanced or closed (next_step_rate = advanced / decided);
    # closed = reached and closed won or lost (stage_to_won_rate = won / closed).
    sa.Column("decided", sa.BigInteger, nullable=False, comment="Deals that reached S and then advanced or closed (the denominator of next_step_rate)."),
    sa.Column("closed", sa.BigInteger, nullable=False, comment="Deals that reached S and were closed won or lost (the denominator of stage_to_won_rate)."),
    sa.Column("next_step_rate", RATE, comment="advanced / decided; NULL when decided is 0."),
    sa.Column("stage_to_won_rate", RATE, comment="won / closed; NULL when closed is 0."),
    sa.Column("drop_off_rate", RATE, comment="lost_here / reached; NULL when reached is 0."),
    comment="Funnel: deals that reached each stage, advanced past it, won, or were lost in it, by creation period and segment.",
)

stage_durations = _table(
    "stage_durations",
    sa.Column("as_of", sa.Date, primary_key=True, comment="The run date these rows describe (the end of that day, UTC)."),
    sa.Column("pipeline", NAME, primary_key=True, comment="The pipeline of the stage."),
    sa.Column("segment_type", sa.String(16), primary_key=True, comment="Segment type: all, pipeline, owner, team, product, region, lead_source or deal_type."),
    sa.Column("segment", NAME, primary_key=True, comment="Segment value within segment_type (all for the company total, (unknown) for blanks)."),
    sa.Column("stage", NAME, primary_key=True, comment="The open stage."),
    sa.Column("stage_order", sa.Integer, nullable=False, comment="Position of the stage in its pipeline (1 = first open stage)."),
    sa.Column("deals", sa.BigInteger, nullable=False, comment="Completed stays in the stage (a deal that stayed twice counts twice)."),
    sa.Column("median_days", DAYS, comment="Median days of the completed stays."),
    sa.Column("mean_days", DAYS, comment="Mean days of the completed stays."),
    sa.Column("p90_days", DAYS, comment="90th percentile of days of the completed stays."),
    sa.Column("stall_threshold_days", DAYS, comment="Days in the stage after which an open deal counts as stalled."),
    sa.Column("threshold_source", sa.String(16), comment="configured (from dealcast.toml) or learned (p90_days); NULL when neither exists."),
    sa.Column("backward_moves", sa.BigInteger, nullable=False, comment="Stays in the stage that began with a move back from a later open stage."),
    comment="Days spent in each stage by deals that left it, and the stall threshold per stage.",
)

velocity = _table(
    "velocity",
    sa.Column("as_of", sa.Date, primary_key=True, comment="The run date these rows describe (the end of that day, UTC)."),
    sa.Column("period_grain", sa.String(8), primary_key=True, comment="month or quarter."),
    sa.Column("period", sa.String(16), primary_key=True, comment="The month (2026-11) or fiscal quarter (2026-Q4)."),
    sa.Column("segment_type", sa.String(16), primary_key=True, comment="Segment type: all, pipeline, owner, team, product, region, lead_source or deal_type."),
    sa.Column("segment", NAME, primary_key=True, comment="Segment value within segment_type (all for the company total, (unknown) for blanks)."),
    sa.Column("created_count", sa.BigInteger, nullable=False, comment="Deals created in the period."),
    sa.Column("open_deals", sa.BigInteger, nullable=False, comment="Open deals at the end of the period (at as_of for the current period)."),
    sa.Column("pipeline_value", MONEY, nullable=False, comment="Amount of those open deals, reporting currency."),
    sa.Column("weighted_pipeline_crm", MONEY, comment="Open amount x the CRM's probability, reporting currency; NULL when no open deal has one."),
    sa.Column("weighted_pipeline_model", MONEY, comment="Open amount x the model's win probability, reporting currency; current period only."),
    sa.Column("won_count", sa.BigInteger, nullable=False, comment="Deals won in the period (by close date)."),
    sa.Column("lost_count", sa.BigInteger, nullable=False, comment="Deals lost in the period (by close date)."),
    sa.Column("won_amount", MONEY, nullable=False, comment="Amount of the deals won in the period, reporting currency."),
    sa.Column("lost_amount", MONEY, nullable=False, comment="Amount of the deals lost in the period, reporting currency."),
    sa.Column("avg_deal_value", MONEY, comment="won_amount / won_count, reporting currency."),
    sa.Column("win_rate", RATE, comment="won_count / (won_count + lost_count)."),
    sa.Column("win_rate_value", RATE, comment="won_amount / (won_amount + lost_amount)."),
    sa.Column("cycle_days_median", DAYS, comment="Median days from creation to close of the deals won in the period."),
    sa.Column("cycle_days_mean", DAYS, comment="Mean days from creation to close of the deals won in the period."),
    sa.Column("cycle_days_p90", DAYS, comment="90th percentile of days from creation to close of the deals won in the period."),
    sa.Column("velocity_per_day", MONEY, comment="Sales velocity: open_deals x avg_deal_value x win_rate / cycle_days_mean, reporting currency per day."),
    comment="Pipeline, wins, losses, cycle length and sales velocity per month and quarter (closed deals by close date, open pipeline at period end).",
)

deal_scores = _table(
    "deal_scores",
    sa.Column("as_of", sa.Date, primary_key=True, comment="The run date these rows describe (the end of that day, UTC)."),
    sa.Column("deal_id", ID, primary_key=True, comment="The open deal scored."),
    sa.Column("pipeline", NAME, nullable=False, comment="Pipeline of the deal."),
    sa.Column("stage", NAME, comment="Stage of the deal at as_of."),
    sa.Column("owner", NAME, comment="Sales rep who owns the deal."),
    sa.Column("amount_reporting", MONEY, comment="Deal amount at as_of, reporting currency."),
    sa.Column("expected_close_date", sa.Date, comment="Expected close date at as_of."),
    sa.Column("win_probability", RATE, nullable=False, comment="Calibrated probability that the deal is won (0-1)."),
    sa.Column("win_this_quarter_probability", RATE, nullable=False, comment="Probability that the deal is won within the current quarter (0-1)."),
    sa.Column("expected_value", MONEY, nullable=False, comment="amount_reporting x win_probability, reporting currency."),
    sa.Column("score_band", sa.String(16), nullable=False, comment="win_probability in words: very low (<10%), low (<30%), medium (<60%), high (<85%), very high."),
    sa.Column("top_factors", TEXT, nullable=False, comment="The factors that move the probability most, as a JSON list."),
    sa.Column("top_factors_text", TEXT, nullable=False, comment="The same factors in plain words."),
    sa.Column("model_version", sa.String(64), nullable=False, comment="The model_runs row that produced the score."),
    sa.Column("scoring_method", sa.String(32), nullable=False, comment="calibrated_model, stage_rate (empirical stage win rates) or crm_probability."),
    comment="Calibrated win probability of every open deal, with its reasons, per as_of.",
)

forecast_quarterly = _table(
    "forecast_quarterly",
    sa.Column("as_of", sa.Date, primary_key=True, comment="The run date these rows describe (the end of that day, UTC)."),
    sa.Column("quarter", sa.String(8), primary_key=True, comment="The fiscal quarter forecast (for example 2026-Q4)."),
    sa.Column("segment_type", sa.String(16), primary_key=True, comment="Segment type: all, pipeline, owner, team, product, region, lead_source or deal_type."),
    sa.Column("segment", NAME, primary_key=True, comment="Segment value within segment_type (all for the company total, (unknown) for blanks)."),
    sa.Column("closed_won_to_date", MONEY, nullable=False, comment="Amount already won in the quarter up to as_of, reporting currency."),
    sa.Column("expected", MONEY, nullable=False, comment="Mean revenue of the simulated quarters, reporting currency."),
    sa.Column("p10", MONEY, nullable=False, comment="Revenue with a 10% chance of landing at or below it, reporting currency."),
    sa.Column("p50", MONEY, nullable=False, comment="Median revenue, reporting currency."),
    sa.Column("p90", MONEY, nullable=False, comment="Revenue with a 90% chance of landing at or below it, reporting currency."),
    sa.Column("weighted_pipeline_crm", MONEY, nullable=False, comment="Open amount closing in the quarter x the CRM's probability, reporting currency."),
    sa.Column("open_deals", sa.BigInteger, nullable=False, comment="Open deals at as_of."),
    sa.Column("open_pipeline", MONEY, nullable=False, comment="Amount of the open deals expected to close in the quarter, reporting currency."),
    sa.Column("new_deals_expected", MONEY, nullable=False, comment="Expected revenue from deals not yet created, reporting currency."),
    sa.Column("quota", MONEY, comment="The quarter's quota from the quota file; NULL when none is set."),
    sa.Column("gap", MONEY, comment="quota - p50, reporting currency; NULL without a quota."),
    sa.Column("coverage", RATE, comment="open_pipeline / (quota - closed_won_to_date); NULL without a quota."),
    sa.Column("model_version", sa.String(64), nullable=False, comment="The model_runs row whose scores fed the forecast."),
    sa.Column("draws", sa.Integer, nullable=False, comment="Number of Monte Carlo draws."),
    comment="Revenue forecast per quarter and segment with P10/P50/P90 ranges, quota, gap and coverage, per as_of.",
)

model_runs = _table(
    "model_runs",
    sa.Column("model_version", sa.String(64), primary_key=True, comment="Identifier of the trained model (referenced by deal_scores and forecast_quarterly)."),
    sa.Column("as_of", sa.Date, nullable=False, comment="The run date the model was trained for."),
    sa.Column("trained_at", TS, nullable=False, comment="When the model was trained (UTC)."),
    sa.Column("scoring_method", sa.String(32), nullable=False, comment="calibrated_model, stage_rate (empirical stage win rates) or crm_probability."),
    sa.Column("eligible", sa.Boolean, nullable=False, comment="True when there was enough closed history to train the model."),
    sa.Column("fallback_reason", TEXT, comment="Why a fallback scorer is used instead of the model, in words; NULL when not."),
    sa.Column("has_history", sa.Boolean, nullable=False, comment="True when the source had stage history (False: trained without it, flagged no-history)."),
    sa.Column("data_window", sa.String(64), nullable=False, comment="Prediction dates covered and the date outcomes were read at."),
    sa.Column("train_rows", sa.BigInteger, nullable=False, comment="Snapshot rows used to fit the model."),
    sa.Column("calibration_rows", sa.BigInteger, nullable=False, comment="Snapshot rows used to calibrate the probabilities."),
    sa.Column("test_rows", sa.BigInteger, nullable=False, comment="Held-out snapshot rows (the latest prediction dates) used to evaluate it."),
    sa.Column("auc", RATE, comment="Area under the ROC curve on the test rows."),
    sa.Column("log_loss", RATE, comment="Log loss on the test rows."),
    sa.Column("brier", RATE, comment="Brier score on the test rows."),
    sa.Column("base_rate_brier", RATE, comment="Brier score of always predicting the training win rate, on the test rows."),
    sa.Column("ece", RATE, comment="Expected calibration error on the test rows (10 bins)."),
    sa.Column("crm_baseline_auc", RATE, comment="AUC of the CRM's stage probability on the same test rows."),
    sa.Column("crm_baseline_log_loss", RATE, comment="Log loss of the CRM's stage probability on the same test rows."),
    sa.Column("crm_baseline_brier", RATE, comment="Brier score of the CRM's stage probability on the same test rows."),
    sa.Column("stage_rate_baseline_auc", RATE, comment="AUC of the empirical win rate by stage and age on the same test rows."),
    sa.Column("stage_rate_baseline_log_loss", RATE, comment="Log loss of the empirical win rate by stage and age on the same test rows."),
    sa.Column("stage_rate_baseline_brier", RATE, comment="Brier score of the empirical win rate by stage and age on the same test rows."),
    sa.Column("beats_baselines", sa.Boolean, comment="True when the model's log loss beats both baselines; NULL when not evaluated."),
    sa.Column("reliability", TEXT, nullable=False, comment="Reliability table as JSON: per bin the mean predicted probability, observed win rate and count."),
    sa.Column("features", TEXT, nullable=False, comment="The model's input features as a JSON list."),
    sa.Column("params", TEXT, nullable=False, comment="The model's parameters as a JSON object."),
    sa.Column("artifact_path", TEXT, comment="Where the trained model file is kept."),
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
        TableSpec(pipeline_stages, "whole"),
        TableSpec(quarantine, "as_of"),
        TableSpec(data_quality_results, "as_of"),
        TableSpec(reconciliation, "as_of"),
        TableSpec(stage_conversion, "as_of"),
        TableSpec(stage_durations, "as_of"),
        TableSpec(velocity, "as_of"),
        TableSpec(deal_scores, "as_of"),
        TableSpec(forecast_quarterly, "as_of"),
        TableSpec(model_runs, "key", key=("model_version",)),
    )
}
