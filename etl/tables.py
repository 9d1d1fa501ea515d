"""The warehouse tables Dealcast writes: names, columns and types are a public interface that
finance and BI tools read (documented column by column in docs/warehouse.md).

Each table declares how a run replaces its rows:
- `as_of`  : history tables; a run replaces exactly the rows of its as_of (delete-then-insert).
- `whole`  : current-state tables; a run replaces every row (they describe the latest run's as_of).
- `key`    : registry tables; a run replaces the rows whose key it writes (e.g. one model_version).
Views `latest_<table>` show, for every `as_of` table, the rows of the newest as_of in
`published_nights` (the manifest a run writes when every table of its night has been written), so
a killed or half-finished night never shows in them. `published_nights` is written by
`Warehouse.publish_night` only, so it has no `TableSpec`.
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
    sa.Column("closed_at", TS, comment="When the deal was marked won or lost (UTC, from its stage history); NULL while open."),
    sa.Column("crm_close_date", sa.Date, comment="The close date the CRM reports the closed deal by (Salesforce CloseDate, HubSpot Close Date, Pipedrive won/lost time, a mapped close date); NULL while open."),
    sa.Column("booking_date", sa.Date, comment="The date the closed deal's amount is booked on in every table ([reporting] booking_date: the CRM close date, or the day it was marked closed; never after as_of); NULL while open."),
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
    sa.Column("is_contradictory", sa.Boolean, nullable=False, comment="True when this change contradicts the sales process or the deal's record: it moves the deal out of a won or lost stage (re-opened, or won turned lost), or it was added because the history ended in another status than the deal's record, which is taken as the truth."),
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
    sa.Column("is_contradictory", sa.Boolean, nullable=False, comment="True when entering this stage contradicts the sales process or the deal's record (see deal_history.is_contradictory), e.g. Closed Won -> Prospecting."),
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
    sa.Column("order_source", sa.String(16), nullable=False, comment="Where the pipeline's stage order comes from: configured (dealcast.toml, a reader setting or a mapping), crm (stated by the export, e.g. Salesforce StageSortOrder) or inferred (worked out from the export)."),
    sa.Column("order_basis", TEXT, comment="What the pipeline's stage order rests on, in words (for example the number of stage moves it was inferred from, or why it is a guess)."),
    sa.Column("stage_moves", sa.Integer, nullable=False, comment="Moves of the pipeline's deals from one open stage to another in deal_history (same on every row of the pipeline)."),
    sa.Column("backward_moves", sa.Integer, nullable=False, comment="How many of those moves go to an earlier open stage under this order."),
    sa.Column("backward_share", RATE, comment="backward_moves / stage_moves: how much the deals contradict the order; NULL when no deal moved between open stages (the order cannot be checked)."),
    sa.Column("as_of", sa.Date, nullable=False, comment="The run date this table was last written for (every row carries the latest run's as_of)."),
    comment="The stage order every table uses, where it comes from and how well the deals' moves fit it.",
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
    sa.Column("quarantined", sa.BigInteger, nullable=False, comment="Rows sent to the quarantine table, each with its reason, including rows left out on purpose (deleted in the CRM, earlier versions, a mapping's filter)."),
    sa.Column("excluded", sa.BigInteger, comment="Of the quarantined rows, those left out on purpose (reason codes excluded_by_filter, deleted_in_crm, inactive_version): no data defect. Rows read = accepted + (quarantined - excluded) + excluded."),
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
    sa.Column("unplaced", sa.BigInteger, nullable=False, comment="Deals of the row's pipeline, period and segment whose path through the stages is not recorded (no stage history): any_order, lost deals counted at the first stage only; in_order, deals left out of every count."),
    sa.Column("next_step_rate", RATE, comment="advanced / decided; NULL when decided is 0, or (any_order) when unplaced deals make it unknown."),
    sa.Column("stage_to_won_rate", RATE, comment="won / closed; NULL when closed is 0, or (any_order, from the second stage on) when unplaced deals make it unknown."),
    sa.Column("drop_off_rate", RATE, comment="lost_here / reached; NULL when reached is 0, or (any_order) when unplaced deals make it unknown."),
    sa.Column("rate_note", TEXT, comment="Why rates are NULL or leave deals out because stages were not recorded, with the number of deals; NULL when every rate is computed from every deal."),
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
    sa.Column("won_count", sa.BigInteger, nullable=False, comment="Deals won in the period (by booking date)."),
    sa.Column("lost_count", sa.BigInteger, nullable=False, comment="Deals lost in the period (by booking date)."),
    sa.Column("won_amount", MONEY, nullable=False, comment="Amount of the deals won in the period, reporting currency."),
    sa.Column("lost_amount", MONEY, nullable=False, comment="Amount of the deals lost in the period, reporting currency."),
    sa.Column("avg_deal_value", MONEY, comment="won_amount / won_count, reporting currency."),
    sa.Column("win_rate", RATE, comment="won_count / (won_count + lost_count)."),
    sa.Column("win_rate_value", RATE, comment="won_amount / (won_amount + lost_amount)."),
    sa.Column("cycle_won_count", sa.BigInteger, nullable=False, comment="Deals won in the period whose cycle length was recorded: wins created less than [warnings] keyed_at_close_hours before they were marked won (keyed in at close) are left out of the cycle columns."),
    sa.Column("cycle_days_median", DAYS, comment="Median days from creation to the moment marked won, of the cycle_won_count deals."),
    sa.Column("cycle_days_mean", DAYS, comment="Mean days from creation to the moment marked won, of the cycle_won_count deals."),
    sa.Column("cycle_days_p90", DAYS, comment="90th percentile of days from creation to the moment marked won, of the cycle_won_count deals."),
    sa.Column("velocity_per_day", MONEY, comment="Sales velocity: open_deals x avg_deal_value x win_rate / cycle_days_mean, reporting currency per day."),
    comment="Pipeline, wins, losses, cycle length and sales velocity per month and quarter (closed deals by booking date, open pipeline at period end).",
)

# --- People, products and quotas (etl/analytics/coaching.py) -----------------------------------

rep_funnel = _table(
    "rep_funnel",
    sa.Column("as_of", sa.Date, primary_key=True, comment="The run date these rows describe (the end of that day, UTC)."),
    sa.Column("pipeline", NAME, primary_key=True, comment="The pipeline whose stages the row describes."),
    sa.Column("owner", NAME, primary_key=True, comment="The sales rep ((unknown) for deals without an owner)."),
    sa.Column("stage", NAME, primary_key=True, comment="The open stage S."),
    sa.Column("team", NAME, nullable=False, comment="The rep's team: the team of most of the rep's deals ((unknown) when none has one)."),
    sa.Column("stage_order", sa.Integer, nullable=False, comment="Position of S in its pipeline (1 = first open stage)."),
    sa.Column("reached", sa.BigInteger, nullable=False, comment="The rep's deals that reached S (any-order funnel over all periods, as in stage_conversion)."),
    sa.Column("advanced", sa.BigInteger, nullable=False, comment="The rep's deals that reached the next stage (for the last open stage: won)."),
    sa.Column("decided", sa.BigInteger, nullable=False, comment="The rep's deals that reached S and then advanced or closed (the denominator of next_step_rate)."),
    sa.Column("won", sa.BigInteger, nullable=False, comment="The rep's deals that reached S and were won."),
    sa.Column("closed", sa.BigInteger, nullable=False, comment="The rep's deals that reached S and were closed won or lost (the denominator of stage_to_won_rate)."),
    sa.Column("next_step_rate", RATE, comment="advanced / decided; NULL when decided is 0."),
    sa.Column("stage_to_won_rate", RATE, comment="won / closed; NULL when closed is 0."),
    sa.Column("eligible", sa.Boolean, nullable=False, comment="True when the rep is named and reached S with at least the minimum number of deals (5 by default); only eligible reps count in team medians."),
    sa.Column("team_reps", sa.BigInteger, nullable=False, comment="Eligible reps of the team at S in this pipeline."),
    sa.Column("team_median_next_step_rate", RATE, comment="Median next_step_rate of the team's eligible reps at S (those with a rate); NULL when none has one."),
    sa.Column("next_step_rate_vs_team", RATE, comment="next_step_rate - team_median_next_step_rate; NULL unless the rep is eligible and both are known."),
    sa.Column("team_median_stage_to_won_rate", RATE, comment="Median stage_to_won_rate of the team's eligible reps at S (those with a rate); NULL when none has one."),
    sa.Column("stage_to_won_rate_vs_team", RATE, comment="stage_to_won_rate - team_median_stage_to_won_rate; NULL unless the rep is eligible and both are known."),
    sa.Column("is_weakest_stage", sa.Boolean, nullable=False, comment="True on the rep's one stage per pipeline where next_step_rate_vs_team is lowest and below 0: the coaching signal."),
    comment="Each rep's funnel against the median of the team's reps at every stage, with the rep's weakest stage flagged.",
)

deal_value_spread = _table(
    "deal_value_spread",
    sa.Column("as_of", sa.Date, primary_key=True, comment="The run date these rows describe (the end of that day, UTC)."),
    sa.Column("period_grain", sa.String(8), primary_key=True, comment="all (every deal won by as_of) or quarter (deals won in the quarter)."),
    sa.Column("period", sa.String(16), primary_key=True, comment="all, or the fiscal quarter of the booking date (for example 2026-Q4)."),
    sa.Column("segment_type", sa.String(16), primary_key=True, comment="Segment type: all, pipeline, owner, team, product, region, lead_source or deal_type."),
    sa.Column("segment", NAME, primary_key=True, comment="Segment value within segment_type (all for the company total, (unknown) for blanks)."),
    sa.Column("won_count", sa.BigInteger, nullable=False, comment="Deals won in the period (at least 1: segments without wins have no row)."),
    sa.Column("won_amount", MONEY, nullable=False, comment="Amount of those deals, reporting currency."),
    sa.Column("mean_value", MONEY, nullable=False, comment="won_amount / won_count: the average deal value, reporting currency."),
    sa.Column("median_value", MONEY, nullable=False, comment="Median amount of the won deals, reporting currency."),
    sa.Column("std_value", MONEY, comment="Sample standard deviation of the won amounts, reporting currency; NULL for a single deal."),
    sa.Column("p10_value", MONEY, nullable=False, comment="10th percentile of the won amounts, reporting currency."),
    sa.Column("p90_value", MONEY, nullable=False, comment="90th percentile of the won amounts, reporting currency."),
    sa.Column("min_value", MONEY, nullable=False, comment="Smallest won amount, reporting currency."),
    sa.Column("max_value", MONEY, nullable=False, comment="Largest won amount, reporting currency."),
    sa.Column("cv", RATE, comment="Coefficient of variation: std_value / mean_value; NULL when either is NULL or mean_value is 0."),
    comment="Spread of won deal values (count, mean, median, standard deviation, percentiles) per close quarter and segment.",
)

product_mix = _table(
    "product_mix",
    sa.Column("as_of", sa.Date, primary_key=True, comment="The run date these rows describe (the end of that day, UTC)."),
    sa.Column("period_grain", sa.String(8), primary_key=True, comment="month or quarter."),
    sa.Column("period", sa.String(16), primary_key=True, comment="The month (2026-11) or fiscal quarter (2026-Q4)."),
    sa.Column("product", NAME, primary_key=True, comment="Product or product family ((unknown) for deals without one)."),
    sa.Column("created_count", sa.BigInteger, nullable=False, comment="Deals of the product created in the period."),
    sa.Column("created_amount", MONEY, nullable=False, comment="Amount of those deals at as_of, reporting currency."),
    sa.Column("won_count", sa.BigInteger, nullable=False, comment="Deals of the product won in the period (by booking date)."),
    sa.Column("won_amount", MONEY, nullable=False, comment="Amount of those deals, reporting currency."),
    sa.Column("period_won_amount", MONEY, nullable=False, comment="Amount won in the period over all products, reporting currency."),
    sa.Column("won_share", RATE, comment="won_amount / period_won_amount; NULL when nothing was won in the period."),
    comment="Deals created and won per product per month and quarter, with each product's share of the period's won amount.",
)

revenue_growth = _table(
    "revenue_growth",
    sa.Column("as_of", sa.Date, primary_key=True, comment="The run date these rows describe (the end of that day, UTC)."),
    sa.Column("period_grain", sa.String(8), primary_key=True, comment="month or quarter."),
    sa.Column("period", sa.String(16), primary_key=True, comment="The month (2026-11) or fiscal quarter (2026-Q4)."),
    sa.Column("segment_type", sa.String(16), primary_key=True, comment="Segment type: all, pipeline, owner, team, product, region, lead_source or deal_type."),
    sa.Column("segment", NAME, primary_key=True, comment="Segment value within segment_type (all for the company total, (unknown) for blanks)."),
    sa.Column("complete", sa.Boolean, nullable=False, comment="False for the period containing as_of unless as_of is its last day (its figures cover only part of it)."),
    sa.Column("won_count", sa.BigInteger, nullable=False, comment="Deals won in the period (by booking date)."),
    sa.Column("won_amount", MONEY, nullable=False, comment="Amount of those deals, reporting currency."),
    sa.Column("previous_period", sa.String(16), comment="The period before; NULL for the table's first period."),
    sa.Column("previous_won_amount", MONEY, comment="won_amount of the previous period, reporting currency; NULL for the first period."),
    sa.Column("growth", RATE, comment="(won_amount - previous_won_amount) / previous_won_amount; NULL when the previous period is absent or won nothing."),
    comment="Won revenue per month and quarter and its growth over the previous period, per segment.",
)

ask_to_decision = _table(
    "ask_to_decision",
    sa.Column("as_of", sa.Date, primary_key=True, comment="The run date these rows describe (the end of that day, UTC)."),
    sa.Column("period_grain", sa.String(8), primary_key=True, comment="all (every deal closed by as_of) or quarter (deals closed in the quarter)."),
    sa.Column("period", sa.String(16), primary_key=True, comment="all, or the fiscal quarter of the booking date (for example 2026-Q4)."),
    sa.Column("segment_type", sa.String(16), primary_key=True, comment="Segment type: all, pipeline, owner, team, product, region, lead_source or deal_type."),
    sa.Column("segment", NAME, primary_key=True, comment="Segment value within segment_type (all for the company total, (unknown) for blanks)."),
    sa.Column("outcome", sa.String(8), primary_key=True, comment="won, lost or all (both)."),
    sa.Column("deals", sa.BigInteger, nullable=False, comment="Closed deals whose history shows them entering an ask stage ([analytics] ask_stages in dealcast.toml, else a proposal, quote or negotiation stage by name in en, es, fr, de, pt, it or nl); 0 on the row of a pipeline without an ask stage."),
    sa.Column("median_days", DAYS, comment="Median days from first entering an ask stage to the close; NULL for a pipeline without an ask stage."),
    sa.Column("mean_days", DAYS, comment="Mean days from first entering an ask stage to the close; NULL for a pipeline without an ask stage."),
    sa.Column("p90_days", DAYS, comment="90th percentile of days from first entering an ask stage to the close; NULL for a pipeline without an ask stage."),
    sa.Column("note", TEXT, comment="Pipeline rows: the pipeline's ask stages and how they were found, or that it has none and is not measured; all rows: the pipelines left out for lack of an ask stage."),
    comment="Time from ask (entering a proposal, quote or negotiation stage) to decision (won or lost), per booking quarter, segment and outcome.",
)

pipeline_coverage = _table(
    "pipeline_coverage",
    sa.Column("as_of", sa.Date, primary_key=True, comment="The run date these rows describe (the end of that day, UTC)."),
    sa.Column("quarter", sa.String(8), primary_key=True, comment="The fiscal quarter: the current one, the next one, and earlier ones that have a quota."),
    sa.Column("segment_type", sa.String(16), primary_key=True, comment="Segment type: all, or one the quota file names."),
    sa.Column("segment", NAME, primary_key=True, comment="Segment value within segment_type (all for the company total)."),
    sa.Column("quota", MONEY, comment="The quarter's quota from the quota file, reporting currency; NULL when none is set."),
    sa.Column("closed_won", MONEY, nullable=False, comment="Amount won with a booking date in the quarter up to as_of, reporting currency."),
    sa.Column("remaining", MONEY, comment="quota - closed_won, reporting currency; NULL without a quota."),
    sa.Column("open_deals", sa.BigInteger, nullable=False, comment="Deals in the quarter's open pipeline at as_of: open, expected to close in the quarter; for the current quarter also the overdue deals (expected close date already past); none for a past quarter. The same definition as forecast_quarterly and pipeline_waterfall."),
    sa.Column("open_pipeline", MONEY, nullable=False, comment="Amount of those open deals, reporting currency."),
    sa.Column("overdue_deals", sa.BigInteger, comment="Of open_deals, those whose expected close date is before as_of (current quarter only). NULL on nights written before this column existed."),
    sa.Column("overdue_pipeline", MONEY, comment="Amount of the overdue deals, part of open_pipeline, reporting currency. NULL on nights written before this column existed."),
    sa.Column("coverage", RATE, comment="open_pipeline / remaining; NULL when remaining is NULL or not positive."),
    sa.Column("rated_pipeline", MONEY, nullable=False, comment="Part of open_pipeline in stages with a historical stage-to-won rate, reporting currency."),
    sa.Column("stage_mix_win_rate", RATE, comment="Sum of amount x the stage's historical stage_to_won_rate / rated_pipeline; NULL when rated_pipeline is 0."),
    sa.Column("pipeline_needed", MONEY, comment="remaining / stage_mix_win_rate (0 when the quota is met), reporting currency; NULL when either is NULL or the rate is 0."),
    sa.Column("pipeline_gap", MONEY, comment="pipeline_needed - open_pipeline (positive: more pipeline is needed), reporting currency."),
    comment="Pipeline coverage of the remaining quota and the pipeline needed at the historical win rate of the open pipeline's stage mix, per quarter and quota segment.",
)

pipeline_snapshots = _table(
    "pipeline_snapshots",
    sa.Column("as_of", sa.Date, primary_key=True, comment="The run date these rows describe (the end of that day, UTC)."),
    sa.Column("snapshot_date", sa.Date, primary_key=True, comment="The day at whose end the pipeline is shown: every month's last day up to as_of, and as_of itself."),
    sa.Column("segment_type", sa.String(16), primary_key=True, comment="Segment type: all, pipeline, owner, team, product, region, lead_source or deal_type."),
    sa.Column("segment", NAME, primary_key=True, comment="Segment value within segment_type (all for the company total, (unknown) for blanks)."),
    sa.Column("pipeline", NAME, primary_key=True, comment="Pipeline of the open deals."),
    sa.Column("stage", NAME, primary_key=True, comment="The stage the open deals were in at snapshot_date ((unknown) when the source did not record it)."),
    sa.Column("stage_order", sa.Integer, comment="Position of the stage in its pipeline (1 = first open stage); NULL when unknown."),
    sa.Column("open_deals", sa.BigInteger, nullable=False, comment="Deals open at the end of snapshot_date in this stage."),
    sa.Column("pipeline_value", MONEY, nullable=False, comment="Their amount at that time, reporting currency."),
    sa.Column("weighted_pipeline_crm", MONEY, comment="Their amount x the CRM's probability at that time (else the stage's default), reporting currency; NULL when none has one."),
    sa.Column("stalled_deals", sa.BigInteger, nullable=False, comment="Of those, deals longer in the stage than its stall threshold (this run's thresholds)."),
    sa.Column("aged_deals", sa.BigInteger, nullable=False, comment="Of those, deals open longer than the p90 cycle length of their pipeline's won deals (this run's; wins keyed in at close left out)."),
    comment="The open pipeline as it stood at every month end and at as_of, by pipeline, stage and segment, per as_of.",
)

pipeline_waterfall = _table(
    "pipeline_waterfall",
    sa.Column("as_of", sa.Date, primary_key=True, comment="The run date these rows describe (the end of that day, UTC)."),
    sa.Column("period_grain", sa.String(8), primary_key=True, comment="month or quarter."),
    sa.Column("period", sa.String(16), primary_key=True, comment="The month (2026-11) or fiscal quarter (2026-Q4)."),
    sa.Column("segment_type", sa.String(16), primary_key=True, comment="Segment type: all, pipeline, owner, team, product, region, lead_source or deal_type."),
    sa.Column("segment", NAME, primary_key=True, comment="Segment value within segment_type (all for the company total, (unknown) for blanks)."),
    sa.Column("period_start", sa.Date, nullable=False, comment="First day of the period."),
    sa.Column("through_date", sa.Date, nullable=False, comment="Last day counted: the period's last day, or as_of for the current period."),
    sa.Column("start_value", MONEY, nullable=False, comment="The period's pipeline at its start: open deals expected to close by the period's last day (overdue included), reporting currency."),
    sa.Column("created", MONEY, nullable=False, comment="Deals created in the period straight into its pipeline, at their amount then."),
    sa.Column("pulled_in", MONEY, nullable=False, comment="Deals that entered the period's pipeline later: close date moved into the period, or a won or lost deal re-opened."),
    sa.Column("increased", MONEY, nullable=False, comment="Amount increases of deals while in the period's pipeline."),
    sa.Column("decreased", MONEY, nullable=False, comment="Amount decreases of deals while in the period's pipeline (a positive number)."),
    sa.Column("pushed_out", MONEY, nullable=False, comment="Deals that left the pipeline open: close date moved past the period's last day (or cleared)."),
    sa.Column("lost", MONEY, nullable=False, comment="Deals that left the pipeline lost (on their booking date), at their amount then."),
    sa.Column("won", MONEY, nullable=False, comment="Deals that left the pipeline won (on their booking date), at their amount then."),
    sa.Column("end_value", MONEY, nullable=False, comment="The period's pipeline at through_date; start_value + created + pulled_in + increased - decreased - pushed_out - lost - won."),
    sa.Column("deals_start", sa.BigInteger, nullable=False, comment="Deals in the pipeline at the period's start."),
    sa.Column("deals_created", sa.BigInteger, nullable=False, comment="Movements counted in created."),
    sa.Column("deals_pulled_in", sa.BigInteger, nullable=False, comment="Movements counted in pulled_in."),
    sa.Column("deals_increased", sa.BigInteger, nullable=False, comment="Amount increases counted in increased."),
    sa.Column("deals_decreased", sa.BigInteger, nullable=False, comment="Amount decreases counted in decreased."),
    sa.Column("deals_pushed_out", sa.BigInteger, nullable=False, comment="Movements counted in pushed_out."),
    sa.Column("deals_lost", sa.BigInteger, nullable=False, comment="Movements counted in lost."),
    sa.Column("deals_won", sa.BigInteger, nullable=False, comment="Movements counted in won."),
    sa.Column("deals_end", sa.BigInteger, nullable=False, comment="Deals in the pipeline at through_date; deals_start + deals_created + deals_pulled_in - deals_pushed_out - deals_lost - deals_won."),
    sa.Column("recorded_end_value", MONEY, nullable=False, comment="The same pipeline at through_date as a point-in-time rebuild of the stage history shows it, deals open until they were marked closed; end_value - recorded_end_value is what booking closed deals on their booking date moved, reporting currency."),
    sa.Column("recorded_deals_end", sa.BigInteger, nullable=False, comment="Deals in that point-in-time pipeline at through_date."),
    comment="How each month's and quarter's pipeline moved from start to end, exact to the cent, by segment, per as_of.",
)

stalled_deals = _table(
    "stalled_deals",
    sa.Column("as_of", sa.Date, primary_key=True, comment="The run date these rows describe (the end of that day, UTC)."),
    sa.Column("deal_id", ID, primary_key=True, comment="The open deal that is stalled or aged."),
    sa.Column("deal_name", TEXT, comment="The deal's name as written in the CRM."),
    sa.Column("pipeline", NAME, nullable=False, comment="Pipeline of the deal."),
    sa.Column("owner", NAME, comment="Sales rep who owns the deal."),
    sa.Column("team", NAME, comment="Sales team of the owner."),
    sa.Column("product", NAME, comment="Product or product family sold."),
    sa.Column("region", NAME, comment="Region or sales territory."),
    sa.Column("lead_source", NAME, comment="Where the deal came from (web, referral, partner, ...)."),
    sa.Column("deal_type", NAME, comment="Kind of deal (for example new business or expansion)."),
    sa.Column("stage", NAME, nullable=False, comment="Stage at as_of ((unknown) when the source did not record it)."),
    sa.Column("stage_entered_at", TS, comment="When the deal entered that stage (UTC)."),
    sa.Column("days_in_stage", DAYS, comment="Days in that stage up to the end of as_of."),
    sa.Column("threshold_days", DAYS, comment="The stage's stall threshold (stage_durations.stall_threshold_days for segment_type all); NULL when none."),
    sa.Column("is_stalled", sa.Boolean, nullable=False, comment="True when days_in_stage > threshold_days."),
    sa.Column("age_days", DAYS, nullable=False, comment="Days since the deal was created, up to the end of as_of."),
    sa.Column("aged_threshold_days", DAYS, comment="p90 of days from creation to close of the won deals of the pipeline whose cycle was recorded (wins keyed in at close left out; all pipelines when it has none); NULL when there are none."),
    sa.Column("is_aged", sa.Boolean, nullable=False, comment="True when age_days > aged_threshold_days."),
    sa.Column("amount_reporting", MONEY, comment="Deal amount at as_of, reporting currency."),
    sa.Column("expected_close_date", sa.Date, comment="Expected close date at as_of."),
    sa.Column("push_count", sa.Integer, nullable=False, comment="How many times the expected close date moved later up to as_of."),
    sa.Column("days_slipped", DAYS, nullable=False, comment="Days those pushes moved the expected close date later, in all."),
    sa.Column("last_pushed_at", TS, comment="When the expected close date was last pushed (UTC); NULL if never."),
    sa.Column("reason", TEXT, nullable=False, comment="Why the deal needs attention, in plain words."),
    comment="Open deals stalled in their stage or open longer than most won deals took, with close-date slips and the reason in words, per as_of.",
)

close_date_slips = _table(
    "close_date_slips",
    sa.Column("as_of", sa.Date, primary_key=True, comment="The run date these rows describe (the end of that day, UTC)."),
    sa.Column("deal_id", ID, primary_key=True, comment="The deal whose expected close date moved later."),
    sa.Column("changed_at", TS, primary_key=True, comment="When the push was recorded (UTC)."),
    sa.Column("pipeline", NAME, nullable=False, comment="Pipeline of the deal."),
    sa.Column("owner", NAME, comment="Sales rep who owns the deal."),
    sa.Column("team", NAME, comment="Sales team of the owner."),
    sa.Column("product", NAME, comment="Product or product family sold."),
    sa.Column("region", NAME, comment="Region or sales territory."),
    sa.Column("lead_source", NAME, comment="Where the deal came from (web, referral, partner, ...)."),
    sa.Column("deal_type", NAME, comment="Kind of deal (for example new business or expansion)."),
    sa.Column("stage", NAME, comment="Stage of the deal when it was pushed."),
    sa.Column("from_close_date", sa.Date, nullable=False, comment="Expected close date before the push."),
    sa.Column("to_close_date", sa.Date, nullable=False, comment="Expected close date after the push."),
    sa.Column("days_slipped", DAYS, nullable=False, comment="Days between from_close_date and to_close_date."),
    sa.Column("amount_reporting", MONEY, comment="Deal amount when it was pushed, reporting currency."),
    sa.Column("push_number", sa.Integer, nullable=False, comment="Pushes of the deal so far, this one included."),
    sa.Column("quarter", sa.String(8), nullable=False, comment="Fiscal quarter in which the push was recorded."),
    sa.Column("from_quarter", sa.String(8), nullable=False, comment="Fiscal quarter of from_close_date (the quarter the deal slipped out of, when to_quarter differs)."),
    sa.Column("to_quarter", sa.String(8), nullable=False, comment="Fiscal quarter of to_close_date."),
    comment="Every push of a deal's expected close date to a later date, with the days and value slipped, per as_of.",
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
    sa.Column("win_probability", RATE, nullable=False, comment="Calibrated probability that the deal is won within the label horizon from as_of (model_runs.params.maturity_days), 0-1."),
    sa.Column("win_this_quarter_probability", RATE, nullable=False, comment="Probability that the deal is won within the current quarter (0-1)."),
    sa.Column("expected_value", MONEY, nullable=False, comment="amount_reporting x win_probability, reporting currency."),
    sa.Column("score_band", sa.String(16), nullable=False, comment="win_probability in words: very low (<10%), low (<30%), medium (<60%), high (<85%), very high."),
    sa.Column("top_factors", TEXT, nullable=False, comment="The factors that move the probability most, as a JSON list."),
    sa.Column("top_factors_text", TEXT, nullable=False, comment="The same factors in plain words."),
    sa.Column("model_version", sa.String(64), nullable=False, comment="The model_runs row that produced the score."),
    sa.Column("scoring_method", sa.String(32), nullable=False, comment="The scorer that produced the score: constant_rate, crm_probability, stage_only_rate, stage_rate, logistic or calibrated_model (model_runs.scoring_method)."),
    sa.Column("scored_with", sa.String(32), nullable=False, comment="Which scorer produced the score: this_run_model (this run's fitted model, gradient boosting or logistic), earlier_model (the latest earlier gradient-boosting model, because it beat this run's published scorer on this run's held-out rows) or this_run_fallback (this run's published rate scorer: constant_rate, crm_probability, stage_only_rate or stage_rate)."),
    sa.Column("scoring_reason", TEXT, comment="Why this run's gradient-boosting model was not used, in words; NULL when it was."),
    comment="Calibrated win probability of every open deal, with its reasons, per as_of.",
)

forecast_quarterly = _table(
    "forecast_quarterly",
    sa.Column("as_of", sa.Date, primary_key=True, comment="The run date these rows describe (the end of that day, UTC)."),
    sa.Column("quarter", sa.String(8), primary_key=True, comment="The fiscal quarter forecast (for example 2026-Q4)."),
    sa.Column("segment_type", sa.String(16), primary_key=True, comment="Segment type: all, pipeline, owner, team, product, region, lead_source or deal_type."),
    sa.Column("segment", NAME, primary_key=True, comment="Segment value within segment_type (all for the company total, (unknown) for blanks)."),
    sa.Column("closed_won_to_date", MONEY, nullable=False, comment="Amount already won in the quarter up to as_of (by booking date), reporting currency."),
    sa.Column("expected", MONEY, nullable=False, comment="Expected (mean) revenue: closed_won_to_date + pipeline_expected + other_open_expected + new_deals_expected, exactly (revenue_calibration is already inside the open-deal parts); reporting currency."),
    sa.Column("p10", MONEY, nullable=False, comment="Revenue with a 10% chance of landing at or below it, reporting currency."),
    sa.Column("p50", MONEY, nullable=False, comment="Median revenue, reporting currency."),
    sa.Column("p90", MONEY, nullable=False, comment="Revenue with a 90% chance of landing at or below it, reporting currency."),
    sa.Column("weighted_pipeline_crm", MONEY, nullable=False, comment="open_pipeline's amounts x the CRM's probability (else the stage's default), reporting currency."),
    sa.Column("open_deals", sa.BigInteger, nullable=False, comment="Deals in the quarter's open pipeline at as_of: open, expected to close in the quarter; for the current quarter also the overdue deals. The same definition as pipeline_coverage and pipeline_waterfall."),
    sa.Column("open_pipeline", MONEY, nullable=False, comment="Amount of those open deals, reporting currency."),
    sa.Column("overdue_deals", sa.BigInteger, comment="Of open_deals, those whose expected close date is before as_of (current quarter only); forecast like every open deal, from the close-timing model. NULL on nights written before this column existed."),
    sa.Column("overdue_pipeline", MONEY, comment="Amount of the overdue deals, part of open_pipeline, reporting currency. NULL on nights written before this column existed."),
    sa.Column("pipeline_expected", MONEY, comment="Expected revenue from the deals of open_pipeline: the sum of their forecast_contributions.contribution, reporting currency. NULL on nights written before this column existed."),
    sa.Column("overdue_expected", MONEY, comment="Part of pipeline_expected from the overdue deals, reporting currency. NULL on nights written before this column existed."),
    sa.Column("other_open_expected", MONEY, comment="Expected revenue from open deals outside open_pipeline (expected to close in a later quarter, or without a close date) that the close-timing model gives a chance to win in this quarter, reporting currency. NULL on nights written before this column existed."),
    sa.Column("new_deals_expected", MONEY, nullable=False, comment=(
        "Expected revenue from deals not yet created, reporting currency. Per segment: the segment's own new-deal "
        "run-rate, drawn towards its share of the last year's won money, and its wins' amounts towards those of "
        "every past win of their quarter, when the run-rate rests on few wins (docs/modeling.md, Which segments "
        "the new deals land in)."
    )),
    sa.Column("new_deals_trend", MONEY, comment="What following the deal creation volume changed in new_deals_expected: the run-rate of each past quarter is scaled by how many times more deals were created in the year to as_of than in the year to that quarter's matching point (models.forecast.creation_growth); positive for a growing CRM, 0 with too little history, reporting currency. NULL on nights written before this column existed."),
    sa.Column("new_deals_imported", MONEY, comment="The part of new_deals_expected that comes from deals of the data's first day (a CRM's go-live import, where every deal open then gets the import as its creation date) won in a past quarter after its matching point, each weighted by the share of the other won deals that were keyed in at close (entered in the CRM at most a day before they show as won): an org that enters most deals only once won would have entered that share of them as new deals. 0 without such deals or habit, reporting currency. NULL on nights written before this column existed."),
    sa.Column("new_deals_keying_lag", MONEY, comment="The part of new_deals_expected that stands for past quarters' wins not keyed in yet at as_of: reps often key a win in days or weeks after it happened, with the close date set back, so the last weeks of a past quarter are only partly recorded. Each recorded win booked w days before as_of counts 1 / F(w) times, F(w) the share of wins keyed in within w days (models.keying.KeyingLag, from the lags of the recorded wins), at most 3 times; 0 where wins are keyed in on the day, reporting currency. NULL on nights written before this column existed."),
    sa.Column("revenue_calibration", MONEY, comment="What the revenue calibration changed in expected: the sum over open deals of amount x (revenue_factor - 1) x win_probability x close_in_quarter_probability (forecast_contributions); 0 without calibration, negative when large deals win less often than their scores say, reporting currency. NULL on nights written before this column existed."),
    sa.Column("outlier_deals", sa.BigInteger, comment="Open deals that can win in the quarter flagged as outliers (forecast_contributions.outlier: amount above [warnings] outlier_factor x the largest win, or expected to close before they were created). NULL on nights written before this column existed."),
    sa.Column("outlier_pipeline", MONEY, comment="Amount of those outlier deals, reporting currency. NULL on nights written before this column existed."),
    sa.Column("p90_without_outliers", MONEY, comment="P90 of the same draws with the outlier deals left out: p90 - p90_without_outliers is what the outliers add to the P90, reporting currency. NULL on nights written before this column existed."),
    sa.Column("not_yet_backtested", sa.Boolean, comment="True while no past quarter has a full quarter of history before it, so the forecast's accuracy has not been measured (forecast_backtest holds a status row saying why). NULL on nights written before this column existed."),
    sa.Column("quota", MONEY, comment="The quarter's quota from the quota file; NULL when none is set."),
    sa.Column("gap", MONEY, comment="quota - p50, reporting currency; NULL without a quota."),
    sa.Column("coverage", RATE, comment="open_pipeline / (quota - closed_won_to_date); NULL without a quota."),
    sa.Column("model_version", sa.String(64), nullable=False, comment="The model_runs row whose scores fed the forecast."),
    sa.Column("draws", sa.Integer, nullable=False, comment="Number of Monte Carlo draws."),
    comment="Revenue forecast per quarter and segment with P10/P50/P90 ranges, quota, gap and coverage, per as_of.",
)

forecast_contributions = _table(
    "forecast_contributions",
    sa.Column("as_of", sa.Date, primary_key=True, comment="The run date these rows describe (the end of that day, UTC)."),
    sa.Column("quarter", sa.String(8), primary_key=True, comment="The fiscal quarter forecast (as in forecast_quarterly)."),
    sa.Column("deal_id", ID, primary_key=True, comment="An open deal at as_of that is in the quarter's open pipeline or can win in the quarter."),
    sa.Column("pipeline", NAME, nullable=False, comment="Pipeline of the deal."),
    sa.Column("owner", NAME, comment="Sales rep who owns the deal."),
    sa.Column("team", NAME, comment="Sales team of the owner."),
    sa.Column("product", NAME, comment="Product or product family sold."),
    sa.Column("region", NAME, comment="Region or sales territory."),
    sa.Column("lead_source", NAME, comment="Where the deal came from (web, referral, partner, ...)."),
    sa.Column("deal_type", NAME, comment="Kind of deal (for example new business or expansion)."),
    sa.Column("stage", NAME, comment="Stage of the deal at as_of."),
    sa.Column("amount_reporting", MONEY, comment="Deal amount at as_of, reporting currency."),
    sa.Column("expected_close_date", sa.Date, comment="Expected close date at as_of."),
    sa.Column("win_probability", RATE, nullable=False, comment="The deal's win probability (deal_scores.win_probability; the CRM's, else the stage's, probability for a deal without a score)."),
    sa.Column("horizon_factor", RATE, comment="How many times win_probability the deal's chance of winning at all is: the score is a chance of winning within the scorer's label horizon H (model_runs.params maturity_days), so it is divided by the close-timing model's chance that the deal, if it wins, closes within H of as_of (read no lower than 0.25; 1 where the timing gives no chance, models.timing.horizon_factor), capped so that the product stays below 1. NULL on nights written before this column existed."),
    sa.Column("revenue_factor", RATE, nullable=False, comment="The revenue calibration factor of the deal's amount band (models.revenue_calibration: at the scorer's held-out dates a quarter or more before as_of, the amount the open deals of the band won within the next 91 days over the amount expected, relative to the deals' own ratio, shrunk towards 1 by 20 deals; without such dates, won amount / predicted amount on the scorer's held-out rows; 1 without either), capped so that win_probability x horizon_factor x revenue_factor stays below 1."),
    sa.Column("close_in_quarter_probability", RATE, nullable=False, comment="Probability that the deal, if it wins, closes inside the quarter (close-timing model)."),
    sa.Column("win_in_quarter_probability", RATE, nullable=False, comment="win_probability x horizon_factor x revenue_factor x close_in_quarter_probability: the chance the Monte Carlo gives the deal in every draw."),
    sa.Column("contribution", MONEY, nullable=False, comment="amount_reporting x win_in_quarter_probability: the deal's share of forecast_quarterly.expected, reporting currency."),
    sa.Column("in_open_pipeline", sa.Boolean, nullable=False, comment="True when the deal is in the quarter's open pipeline (forecast_quarterly.open_pipeline); False for a deal dated in another quarter or undated."),
    sa.Column("overdue", sa.Boolean, nullable=False, comment="True when the deal's expected close date is before as_of."),
    sa.Column("outlier", sa.Boolean, nullable=False, comment="True when the amount is above [warnings] outlier_factor x the largest deal won by as_of, or the expected close date is before the deal's creation."),
    sa.Column("outlier_reason", TEXT, comment="Why the deal is flagged, in words; NULL when it is not."),
    comment="Each open deal's expected contribution to a quarter's forecast: per segment, forecast_quarterly.expected = closed_won_to_date + the sum of contribution + new_deals_expected, per as_of.",
)

forecast_backtest = _table(
    "forecast_backtest",
    sa.Column("as_of", sa.Date, primary_key=True, comment="The run date whose data the backtest read (actuals are as known at the end of that day)."),
    sa.Column("quarter", sa.String(8), primary_key=True, comment="The past fiscal quarter that was forecast (for example 2026-Q3)."),
    sa.Column("checkpoint", sa.String(8), primary_key=True, comment="When in the quarter the forecast was made: start, week4 or week8."),
    sa.Column("segment_type", sa.String(16), primary_key=True, comment="Segment type: all, pipeline, owner, team, product, region, lead_source or deal_type."),
    sa.Column("segment", NAME, primary_key=True, comment="Segment value within segment_type (all for the company total, (unknown) for blanks)."),
    sa.Column("method", sa.String(16), primary_key=True, comment="Forecast method: ours (the deal model and close timing through the Monte Carlo), crm_weighted (closed won + open amount x CRM probability + new-deal run-rate) or stage_rate (empirical stage win rates through the same Monte Carlo)."),
    sa.Column("checkpoint_date", sa.Date, nullable=False, comment="The checkpoint day (quarter start, +28 or +56 days); the forecast used only what was known by 00:00 of it, i.e. the nightly run of the day before."),
    sa.Column("model_as_of", sa.Date, nullable=False, comment="The day whose end the scorer and close-timing model were trained at (the day before the quarter start, or before the checkpoint when retrained per checkpoint)."),
    sa.Column("expected", MONEY, comment="Mean forecast revenue for the quarter, reporting currency; NULL on a status row."),
    sa.Column("forecast_p50", MONEY, comment="Median (P50) forecast revenue for the quarter; the point forecast for crm_weighted, reporting currency; NULL on a status row."),
    sa.Column("p10", MONEY, comment="P10 forecast revenue, reporting currency; NULL for crm_weighted (a point forecast)."),
    sa.Column("p90", MONEY, comment="P90 forecast revenue, reporting currency; NULL for crm_weighted (a point forecast)."),
    sa.Column("actual", MONEY, comment="Amount actually won with a booking date inside the quarter, as known at as_of, reporting currency; NULL on a status row."),
    sa.Column("abs_error", MONEY, comment="abs(forecast_p50 - actual), reporting currency; NULL on a status row."),
    sa.Column("error", MONEY, comment="forecast_p50 - actual (positive: forecast too high), reporting currency; NULL on a status row."),
    sa.Column("within_interval", sa.Boolean, comment="True when p10 <= actual <= p90; NULL for crm_weighted."),
    sa.Column("model_version", sa.String(64), comment="Version of the scorer trained at model_as_of (not written to model_runs); NULL for crm_weighted."),
    sa.Column("scoring_method", sa.String(32), nullable=False, comment="The win probabilities used (for ours, what the scorer training chose then: its scoring_method); none on a status row."),
    sa.Column("status", sa.String(16), comment="backtested on a backtest row; not_backtested on the single status row written when no past quarter has a full quarter of history before it (quarter is then the first quarter that will qualify, its numbers NULL)."),
    sa.Column("status_reason", TEXT, comment="On the status row: why nothing was backtested, in words; NULL on backtest rows."),
    comment="Past quarters forecast again as of their start, week 4 and week 8 with only what was known then, per method, against the actual, per as_of.",
)

forecast_backtest_cache = _table(
    "forecast_backtest_cache",
    sa.Column("quarter", sa.String(8), primary_key=True, comment="The past fiscal quarter that was forecast again."),
    sa.Column("checkpoint", sa.String(8), primary_key=True, comment="When in the quarter the forecast was made: start, week4 or week8."),
    sa.Column("segment_type", sa.String(16), primary_key=True, comment="Segment type: all, pipeline, owner, team, product, region, lead_source or deal_type."),
    sa.Column("segment", NAME, primary_key=True, comment="Segment value within segment_type (all for the company total, (unknown) for blanks)."),
    sa.Column("method", sa.String(16), primary_key=True, comment="Forecast method: ours, crm_weighted or stage_rate (as in forecast_backtest)."),
    sa.Column("cache_key", sa.String(64), nullable=False, comment="SHA-256 of the backtest code version, the model and forecast settings and the deals and history as known at the quarter's end; a night reuses the quarter's rows only while its own key for the quarter is the same."),
    sa.Column("computed_as_of", sa.Date, nullable=False, comment="The run date of the night that computed these rows."),
    sa.Column("checkpoint_date", sa.Date, nullable=False, comment="The checkpoint day (quarter start, +28 or +56 days)."),
    sa.Column("model_as_of", sa.Date, nullable=False, comment="The day whose end the models were trained at."),
    sa.Column("expected", MONEY, comment="Mean forecast revenue for the quarter, reporting currency; NULL on a skipped quarter's row."),
    sa.Column("forecast_p50", MONEY, comment="Median (P50) forecast revenue, the point forecast for crm_weighted, reporting currency; NULL on a skipped quarter's row."),
    sa.Column("p10", MONEY, comment="P10 forecast revenue, reporting currency; NULL for crm_weighted."),
    sa.Column("p90", MONEY, comment="P90 forecast revenue, reporting currency; NULL for crm_weighted."),
    sa.Column("model_version", sa.String(64), comment="Version of the scorer trained at model_as_of; NULL for crm_weighted."),
    sa.Column("scoring_method", sa.String(32), nullable=False, comment="The win probabilities used (as in forecast_backtest); none on a skipped quarter's row."),
    sa.Column("skip_reason", TEXT, comment="Why the quarter could not be backtested (no scorer could be trained at that checkpoint), on its single row; NULL on forecast rows."),
    comment="The forecasts of each backtested past quarter, without actuals, kept between nights: a quarter is computed once and reused while its cache_key holds (forecast_backtest adds each night's actuals).",
)

model_runs = _table(
    "model_runs",
    sa.Column("model_version", sa.String(64), primary_key=True, comment="Identifier of the trained model (referenced by deal_scores and forecast_quarterly)."),
    sa.Column("as_of", sa.Date, nullable=False, comment="The run date the model was trained for."),
    sa.Column("trained_at", TS, nullable=False, comment="When the model was trained (UTC)."),
    sa.Column("scoring_method", sa.String(32), nullable=False, comment="The published scorer: constant_rate, crm_probability, stage_only_rate (win rate by stage), stage_rate (by stage and age), logistic or calibrated_model (gradient boosting)."),
    sa.Column("eligible", sa.Boolean, nullable=False, comment="True when there was enough closed history to fit the gradient-boosting model."),
    sa.Column("fallback_reason", TEXT, comment="Why the gradient-boosting model is not published, in words; NULL when it is."),
    sa.Column("has_history", sa.Boolean, nullable=False, comment="True when the source had stage history (False: trained without it, flagged no-history)."),
    sa.Column("data_window", sa.String(64), nullable=False, comment="Prediction dates covered and the date outcomes were read at."),
    sa.Column("train_rows", sa.BigInteger, nullable=False, comment="Snapshot rows before the test cut every candidate was fitted on."),
    sa.Column("calibration_rows", sa.BigInteger, nullable=False, comment="Training rows the gradient-boosting model's calibration was fitted on: the latest calibration_share of the dates (which also early-stop it), or every training row when the calibration is cross-fitted by deal (params.calibration_method sigmoid_cross_fitted); 0 when it was not fitted."),
    sa.Column("test_rows", sa.BigInteger, nullable=False, comment="Held-out snapshot rows (the latest prediction dates) used to evaluate it."),
    sa.Column("auc", RATE, comment="Area under the ROC curve of the published scorer on the test rows."),
    sa.Column("log_loss", RATE, comment="Log loss of the published scorer on the test rows."),
    sa.Column("brier", RATE, comment="Brier score of the published scorer on the test rows."),
    sa.Column("base_rate_brier", RATE, comment="Brier score of always predicting the training win rate, on the test rows."),
    sa.Column("ece", RATE, comment="Expected calibration error on the test rows (10 bins)."),
    sa.Column("crm_baseline_auc", RATE, comment="AUC of the CRM's stage probability on the same test rows."),
    sa.Column("crm_baseline_log_loss", RATE, comment="Log loss of the CRM's stage probability on the same test rows."),
    sa.Column("crm_baseline_brier", RATE, comment="Brier score of the CRM's stage probability on the same test rows."),
    sa.Column("stage_rate_baseline_auc", RATE, comment="AUC of the empirical win rate by stage and age on the same test rows."),
    sa.Column("stage_rate_baseline_log_loss", RATE, comment="Log loss of the empirical win rate by stage and age on the same test rows."),
    sa.Column("stage_rate_baseline_brier", RATE, comment="Brier score of the empirical win rate by stage and age on the same test rows."),
    sa.Column("beats_baselines", sa.Boolean, comment="True when the published scorer's log loss is at most both baselines'; NULL when not evaluated."),
    sa.Column("reliability", TEXT, nullable=False, comment="Reliability table as JSON: per bin the mean predicted probability, observed win rate and count."),
    sa.Column("features", TEXT, nullable=False, comment="The model's input features as a JSON list."),
    sa.Column("params", TEXT, nullable=False, comment="The model's parameters as a JSON object, among them `maturity_days` (the label horizon in days: a training row is won when the deal was won within it), `unresolved_deals` (deals still open at as_of among the training rows, labelled not won), `censored_deals` (deals still open at as_of left out because their stage history is not recorded), `stage_days_limits` (per pipeline, the largest days in stage among the training rows; beyond it a deal's odds are multiplied by limit / days in stage), `calibration_half_life_days` (a cross-fitted calibration weighs a training row by half per that many days before the latest training prediction date), `calibration_terms` (what a cross-fitted calibration reads: the log odds of the model's score, its excess over each of the knots `log_odds_of_score_beyond_q25`, `_q50` and `_q75` when it bends, log(1 + days in stage), its square and its product with the stage order) and `calibration_knots` (present when the training rows hold enough deals for the calibration to bend: the scores, as probabilities, at the quartiles of the training rows' out-of-fold scores; empty when a bent line would have fallen somewhere and was refitted straight)."),
    sa.Column("artifact_path", TEXT, comment="Where the trained model file is kept."),
    sa.Column("selection_reason", TEXT, comment="Why the published scorer won, in words: its held-out log loss beside every other candidate's, and why any candidate was not fitted."),
    sa.Column("candidates", TEXT, comment="Every candidate of the scorer ladder as a JSON list: method, tier (0 constant rate .. 5 gradient boosting), fitted, reason when not fitted, and held-out log_loss, auc, brier, ece."),
    sa.Column("constant_log_loss", RATE, comment="Held-out log loss of the constant win rate; the published scorer's log_loss is never above it."),
    sa.Column("split_rule", sa.String(16), comment="How the rows before the test cut were kept: purged (deals also tested and the embargo's days left out) or widened (every row before the cut, because the purge would have starved the training rows); NULL without a test cut."),
    sa.Column("split_note", TEXT, comment="The test cut in words: its date, the rows purged or embargoed, the rows kept, or why the window was widened."),
    sa.Column("train_won_deals", sa.BigInteger, comment="Deals with a training row won within the label horizon."),
    sa.Column("train_lost_deals", sa.BigInteger, comment="Deals with a training row not won within the label horizon (lost, won later, or still open at as_of); a deal won late counts in both."),
    sa.Column("test_won_deals", sa.BigInteger, comment="Deals with a held-out row won within the label horizon."),
    sa.Column("test_lost_deals", sa.BigInteger, comment="Deals with a held-out row not won within the label horizon."),
    sa.Column("creation_rows", sa.BigInteger, comment="Training rows taken at a deal's creation: deals never open on a prediction date, such as wins keyed in at close."),
    sa.Column("tier_change", TEXT, comment="When the published scorer's tier differs from the latest earlier run's: from which scorer to which and since which as_of; NULL when unchanged or for the first run."),
    comment="Every trained deal-scoring model: data window, parameters, features, every candidate's held-out metrics and why the published scorer won.",
)


data_quality_warnings = _table(
    "data_quality_warnings",
    sa.Column("as_of", sa.Date, primary_key=True, comment="The run date these rows describe (the end of that day, UTC)."),
    sa.Column("check_name", sa.String(64), primary_key=True, comment="The warning: wins_keyed_in_at_close, overdue_open_deals, close_date_before_creation, outlier_amounts, contradictory_history, pipeline_mostly_stalled or future_close_date (docs/data-quality.md)."),
    sa.Column("pipeline", NAME, primary_key=True, comment="The pipeline the row counts, or all for the whole CRM."),
    sa.Column("fired", sa.Boolean, nullable=False, comment="True when the warning fires: share above threshold, or any affected deal when threshold is NULL ([warnings] in dealcast.toml)."),
    sa.Column("severity", sa.String(8), nullable=False, comment="Always warning: nothing is quarantined and the run goes on."),
    sa.Column("population", sa.BigInteger, nullable=False, comment="Deals the warning looks at (for example the open deals, or the wins) at the end of as_of."),
    sa.Column("affected", sa.BigInteger, nullable=False, comment="Of those, the deals the warning is about."),
    sa.Column("share", RATE, comment="affected / population; NULL when population is 0."),
    sa.Column("affected_amount", MONEY, nullable=False, comment="Amount of the affected deals at the end of as_of, reporting currency."),
    sa.Column("threshold", RATE, comment="The share above which the warning fires; NULL when any affected deal fires it."),
    sa.Column("message", TEXT, nullable=False, comment="The counts in a sentence, as the UI and dealcast summary show them."),
    sa.Column("examples", TEXT, nullable=False, comment="Up to five affected deals, largest first, as a JSON list of {deal_id, deal_name, owner, pipeline, stage, amount_reporting, detail}."),
    comment="Non-blocking data-quality warnings a sales manager needs, with counts and examples, per as_of, for the whole CRM and each pipeline.",
)


published_nights = _table(
    "published_nights",
    sa.Column("as_of", sa.Date, primary_key=True, comment="A run date whose every table was written and verified."),
    sa.Column("run_id", sa.String(64), nullable=False, comment="The pipeline run that verified and published the night."),
    sa.Column("published_at", TS, nullable=False, comment="When the night was published (UTC)."),
    sa.Column("tables", TEXT, nullable=False, comment="The night's tables and their row counts, as a JSON object."),
    comment="The published-night manifest: the latest_* views show the newest as_of listed here, so a night's tables become visible together.",
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
        TableSpec(data_quality_warnings, "as_of"),
        TableSpec(stage_conversion, "as_of"),
        TableSpec(stage_durations, "as_of"),
        TableSpec(velocity, "as_of"),
        TableSpec(pipeline_snapshots, "as_of"),
        TableSpec(pipeline_waterfall, "as_of"),
        TableSpec(stalled_deals, "as_of"),
        TableSpec(close_date_slips, "as_of"),
        TableSpec(rep_funnel, "as_of"),
        TableSpec(deal_value_spread, "as_of"),
        TableSpec(product_mix, "as_of"),
        TableSpec(revenue_growth, "as_of"),
        TableSpec(ask_to_decision, "as_of"),
        TableSpec(pipeline_coverage, "as_of"),
        TableSpec(deal_scores, "as_of"),
        TableSpec(forecast_quarterly, "as_of"),
        TableSpec(forecast_contributions, "as_of"),
        TableSpec(forecast_backtest, "as_of"),
        TableSpec(forecast_backtest_cache, "key", key=("quarter",)),
        TableSpec(model_runs, "key", key=("model_version",)),
    )
}
