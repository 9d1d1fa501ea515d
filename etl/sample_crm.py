"""The sample CRM: a seeded simulation of a B2B sales organisation, written as Salesforce Data
Export files, together with the true win probability of every deal at every point of its history.

`make demo` and the end-to-end tests run the whole pipeline on it, and the deal-scoring model is
checked against its ground truth: on the sample, the log loss of the true probabilities is the best
any model can reach, so a model's log loss can be compared with it.

Files written to `out_dir` (the file names and columns are the contract the Salesforce reader reads)
------------------------------------------------------------------------------------------------
- `Opportunity.csv`, `OpportunityHistory.csv`, `Account.csv`, `User.csv`: Salesforce Data Export
  format: UTF-8, every value double-quoted (the header too), `\\n` line ends, timestamps
  `YYYY-MM-DD HH:MM:SS` in UTC, dates (`CloseDate`) as `YYYY-MM-DD 00:00:00`, booleans `0`/`1`,
  blanks as `""`. Standard field names as in a real export, plus `OPPORTUNITY_EXTRA_COLUMNS`
  (`CurrencyIsoCode` and the custom fields named in `dealcast.toml` [sources.salesforce]) and
  `HISTORY_EXTRA_COLUMNS` (`PrevAmount`, `PrevCloseDate`, filled as newer orgs do).
  `ForecastCategory` holds Salesforce's API values (`Pipeline`, `BestCase`, `Forecast` for commit,
  `Closed`, `Omitted`) and `ForecastCategoryName` the labels (`Pipeline`, `Best Case`, `Commit`,
  `Closed`, `Omitted`), chosen by stage: below 50% Pipeline, below 80% Best Case, else Commit.
  OpportunityHistory has one row at creation and one row per save that changed the stage, amount or
  close date, each the full state after the change; a closed deal's `CloseDate` is the date of its
  closing row.
- `quotas.csv`: quarter, segment_type (`all`, `team`, `pipeline`), segment, amount, for every quarter
  of the simulated span and the two after `end_date`: 1.1 times the revenue the simulation expects
  to win in that quarter (computed from its parameters, never from the drawn outcomes), rounded to
  the thousand. Quotas therefore follow the organisation's growth, and are small in the first
  quarter, when the CRM starts empty.
- `truth_win_probability.csv`: deal_id, changed_at, stage, true_win_probability: one row per
  OpportunityHistory row, in the same order (see "True win probability" below).

The organisation
----------------
Reps (about 12 + n_deals/2500, at most 500) work in teams of about eight; a team sits in a region
(North America, EMEA, APAC, LATAM) and has a focus (Enterprise, Commercial, Partners) that sets the
mix of its deals' pipelines and segments. Every rep has a hidden skill level (one of five), fixed
for the rep, so a model can learn it from the owner. Products (Core Platform, Analytics Add-on,
Enterprise Suite, Support Plan) and segments (SMB, Mid-Market, Enterprise) set the amount scale and
shift the dynamics. Deals are created over `years` up to `end_date`, growing about 25% a year, with
fewer new deals in summer and late December.

Dynamics (the hidden ground truth)
----------------------------------
Time runs in weeks, Monday 00:00 UTC to Monday 00:00 UTC; week k starts on 1970-01-05 + 7k days
(its "boundary"). At a boundary an open deal's state is (pipeline, open stage, weeks in stage
0..26, effect class), where the effect class is (owner's skill level, product, segment). During
week k each open deal makes one step: advance one stage, skip one, move back one, be lost, be won
(from the last open stage, rarely from the one before) or stay (weeks in stage + 1, capped at 26).
The step's probabilities depend only on that state and on the calendar of week k (more wins and a
pipeline clean-up in the last month of the quarter, less of everything in July-August and late
December): advancing and winning get less likely the longer a deal sits in a stage, losing more
likely (stale deals die). A deal created in week k makes its first step in week k+1.
Every change happens on a weekday between 06:00 and 20:00 UTC, and a deal changes at most once a
week: the stage move, the amount revision it brings (on entering the proposal stage) and the
close-date move are one save, one history row. Amount changes and close-date moves (a push of 2-12
weeks when the expected close date passes while the deal is open, an occasional pull-in) are drawn
independently of the future steps, so they carry no information beyond the state.

True win probability
--------------------
V_b(state) is the exact probability that a deal in `state` at boundary b is eventually won,
computed by backward induction over the calendar weeks with the same step probabilities the
simulation draws from (exact to 1e-10: the induction runs far enough ahead that fewer than 1e-10 of
deals are still open at its horizon). From timestamps, with week(t) = floor((t - 1970-01-05 00:00)
/ 7 days) and e = when the current stage was entered (`stage_entered_at`):

    b = week(t) + 1 if t is on or after Friday 20:00 of its week, else week(t)
    b = week(e) + 1 if the stage was entered in week b or later (a step of this week is known)
    weeks_in_stage = min(b - week(e) - 1, 26)

`SampleWorld.true_win_probability(frame)` returns V_b(pipeline, stage, weeks_in_stage, class) for
open rows of a `pipeline_at_many` frame (1 for won, 0 for lost). It is exact for a snapshot outside
the weekday 06:00-20:00 change window (Monday 00:00 as in `W-MON` snapshots, a weekend, the end of
a Saturday or Sunday) and for a deal whose stage changed earlier in the snapshot's week; inside the
window otherwise it is the value at the start of that week. The truth file gives, for each history
row written in week k, V_(k+1) of the state after the change: exact, because the row is the deal's
only change of week k.

The messy profile: a small, untidy real org
-------------------------------------------
`generate_sample(out_dir, profile="messy")` (or `messy=MessyOptions(...)`; command line
`--profile messy --option NAME=VALUE`) simulates the same weekly process (the org's real life) and
writes what an untidy org's CRM shows of it: 720 real deals over one year by default (any n_deals
and years work), of which about 460 reach the CRM and the export; one pipeline "Ventas" with
Spanish stage names (Prospección, Calificación, Análisis de necesidades, Propuesta de valor,
Propuesta/Presupuesto, Negociación/Revisión, Cerrada ganada, Cerrada perdida). The pipeline is not in
dealcast.toml: the Salesforce reader takes its order from the export's StageSortOrder, IsClosed and
IsWon, as for any real org; StageSortOrder keeps the gaps of Salesforce's default picklist (1-4, 7,
8, 9, 10: two standard stages deactivated). The shapes, each a `MessyOptions` knob (on by default
unless said; shares are exact counts, round(share x eligible), drawn at random, each knob from its
own random stream):
- `import_at` (0.25): the CRM goes live with a bulk import at 09:00 UTC on the Saturday on or after
  that share of the span. Every deal created before is imported then, in its state of that moment:
  CreatedDate = the import moment for all of them, one history row at it, nothing of their earlier
  life; deals closed before it come in closed, with their real CloseDate (before their CreatedDate).
  Shape `imported`. The other shapes apply to what happens after the import.
- `keyed_at_close_share` (0.7 of the deals created after the import, drawn before anything about
  them is decided): the rep enters the deal only once it is decided. A won one is created at the
  moment of its win, in the stage it was really in, and closed 1 minute to 3 hours later the same
  day, CloseDate that day; so are `keyed_at_close_lost_share` (0.3) of the lost ones. Shape
  `keyed_at_close`: never open on a weekly (or daily) snapshot. The other lost ones and those still
  undecided at `end_date` never reach the CRM: shape `never_entered`, in the truth files only.
- `no_history_share` (0.3 of keyed-at-close deals not keyed late): no OpportunityHistory row at
  all; CreatedDate and CloseDate on the same day. Shape `no_history`.
- `last_minute_stage_share` (0.5 of the deals in the CRM before they are decided whose first CRM
  stage is not the last open stage, drawn before anything is decided): stage moves are never
  recorded; amount and close-date changes are, in the stage the deal was created in. A won one
  enters the last open stage at its win and is closed 1 minute to 3 hours later; a lost one goes
  from its first stage to lost. Shape `last_minute_stage`.
- `late_keyed_share` (0.3 of won deals, keyed at close or not, whose keying still falls before
  `end_date`): the close is keyed in `late_keyed_days` (7-56) days after the win (moved off a
  weekend), with CloseDate the day of the real win, earlier than the closing history row (for a
  keyed-at-close deal, earlier than its CreatedDate). Shape `late_keyed`.
- `stale_share` (0.6 of lost deals that were in the CRM before their loss): the loss is never
  recorded. The deal stays open in the stage and with the CloseDate of its last recorded row,
  overdue once that date passes, ageing. Shape `stale`.
- `purge_every_months` (3) and `purge_overdue_days` (30): at 17:00:00 UTC on the last Friday of every
  third month after the go-live month, a purge closes as lost, all with that one timestamp, every
  stale deal already dead whose CloseDate is at least 30 days past; Amount and CloseDate unchanged,
  no loss reason. Shape `purged` (always also `stale`); stale deals not caught stay open.
- `lost_future_close_share` (0.4 of recorded losses whose expected close date was at least a week
  after the loss): closed lost with the CloseDate left at that future date. Shape `lost_future_close`.
- `outlier_deals` (1): stale deals never touched after their creation (one history row, not purged)
  that show 6 times the largest real win (rounded to the thousand) as their amount and a CloseDate
  10-60 days before their creation, on every row. Shape `outlier`; `amount_reporting` in the truth
  keeps the real amount.
- off by default: `encoding="cp1252"` writes the four Salesforce files in Windows-1252;
  `currencies=("USD", "MXN", ...)` gives each deal one of them at random, its amounts in that
  currency at the rate of its CRM creation day, and writes `exchange_rates.csv` (date,currency,rate:
  weekly, into USD; set `[currency] rates_file = "exchange_rates.csv"` to read it);
  `loss_reason_field="LossReason__c"` puts the loss reasons in a custom field dealcast.toml does not
  name, as orgs that made their own do.
`MessyOptions.off()` turns every shape off (and keeps the project's stages): the files are then
byte for byte the clean profile's. A deal may have several shapes (keyed at close and late; stale
and purged; imported and stale, ...). Bookings: every won deal reaches the CRM and its CloseDate is
the real day of its win, so quarter actuals taken from the export by CloseDate are the real won
revenue (`SampleTruth.quarter_bookings`).

Truth in the messy profile: the real world, not what the CRM shows
-------------------------------------------------------------------
The true win probability of a deal at moment t is that of its real state at t, whatever the CRM
shows: 1 once it is really won (a win not keyed in yet, the creation and closing rows of a deal
keyed in at close), 0 once it is really lost (a stale deal from its hidden loss on, a purge row),
else V_b of its real open state (real stage, real weeks in stage): for a last-minute deal the stage
it really reached, not the one the CRM still shows; for an imported deal its real age in stage.
b is the next Monday when t is past Friday 20:00 or the deal already made this week's step (it has
a real change this week by t), else the Monday the week started. Which deals the CRM shows, and
how, is drawn independently of how they will end (the two habits above before anything is
decided; late keying, staleness, purges and future close dates at or after the close), so for the
deals the CRM shows open the truth is exactly the probability given everything that has really
happened: calibrated on them, and the best any model can do. `truth_win_probability.csv` gives it
for every history row written (same columns as the clean profile), and
`SampleTruth.true_win_probability(frame)` at any `snapshot_at` of a `pipeline_at_many` frame.

Files the messy profile adds (plain CSV, UTF-8):
- `truth_deals.csv`, one row per real deal in order of real creation (the order of Opportunity.csv,
  with the deals never entered in between): deal_id, pipeline, owner_id, team, product, segment,
  skill_level (hidden rep skill, 0-4), real_outcome (won/lost/open), real_created_at,
  real_closed_at (the real moment of the win or loss), real_close_date (its day: the real booking
  date), hidden_loss_at (stale deals: when they were really lost), crm_created_at (CreatedDate),
  crm_closed_at (when the CRM shows it closed: the keyed-in moment), crm_status (open/won/lost as
  exported), crm_close_date (CloseDate), amount and currency (as exported), amount_reporting (the
  real amount in USD), and one 0/1 column per shape: imported, keyed_at_close, never_entered, no_history,
  last_minute_stage, late_keyed, stale, purged, lost_future_close, outlier. The crm_* columns,
  amount and currency are blank for a deal never entered.
- `truth_real_history.csv`: deal_id, changed_at, stage, amount_reporting, close_date: every
  simulated change (the org's real life, recorded or not), in time order.
- `truth_sample.json`: seed, size, span, stages, options, the import moment and purge moments, and
  the number of deals given each shape; `SampleTruth.load(out_dir)` rebuilds the world from it.
- `dealcast_pipelines.toml`: the `[[pipelines]]` blocks that would configure the sample's stage
  order in dealcast.toml. The export states the order through StageSortOrder, a field of
  Opportunity only: with few deals a stage may hold no deal on the export date (it is then only in
  the history, with no sort order), as in a real small org's export; the reader must then place it
  from the history, or the pipeline be configured with these blocks.

Python API of the messy profile
-------------------------------
- `generate_sample(out_dir, n_deals=None, seed=7, end_date=None, years=None, stages=None,
  profile=None, messy=None) -> SampleSummary`; `profile` "clean" or "messy" (None: messy when
  `messy` is given); `SampleSummary.profile` and `.shapes` (deals per shape); its n_deals and
  won/lost/open count the deals as exported.
- `MessyOptions(...)` (frozen; every field above), `MessyOptions.off()`,
  `MessyOptions().with_assignments(["stale_share=0.3", ...])`; `SHAPES` names the shapes.
- `SampleTruth.load(out_dir)`: `.deals` (truth_deals.csv typed: timestamps, dates, integers, amount
  nullable, one bool column per shape), `.real_history`, `.world` (the `SampleWorld`), `.options`,
  `.import_at`, `.purges`; `.true_win_probability(frame)` (frame columns deal_id, snapshot_at);
  `.quarter_bookings()` (quarter, segment_type, segment, won_deals, won_amount, expected_won_amount).
- `SampleWorld.expected_won_revenue()`: the won revenue the parameters expect per quarter and
  segment (the quotas are 1.1 times it, rounded to the thousand).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from etl.config import ConfigError, SalesforceSourceConfig, load_project_config
from etl.periods import period_bounds, quarter_label, quarter_labels
from etl.stages import STATUS_LOST, STATUS_OPEN, STATUS_WON, PipelineStages, StageCatalog

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# File contract
# ----------------------------------------------------------------------------------------------
OPPORTUNITY_FILE = "Opportunity.csv"
HISTORY_FILE = "OpportunityHistory.csv"
ACCOUNT_FILE = "Account.csv"
USER_FILE = "User.csv"
QUOTA_FILE = "quotas.csv"
TRUTH_FILE = "truth_win_probability.csv"

OPPORTUNITY_COLUMNS = (
    "Id", "IsDeleted", "AccountId", "IsPrivate", "Name", "Description", "StageName", "StageSortOrder",
    "Amount", "Probability", "ExpectedRevenue", "TotalOpportunityQuantity", "CloseDate", "Type",
    "NextStep", "LeadSource", "IsClosed", "IsWon", "ForecastCategory", "ForecastCategoryName",
    "CampaignId", "HasOpportunityLineItem", "Pricebook2Id", "OwnerId", "CreatedDate", "CreatedById",
    "LastModifiedDate", "LastModifiedById", "SystemModstamp", "LastActivityDate", "LastStageChangeDate",
    "FiscalYear", "FiscalQuarter", "PrimaryPartnerAccountId", "ContractId",
)  # fmt: skip
HISTORY_COLUMNS = (
    "Id", "OpportunityId", "CreatedById", "CreatedDate", "CreatedDateForInsert", "StageName", "Amount",
    "ExpectedRevenue", "CloseDate", "Probability", "FromForecastCategory", "ForecastCategory",
    "PrevForecastUpdate", "FromOpportunityStageName", "PrevOpportunityStageUpdate", "ValidThroughDate",
    "SystemModstamp", "IsDeleted",
)  # fmt: skip
HISTORY_EXTRA_COLUMNS = ("PrevAmount", "PrevCloseDate")
ACCOUNT_COLUMNS = (
    "Id", "IsDeleted", "MasterRecordId", "Name", "Type", "ParentId", "BillingStreet", "BillingCity",
    "BillingState", "BillingPostalCode", "BillingCountry", "BillingLatitude", "BillingLongitude",
    "BillingGeocodeAccuracy", "ShippingStreet", "ShippingCity", "ShippingState", "ShippingPostalCode",
    "ShippingCountry", "ShippingLatitude", "ShippingLongitude", "ShippingGeocodeAccuracy", "Phone", "Fax",
    "AccountNumber", "Website", "Sic", "Industry", "AnnualRevenue", "NumberOfEmployees", "Ownership",
    "TickerSymbol", "Description", "Rating", "Site", "OwnerId", "CreatedDate", "CreatedById",
    "LastModifiedDate", "LastModifiedById", "SystemModstamp", "LastActivityDate", "Jigsaw",
    "JigsawCompanyId", "CleanStatus", "AccountSource", "DunsNumber", "Tradestyle", "NaicsCode",
    "NaicsDesc", "YearStarted", "SicDesc", "DandbCompanyId",
)  # fmt: skip
USER_COLUMNS = ("Id", "Name", "FirstName", "LastName", "Department", "Division", "Title", "IsActive", "UserRoleId")
QUOTA_COLUMNS = ("quarter", "segment_type", "segment", "amount")
TRUTH_COLUMNS = ("deal_id", "changed_at", "stage", "true_win_probability")
CURRENCY = "USD"


def opportunity_extra_columns(fields: SalesforceSourceConfig | None = None) -> tuple[str, ...]:
    """The Opportunity columns after the standard ones: the currency and the custom fields."""
    f = fields or SalesforceSourceConfig()
    return ("CurrencyIsoCode", f.pipeline_field, f.product_field, f.region_field, f.segment_field, f.lost_reason_field)


OPPORTUNITY_EXTRA_COLUMNS = opportunity_extra_columns()

# ----------------------------------------------------------------------------------------------
# Calendar of the simulation
# ----------------------------------------------------------------------------------------------
DAY_SECONDS = 86_400
WEEK_SECONDS = 7 * DAY_SECONDS
EPOCH_MONDAY_DAY = 4  # 1970-01-05, a Monday, is day 4 after the Unix epoch
EPOCH_MONDAY = dt.date(1970, 1, 5)
EVENT_HOURS = (6, 20)  # changes happen on weekdays between 06:00 and 20:00 UTC
WINDOW_END_SECONDS = 4 * DAY_SECONDS + EVENT_HOURS[1] * 3600  # Friday 20:00 after the week's Monday
WEEKS_IN_STAGE_CAP = 26
TRUTH_TOLERANCE = 1e-10

# Step outcomes, in the order their probabilities are stacked.
ADVANCE, SKIP, BACK, LOST, WON, STAY = range(6)
STEP_EVENTS = ("advance", "skip", "back", "lost", "won", "stay")
_STAGE_DELTA = np.array([1, 2, -1, 0, 0, 0], dtype=np.int16)
# Which calendar factor (forward, back, lost, won) scales each step outcome.
_SEASON_OF_EVENT = np.array([0, 0, 1, 2, 3])

# ----------------------------------------------------------------------------------------------
# The organisation's parameters
# ----------------------------------------------------------------------------------------------
SEGMENTS = ("SMB", "Mid-Market", "Enterprise")
_SEGMENT_EFFECT = np.array([-0.15, 0.0, 0.2])
_SEGMENT_SPEED = np.array([1.35, 1.0, 0.7])
_SEGMENT_AMOUNT = np.array([9_000.0, 32_000.0, 110_000.0])  # median deal size, Core Platform
_SEGMENT_CLOSE_FACTOR = np.array([0.75, 1.0, 1.4])
_SEGMENT_ACCOUNT_SHARE = np.array([0.5, 0.33, 0.17])
_SEGMENT_EMPLOYEES = ((10, 199), (200, 1_999), (2_000, 60_000))

PRODUCTS = ("Core Platform", "Analytics Add-on", "Enterprise Suite", "Support Plan")
_PRODUCT_EFFECT = np.array([0.0, 0.25, -0.3, 0.4])
_PRODUCT_SPEED = np.array([1.0, 1.15, 0.8, 1.25])
_PRODUCT_AMOUNT = np.array([1.0, 0.4, 2.5, 0.25])
# Product mix by segment, multiplied into the pipeline kind's mix.
_SEGMENT_PRODUCT_TILT = np.array([[1.2, 1.0, 0.2, 1.2], [1.0, 1.0, 1.0, 1.0], [0.8, 1.0, 2.0, 0.8]])

SKILL_LEVELS = np.array([-0.6, -0.3, 0.0, 0.3, 0.6])  # log-scale effect of a rep's skill
_SKILL_SHARES = np.array([0.12, 0.22, 0.32, 0.22, 0.12])
_EFFECT_SLOPE = 0.3  # forward and win hazards x exp(0.3 * effect), loss hazard x exp(-0.3 * effect)

_AMOUNT_SIGMA = 0.6
_REVISION_SIGMA = 0.2
_REVISION_SHARE = 0.7  # share of deals whose amount is revised on entering the proposal stage
_AMOUNT_CHANGE_RATE = 0.02  # weekly chance of another amount change of an open deal
_AMOUNT_CHANGE_SIGMA = 0.15
_PULL_IN_RATE = 0.012  # weekly chance of pulling the close date in, when it is 5+ weeks out
_GROWTH_PER_YEAR = 0.25
QUOTA_STRETCH = 1.1

# Per pipeline kind: weekly advance rate, weekly win rate at the last stage, and the win rate the
# loss rates are set for before stale losses (the realised rate is lower).
_KIND_DYNAMICS = {
    "new_business": {"advance": 0.30, "won": 0.30, "target": 0.42},
    "expansion": {"advance": 0.28, "won": 0.30, "target": 0.62},
    "channel": {"advance": 0.26, "won": 0.28, "target": 0.39},
}
_SKIP_SHARE = 0.12  # share of forward moves that skip a stage
_BACK_RATE = 0.025  # weekly rate of moving back a stage
_EARLY_WIN_RATE = 0.02  # weekly rate of winning from the stage before the last
_KIND_AMOUNT = {"new_business": 1.0, "expansion": 0.6, "channel": 0.8}
_KIND_CLOSE_WEEKS = {"new_business": (8, 20), "expansion": (4, 10), "channel": (6, 14)}
_KIND_PRODUCTS = {
    "new_business": np.array([0.5, 0.1, 0.25, 0.15]),
    "expansion": np.array([0.15, 0.35, 0.2, 0.3]),
    "channel": np.array([0.6, 0.2, 0.0, 0.2]),
}

REGIONS = ("North America", "EMEA", "APAC", "LATAM")
_REGION_CODES = ("NA", "EMEA", "APAC", "LATAM")
_TEAM_REGION_CYCLE = (0, 1, 0, 2, 1, 0, 3, 2)
TEAM_FOCI = ("Enterprise", "Commercial", "Partners")
_TEAM_FOCUS_CYCLE = (0, 1, 2, 1, 0, 1)
_FOCUS_KINDS = {  # pipeline kind mix by team focus
    "Enterprise": {"new_business": 0.65, "expansion": 0.35, "channel": 0.0},
    "Commercial": {"new_business": 0.7, "expansion": 0.3, "channel": 0.0},
    "Partners": {"new_business": 0.15, "expansion": 0.0, "channel": 0.85},
}
_FOCUS_SEGMENTS = {"Enterprise": (0.0, 0.3, 0.7), "Commercial": (0.6, 0.4, 0.0), "Partners": (0.5, 0.4, 0.1)}
_FOCUS_TITLES = {
    "Enterprise": "Enterprise Account Executive",
    "Commercial": "Account Executive",
    "Partners": "Channel Account Manager",
}
_REPS_PER_TEAM = 8

LEAD_SOURCES = (
    "Web", "Phone Inquiry", "Partner", "Purchased List", "Trade Show", "Employee Referral",
    "External Referral", "Word of mouth", "Public Relations", "Advertisement", "Other",
)  # fmt: skip
_KIND_LEAD_SOURCES = {
    "new_business": (0.28, 0.1, 0.04, 0.1, 0.14, 0.07, 0.1, 0.05, 0.04, 0.05, 0.03),
    "expansion": (0.12, 0.2, 0.0, 0.0, 0.08, 0.05, 0.05, 0.2, 0.05, 0.0, 0.25),
    "channel": (0.03, 0.02, 0.85, 0.0, 0.03, 0.0, 0.02, 0.0, 0.0, 0.0, 0.05),
}
DEAL_TYPES = (
    "New Customer", "Existing Customer - Upgrade", "Existing Customer - Replacement",
    "Existing Customer - Downgrade",
)  # fmt: skip
_KIND_DEAL_TYPES = {
    "new_business": (1.0, 0.0, 0.0, 0.0),
    "expansion": (0.0, 0.7, 0.15, 0.15),
    "channel": (0.8, 0.2, 0.0, 0.0),
}
LOSS_REASONS = ("No Budget", "Product Fit", "Timing", "Unresponsive", "Lost to Competitor", "Price", "No Decision")
_LOSS_REASON_MIX = np.array(
    [
        [0.3, 0.2, 0.2, 0.2, 0.1, 0.0, 0.0],  # lost in the first half of the stages
        [0.0, 0.0, 0.15, 0.0, 0.35, 0.3, 0.2],  # lost in the second half
        [0.0, 0.0, 0.15, 0.5, 0.0, 0.0, 0.35],  # lost after 10+ weeks in the stage
    ]
)
_STALE_LOSS_WEEKS = 10

_FIRST_NAMES = (
    "Aaliyah", "Adrian", "Aisha", "Alejandro", "Amelia", "Andre", "Anika", "Ben", "Bianca", "Carlos",
    "Chen", "Chloe", "Daniel", "Deepa", "Diego", "Elena", "Emeka", "Emma", "Fatima", "Felix", "Grace",
    "Hannah", "Hiro", "Ines", "Isaac", "Jamal", "Jana", "Javier", "Julia", "Kai", "Kenji", "Lara",
    "Leo", "Lucia", "Maya", "Mateo", "Mei", "Mohammed", "Nadia", "Noah", "Olga", "Omar", "Priya",
    "Rafael", "Rahul", "Rosa", "Sam", "Sara", "Sofia", "Tariq", "Thomas", "Valentina", "Victor",
    "Wei", "Yara", "Yusuf", "Zoe", "Lukas", "Ingrid", "Pedro",
)  # fmt: skip
_LAST_NAMES = (
    "Abara", "Alvarez", "Andersen", "Bauer", "Becker", "Brennan", "Castillo", "Chandra", "Chen",
    "Costa", "Dubois", "Edwards", "Fischer", "Fujita", "Garcia", "Gupta", "Hansen", "Haddad",
    "Ibrahim", "Ito", "Jensen", "Johnson", "Kaur", "Kim", "Kowalski", "Larsen", "Lopez", "Martin",
    "Meyer", "Mendes", "Moreau", "Murphy", "Nakamura", "Nguyen", "Novak", "Okafor", "Olsen", "Park",
    "Patel", "Petrov", "Quinn", "Rossi", "Santos", "Schmidt", "Silva", "Singh", "Sato", "Svensson",
    "Tanaka", "Torres", "Tran", "Walsh", "Weber", "Williams", "Wong", "Yamamoto", "Yilmaz", "Zhang",
    "Ortiz", "Reyes",
)  # fmt: skip
_ACCOUNT_WORDS = (
    "Northwind", "Blue Ridge", "Summit", "Silverline", "Redwood", "Harbor", "Granite", "Evergreen",
    "Polaris", "Crescent", "Ironbridge", "Lakeside", "Meridian", "Oakmont", "Pinnacle", "Quantum",
    "Riverbend", "Sterling", "Tidewater", "Vantage", "Westfield", "Apex", "Beacon", "Cobalt",
    "Delta", "Everest", "Falcon", "Golden Gate", "Highland", "Insight", "Juniper", "Keystone",
    "Lighthouse", "Maple", "Nova", "Orion", "Prairie", "Ridgeway", "Sequoia", "Trident", "Union",
    "Vertex", "Willow", "Zenith", "Atlas", "Bright", "Cedar", "Dynamo", "Ember", "Frontier",
)  # fmt: skip
_ACCOUNT_NOUNS = (
    "Logistics", "Health", "Foods", "Energy", "Financial", "Robotics", "Media", "Retail", "Systems",
    "Pharma", "Analytics", "Manufacturing", "Telecom", "Insurance", "Motors", "Hotels", "Textiles",
    "Construction", "Software", "Aerospace", "Biotech", "Consulting", "Utilities", "Airlines",
    "Education", "Labs", "Networks", "Outfitters", "Capital", "Brewing", "Semiconductors", "Marine",
    "Packaging", "Chemicals", "Furniture", "Security", "Travel", "Agritech", "Devices", "Studios",
)  # fmt: skip
_ACCOUNT_SUFFIXES = ("Inc.", "LLC", "Group", "Corp", "Ltd", "GmbH", "SA", "Holdings", "Partners", "Co.")
_INDUSTRIES = (
    "Technology", "Manufacturing", "Healthcare", "Finance", "Retail", "Energy", "Transportation",
    "Education", "Hospitality", "Media", "Telecommunications", "Construction", "Consulting",
)  # fmt: skip
_REGION_CITIES = {
    "North America": (
        ("New York", "NY", "USA"), ("Austin", "TX", "USA"), ("Chicago", "IL", "USA"),
        ("San Francisco", "CA", "USA"), ("Toronto", "ON", "Canada"), ("Atlanta", "GA", "USA"),
        ("Boston", "MA", "USA"), ("Denver", "CO", "USA"),
    ),
    "EMEA": (
        ("London", "", "United Kingdom"), ("Paris", "", "France"), ("Berlin", "", "Germany"),
        ("Amsterdam", "", "Netherlands"), ("Madrid", "", "Spain"), ("Stockholm", "", "Sweden"),
        ("Dubai", "", "United Arab Emirates"),
    ),
    "APAC": (
        ("Sydney", "NSW", "Australia"), ("Singapore", "", "Singapore"), ("Tokyo", "", "Japan"),
        ("Bangalore", "KA", "India"), ("Seoul", "", "South Korea"),
    ),
    "LATAM": (
        ("São Paulo", "SP", "Brazil"), ("Mexico City", "CDMX", "Mexico"), ("Bogotá", "", "Colombia"),
        ("Santiago", "", "Chile"), ("Buenos Aires", "", "Argentina"),
    ),
}  # fmt: skip
_ACCOUNT_TYPES = ("Customer - Direct", "Customer - Channel", "Prospect")

# Salesforce id key prefixes.
_ID_PREFIX = {"account": "001", "user": "005", "opportunity": "006", "history": "008", "role": "00E"}
_ID_START = {"account": 3_100_000, "user": 41_000, "opportunity": 7_400_000, "history": 52_000_000, "role": 900}


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------
def pipeline_kind(name: str) -> str:
    """How a pipeline behaves in the simulation: `expansion` (upsell to customers), `channel`
    (through partners) or `new_business`, recognised from its name."""
    lowered = name.lower()
    if any(word in lowered for word in ("expansion", "upsell", "renewal", "cross-sell", "existing")):
        return "expansion"
    if any(word in lowered for word in ("channel", "partner", "reseller", "indirect")):
        return "channel"
    return "new_business"


def week_of_date(day: dt.date) -> int:
    """The index of the Monday-to-Monday week holding `day`."""
    return (day - EPOCH_MONDAY).days // 7


def _cumulative(weights: np.ndarray) -> np.ndarray:
    """Row-wise cumulative probabilities of non-negative weights (rows of zeros become uniform)."""
    w = np.asarray(weights, dtype=np.float64)
    w = np.where(w.sum(axis=-1, keepdims=True) > 0, w, 1.0)
    cum = np.cumsum(w / w.sum(axis=-1, keepdims=True), axis=-1)
    cum[..., -1] = 1.0
    return cum


def _draw(uniforms: np.ndarray, cumulative: np.ndarray, group: np.ndarray | None = None) -> np.ndarray:
    """Categorical draws: the category whose cumulative band holds each uniform (per group row)."""
    table = cumulative[None, :] if group is None else cumulative[group]
    if group is None:
        return np.searchsorted(cumulative, uniforms, side="right").astype(np.int16)
    return (uniforms[:, None] >= table).sum(axis=1).astype(np.int16)


def _civil_from_days(days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Year, month, day of days since 1970-01-01 (proleptic Gregorian, vectorised)."""
    z = days.astype(np.int64) + 719_468
    era = np.floor_divide(z, 146_097)
    doe = z - era * 146_097
    yoe = (doe - doe // 1_460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = np.where(mp < 10, mp + 3, mp - 9)
    year = yoe + era * 400 + (month <= 2)
    return year, month, day


def _strings_from_bytes(matrix: np.ndarray, blank: np.ndarray | None = None) -> pa.Array:
    """A string array from a (rows, width) ASCII byte matrix; rows flagged in `blank` become ""."""
    n, width = matrix.shape
    lengths = np.full(n, width, dtype=np.int64)
    data = matrix
    if blank is not None and blank.any():
        lengths[blank] = 0
        data = matrix[~blank]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return pa.LargeStringArray.from_buffers(
        n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data).tobytes())
    ).cast(pa.string())


def _put_digits(out: np.ndarray, start: int, value: np.ndarray, width: int) -> None:
    for i in range(width):
        out[:, start + width - 1 - i] = 48 + (value // 10**i) % 10


def format_timestamps(seconds: np.ndarray, blank: np.ndarray | None = None) -> pa.Array:
    """`YYYY-MM-DD HH:MM:SS` for seconds since the Unix epoch (UTC)."""
    seconds = np.asarray(seconds, dtype=np.int64)
    days, sod = np.divmod(seconds, DAY_SECONDS)
    year, month, day = _civil_from_days(days)
    out = np.empty((len(seconds), 19), dtype=np.uint8)
    _put_digits(out, 0, year, 4)
    _put_digits(out, 5, month, 2)
    _put_digits(out, 8, day, 2)
    _put_digits(out, 11, sod // 3600, 2)
    _put_digits(out, 14, (sod // 60) % 60, 2)
    _put_digits(out, 17, sod % 60, 2)
    out[:, [4, 7]] = ord("-")
    out[:, 10] = ord(" ")
    out[:, [13, 16]] = ord(":")
    return _strings_from_bytes(out, blank)


def format_dates(days: np.ndarray, blank: np.ndarray | None = None) -> pa.Array:
    """`YYYY-MM-DD 00:00:00` (a Salesforce date in a Data Export) for days since the Unix epoch."""
    return format_timestamps(np.asarray(days, dtype=np.int64) * DAY_SECONDS, blank)


def _format_integers(values: np.ndarray, blank: np.ndarray | None = None) -> pa.Array:
    text = pc.cast(pa.array(np.asarray(values, dtype=np.int64)), pa.string())
    if blank is None or not blank.any():
        return text
    return pc.if_else(pa.array(blank), pa.scalar("", pa.string()), text)


def _take(names: Sequence[str], codes: np.ndarray) -> pa.Array:
    return pc.take(pa.array(list(names), type=pa.string()), pa.array(np.asarray(codes, dtype=np.int64)))


def _constant(value: str, n: int) -> pa.Array:
    return pa.repeat(pa.scalar(value, pa.string()), n)


_BASE62 = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
_ID_SUFFIX = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345", dtype=np.uint8)


def salesforce_ids(kind: str, numbers: np.ndarray) -> pa.Array:
    """18-character Salesforce-style ids: key prefix, pod `5g`, `0`, nine base-62 digits of the
    record number, and the three-character case-safe suffix Salesforce computes from the
    upper-case letters of the first 15 characters."""
    numbers = np.asarray(numbers, dtype=np.int64) + _ID_START[kind]
    n = len(numbers)
    out = np.empty((n, 18), dtype=np.uint8)
    out[:, :6] = np.frombuffer((_ID_PREFIX[kind] + "5g0").encode(), dtype=np.uint8)
    rest = numbers.copy()
    for i in range(9):
        out[:, 14 - i] = _BASE62[rest % 62]
        rest //= 62
    upper = (out[:, :15] >= ord("A")) & (out[:, :15] <= ord("Z"))
    bits = upper.reshape(n, 3, 5).astype(np.int64) @ (1 << np.arange(5))
    out[:, 15:] = _ID_SUFFIX[bits]
    return _strings_from_bytes(out)


def _org_stage_order(stages: StageCatalog) -> list[str]:
    """The org-wide stage picklist order (`StageSortOrder`): open stages merged across pipelines
    keeping each pipeline's order, then the won stages, then the lost stages."""
    order: list[str] = []
    for p in stages:
        for i, name in enumerate(p.open_stages):
            if name in order:
                continue
            later = [order.index(s) for s in p.open_stages[i + 1 :] if s in order]
            order.insert(min(later) if later else len(order), name)
    for p in stages:
        if p.won_stage not in order:
            order.append(p.won_stage)
    for p in stages:
        if p.lost_stage not in order:
            order.append(p.lost_stage)
    return order


def _forecast_category(probability: float, status: str) -> tuple[str, str]:
    """(ForecastCategory API value, ForecastCategoryName label) of a stage."""
    if status == STATUS_WON:
        return "Closed", "Closed"
    if status == STATUS_LOST:
        return "Omitted", "Omitted"
    if probability < 50:
        return "Pipeline", "Pipeline"
    if probability < 80:
        return "BestCase", "Best Case"
    return "Forecast", "Commit"


_MONTH_DAYS = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


def _season_factors(weeks: np.ndarray, fiscal_year_start_month: int) -> np.ndarray:
    """Calendar multipliers of each week's hazards, shape (len(weeks), 4): forward moves, backward
    moves, losses, wins; from the week's Thursday."""
    year, month, day = _civil_from_days(np.asarray(weeks, dtype=np.int64) * 7 + EPOCH_MONDAY_DAY + 3)
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    days_in_month = _MONTH_DAYS[month - 1] + ((month == 2) & leap)
    quarter_month = (month - fiscal_year_start_month) % 3 == 2
    quarter_end = quarter_month & (day > days_in_month - 14)
    summer = np.isin(month, (7, 8))
    holiday = ((month == 12) & (day >= 20)) | ((month == 1) & (day <= 3))
    factors = np.ones((len(month), 4))
    factors[:, 0] = np.where(quarter_month, 1.1, 1.0) * np.where(summer, 0.8, 1.0) * np.where(holiday, 0.5, 1.0)
    factors[:, 1] = np.where(holiday, 0.5, 1.0)
    factors[:, 2] = np.where(quarter_end, 1.2, 1.0) * np.where(summer, 0.85, 1.0) * np.where(holiday, 0.6, 1.0)
    factors[:, 3] = (
        np.where(quarter_month, 1.25, 1.0)
        * np.where(quarter_end, 1.4, 1.0)
        * np.where(summer, 0.8, 1.0)
        * np.where(holiday, 0.45, 1.0)
    )
    return factors


def _creation_season(weeks: np.ndarray, fiscal_year_start_month: int) -> np.ndarray:
    _, month, day = _civil_from_days(np.asarray(weeks, dtype=np.int64) * 7 + EPOCH_MONDAY_DAY + 3)
    summer = np.isin(month, (7, 8))
    holiday = ((month == 12) & (day >= 20)) | ((month == 1) & (day <= 3))
    quarter_start = (month - fiscal_year_start_month) % 3 == 0
    return np.where(summer, 0.85, 1.0) * np.where(holiday, 0.35, 1.0) * np.where(quarter_start, 1.05, 1.0)


# ----------------------------------------------------------------------------------------------
# The world: hidden parameters and the exact win probability
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SampleSummary:
    out_dir: Path
    n_deals: int
    n_history_rows: int
    won: int
    lost: int
    open: int
    start: dt.date
    end: dt.date
    profile: str = "clean"
    shapes: dict[str, int] = field(default_factory=dict)  # messy profile: deals given each shape


def _resolve_project(
    stages: StageCatalog | None, fiscal_year_start_month: int | None
) -> tuple[StageCatalog, int, SalesforceSourceConfig]:
    """Stages, fiscal year start and Salesforce field names: explicit values first, then
    `dealcast.toml`; without a readable config, calendar quarters and the standard field names."""
    try:
        project = load_project_config()
    except ConfigError:
        if stages is None:
            raise
        return stages, fiscal_year_start_month or 1, SalesforceSourceConfig()
    return (
        stages if stages is not None else project.stages,
        fiscal_year_start_month or project.fiscal_year_start_month,
        project.salesforce,
    )


@dataclass(frozen=True, eq=False)
class SampleWorld:
    """The simulated organisation's hidden parameters, built deterministically from the seed and
    the size: reps and their skill, teams, the step probabilities, and the exact win probability.

    Effect classes number the combinations (pipeline, skill level, product, segment); stages are
    0-based positions among a pipeline's open stages, with `n_open` for won and `n_open + 1` for lost.
    """

    seed: int
    n_deals: int
    start_date: dt.date
    end_date: dt.date
    stages: StageCatalog
    fiscal_year_start_month: int
    pipelines: tuple[str, ...]
    pipeline_kinds: tuple[str, ...]
    teams: pd.DataFrame = field(repr=False)
    users: pd.DataFrame = field(repr=False)
    _base_rates: np.ndarray = field(repr=False)
    _cache: dict = field(default_factory=dict, repr=False)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        seed: int = 7,
        n_deals: int = 10_000,
        end_date: dt.date | None = None,
        years: float = 3.5,
        stages: StageCatalog | None = None,
        fiscal_year_start_month: int | None = None,
    ) -> "SampleWorld":
        """The world for `seed` and `n_deals` deals created over `years` up to `end_date`
        (default today, UTC). Stages default to the project config's."""
        if n_deals < 1:
            raise ValueError(f"n_deals must be at least 1, got {n_deals}")
        if not 0 < years <= 50:
            raise ValueError(f"years must be in (0, 50], got {years}")
        stages, fiscal_start, _ = _resolve_project(stages, fiscal_year_start_month)
        pipelines = tuple(p.name for p in stages)
        if not pipelines:
            raise ValueError("the stage catalogue has no pipeline to simulate")
        if isinstance(end_date, dt.datetime):
            end_date = end_date.date()
        end = end_date or dt.datetime.now(dt.timezone.utc).date()
        start = end - dt.timedelta(days=round(years * 365.25))
        kinds = tuple(pipeline_kind(name) for name in pipelines)
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
        teams, users = _build_org(n_deals, rng)
        n_open = np.array([len(p.open_stages) for p in stages])
        return cls(
            seed=seed,
            n_deals=n_deals,
            start_date=start,
            end_date=end,
            stages=stages,
            fiscal_year_start_month=fiscal_start,
            pipelines=pipelines,
            pipeline_kinds=kinds,
            teams=teams,
            users=users,
            _base_rates=_base_rates(kinds, n_open),
        )

    # -- shapes and codes --------------------------------------------------------------------
    @property
    def first_week(self) -> int:
        return week_of_date(self.start_date)

    @property
    def last_week(self) -> int:
        return week_of_date(self.end_date)

    @property
    def n_classes(self) -> int:
        return len(self.pipelines) * len(SKILL_LEVELS) * len(PRODUCTS) * len(SEGMENTS)

    @property
    def max_open_stages(self) -> int:
        return self._base_rates.shape[2]

    def n_open_stages(self, deal_class: np.ndarray) -> np.ndarray:
        n_open = np.array([len(self.stages[p].open_stages) for p in self.pipelines])
        return n_open[self.class_parts(deal_class)[0]]

    def class_index(self, pipeline: np.ndarray, skill: np.ndarray, product: np.ndarray, segment: np.ndarray) -> np.ndarray:
        """Effect class of (pipeline, skill level, product, segment) codes."""
        r, n_prod, n_seg = len(SKILL_LEVELS), len(PRODUCTS), len(SEGMENTS)
        return ((np.asarray(pipeline) * r + np.asarray(skill)) * n_prod + np.asarray(product)) * n_seg + np.asarray(segment)

    def class_parts(self, deal_class: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(pipeline, skill level, product, segment) codes of effect classes."""
        c = np.asarray(deal_class)
        c, segment = np.divmod(c, len(SEGMENTS))
        c, product = np.divmod(c, len(PRODUCTS))
        pipeline, skill = np.divmod(c, len(SKILL_LEVELS))
        return pipeline, skill, product, segment

    def deal_class(
        self,
        pipeline: Sequence[str],
        owner: Sequence[str],
        product: Sequence[str],
        segment: Sequence[str],
        row_labels: Sequence | None = None,
    ) -> np.ndarray:
        """Effect classes from names: pipeline, owner (User Name or Id from User.csv), product and
        segment (the Pipeline__c, Product__c and Segment__c values).

        Raises ValueError naming the first row (its label in `row_labels`, else its position)
        and the column whose value this sample does not have."""
        codes = []
        lookups = (
            ("pipeline", pipeline, {name: i for i, name in enumerate(self.pipelines)}, f"one of {list(self.pipelines)}"),
            ("owner", owner, self._owner_skill(), "a User Name or Id from User.csv"),
            ("product", product, {name: i for i, name in enumerate(PRODUCTS)}, f"one of {list(PRODUCTS)}"),
            ("account_segment", segment, {name: i for i, name in enumerate(SEGMENTS)}, f"one of {list(SEGMENTS)}"),
        )
        for column, values, mapping, expected in lookups:
            series = pd.Series(np.asarray(values, dtype=object), dtype=object)
            mapped = series.map(mapping)
            bad = mapped.isna().to_numpy()
            if bad.any():
                first = int(np.flatnonzero(bad)[0])
                label = row_labels[first] if row_labels is not None else first
                raise ValueError(
                    f"sample world: row {label}, column {column!r}: {series.iloc[first]!r} is not in this "
                    f"sample (expected {expected})"
                )
            codes.append(mapped.to_numpy(dtype=np.int64))
        return self.class_index(*codes)

    def _owner_skill(self) -> dict[str, int]:
        skill = dict(zip(self.users["Name"], self.users["skill_level"].astype(int)))
        skill.update(zip(self.users["Id"], self.users["skill_level"].astype(int)))
        return skill

    # -- the Markov step ---------------------------------------------------------------------
    def season_factors(self, weeks: np.ndarray) -> np.ndarray:
        return _season_factors(np.atleast_1d(weeks), self.fiscal_year_start_month)

    def transition_probabilities(self, week: int) -> np.ndarray:
        """Probabilities of the step outcomes during week `week`, shape (6, classes, stages,
        weeks in stage 0..26), stacked as advance, skip, back, lost, won, stay.

        Hazards combine as competing risks: with total weekly rate L, some event happens with
        probability 1 - exp(-L), shared in proportion to the rates."""
        return self._probabilities(self.season_factors(np.array([week]))[0])

    def _probabilities(self, factors: np.ndarray) -> np.ndarray:
        """Step probabilities for one week's calendar factors (cached: weeks share a few)."""
        key = tuple(np.round(factors, 12))
        cached = self._cache.get(("probabilities", key))
        if cached is None:
            rates = self._base_rates * factors[_SEASON_OF_EVENT][:, None, None, None]
            total = rates.sum(axis=0)
            share = np.divide(-np.expm1(-total), total, out=np.zeros_like(total), where=total > 0)
            cached = np.empty((6, *total.shape))
            cached[:5] = rates * share
            cached[5] = np.exp(-total)
            cached.setflags(write=False)
            self._cache[("probabilities", key)] = cached
        return cached

    def step(
        self,
        deal_class: np.ndarray,
        stage: np.ndarray,
        weeks_in_stage: np.ndarray,
        week: int,
        uniforms: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One week of the Markov process for open deals: (outcome, new stage, new weeks in stage).

        `uniforms` are U(0,1) draws, one per deal; the outcome is the first of advance, skip,
        back, lost, won whose cumulative probability exceeds the draw, else stay."""
        probs = self.transition_probabilities(week)
        p = probs[:5][:, deal_class, stage, weeks_in_stage]
        outcome = (uniforms[None, :] >= np.cumsum(p, axis=0)).sum(axis=0).astype(np.int8)
        n_open = self.n_open_stages(deal_class)
        new_stage = stage + _STAGE_DELTA[outcome]
        new_stage = np.where(outcome == WON, n_open, np.where(outcome == LOST, n_open + 1, new_stage))
        new_weeks = np.where(outcome == STAY, np.minimum(weeks_in_stage + 1, WEEKS_IN_STAGE_CAP), 0)
        return outcome, new_stage.astype(np.int16), new_weeks.astype(np.int16)

    # -- exact win probability ---------------------------------------------------------------
    def _valid_states(self) -> np.ndarray:
        n_open = self.n_open_stages(np.arange(self.n_classes))
        return np.arange(self.max_open_stages)[None, :] < n_open[:, None]

    def value_table(self, first_boundary: int, last_boundary: int) -> np.ndarray:
        """V_b for boundaries b in [first_boundary, last_boundary]: shape (weeks, classes,
        stages, weeks in stage); the probability of eventually winning from each open state.

        Backward induction from a horizon far enough ahead that the still-open probability
        there is below TRUTH_TOLERANCE for every state (checked; the horizon doubles if not)."""
        key = ("values", first_boundary, last_boundary)
        if key in self._cache:
            return self._cache[key]
        valid = self._valid_states()
        horizon = 420
        while True:
            # Beyond the last boundary, carry two bounds: deals still open at the horizon counted
            # as lost (values[0]) and as won (values[1]). Their gap at boundary last + 1 bounds the
            # error of every earlier value (an earlier state reaches it with total probability <= 1).
            weeks = np.arange(last_boundary + horizon - 1, first_boundary - 1, -1)
            factors = self.season_factors(weeks)
            values = np.zeros((2, self.n_classes, self.max_open_stages, WEEKS_IN_STAGE_CAP + 1))
            values[1][valid] = 1.0
            for i in range(horizon - 1):
                values = _backward_step(self._probabilities(factors[i]), values, valid)
            gap = float((values[1] - values[0]).max())
            if gap <= TRUTH_TOLERANCE:
                break
            horizon *= 2
        value = values[0]
        table = np.empty((last_boundary - first_boundary + 1, *value.shape))
        for i, week in enumerate(weeks[horizon - 1 :]):
            value = _backward_step(self._probabilities(factors[horizon - 1 + i]), value, valid)
            table[week - first_boundary] = value
        table.setflags(write=False)
        for old in [k for k in self._cache if k[0] == "values"]:
            del self._cache[old]
        self._cache[key] = table
        return table

    def win_probability(
        self, deal_class: np.ndarray, stage: np.ndarray, weeks_in_stage: np.ndarray, boundary_week: np.ndarray
    ) -> np.ndarray:
        """The exact probability of eventually winning for open deals in the given states at the
        given week boundaries (weeks in stage above 26 count as 26)."""
        boundary_week = np.asarray(boundary_week, dtype=np.int64)
        if boundary_week.size == 0:
            return np.empty(0)
        lo, hi = int(boundary_week.min()), int(boundary_week.max())
        cached = [k for k in self._cache if k[0] == "values" and k[1] <= lo and k[2] >= hi]
        if cached:
            lo = cached[0][1]
            table = self._cache[cached[0]]
        else:
            table = self.value_table(lo, hi)
        return table[
            boundary_week - lo,
            np.asarray(deal_class),
            np.asarray(stage),
            np.minimum(np.asarray(weeks_in_stage), WEEKS_IN_STAGE_CAP),
        ]

    def true_win_probability(self, frame: pd.DataFrame) -> pd.Series:
        """The true probability of eventually winning for each row of a point-in-time frame (as
        `etl.pipeline_state.pipeline_at_many` produces): open rows from their state at
        `snapshot_at` (see the module docstring for how weeks in stage are counted), 1 for won
        rows and 0 for lost rows. Index aligned with `frame`."""
        required = ["snapshot_at", "pipeline", "stage", "stage_entered_at", "owner", "product", "account_segment", "status"]
        missing = [c for c in required if c not in frame.columns]
        if missing:
            raise ValueError(f"true_win_probability: frame is missing column(s) {missing}; expected {required}")
        status = frame["status"].astype("string").to_numpy(dtype=object, na_value=None)
        unknown = ~np.isin(status, [STATUS_OPEN, STATUS_WON, STATUS_LOST])
        if unknown.any():
            row = int(np.flatnonzero(unknown)[0])
            raise ValueError(
                f"true_win_probability: row {row}, column 'status': expected open/won/lost, got {status[row]!r}"
            )
        out = np.where(status == STATUS_WON, 1.0, 0.0)
        is_open = status == STATUS_OPEN
        if is_open.any():
            rows = frame.loc[is_open]
            deal_class = self.deal_class(
                rows["pipeline"], rows["owner"], rows["product"], rows["account_segment"], row_labels=rows.index
            )
            pipeline_codes = self.class_parts(deal_class)[0]
            stage = np.full(len(rows), -1, dtype=np.int64)
            stage_names = rows["stage"].astype("string").to_numpy(dtype=object, na_value=None)
            for code, name in enumerate(self.pipelines):
                in_pipeline = pipeline_codes == code
                positions = {s: i for i, s in enumerate(self.stages[name].open_stages)}
                mapped = pd.Series(stage_names[in_pipeline], dtype=object).map(positions)
                stage[in_pipeline] = mapped.fillna(-1).to_numpy(dtype=np.int64)
            if (stage < 0).any():
                row = int(np.flatnonzero(stage < 0)[0])
                raise ValueError(
                    f"true_win_probability: row {rows.index[row]}, column 'stage': {stage_names[row]!r} "
                    f"is not an open stage of pipeline {rows['pipeline'].iloc[row]!r}"
                )
            snapshot = _utc_microseconds(rows["snapshot_at"], "snapshot_at", rows.index)
            entered = _utc_microseconds(rows["stage_entered_at"], "stage_entered_at", rows.index)
            boundary, weeks_in_stage = boundary_state(snapshot, entered)
            out[is_open] = self.win_probability(deal_class, stage, weeks_in_stage, boundary)
        return pd.Series(out, index=frame.index, name="true_win_probability", dtype="float64")

    # -- who sells what ----------------------------------------------------------------------
    def _mixes(self) -> dict[str, np.ndarray]:
        """The draw probabilities of a deal's attributes (the same ones the simulation uses)."""
        cached = self._cache.get(("mixes",))
        if cached is not None:
            return cached
        kinds = np.array(self.pipeline_kinds)
        pipeline_by_focus = np.zeros((len(TEAM_FOCI), len(self.pipelines)))
        for f, focus in enumerate(TEAM_FOCI):
            for p, kind in enumerate(kinds):
                pipeline_by_focus[f, p] = _FOCUS_KINDS[focus][kind] / (kinds == kind).sum()
        pipeline_by_focus = np.where(pipeline_by_focus.sum(1, keepdims=True) > 0, pipeline_by_focus, 1.0)
        pipeline_by_focus /= pipeline_by_focus.sum(1, keepdims=True)
        segment_by_focus = np.array([_FOCUS_SEGMENTS[f] for f in TEAM_FOCI])
        product = np.array([_KIND_PRODUCTS[k] for k in kinds])[:, None, :] * _SEGMENT_PRODUCT_TILT[None, :, :]
        product = np.where(product.sum(-1, keepdims=True) > 0, product, 1.0)
        product /= product.sum(-1, keepdims=True)  # (pipeline, segment, product)
        rep_share = self.users["deal_share"].to_numpy()
        focus_of_rep = self.teams["focus_code"].to_numpy()[self.users["team_code"].to_numpy()]
        mixes = {
            "rep_share": rep_share,
            "focus_of_rep": focus_of_rep,
            "pipeline_by_focus": pipeline_by_focus,
            "segment_by_focus": segment_by_focus,
            "product": product,
        }
        self._cache[("mixes",)] = mixes
        return mixes

    def team_class_share(self) -> np.ndarray:
        """Expected share of all deals in each (team, effect class): shape (teams, classes)."""
        m = self._mixes()
        reps = np.arange(len(self.users))
        joint = (
            m["rep_share"][:, None, None, None]
            * m["pipeline_by_focus"][m["focus_of_rep"]][:, :, None, None]
            * m["segment_by_focus"][m["focus_of_rep"]][:, None, :, None]
            * m["product"][None, :, :, :]
        )  # (rep, pipeline, segment, product)
        rep, pipe, seg, prod = np.meshgrid(
            reps, np.arange(len(self.pipelines)), np.arange(len(SEGMENTS)), np.arange(len(PRODUCTS)), indexing="ij"
        )
        skill = self.users["skill_level"].to_numpy()[rep]
        team = self.users["team_code"].to_numpy()[rep]
        share = np.zeros((len(self.teams), self.n_classes))
        np.add.at(share, (team.ravel(), self.class_index(pipe, skill, prod, seg).ravel()), joint.ravel())
        return share

    def mean_amount(self) -> np.ndarray:
        """Expected amount of a deal of each effect class (amount revisions have mean 1)."""
        pipeline, _, product, segment = self.class_parts(np.arange(self.n_classes))
        kind_factor = np.array([_KIND_AMOUNT[k] for k in self.pipeline_kinds])[pipeline]
        return _SEGMENT_AMOUNT[segment] * _PRODUCT_AMOUNT[product] * kind_factor * math.exp(_AMOUNT_SIGMA**2 / 2)

    def creation_weights(self, weeks: np.ndarray) -> np.ndarray:
        """Relative number of deals created in each week (growth, season, business days open in
        the simulated span); weeks after `end_date` continue the trend as if the span went on."""
        weeks = np.asarray(weeks, dtype=np.int64)
        years_in = (weeks - self.first_week) / 52.1775
        weight = np.exp(math.log1p(_GROWTH_PER_YEAR) * years_in) * _creation_season(weeks, self.fiscal_year_start_month)
        first, last = self.business_days(weeks)
        return np.where(weeks >= self.first_week, weight * np.maximum(last - first + 1, 0) / 5.0, 0.0)

    def business_days(self, weeks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First and last weekday (0 = Monday .. 4 = Friday) on which changes can happen in each
        week: from `start_date` in the first week, up to `end_date` in the last week."""
        weeks = np.asarray(weeks, dtype=np.int64)
        first = np.where(weeks == self.first_week, min(self.start_date.weekday(), 5), 0)
        last = np.where(weeks == self.last_week, min(self.end_date.weekday(), 4), 4)
        return first, last

    def quotas(self, stretch: float = QUOTA_STRETCH) -> pd.DataFrame:
        """Quota per quarter for the whole company, each team and each pipeline: `stretch` times
        the won revenue expected from the simulation's parameters, rounded to the thousand."""
        rows = [
            (label, kind, segment, round(stretch * value / 1000.0) * 1000)
            for label, kind, segment, value in self._expected_revenue_rows()
        ]
        frame = pd.DataFrame(rows, columns=list(QUOTA_COLUMNS))
        return frame.astype({"amount": "int64"})

    def _expected_revenue_rows(self) -> list[tuple[str, str, str, float]]:
        """(quarter, segment_type, segment, expected won revenue) for every quarter of the span and
        the two after it. Expected won revenue comes from propagating the expected number of deals
        in every state week by week (created deals in, won and lost deals out) with the step
        probabilities."""
        fiscal = self.fiscal_year_start_month

        def following(label: str) -> str:
            return quarter_label(period_bounds(label, fiscal)[1], fiscal)

        labels = [quarter_label(self.start_date, fiscal)]
        while labels[-1] != quarter_label(self.end_date, fiscal):
            labels.append(following(labels[-1]))
        labels += [following(labels[-1]), following(following(labels[-1]))]
        last_day = (period_bounds(labels[-1], fiscal)[1] - pd.Timedelta(days=1)).date()
        weeks = np.arange(self.first_week, week_of_date(last_day) + 1)

        created = self.creation_weights(weeks)
        in_span = self.creation_weights(np.arange(self.first_week, self.last_week + 1)).sum()
        team_share = self.team_class_share()
        class_share = team_share.sum(axis=0)
        inflow = self.n_deals * (created / in_span)[:, None] * class_share[None, :]
        won = np.zeros((len(weeks), self.n_classes))
        mass = np.zeros((self.n_classes, self.max_open_stages, WEEKS_IN_STAGE_CAP + 1))
        for i, week in enumerate(weeks):
            p = self.transition_probabilities(int(week))
            won[i] = (mass * p[WON]).sum(axis=(1, 2))
            moved = np.zeros_like(mass)
            entering = (mass * p[ADVANCE]).sum(axis=2)
            moved[:, 1:, 0] += entering[:, :-1]
            entering = (mass * p[SKIP]).sum(axis=2)
            moved[:, 2:, 0] += entering[:, :-2]
            entering = (mass * p[BACK]).sum(axis=2)
            moved[:, :-1, 0] += entering[:, 1:]
            staying = mass * p[STAY]
            moved[:, :, 1:] += staying[:, :, :-1]
            moved[:, :, WEEKS_IN_STAGE_CAP] += staying[:, :, WEEKS_IN_STAGE_CAP]
            moved[:, 0, 0] += inflow[i]
            mass = moved
        revenue = won * self.mean_amount()[None, :]
        thursdays = pd.Series(pd.to_datetime(weeks * 7 + EPOCH_MONDAY_DAY + 3, unit="D"))
        week_quarter = quarter_labels(thursdays, fiscal).to_numpy(dtype=object)

        with np.errstate(invalid="ignore", divide="ignore"):
            team_given_class = np.where(class_share > 0, team_share / class_share, 0.0)
        pipeline_of_class = self.class_parts(np.arange(self.n_classes))[0]
        rows = []
        for label in labels:
            in_quarter = week_quarter == label
            by_class = revenue[in_quarter].sum(axis=0)
            groups = [("all", "all", by_class.sum())]
            groups += [("team", name, float(by_class @ team_given_class[t])) for t, name in enumerate(self.teams["team"])]
            groups += [
                ("pipeline", name, float(by_class[pipeline_of_class == p].sum())) for p, name in enumerate(self.pipelines)
            ]
            rows += [(label, kind, segment, value) for kind, segment, value in groups]
        return rows

    def expected_won_revenue(self) -> pd.DataFrame:
        """The won revenue the simulation's parameters expect per quarter (booked in the week of
        the win), for the whole company, each team and each pipeline, over the quota quarters:
        columns quarter, segment_type, segment, amount (unrounded)."""
        frame = pd.DataFrame(self._expected_revenue_rows(), columns=list(QUOTA_COLUMNS))
        return frame.astype({"amount": "float64"})


_STAY_INDEX = np.minimum(np.arange(WEEKS_IN_STAGE_CAP + 1) + 1, WEEKS_IN_STAGE_CAP)


def _backward_step(p: np.ndarray, values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """V_k from V_(k+1) for week k's step probabilities `p` (shape (6, classes, stages, weeks in
    stage)); `values` may carry leading axes. Won contributes 1, lost 0."""
    entry = values[..., 0]
    to_next = np.zeros_like(entry)
    to_next[..., :-1] = entry[..., 1:]
    to_skip = np.zeros_like(entry)
    to_skip[..., :-2] = entry[..., 2:]
    to_back = np.zeros_like(entry)
    to_back[..., 1:] = entry[..., :-1]
    out = (
        p[ADVANCE] * to_next[..., None]
        + p[SKIP] * to_skip[..., None]
        + p[BACK] * to_back[..., None]
        + p[WON]
        + p[STAY] * values[..., _STAY_INDEX]
    )
    out[..., ~valid, :] = 0.0
    return out


def boundary_state(snapshot_us: np.ndarray, entered_us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(week boundary, weeks in stage) of deals observed at `snapshot_us` whose stage was entered
    at `entered_us` (both microseconds since the Unix epoch, UTC); the rule of the module docstring."""
    week_us = WEEK_SECONDS * 1_000_000
    epoch_us = EPOCH_MONDAY_DAY * DAY_SECONDS * 1_000_000
    week, offset = np.divmod(np.asarray(snapshot_us, dtype=np.int64) - epoch_us, week_us)
    boundary = week + (offset >= WINDOW_END_SECONDS * 1_000_000)
    entered_week = (np.asarray(entered_us, dtype=np.int64) - epoch_us) // week_us
    boundary = np.maximum(boundary, entered_week + 1)
    return boundary, np.minimum(boundary - entered_week - 1, WEEKS_IN_STAGE_CAP)


def _utc_microseconds(values: pd.Series, column: str, index: pd.Index) -> np.ndarray:
    ts = pd.to_datetime(values)
    if getattr(ts.dt, "tz", None) is not None:
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    if ts.isna().any():
        row = index[int(np.flatnonzero(ts.isna().to_numpy())[0])]
        raise ValueError(f"true_win_probability: row {row}, column {column!r}: expected a timestamp, got a blank")
    return ts.to_numpy(dtype="datetime64[us]").astype(np.int64)


def _build_org(n_deals: int, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Teams (region, focus) and reps (name, team, title, hidden skill level, share of deals)."""
    n_reps = min(500, 12 + n_deals // 2500)
    n_teams = max(4, round(n_reps / _REPS_PER_TEAM))
    region = np.array([_TEAM_REGION_CYCLE[i % len(_TEAM_REGION_CYCLE)] for i in range(n_teams)])
    focus = np.array([_TEAM_FOCUS_CYCLE[i % len(_TEAM_FOCUS_CYCLE)] for i in range(n_teams)])
    base = [f"{_REGION_CODES[r]} {TEAM_FOCI[f]}" for r, f in zip(region, focus)]
    seen: dict[str, int] = {}
    names = []
    for name in base:
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name} {seen[name]}")
    role_ids = salesforce_ids("role", np.arange(n_teams)).to_pylist()
    teams = pd.DataFrame(
        {
            "team": names,
            "region": [REGIONS[r] for r in region],
            "focus": [TEAM_FOCI[f] for f in focus],
            "focus_code": focus,
            "role_id": role_ids,
        }
    )
    combos = rng.permutation(len(_FIRST_NAMES) * len(_LAST_NAMES))[:n_reps]
    first = [_FIRST_NAMES[c // len(_LAST_NAMES)] for c in combos]
    last = [_LAST_NAMES[c % len(_LAST_NAMES)] for c in combos]
    team_code = np.arange(n_reps) % n_teams
    skill = rng.choice(len(SKILL_LEVELS), size=n_reps, p=_SKILL_SHARES)
    senior = rng.random(n_reps) < 0.3
    share = rng.lognormal(0.0, 0.3, n_reps)
    titles = [("Senior " if s else "") + _FOCUS_TITLES[TEAM_FOCI[focus[t]]] for s, t in zip(senior, team_code)]
    users = pd.DataFrame(
        {
            "Id": salesforce_ids("user", np.arange(n_reps)).to_pylist(),
            "Name": [f"{a} {b}" for a, b in zip(first, last)],
            "FirstName": first,
            "LastName": last,
            "Department": [names[t] for t in team_code],
            "Division": [teams["region"].iloc[t] for t in team_code],
            "Title": titles,
            "IsActive": "1",
            "UserRoleId": [role_ids[t] for t in team_code],
            "team_code": team_code,
            "skill_level": skill,
            "deal_share": share / share.sum(),
        }
    )
    return teams, users


def _base_rates(kinds: Sequence[str], n_open: np.ndarray) -> np.ndarray:
    """Weekly hazards before the calendar factors: shape (5 outcomes, classes, stages, weeks in
    stage), outcomes advance, skip, back, lost, won.

    Per pipeline with n open stages, the loss rate of each stage is set so that, before stale
    losses, a deal wins with the kind's target probability, losing more in the early stages.
    Class effects: speed (segment x product) scales every hazard; the effect (skill + product +
    segment) raises forward and win hazards and lowers the loss hazard."""
    weeks = np.arange(WEEKS_IN_STAGE_CAP + 1)
    fresh = np.exp(-np.maximum(weeks - 2, 0) / 8.0)  # forward and win hazards fall with time in stage
    stale = 1.0 + 0.3 * np.maximum(weeks - 5, 0)  # the loss hazard rises with it
    effect = SKILL_LEVELS[:, None, None] + _PRODUCT_EFFECT[None, :, None] + _SEGMENT_EFFECT[None, None, :]
    speed = (_PRODUCT_SPEED[:, None] * _SEGMENT_SPEED[None, :])[None, :, :]
    up = (speed * np.exp(_EFFECT_SLOPE * effect))[..., None, None]
    down = (speed * np.exp(-_EFFECT_SLOPE * effect))[..., None, None]
    flat = np.broadcast_to(speed, effect.shape)[..., None, None]
    max_open = int(n_open.max())
    rates = np.zeros((5, len(kinds), len(SKILL_LEVELS), len(PRODUCTS), len(SEGMENTS), max_open, len(weeks)))
    for p, (kind, n) in enumerate(zip(kinds, n_open)):
        dyn = _KIND_DYNAMICS[kind]
        pos = np.arange(n)
        hurdle_share = 2.0 * (n - pos) / (n * (n + 1))
        survive = dyn["target"] ** hurdle_share
        exit_rate = np.where(pos < n - 1, dyn["advance"], dyn["won"])
        loss = exit_rate * (1 - survive) / survive
        advance = np.where(pos < n - 1, dyn["advance"], 0.0)
        skip = np.where(pos < n - 2, _SKIP_SHARE, 0.0)
        back = np.where(pos >= 1, _BACK_RATE, 0.0)
        won = np.where(pos == n - 1, dyn["won"], np.where(pos == n - 2, _EARLY_WIN_RATE, 0.0))
        rates[ADVANCE, p, ..., :n, :] = up * (advance * (1 - skip))[:, None] * fresh
        rates[SKIP, p, ..., :n, :] = up * (advance * skip)[:, None] * fresh
        rates[BACK, p, ..., :n, :] = flat * back[:, None] * np.ones_like(fresh)
        rates[LOST, p, ..., :n, :] = down * loss[:, None] * stale
        rates[WON, p, ..., :n, :] = up * won[:, None] * fresh
    rates = rates.reshape(5, -1, max_open, len(weeks))
    rates.setflags(write=False)
    return rates


# ----------------------------------------------------------------------------------------------
# Accounts and deals
# ----------------------------------------------------------------------------------------------
def _build_accounts(world: SampleWorld, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Accounts, grouped in pools by (region, segment) so deals find an account of their segment
    in their rep's region. Arrays sorted by pool; `pool_start`/`pool_size` index the pools."""
    n_accounts = max(40, world.n_deals // 4)
    region_of_team = np.array([REGIONS.index(r) for r in world.teams["region"]])
    region_of_rep = region_of_team[world.users["team_code"].to_numpy()]
    region_share = np.bincount(region_of_rep, weights=world.users["deal_share"].to_numpy(), minlength=len(REGIONS))
    pool_share = (region_share[:, None] * _SEGMENT_ACCOUNT_SHARE[None, :]).ravel()
    needed = np.flatnonzero(np.repeat(region_share > 0, len(SEGMENTS)))
    drawn = _draw(rng.random(n_accounts - len(needed)), _cumulative(pool_share))
    pool = np.sort(np.concatenate([needed, drawn]).astype(np.int64), kind="stable")
    n_pools = len(REGIONS) * len(SEGMENTS)
    pool_size = np.bincount(pool, minlength=n_pools)
    pool_start = np.concatenate([[0], np.cumsum(pool_size)[:-1]])
    region, segment = np.divmod(pool, len(SEGMENTS))

    n_combos = len(_ACCOUNT_WORDS) * len(_ACCOUNT_NOUNS) * len(_ACCOUNT_SUFFIXES)
    combo = rng.permutation(n_combos)[np.arange(n_accounts) % n_combos]
    word, rest = np.divmod(combo, len(_ACCOUNT_NOUNS) * len(_ACCOUNT_SUFFIXES))
    noun, suffix = np.divmod(rest, len(_ACCOUNT_SUFFIXES))
    name = pc.binary_join_element_wise(
        _take(_ACCOUNT_WORDS, word), _take(_ACCOUNT_NOUNS, noun), _take(_ACCOUNT_SUFFIXES, suffix), " "
    )
    repeat = np.arange(n_accounts) // n_combos
    if repeat.max() > 0:
        numbered = pc.binary_join_element_wise(name, _format_integers(repeat + 1), " ")
        name = pc.if_else(pa.array(repeat > 0), numbered, name)

    low = np.array([lo for lo, _ in _SEGMENT_EMPLOYEES])[segment]
    high = np.array([hi for _, hi in _SEGMENT_EMPLOYEES])[segment]
    employees = np.exp(rng.uniform(np.log(low), np.log(high))).round().astype(np.int64)
    revenue = (employees * rng.uniform(120_000, 260_000, n_accounts) / 1e5).round().astype(np.int64) * 100_000
    city_tables = [_REGION_CITIES[r] for r in REGIONS]
    city_index = (rng.random(n_accounts) * np.array([len(city_tables[r]) for r in region])).astype(np.int64)
    cities = np.array([c for r in REGIONS for c in _REGION_CITIES[r]], dtype=object)
    city_offset = np.concatenate([[0], np.cumsum([len(t) for t in city_tables])[:-1]])
    city = city_offset[region] + city_index

    reps_by_region = [np.flatnonzero(region_of_rep == r) for r in range(len(REGIONS))]
    owner = np.zeros(n_accounts, dtype=np.int64)
    for r, reps in enumerate(reps_by_region):
        here = region == r
        if here.any():
            owner[here] = reps[(rng.random(int(here.sum())) * len(reps)).astype(np.int64)]
    first_second = (world.first_week * 7 + EPOCH_MONDAY_DAY) * DAY_SECONDS
    created = first_second - rng.integers(1, 365 * DAY_SECONDS, n_accounts)
    return {
        "id": salesforce_ids("account", np.arange(n_accounts)),
        "name": name,
        "segment": segment,
        "region": region,
        "pool_start": pool_start,
        "pool_size": pool_size,
        "type": _draw(rng.random(n_accounts), _cumulative(np.array([0.6, 0.15, 0.25]))),
        "industry": (rng.random(n_accounts) * len(_INDUSTRIES)).astype(np.int64),
        "employees": employees,
        "revenue": revenue,
        "city": city,
        "cities": cities,
        "ownership": _draw(rng.random(n_accounts), _cumulative(np.array([0.35, 0.55, 0.1]))),
        "rating": _draw(rng.random(n_accounts), _cumulative(np.array([0.2, 0.35, 0.25, 0.2]))),
        "source": _draw(rng.random(n_accounts), _cumulative(np.array(_KIND_LEAD_SOURCES["new_business"]))),
        "owner": owner,
        "created": created,
    }


def _draw_deals(world: SampleWorld, accounts: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every deal's creation time and fixed attributes, sorted by creation time."""
    n = world.n_deals
    weeks = np.arange(world.first_week, world.last_week + 1)
    weights = world.creation_weights(weeks)
    week = weeks[_draw(rng.random(n), _cumulative(weights)).astype(np.int64)]
    first, last = world.business_days(week)
    day = first + (rng.random(n) * (last - first + 1)).astype(np.int64)
    second = rng.integers(EVENT_HOURS[0] * 3600, EVENT_HOURS[1] * 3600, n)
    created = (week * 7 + EPOCH_MONDAY_DAY + day) * DAY_SECONDS + second
    order = np.argsort(created, kind="stable")
    created, week = created[order], week[order]

    mixes = world._mixes()
    rep = _draw(rng.random(n), _cumulative(mixes["rep_share"])).astype(np.int64)
    focus = mixes["focus_of_rep"][rep]
    pipeline = _draw(rng.random(n), _cumulative(mixes["pipeline_by_focus"]), focus).astype(np.int64)
    segment = _draw(rng.random(n), _cumulative(mixes["segment_by_focus"]), focus).astype(np.int64)
    product_table = _cumulative(mixes["product"].reshape(-1, len(PRODUCTS)))
    product = _draw(rng.random(n), product_table, pipeline * len(SEGMENTS) + segment).astype(np.int64)
    skill = world.users["skill_level"].to_numpy()[rep]
    deal_class = world.class_index(pipeline, skill, product, segment)

    kind_code = np.array([list(_KIND_DYNAMICS).index(k) for k in world.pipeline_kinds])[pipeline]
    kinds = list(_KIND_DYNAMICS)
    lead_source = _draw(rng.random(n), _cumulative(np.array([_KIND_LEAD_SOURCES[k] for k in kinds])), kind_code)
    deal_type = _draw(rng.random(n), _cumulative(np.array([_KIND_DEAL_TYPES[k] for k in kinds])), kind_code)

    region_of_team = np.array([REGIONS.index(r) for r in world.teams["region"]])
    region = region_of_team[world.users["team_code"].to_numpy()[rep]]
    pool = region * len(SEGMENTS) + segment
    account = accounts["pool_start"][pool] + (rng.random(n) * accounts["pool_size"][pool]).astype(np.int64)

    kind_amount = np.array([_KIND_AMOUNT[k] for k in world.pipeline_kinds])[pipeline]
    median = _SEGMENT_AMOUNT[segment] * _PRODUCT_AMOUNT[product] * kind_amount
    amount = np.maximum(np.round(median * rng.lognormal(0.0, _AMOUNT_SIGMA, n) / 100.0), 1).astype(np.int64) * 100

    close_low = np.array([_KIND_CLOSE_WEEKS[k][0] for k in kinds])[kind_code]
    close_high = np.array([_KIND_CLOSE_WEEKS[k][1] for k in kinds])[kind_code]
    close_weeks = rng.uniform(close_low, close_high) * _SEGMENT_CLOSE_FACTOR[segment]
    close_day = created // DAY_SECONDS + np.round(7 * close_weeks).astype(np.int64) + rng.integers(0, 7, n)
    return {
        "created": created,
        "week": week,
        "rep": rep,
        "pipeline": pipeline,
        "segment": segment,
        "product": product,
        "class": deal_class,
        "region": region,
        "account": account,
        "lead_source": lead_source,
        "deal_type": deal_type,
        "amount": amount,
        "close_day": close_day,
    }


def _revised(amount: np.ndarray, z: np.ndarray, sigma: float) -> np.ndarray:
    """An amount revised by a mean-one log-normal factor, in hundreds, at least 100."""
    factor = np.exp(sigma * z - sigma**2 / 2)
    return np.maximum(np.round(amount * factor / 100.0), 1).astype(np.int64) * 100


def _revision_stage(world: SampleWorld) -> np.ndarray:
    """Per pipeline, the open stage whose entry brings an amount revision (the proposal stage)."""
    out = []
    for name in world.pipelines:
        stages = world.stages[name].open_stages
        named = [i for i, s in enumerate(stages) if "proposal" in s.lower() or "quote" in s.lower()]
        out.append(named[0] if named else max(len(stages) - 2, 0))
    return np.array(out, dtype=np.int16)


@dataclass
class _Simulation:
    """Final deal states and the history rows (in the order they were generated, which is
    chronological within each deal)."""

    stage: np.ndarray
    status: np.ndarray  # 0 open, 1 won, 2 lost
    amount: np.ndarray
    close_day: np.ndarray
    loss_reason: np.ndarray
    last_change: np.ndarray
    last_stage_change: np.ndarray
    rows: dict[str, np.ndarray]


def _simulate(world: SampleWorld, deals: dict[str, np.ndarray], rng: np.random.Generator) -> _Simulation:
    """Run the weekly Markov process over all deals (a loop over weeks, vectorised over deals)."""
    n = world.n_deals
    deal_class = deals["class"]
    n_open = world.n_open_stages(deal_class)
    revision = _revision_stage(world)[deals["pipeline"]]
    stage = np.zeros(n, dtype=np.int16)
    in_stage = np.zeros(n, dtype=np.int16)
    amount = deals["amount"].copy()
    close = deals["close_day"].copy()
    status = np.zeros(n, dtype=np.int8)
    loss_reason = np.full(n, -1, dtype=np.int16)
    last_change = deals["created"].copy()
    last_stage_change = deals["created"].copy()
    reason_table = _cumulative(_LOSS_REASON_MIX)

    log: dict[str, list[np.ndarray]] = {
        key: []
        for key in (
            "deal", "time", "stage", "amount", "close", "prev_stage", "prev_amount", "prev_close", "boundary", "in_stage",
        )  # fmt: skip
    }

    def record(**columns: np.ndarray) -> None:
        for key, values in columns.items():
            log[key].append(values)

    minus_one = np.full(n, -1, dtype=np.int64)
    record(
        deal=np.arange(n, dtype=np.int64), time=deals["created"], stage=stage.copy(), amount=amount.copy(),
        close=close.copy(), prev_stage=minus_one.astype(np.int16), prev_amount=minus_one, prev_close=minus_one,
        boundary=deals["week"] + 1, in_stage=in_stage.copy(),
    )  # fmt: skip

    weeks = np.arange(world.first_week, world.last_week + 1)
    created_from = np.searchsorted(deals["week"], np.append(weeks, world.last_week + 1), side="left")
    first_day, last_day = world.business_days(weeks)
    open_deals = np.empty(0, dtype=np.int64)
    for i, week in enumerate(weeks):
        m = open_deals.size
        if m:
            d = open_deals
            outcome, new_stage, new_in_stage = world.step(deal_class[d], stage[d], in_stage[d], int(week), rng.random(m))
            u_revise, u_change, u_pull, u_reason, u_day = rng.random((5, m))
            z_revise, z_change = rng.standard_normal((2, m))
            push_weeks = rng.integers(2, 13, m)
            pull_weeks = rng.integers(1, 4, m)
            second = rng.integers(EVENT_HOURS[0] * 3600, EVENT_HOURS[1] * 3600, m)
            day = first_day[i] + (u_day * (last_day[i] - first_day[i] + 1)).astype(np.int64)
            when = (week * 7 + EPOCH_MONDAY_DAY + day) * DAY_SECONDS + second

            closing = (outcome == WON) | (outcome == LOST)
            moved = outcome < STAY
            still_open = ~closing
            old_amount = amount[d]
            entered_forward = (outcome == ADVANCE) | (outcome == SKIP)
            revise = still_open & entered_forward & (new_stage == revision[d]) & (u_revise < _REVISION_SHARE)
            change = still_open & ~revise & (u_change < _AMOUNT_CHANGE_RATE)
            new_amount = np.where(revise, _revised(old_amount, z_revise, _REVISION_SIGMA), old_amount)
            new_amount = np.where(change, _revised(old_amount, z_change, _AMOUNT_CHANGE_SIGMA), new_amount)

            old_close = close[d]
            next_monday = (week + 1) * 7 + EPOCH_MONDAY_DAY
            push = still_open & (old_close < next_monday)
            pull = still_open & ~push & (old_close >= next_monday + 35) & (u_pull < _PULL_IN_RATE)
            new_close = np.where(push, old_close + 7 * push_weeks, np.where(pull, old_close - 7 * pull_weeks, old_close))
            new_close = np.where(closing, when // DAY_SECONDS, new_close)

            row = moved | (new_amount != old_amount) | (new_close != old_close)
            changed = d[row]
            record(
                deal=changed, time=when[row], stage=new_stage[row], amount=new_amount[row], close=new_close[row],
                prev_stage=stage[changed], prev_amount=old_amount[row], prev_close=old_close[row],
                boundary=np.full(changed.size, week + 1, dtype=np.int64), in_stage=new_in_stage[row],
            )  # fmt: skip

            lost = outcome == LOST
            if lost.any():
                late = 2 * stage[d[lost]] >= n_open[d[lost]]
                group = np.where(in_stage[d[lost]] >= _STALE_LOSS_WEEKS, 2, late.astype(np.int64))
                loss_reason[d[lost]] = _draw(u_reason[lost], reason_table, group)
            stage[d] = new_stage
            in_stage[d] = new_in_stage
            amount[d] = new_amount
            close[d] = new_close
            status[d[outcome == WON]] = 1
            status[d[lost]] = 2
            last_change[changed] = when[row]
            last_stage_change[d[moved]] = when[moved]
            open_deals = d[still_open]
        open_deals = np.concatenate([open_deals, np.arange(created_from[i], created_from[i + 1], dtype=np.int64)])

    rows = {key: np.concatenate(parts) for key, parts in log.items()}
    return _Simulation(stage, status, amount, close, loss_reason, last_change, last_stage_change, rows)


def _truth(world: SampleWorld, deals: dict[str, np.ndarray], rows: dict[str, np.ndarray]) -> np.ndarray:
    """The true win probability after each history row (see the module docstring)."""
    deal_class = deals["class"][rows["deal"]]
    n_open = world.n_open_stages(deal_class)
    truth = np.where(rows["stage"] == n_open, 1.0, 0.0)
    is_open = rows["stage"] < n_open
    truth[is_open] = world.win_probability(
        deal_class[is_open], rows["stage"][is_open], rows["in_stage"][is_open], rows["boundary"][is_open]
    )
    return truth


# ----------------------------------------------------------------------------------------------
# The messy real org: the same sales process, recorded the way an untidy small org records it
# ----------------------------------------------------------------------------------------------
PROFILE_CLEAN = "clean"
PROFILE_MESSY = "messy"
PROFILES = (PROFILE_CLEAN, PROFILE_MESSY)
PROFILE_DEFAULTS = {PROFILE_CLEAN: (10_000, 3.5), PROFILE_MESSY: (720, 1.0)}  # (real deals, years)

TRUTH_DEALS_FILE = "truth_deals.csv"
TRUTH_REAL_HISTORY_FILE = "truth_real_history.csv"
TRUTH_MANIFEST_FILE = "truth_sample.json"
RATES_FILE = "exchange_rates.csv"
PIPELINES_CONFIG_FILE = "dealcast_pipelines.toml"

SHAPES = (
    "imported", "keyed_at_close", "never_entered", "no_history", "last_minute_stage", "late_keyed", "stale",
    "purged", "lost_future_close", "outlier",
)  # fmt: skip
TRUTH_DEAL_COLUMNS = (
    "deal_id", "pipeline", "owner_id", "team", "product", "segment", "skill_level", "real_outcome",
    "real_created_at", "real_closed_at", "real_close_date", "hidden_loss_at", "crm_created_at",
    "crm_closed_at", "crm_status", "crm_close_date", "amount", "currency", "amount_reporting", *SHAPES,
)  # fmt: skip
TRUTH_REAL_HISTORY_COLUMNS = ("deal_id", "changed_at", "stage", "amount_reporting", "close_date")

SPANISH_PIPELINE = PipelineStages(
    name="Ventas",
    open_stages=(
        "Prospección", "Calificación", "Análisis de necesidades", "Propuesta de valor", "Propuesta/Presupuesto",
        "Negociación/Revisión",
    ),  # fmt: skip
    won_stage="Cerrada ganada",
    lost_stage="Cerrada perdida",
    probabilities={
        "Prospección": 0.10, "Calificación": 0.10, "Análisis de necesidades": 0.20, "Propuesta de valor": 0.50,
        "Propuesta/Presupuesto": 0.75, "Negociación/Revisión": 0.90,
    },  # fmt: skip
)
# StageSortOrder as a Spanish-language org's export gives it: the positions of Salesforce's default
# picklist, whose "Id. Decision Makers" (5) and "Perception Analysis" (6) the org deactivated.
SPANISH_SORT_ORDER = {
    "Prospección": 1, "Calificación": 2, "Análisis de necesidades": 3, "Propuesta de valor": 4,
    "Propuesta/Presupuesto": 7, "Negociación/Revisión": 8, "Cerrada ganada": 9, "Cerrada perdida": 10,
}  # fmt: skip

# Exchange rates into USD around which the rates file's weekly rates wander (1% a week).
_CURRENCY_USD = {
    "USD": 1.0, "EUR": 1.08, "GBP": 1.27, "CAD": 0.73, "AUD": 0.66, "JPY": 0.0067, "MXN": 0.055,
    "BRL": 0.19, "COP": 0.00025, "CLP": 0.00105, "ARS": 0.0011, "PEN": 0.27,
}  # fmt: skip
_RATE_WEEKLY_SIGMA = 0.01
_KEYED_GAP_SECONDS = (60, 3 * 3600)  # a deal keyed in at close is closed 1 minute to 3 hours after
_IMPORT_SECOND_OF_DAY = 9 * 3600  # the bulk import runs at 09:00:00 UTC
_PURGE_SECOND_OF_DAY = 17 * 3600  # a purge closes its deals at 17:00:00 UTC
_LOST_FUTURE_MIN_DAYS = 7  # a "future" close date is at least a week after the loss
_OUTLIER_FACTOR = 6  # an outlier deal shows 6 times the largest amount ever won


@dataclass(frozen=True)
class MessyOptions:
    """The knobs of the messy profile (the module docstring says who is eligible for each); every
    shape is on by default, each set to 0 (or None, or False) turns it off. Shares are exact:
    round(share x eligible deals) deals get the shape, drawn at random among the eligible ones.

    keyed_at_close_share       deals the rep enters only once decided: a won one is created at its
                               win and closed 1 minute to 3 hours later the same day
    keyed_at_close_lost_share  of those that are lost, the share entered the same way; the others
                               (and those still undecided at the end) never reach the CRM
    no_history_share           keyed-at-close deals (not late-keyed) without any OpportunityHistory row
    last_minute_stage_share    deals whose stage moves are never recorded: a won one enters the last
                               open stage at its win and is closed minutes later
    late_keyed_share           won deals whose close is keyed in `late_keyed_days` days after the
                               CloseDate they are given (the real day of the win)
    stale_share                lost deals whose loss is never recorded: they stay open, ageing
    purge_every_months         a purge every so many months closes stale deals as lost in bulk (0: never)
    purge_overdue_days         a purge closes the stale deals whose CloseDate is this many days past
    lost_future_close_share    recorded losses whose CloseDate is left at the expected close date,
                               at least a week after the loss
    outlier_deals              stale deals (a number) showing 6 times the largest win as their amount
                               and a close date before their creation
    import_at                  share of the span after which the CRM goes live with a bulk import of
                               every deal created before (None: the CRM was used from the start)
    spanish_stages             the org's single pipeline "Ventas" has Spanish stage names (False: the
                               stages of `dealcast.toml`)
    encoding                   "utf-8" or "cp1252" (Windows-1252) for the Salesforce files
    currencies                 deal currencies, drawn at random per deal; with any besides the
                               reporting currency, `exchange_rates.csv` is written (empty: USD only)
    loss_reason_field          the Opportunity column the org keeps its loss reasons in, when not
                               the one dealcast.toml names (e.g. "LossReason__c"; blank: that one)
    """

    keyed_at_close_share: float = 0.7
    keyed_at_close_lost_share: float = 0.3
    no_history_share: float = 0.3
    last_minute_stage_share: float = 0.5
    late_keyed_share: float = 0.3
    late_keyed_days: tuple[int, int] = (7, 56)
    stale_share: float = 0.6
    purge_every_months: int = 3
    purge_overdue_days: int = 30
    lost_future_close_share: float = 0.4
    outlier_deals: int = 1
    import_at: float | None = 0.25
    spanish_stages: bool = True
    encoding: str = "utf-8"
    currencies: tuple[str, ...] = ()
    loss_reason_field: str = ""

    def __post_init__(self) -> None:
        for name in (
            "keyed_at_close_share", "keyed_at_close_lost_share", "no_history_share", "last_minute_stage_share",
            "late_keyed_share", "stale_share", "lost_future_close_share",
        ):  # fmt: skip
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"messy option {name}: expected a share between 0 and 1, got {value!r}")
        low, high = self.late_keyed_days
        if not 1 <= low <= high:
            raise ValueError(f"messy option late_keyed_days: expected 1 <= first <= second, got {self.late_keyed_days!r}")
        if self.outlier_deals < 0:
            raise ValueError(f"messy option outlier_deals: expected 0 or more, got {self.outlier_deals!r}")
        if self.purge_every_months < 0 or self.purge_overdue_days < 0:
            raise ValueError(
                "messy options purge_every_months and purge_overdue_days: expected 0 or more, got "
                f"{self.purge_every_months!r} and {self.purge_overdue_days!r}"
            )
        if self.import_at is not None and not 0.0 < self.import_at < 1.0:
            raise ValueError(f"messy option import_at: expected a share of the span between 0 and 1 (or None), got {self.import_at!r}")
        if self.encoding not in ("utf-8", "cp1252"):
            raise ValueError(f"messy option encoding: expected 'utf-8' or 'cp1252', got {self.encoding!r}")
        if self.loss_reason_field in OPPORTUNITY_COLUMNS or any(ch in self.loss_reason_field for ch in '",\r\n'):
            raise ValueError(
                f"messy option loss_reason_field: {self.loss_reason_field!r} is not a custom field name; "
                "expected a name such as LossReason__c"
            )
        unknown = [c for c in self.currencies if c not in _CURRENCY_USD]
        if unknown:
            raise ValueError(f"messy option currencies: {unknown} not simulated; expected codes among {sorted(_CURRENCY_USD)}")

    @classmethod
    def off(cls) -> "MessyOptions":
        """Every shape off and the project's own stages: the messy profile then writes the clean
        profile's export (plus the truth files), the baseline to switch shapes on one at a time."""
        return cls(
            keyed_at_close_share=0.0, keyed_at_close_lost_share=0.0, no_history_share=0.0,
            last_minute_stage_share=0.0, late_keyed_share=0.0, stale_share=0.0, purge_every_months=0,
            lost_future_close_share=0.0, outlier_deals=0, import_at=None, spanish_stages=False,
        )  # fmt: skip

    def with_assignments(self, assignments: Sequence[str]) -> "MessyOptions":
        """These options with `NAME=VALUE` assignments applied (the command line's `--option`).
        Raises ValueError naming the assignment and what was expected."""
        names = sorted(f.name for f in dataclass_fields(self))
        changes: dict[str, object] = {}
        for text in assignments:
            name, sep, value = (part.strip() for part in text.partition("="))
            if not sep or name not in names:
                raise ValueError(f"messy option {text!r}: expected NAME=VALUE with NAME one of {names}")
            try:
                changes[name] = _option_value(name, value)
            except ValueError as exc:
                raise ValueError(f"messy option {text!r}: {exc}") from None
        return replace(self, **changes)


def _option_value(name: str, text: str) -> object:
    """A messy option's value from its command-line text."""
    if name == "import_at":
        return None if text.lower() in ("none", "off", "") else float(text)
    if name == "spanish_stages":
        lowered = text.lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError("expected true or false")
        return lowered in ("true", "1", "yes")
    if name == "late_keyed_days":
        parts = [int(p) for p in text.split(",")]
        if len(parts) != 2:
            raise ValueError("expected two numbers of days, e.g. 7,56")
        return (parts[0], parts[1])
    if name == "currencies":
        return tuple(c.strip().upper() for c in text.split(",") if c.strip())
    if name == "encoding":
        return text.lower()
    if name == "loss_reason_field":
        return text
    if name in ("purge_every_months", "purge_overdue_days", "outlier_deals"):
        return int(text)
    return float(text)


def _choose(rng: np.random.Generator, eligible: np.ndarray, share: float) -> np.ndarray:
    """Exactly round(share x eligible) of the eligible deals, drawn at random (a deal mask)."""
    return _choose_count(rng, eligible, math.floor(share * int(eligible.sum()) + 0.5))


def _choose_count(rng: np.random.Generator, eligible: np.ndarray, count: int) -> np.ndarray:
    """`count` of the eligible deals (all of them when fewer), drawn at random (a deal mask)."""
    chosen = np.zeros(len(eligible), dtype=bool)
    chosen[rng.permutation(np.flatnonzero(eligible))[:count]] = True
    return chosen


def _to_weekday(seconds: np.ndarray) -> np.ndarray:
    """Moments on a Saturday or Sunday moved to the Monday after, same time of day."""
    weekday = (seconds // DAY_SECONDS + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    return seconds + np.where(weekday >= 5, 7 - weekday, 0) * DAY_SECONDS


def _seconds_of(day: dt.date, second_of_day: int) -> int:
    return (day - dt.date(1970, 1, 1)).days * DAY_SECONDS + second_of_day


def _import_moment(world: SampleWorld, import_at: float | None) -> int | None:
    """The bulk import: 09:00 UTC on the Saturday on or after `import_at` of the span (that day
    itself when the Saturday is past `end_date`)."""
    if import_at is None:
        return None
    day = world.start_date + dt.timedelta(days=round(import_at * (world.end_date - world.start_date).days))
    saturday = day + dt.timedelta(days=(5 - day.weekday()) % 7)
    return _seconds_of(saturday if saturday <= world.end_date else day, _IMPORT_SECOND_OF_DAY)


def _purge_moments(world: SampleWorld, live_from: int, every_months: int) -> list[int]:
    """17:00 UTC on the last Friday of every `every_months`-th month after the month the CRM went
    live, up to `end_date`."""
    if every_months <= 0:
        return []
    live = dt.date(1970, 1, 1) + dt.timedelta(days=live_from // DAY_SECONDS)
    moments = []
    k = 1
    while True:
        month_index = live.year * 12 + live.month - 1 + k * every_months
        following = dt.date(month_index // 12 + (month_index % 12 + 1) // 12, (month_index % 12 + 1) % 12 + 1, 1)
        last_day = following - dt.timedelta(days=1)
        friday = last_day - dt.timedelta(days=(last_day.weekday() - 4) % 7)
        if friday > world.end_date:
            return moments
        moments.append(_seconds_of(friday, _PURGE_SECOND_OF_DAY))
        k += 1


@dataclass(frozen=True, eq=False)
class _RealLives:
    """Every deal's real life (the simulated history, before any of it is recorded or hidden),
    sorted by deal and time; answers the true win probability of a deal at any moment."""

    world: SampleWorld
    deal_class: np.ndarray  # per deal
    deal: np.ndarray  # per real row
    time: np.ndarray  # seconds since the Unix epoch
    stage: np.ndarray  # stage code (n_open won, n_open + 1 lost)
    entered: np.ndarray  # when the row's stage was entered

    @classmethod
    def build(cls, world: SampleWorld, deal_class: np.ndarray, deal: np.ndarray, time: np.ndarray, stage: np.ndarray) -> "_RealLives":
        order = np.lexsort((time, deal))
        deal, time, stage = deal[order], time[order], stage[order]
        starts = np.ones(len(deal), dtype=bool)
        starts[1:] = (deal[1:] != deal[:-1]) | (stage[1:] != stage[:-1])
        entered = time[np.maximum.accumulate(np.where(starts, np.arange(len(deal)), 0))]
        return cls(world, np.asarray(deal_class), deal, time, stage, entered)

    def win_probability(self, deal: np.ndarray, seconds: np.ndarray, labels: Sequence | None = None) -> np.ndarray:
        """The probability that each deal is eventually won, given its real state at `seconds`:
        1 once really won, 0 once really lost, else V_b of its real open state, where the boundary b
        is the next Monday when the moment is past Friday 20:00 or the deal already made this week's
        step (it has a real row this week by then), else the Monday the week started.

        Raises ValueError (naming the row by `labels`, else its position) for a moment before the
        deal's real creation."""
        deal = np.asarray(deal, dtype=np.int64)
        seconds = np.asarray(seconds, dtype=np.int64)
        shift = np.int64(1) << 32
        keys = self.deal.astype(np.int64) * shift + self.time
        row = np.searchsorted(keys, deal * shift + seconds, side="right") - 1
        bad = (row < 0) | (self.deal[np.maximum(row, 0)] != deal)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            label = labels[first] if labels is not None else first
            raise ValueError(f"true win probability: row {label}: the deal did not exist yet at that moment")
        stage = self.stage[row]
        deal_class = self.deal_class[deal]
        n_open = self.world.n_open_stages(deal_class)
        out = np.where(stage == n_open, 1.0, 0.0)
        is_open = stage < n_open
        if is_open.any():
            epoch = EPOCH_MONDAY_DAY * DAY_SECONDS
            week, offset = np.divmod(seconds - epoch, WEEK_SECONDS)
            stepped = (self.time[row] - epoch) // WEEK_SECONDS == week
            boundary = week + ((offset >= WINDOW_END_SECONDS) | stepped)
            entered_week = (self.entered[row] - epoch) // WEEK_SECONDS
            boundary = np.maximum(boundary, entered_week + 1)
            weeks_in_stage = np.minimum(boundary - entered_week - 1, WEEKS_IN_STAGE_CAP)
            out[is_open] = self.world.win_probability(
                deal_class[is_open], stage[is_open], weeks_in_stage[is_open], boundary[is_open]
            )
        return out


@dataclass
class _Recorded:
    """What the CRM shows of the real simulation: the deals' final recorded state and every
    recorded history row (per deal, in time order), with the shapes and truth behind them."""

    view: _Simulation  # final CRM state per deal; rows = the recorded rows (no-history deals included)
    present: np.ndarray  # deals in the CRM (every deal but those never entered)
    created: np.ndarray  # CreatedDate per deal (the real creation for a deal never entered)
    seq: np.ndarray  # file-order tie-break per recorded row
    in_history: np.ndarray  # recorded rows written to OpportunityHistory.csv
    shapes: dict[str, np.ndarray]
    import_at: int | None
    purges: list[int]
    real_closed_at: np.ndarray  # -1 while really open
    crm_closed_at: np.ndarray  # -1 while open in the CRM


@dataclass(frozen=True, eq=False)
class _RealDeals:
    """The real rows sorted by deal (chronological within each), and per deal what the messy
    recording needs: its first and last row, its outcome and what it looked like just before."""

    rows: dict[str, np.ndarray]
    by_deal: np.ndarray  # generation index of each sorted row (the file-order tie-break)
    first: np.ndarray
    last: np.ndarray
    n_open: np.ndarray
    won: np.ndarray
    lost: np.ndarray
    closed_at: np.ndarray  # the real moment of the win or loss, -1 while open

    @classmethod
    def of(cls, world: SampleWorld, deals: dict[str, np.ndarray], sim: _Simulation) -> "_RealDeals":
        n = world.n_deals
        by_deal = np.argsort(sim.rows["deal"], kind="stable")  # generation order is chronological per deal
        rows = {key: values[by_deal] for key, values in sim.rows.items()}
        last = np.searchsorted(rows["deal"], np.arange(n), side="right") - 1
        won, lost = sim.status == 1, sim.status == 2
        return cls(
            rows=rows,
            by_deal=by_deal,
            first=np.searchsorted(rows["deal"], np.arange(n), side="left"),
            last=last,
            n_open=world.n_open_stages(deals["class"]),
            won=won,
            lost=lost,
            closed_at=np.where(won | lost, rows["time"][last], -1),
        )

    @property
    def closed(self) -> np.ndarray:
        return self.won | self.lost

    @property
    def close_day(self) -> np.ndarray:
        return self.closed_at // DAY_SECONDS

    @property
    def close_before(self) -> np.ndarray:
        """The expected close date just before the close (the closing row's previous one)."""
        return self.rows["prev_close"][self.last]


@dataclass(frozen=True, eq=False)
class _MessyChoices:
    """Per deal, how the messy org records it (masks and moments; -1 where a moment does not apply)."""

    import_at: int | None
    imported: np.ndarray
    closed_before_import: np.ndarray
    at_import: np.ndarray  # the deal's last real row at the import
    crm_first_stage: np.ndarray
    habit: np.ndarray  # entered only once decided
    keyed: np.ndarray
    never_entered: np.ndarray
    last_minute: np.ndarray
    late: np.ndarray
    keyed_in: np.ndarray  # when the close is keyed in (the real moment unless late)
    gap: np.ndarray  # seconds from the keyed-in creation or catch-up to the closing row
    no_history: np.ndarray
    stale: np.ndarray
    lost_future: np.ndarray
    purges: list[int]
    purged_at: np.ndarray
    outlier: np.ndarray
    outlier_amount: int  # what the CRM shows as the amount of an outlier deal
    outlier_close: np.ndarray  # the close date (day) it shows, before the deal's creation


def _draw_messy_choices(world: SampleWorld, deals: dict[str, np.ndarray], real: _RealDeals, options: MessyOptions, seed: int) -> _MessyChoices:
    """Decide every deal's shapes (see the module docstring). Each knob draws from its own random
    stream, so changing one leaves the others' deals alone."""

    def stream(knob: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([seed, 4, knob]))

    n = world.n_deals
    r = real.rows
    # The bulk import: deals created before it enter the CRM at it, in their state of that moment.
    import_at = _import_moment(world, options.import_at)
    imported = np.zeros(n, dtype=bool) if import_at is None else deals["created"] < import_at
    closed_before_import = imported & real.closed & (real.closed_at <= (import_at or 0))
    at_import = real.last.copy()
    if import_at is not None:
        shift = np.int64(1) << 32
        keys = r["deal"].astype(np.int64) * shift + r["time"]
        at_import = np.maximum(np.searchsorted(keys, np.arange(n) * shift + import_at, side="right") - 1, real.first)
    crm_first_stage = np.where(imported, r["stage"][at_import], r["stage"][real.first])

    # Habits of the reps, drawn before anything is decided (so which deals the CRM shows open says
    # nothing about how they will end): keyed in only once decided, or stage moves never recorded.
    habit = _choose(stream(0), ~imported, options.keyed_at_close_share)
    keyed = habit & (real.won | _choose(stream(1), habit & real.lost, options.keyed_at_close_lost_share))
    in_crm_open = ~habit & ~closed_before_import
    last_minute = _choose(stream(6), in_crm_open & (crm_first_stage != real.n_open - 1), options.last_minute_stage_share)

    # How closes are keyed in, decided when the deal is won or lost.
    low, high = options.late_keyed_days
    late_at = _to_weekday(real.closed_at + stream(2).integers(low, high + 1, n) * DAY_SECONDS)
    end_second = _seconds_of(world.end_date + dt.timedelta(days=1), 0)
    fits = late_at + _KEYED_GAP_SECONDS[1] < end_second
    late = _choose(stream(3), real.won & ~closed_before_import & fits, options.late_keyed_share)
    keyed_in = np.where(late, late_at, real.closed_at)
    room = np.minimum(_KEYED_GAP_SECONDS[1], (keyed_in // DAY_SECONDS + 1) * DAY_SECONDS - 1 - keyed_in)
    gap = _KEYED_GAP_SECONDS[0] + (stream(4).random(n) * np.maximum(room - _KEYED_GAP_SECONDS[0] + 1, 1)).astype(np.int64)
    stale = _choose(stream(7), real.lost & in_crm_open, options.stale_share)
    future_close = real.close_before >= real.close_day + _LOST_FUTURE_MIN_DAYS
    lost_future = _choose(stream(8), real.lost & in_crm_open & ~stale & future_close, options.lost_future_close_share)

    live_from = import_at if import_at is not None else _seconds_of(world.start_date, 0)
    purges = _purge_moments(world, live_from, options.purge_every_months)
    purged_at = np.full(n, -1, dtype=np.int64)
    for moment in purges:
        due = stale & (purged_at < 0) & (real.closed_at < moment)
        due &= moment // DAY_SECONDS - real.close_before >= options.purge_overdue_days
        purged_at[due] = moment

    # Outliers: dead deals nobody touched after creating them, showing an amount far above any
    # win and a close date before their creation (one row only, so nothing else contradicts it).
    untouched = real.last - np.where(imported, at_import, real.first) == 1
    outlier = _choose_count(stream(9), stale & (purged_at < 0) & untouched, options.outlier_deals)
    largest_win = int(r["amount"][real.last][real.won].max()) if real.won.any() else int(r["amount"].max())
    created_day = np.where(imported, (import_at or 0) // DAY_SECONDS, deals["created"] // DAY_SECONDS)
    outlier_close = created_day - stream(10).integers(10, 61, n)
    return _MessyChoices(
        import_at=import_at,
        imported=imported,
        closed_before_import=closed_before_import,
        at_import=at_import,
        crm_first_stage=crm_first_stage,
        habit=habit,
        keyed=keyed,
        never_entered=habit & ~keyed,
        last_minute=last_minute,
        late=late,
        keyed_in=keyed_in,
        gap=gap,
        no_history=_choose(stream(5), keyed & ~late, options.no_history_share),
        stale=stale,
        lost_future=lost_future,
        purges=purges,
        purged_at=purged_at,
        outlier=outlier,
        outlier_amount=round(_OUTLIER_FACTOR * largest_win, -3),
        outlier_close=outlier_close,
    )


def _recorded_rows(real: _RealDeals, c: _MessyChoices) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The history rows the CRM holds (sorted by deal and time, with prev_* columns) and each
    row's file-order tie-break: the real rows it keeps, as it shows them, plus its own rows."""
    r = real.rows
    rd = r["deal"]
    n = len(real.last)
    n_open = real.n_open
    closing_row = np.zeros(len(rd), dtype=bool)
    closing_row[real.last[real.closed]] = True
    caught_up = c.last_minute & real.won
    keep = ~c.habit[rd] & ~(c.stale[rd] & closing_row) & ~(caught_up[rd] & closing_row)
    if c.import_at is not None:
        keep &= ~(c.imported[rd] & (r["time"] <= c.import_at))
    hidden_moves = c.last_minute[rd] & ~closing_row
    stage = np.where(hidden_moves, c.crm_first_stage[rd], r["stage"])
    stage_only = (r["prev_stage"] >= 0) & (r["amount"] == r["prev_amount"]) & (r["close"] == r["prev_close"])
    keep &= ~(hidden_moves & stage_only)
    time = np.where(c.late[rd] & closing_row, c.keyed_in[rd], r["time"])
    close = np.where(c.lost_future[rd] & closing_row, real.close_before[rd], r["close"])

    # Rows only the CRM has: the import, the keyed-in creation and close, the last-minute catch-up, the purge.
    final_stage = r["stage"][real.last]
    final_amount = r["amount"][real.last]
    stage_before_close = r["prev_stage"][real.last]
    parts = [
        (c.imported, np.full(n, c.import_at or 0), r["stage"][c.at_import], r["amount"][c.at_import], r["close"][c.at_import]),
        (c.keyed, c.keyed_in, stage_before_close, final_amount, real.close_day),
        (c.keyed, c.keyed_in + c.gap, final_stage, final_amount, real.close_day),
        (caught_up, c.keyed_in, n_open - 1, final_amount, real.close_day),
        (caught_up, c.keyed_in + c.gap, final_stage, final_amount, real.close_day),
        (c.purged_at >= 0, c.purged_at, n_open + 1, final_amount, real.close_before),
    ]
    extra = {key: [] for key in ("deal", "time", "stage", "amount", "close")}
    for mask, when, new_stage, new_amount, new_close in parts:
        which = np.flatnonzero(mask)
        extra["deal"].append(which)
        for key, values in (("time", when), ("stage", new_stage), ("amount", new_amount), ("close", new_close)):
            extra[key].append(np.broadcast_to(values, (n,))[which])
    added = {key: np.concatenate(values).astype(np.int64) for key, values in extra.items()}
    recorded = {
        "deal": np.concatenate([rd[keep], added["deal"]]),
        "time": np.concatenate([time[keep], added["time"]]),
        "stage": np.concatenate([stage[keep], added["stage"]]).astype(np.int16),
        "amount": np.concatenate([r["amount"][keep], added["amount"]]),
        "close": np.concatenate([close[keep], added["close"]]),
    }
    seq = np.concatenate([real.by_deal[keep], len(rd) + np.arange(len(added["deal"]))])
    outlier_row = c.outlier[recorded["deal"]]
    recorded["amount"] = np.where(outlier_row, c.outlier_amount, recorded["amount"])
    recorded["close"] = np.where(outlier_row, c.outlier_close[recorded["deal"]], recorded["close"])
    order = np.lexsort((seq, recorded["time"], recorded["deal"]))
    recorded = {key: values[order] for key, values in recorded.items()}
    deal = recorded["deal"]
    is_first = np.ones(len(deal), dtype=bool)
    is_first[1:] = deal[1:] != deal[:-1]
    for key in ("stage", "amount", "close"):
        previous = np.concatenate([[-1], recorded[key][:-1]]).astype(np.int64)
        recorded[f"prev_{key}"] = np.where(is_first, -1, previous)
    recorded["prev_stage"] = recorded["prev_stage"].astype(np.int16)
    return recorded, seq[order]


def _record_messy(world: SampleWorld, deals: dict[str, np.ndarray], sim: _Simulation, options: MessyOptions, seed: int) -> _Recorded:
    """Record the simulated deals the way the messy org does (see the module docstring)."""
    n = world.n_deals
    real = _RealDeals.of(world, deals, sim)
    c = _draw_messy_choices(world, deals, real, options, seed)
    recorded, seq = _recorded_rows(real, c)
    deal = recorded["deal"]
    present = ~c.never_entered
    crm_first = np.searchsorted(deal, np.arange(n), side="left")[present]
    crm_last = np.searchsorted(deal, np.arange(n), side="right")[present] - 1

    def per_deal(values: np.ndarray, rows: np.ndarray, default: int = -1) -> np.ndarray:
        out = np.full(n, default, dtype=np.int64)
        out[present] = values[rows]
        return out

    crm_stage = per_deal(recorded["stage"], crm_last, 0)
    crm_status = np.where(crm_stage == real.n_open, 1, np.where(crm_stage == real.n_open + 1, 2, 0)).astype(np.int8)
    stage_moved = (recorded["prev_stage"] < 0) | (recorded["stage"] != recorded["prev_stage"])
    last_stage_change = np.zeros(n, dtype=np.int64)
    np.maximum.at(last_stage_change, deal[stage_moved], recorded["time"][stage_moved])
    view = _Simulation(
        stage=crm_stage.astype(np.int16),
        status=crm_status,
        amount=per_deal(recorded["amount"], crm_last),
        close_day=per_deal(recorded["close"], crm_last),
        loss_reason=np.where((crm_status == 2) & (c.purged_at < 0), sim.loss_reason, -1).astype(np.int16),
        last_change=per_deal(recorded["time"], crm_last),
        last_stage_change=last_stage_change,
        rows=recorded,
    )
    shapes = {
        "imported": c.imported,
        "keyed_at_close": c.keyed,
        "never_entered": c.never_entered,
        "no_history": c.no_history,
        "last_minute_stage": c.last_minute,
        "late_keyed": c.late,
        "stale": c.stale,
        "purged": c.purged_at >= 0,
        "lost_future_close": c.lost_future,
        "outlier": c.outlier,
    }
    return _Recorded(
        view=view,
        present=present,
        created=np.where(present, per_deal(recorded["time"], crm_first), deals["created"]),
        seq=seq,
        in_history=~c.no_history[deal],
        shapes=shapes,
        import_at=c.import_at,
        purges=c.purges,
        real_closed_at=real.closed_at,
        crm_closed_at=np.where(present & (crm_status > 0), view.last_change, -1),
    )


def _valid_to(deal: np.ndarray, time: np.ndarray) -> np.ndarray:
    """Each row's next row time of the same deal (-1 for a deal's last row); rows sorted by deal."""
    following = np.full(len(deal), -1, dtype=np.int64)
    same = deal[1:] == deal[:-1]
    following[:-1] = np.where(same, time[1:], -1)
    return following


def _exchange_rates(world: SampleWorld, currencies: Sequence[str], reporting: str, rng: np.random.Generator) -> pd.DataFrame:
    """Weekly rates (Mondays from the week before the span to `end_date`) into the reporting
    currency for every currency but the reporting one: a 1%-a-week random walk around its usual rate."""
    mondays = np.arange(world.first_week - 1, world.last_week + 1) * 7 + EPOCH_MONDAY_DAY
    frames = []
    for code in sorted(set(currencies) - {reporting}):
        walk = np.exp(np.cumsum(rng.normal(0.0, _RATE_WEEKLY_SIGMA, len(mondays))))
        rate = _CURRENCY_USD[code] / _CURRENCY_USD.get(reporting, 1.0) * walk
        written = [float(f"{value:.6g}") for value in rate]  # six significant digits, as the file holds them
        frames.append(pd.DataFrame({"day": mondays, "currency": code, "rate": written}))
    if not frames:
        return pd.DataFrame({"day": np.empty(0, np.int64), "currency": [], "rate": np.empty(0)})
    return pd.concat(frames, ignore_index=True)


def _in_deal_currency(
    recorded: _Recorded, options: MessyOptions, reporting: str, rates: pd.DataFrame, rng: np.random.Generator
) -> tuple[np.ndarray, list[str]]:
    """Give each deal a currency and turn its recorded amounts into it, at the rate of the day it
    was created in the CRM (whole units). Returns the currency codes and their names."""
    names = list(options.currencies) or [reporting]
    n = len(recorded.created)
    code = (rng.random(n) * len(names)).astype(np.int64)
    factor = np.ones(n)
    created_day = recorded.created // DAY_SECONDS
    for i, name in enumerate(names):
        table = rates[rates["currency"] == name]
        if name == reporting or table.empty:
            continue
        mine = code == i
        position = np.searchsorted(table["day"].to_numpy(), created_day[mine], side="right") - 1
        factor[mine] = 1.0 / table["rate"].to_numpy()[np.maximum(position, 0)]
    def converted(amount: np.ndarray, deal: np.ndarray) -> np.ndarray:
        return np.where(amount >= 0, np.maximum(np.round(amount * factor[deal]), 1), amount).astype(np.int64)

    rows = recorded.view.rows
    for key in ("amount", "prev_amount"):
        rows[key] = converted(rows[key], rows["deal"])
    recorded.view.amount = converted(recorded.view.amount, np.arange(n))
    return code, names


def _truth_deal_chunks(
    world: SampleWorld, deals: dict[str, np.ndarray], sim: _Simulation, recorded: _Recorded, opportunity_ids: pa.Array,
    currency: pa.Array, user_ids: pa.Array,
) -> Iterator[dict[str, pa.Array]]:
    """The rows of truth_deals.csv: every simulated deal, in order of real creation (the order of
    Opportunity.csv, with the deals never entered in the CRM in between)."""
    real = np.array([STATUS_OPEN, STATUS_WON, STATUS_LOST])[sim.status]
    crm = np.where(recorded.present, np.array([STATUS_OPEN, STATUS_WON, STATUS_LOST])[recorded.view.status], "")
    absent = ~recorded.present
    really_closed = sim.status > 0
    stale = recorded.shapes["stale"]
    skill = world.users["skill_level"].to_numpy()[deals["rep"]]
    team = world.users["Department"].to_numpy()[deals["rep"]]
    chunk = {
        "deal_id": opportunity_ids,
        "pipeline": _take(world.pipelines, deals["pipeline"]),
        "owner_id": pc.take(user_ids, pa.array(deals["rep"])),
        "team": pa.array(team.tolist(), pa.string()),
        "product": _take(PRODUCTS, deals["product"]),
        "segment": _take(SEGMENTS, deals["segment"]),
        "skill_level": _format_integers(skill),
        "real_outcome": pa.array(real.tolist(), pa.string()),
        "real_created_at": format_timestamps(deals["created"]),
        "real_closed_at": format_timestamps(np.maximum(recorded.real_closed_at, 0), blank=~really_closed),
        "real_close_date": _date_text(np.maximum(recorded.real_closed_at, 0) // DAY_SECONDS, blank=~really_closed),
        "hidden_loss_at": format_timestamps(np.maximum(recorded.real_closed_at, 0), blank=~stale),
        "crm_created_at": format_timestamps(recorded.created, blank=absent),
        "crm_closed_at": format_timestamps(np.maximum(recorded.crm_closed_at, 0), blank=recorded.crm_closed_at < 0),
        "crm_status": pa.array(crm.tolist(), pa.string()),
        "crm_close_date": _date_text(np.maximum(recorded.view.close_day, 0), blank=absent),
        "amount": _format_integers(recorded.view.amount, blank=absent),
        "currency": pc.if_else(pa.array(absent), pa.scalar("", pa.string()), currency),
        "amount_reporting": _format_integers(sim.amount),
    }
    for shape in SHAPES:
        chunk[shape] = _take(("0", "1"), recorded.shapes[shape].astype(np.int64))
    yield chunk


def _date_text(days: np.ndarray, blank: np.ndarray | None = None) -> pa.Array:
    """`YYYY-MM-DD` for days since the Unix epoch."""
    return pc.utf8_slice_codeunits(format_dates(days, blank), 0, 10)


def _real_history_chunks(
    deals: dict[str, np.ndarray], sim: _Simulation, lookup: "_StageLookup", opportunity_ids: pa.Array
) -> Iterator[dict[str, pa.Array]]:
    """The rows of truth_real_history.csv: every simulated change, recorded or not, in time order."""
    rows = sim.rows
    order = np.argsort(rows["time"], kind="stable")
    deal = rows["deal"][order]
    yield {
        "deal_id": pc.take(opportunity_ids, pa.array(deal)),
        "changed_at": format_timestamps(rows["time"][order]),
        "stage": _take(lookup.names, lookup.name[deals["pipeline"][deal], rows["stage"][order]]),
        "amount_reporting": _format_integers(rows["amount"][order]),
        "close_date": _date_text(rows["close"][order]),
    }


def _recode(values: pd.Series, column: str, mapping: dict[str, int], path: Path) -> np.ndarray:
    """Codes of `values` in `mapping`; ValueError naming the file, row and column of the first unknown."""
    codes = values.map(mapping)
    if codes.isna().any():
        first = int(np.flatnonzero(codes.isna().to_numpy())[0])
        raise ValueError(
            f"{path}: row {first + 2}, column {column!r}: {values.iloc[first]!r} is not in this sample "
            f"(expected one of {sorted(mapping)[:10]})"
        )
    return codes.to_numpy(dtype=np.int64)


@dataclass(frozen=True, eq=False)
class SampleTruth:
    """The ground truth of a messy-profile sample, read back from the truth files beside its
    export (`SampleTruth.load(out_dir)`): per deal (`deals`, truth_deals.csv), the real history
    (`real_history`, truth_real_history.csv), and the true win probability at any moment.

    On a messy sample use `true_win_probability` from here: `SampleWorld.true_win_probability`
    reads the state the CRM shows, which is not the real one for stale, late-keyed, imported and
    last-minute deals."""

    world: SampleWorld
    options: MessyOptions
    deals: pd.DataFrame
    real_history: pd.DataFrame
    import_at: pd.Timestamp | None
    purges: tuple[pd.Timestamp, ...]
    _lives: _RealLives = field(repr=False)

    @classmethod
    def load(cls, out_dir: Path) -> "SampleTruth":
        """Read the truth of the sample written to `out_dir` (its manifest rebuilds the world)."""
        out_dir = Path(out_dir)
        manifest_path = out_dir / TRUTH_MANIFEST_FILE
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path}: not found; expected a sample written with profile='messy'")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        catalog = StageCatalog(
            [
                PipelineStages(
                    name=p["name"], open_stages=tuple(p["open_stages"]), won_stage=p["won_stage"],
                    lost_stage=p["lost_stage"], probabilities=dict(p["probabilities"]),
                )
                for p in manifest["pipelines"]
            ]
        )  # fmt: skip
        world = SampleWorld.build(
            seed=manifest["seed"],
            n_deals=manifest["n_deals"],
            end_date=dt.date.fromisoformat(manifest["end_date"]),
            years=manifest["years"],
            stages=catalog,
            fiscal_year_start_month=manifest["fiscal_year_start_month"],
        )
        options = manifest["options"]
        options = MessyOptions(
            **{**options, "late_keyed_days": tuple(options["late_keyed_days"]), "currencies": tuple(options["currencies"])}
        )
        deals = pd.read_csv(out_dir / TRUTH_DEALS_FILE, dtype=str, keep_default_na=False, encoding="utf-8")
        history = pd.read_csv(out_dir / TRUTH_REAL_HISTORY_FILE, dtype=str, keep_default_na=False, encoding="utf-8")
        deal_class = world.deal_class(deals["pipeline"], deals["owner_id"], deals["product"], deals["segment"])
        index = {deal_id: i for i, deal_id in enumerate(deals["deal_id"])}
        deal_code = _recode(history["deal_id"], "deal_id", index, out_dir / TRUTH_REAL_HISTORY_FILE)
        pipeline_code = world.class_parts(deal_class)[0][deal_code]
        stage_code = np.empty(len(history), dtype=np.int64)
        for p, name in enumerate(world.pipelines):
            stages = world.stages[name]
            codes = {s: i for i, s in enumerate((*stages.open_stages, stages.won_stage, stages.lost_stage))}
            here = np.flatnonzero(pipeline_code == p)
            stage_code[here] = _recode(history["stage"].iloc[here], "stage", codes, out_dir / TRUTH_REAL_HISTORY_FILE)
        changed = pd.to_datetime(history["changed_at"], format="%Y-%m-%d %H:%M:%S")
        lives = _RealLives.build(
            world, deal_class, deal_code, changed.to_numpy(dtype="datetime64[s]").astype(np.int64), stage_code
        )
        typed = deals.copy()
        for column in ("real_created_at", "real_closed_at", "hidden_loss_at", "crm_created_at", "crm_closed_at"):
            typed[column] = pd.to_datetime(typed[column].replace("", None), format="%Y-%m-%d %H:%M:%S")
        for column in ("real_close_date", "crm_close_date"):
            typed[column] = pd.to_datetime(typed[column].replace("", None), format="%Y-%m-%d")
        for column in ("amount_reporting", "skill_level"):
            typed[column] = typed[column].astype("int64")
        typed["amount"] = pd.to_numeric(typed["amount"].replace("", None)).astype("Int64")  # blank: never entered
        for shape in SHAPES:
            typed[shape] = typed[shape] == "1"
        real_history = history.assign(
            changed_at=changed,
            amount_reporting=history["amount_reporting"].astype("int64"),
            close_date=pd.to_datetime(history["close_date"], format="%Y-%m-%d"),
        )
        return cls(
            world=world,
            options=options,
            deals=typed,
            real_history=real_history,
            import_at=pd.Timestamp(manifest["import_at"]) if manifest["import_at"] else None,
            purges=tuple(pd.Timestamp(p) for p in manifest["purges"]),
            _lives=lives,
        )

    def true_win_probability(self, frame: pd.DataFrame) -> pd.Series:
        """The true probability that each row's deal is eventually won, given the real state of
        the world at `snapshot_at` (what the CRM shows does not enter: a stale deal is 0 from its
        hidden loss on, a deal whose win is not keyed in yet is 1). `frame` needs `deal_id` and
        `snapshot_at` (UTC, naive or aware), as `etl.pipeline_state.pipeline_at_many` gives them.
        Index aligned with `frame`; ValueError names the row of an unknown deal id or a moment
        before the deal existed."""
        missing = [c for c in ("deal_id", "snapshot_at") if c not in frame.columns]
        if missing:
            raise ValueError(f"true_win_probability: frame is missing column(s) {missing}; expected deal_id and snapshot_at")
        codes = pd.Series(np.arange(len(self.deals)), index=self.deals["deal_id"].to_numpy())
        deal = frame["deal_id"].map(codes)
        if deal.isna().any():
            row = int(np.flatnonzero(deal.isna().to_numpy())[0])
            raise ValueError(
                f"true_win_probability: row {frame.index[row]}, column 'deal_id': {frame['deal_id'].iloc[row]!r} is not a deal of this sample"
            )
        seconds = _utc_microseconds(frame["snapshot_at"], "snapshot_at", frame.index) // 1_000_000
        out = self._lives.win_probability(deal.to_numpy(dtype=np.int64), seconds, labels=frame.index)
        return pd.Series(out, index=frame.index, name="true_win_probability", dtype="float64")

    def quarter_bookings(self) -> pd.DataFrame:
        """Real won revenue per quarter (booked by the real day of the win, which is every won
        deal's CloseDate in the export) for the whole company, each team and each pipeline, in
        the reporting currency, beside the revenue the simulation's parameters expect
        (`expected_won_amount`). Columns: quarter, segment_type, segment, won_deals, won_amount,
        expected_won_amount."""
        fiscal = self.world.fiscal_year_start_month
        expected = self.world.expected_won_revenue()
        won = self.deals[self.deals["real_outcome"] == STATUS_WON]
        quarter = quarter_labels(won["real_close_date"], fiscal) if len(won) else pd.Series(dtype=object)
        won = won.assign(quarter=quarter.to_numpy())
        parts = [won.assign(segment_type="all", segment="all")]
        parts += [won.assign(segment_type="team", segment=won["team"]), won.assign(segment_type="pipeline", segment=won["pipeline"])]
        actual = (
            pd.concat(parts, ignore_index=True)
            .groupby(["quarter", "segment_type", "segment"], as_index=False)
            .agg(won_deals=("deal_id", "size"), won_amount=("amount_reporting", "sum"))
        )
        out = expected.rename(columns={"amount": "expected_won_amount"}).merge(
            actual, on=["quarter", "segment_type", "segment"], how="outer"
        )
        out[["won_deals", "won_amount"]] = out[["won_deals", "won_amount"]].fillna(0).astype("int64")
        out["expected_won_amount"] = out["expected_won_amount"].fillna(0.0)
        return out[["quarter", "segment_type", "segment", "won_deals", "won_amount", "expected_won_amount"]].sort_values(
            ["quarter", "segment_type", "segment"], ignore_index=True
        )


# ----------------------------------------------------------------------------------------------
# Writing the files
# ----------------------------------------------------------------------------------------------
_CHUNK_ROWS = 400_000


def _write_csv(
    path: Path, columns: Sequence[str], chunks: Iterator[dict[str, pa.Array]], quote_all: bool = True, encoding: str = "utf-8"
) -> None:
    """Write columns chunk by chunk: every value quoted (Salesforce export style), or, for the
    plain files, text quoted and numbers bare; in UTF-8, or re-encoded (e.g. "cp1252") before it
    is moved into place. Written to a temporary name, then moved into place."""
    options = pacsv.WriteOptions(
        quoting_style="all_valid" if quote_all else "needed",
        quoting_header="needed" if quote_all else "none",
        batch_size=8192,
    )
    partial = path.with_name(path.name + ".partial")
    writer = None
    try:
        for chunk in chunks:
            table = pa.table({c: chunk[c] for c in columns})
            if writer is None:
                writer = pacsv.CSVWriter(partial, table.schema, write_options=options)
            writer.write_table(table)
        if writer is None:
            writer = pacsv.CSVWriter(partial, pa.schema([(c, pa.string()) for c in columns]), write_options=options)
    finally:
        if writer is not None:
            writer.close()
    if encoding != "utf-8":
        partial.write_bytes(partial.read_bytes().decode("utf-8").encode(encoding))
    partial.replace(path)


class _StageLookup:
    """Names, picklist order, CRM probability and forecast category of (pipeline, stage code)."""

    def __init__(self, world: SampleWorld, sort_order: dict[str, int] | None = None) -> None:
        self.names = _org_stage_order(world.stages)
        # StageSortOrder: the picklist position, or the org's own positions where it has them
        positions = [(sort_order or {}).get(name, i + 1) for i, name in enumerate(self.names)]
        self.sort_order = np.array(positions, dtype=np.int64)
        width = world.max_open_stages + 2
        self.name = np.zeros((len(world.pipelines), width), dtype=np.int64)
        self.probability = np.zeros((len(world.pipelines), width), dtype=np.int64)
        categories = [
            ("Pipeline", "Pipeline"), ("BestCase", "Best Case"), ("Forecast", "Commit"), ("Closed", "Closed"),
            ("Omitted", "Omitted"),
        ]  # fmt: skip
        self.category_api = [api for api, _ in categories]
        self.category_label = [label for _, label in categories]
        self.category = np.zeros((len(world.pipelines), width), dtype=np.int64)
        for p, name in enumerate(world.pipelines):
            stages = world.stages[name]
            n = len(stages.open_stages)
            for code, stage in enumerate((*stages.open_stages, stages.won_stage, stages.lost_stage)):
                status = stages.status_of(stage)
                crm = stages.probability_of(stage)
                percent = round(100 * crm) if not math.isnan(crm) else round(100 * (code + 1) / (n + 1))
                self.name[p, code] = self.names.index(stage)
                self.probability[p, code] = percent
                self.category[p, code] = categories.index(_forecast_category(percent, status))


def _opportunity_chunks(
    world, deals, sim, accounts, lookup, fields, opportunity_ids, user_ids, currency: pa.Array | None = None
) -> Iterator[dict[str, pa.Array]]:
    """Opportunity rows (one per deal, its state at `end_date`), chunk by chunk; `currency` holds
    each deal's CurrencyIsoCode (default: all USD)."""
    custom = opportunity_extra_columns(fields)
    n_deals = len(deals["created"])
    for start in range(0, n_deals, _CHUNK_ROWS):
        part = slice(start, min(start + _CHUNK_ROWS, n_deals))
        n = part.stop - part.start
        pipeline = deals["pipeline"][part]
        stage = sim.stage[part]
        status = sim.status[part]
        amount = sim.amount[part]
        probability = lookup.probability[pipeline, stage]
        category = lookup.category[pipeline, stage]
        close = sim.close_day[part]
        unique_close, close_index = np.unique(close, return_inverse=True)
        labels = quarter_labels(pd.Series(pd.to_datetime(unique_close, unit="D")), world.fiscal_year_start_month)
        fiscal_year = pa.array(labels.str.slice(0, 4).to_numpy(dtype=object), pa.string())
        fiscal_quarter = pa.array(labels.str.slice(6, 7).to_numpy(dtype=object), pa.string())
        owner = pc.take(user_ids, pa.array(deals["rep"][part]))
        created = format_timestamps(deals["created"][part])
        modified = format_timestamps(sim.last_change[part])
        account = deals["account"][part]
        product = deals["product"][part]
        reason = sim.loss_reason[part]
        blank = _constant("", n)
        yield {
            "Id": opportunity_ids.slice(part.start, n),
            "IsDeleted": _constant("0", n),
            "AccountId": pc.take(accounts["id"], pa.array(account)),
            "IsPrivate": _constant("0", n),
            "Name": pc.binary_join_element_wise(pc.take(accounts["name"], pa.array(account)), _take(PRODUCTS, product), " - "),
            "Description": blank,
            "StageName": _take(lookup.names, lookup.name[pipeline, stage]),
            "StageSortOrder": _format_integers(lookup.sort_order[lookup.name[pipeline, stage]]),
            "Amount": _format_integers(amount),
            "Probability": _format_integers(probability),
            "ExpectedRevenue": _format_integers(amount * probability // 100),
            "TotalOpportunityQuantity": blank,
            "CloseDate": format_dates(close),
            "Type": _take(DEAL_TYPES, deals["deal_type"][part]),
            "NextStep": blank,
            "LeadSource": _take(LEAD_SOURCES, deals["lead_source"][part]),
            "IsClosed": _take(("0", "1"), (status > 0).astype(np.int64)),
            "IsWon": _take(("0", "1"), (status == 1).astype(np.int64)),
            "ForecastCategory": _take(lookup.category_api, category),
            "ForecastCategoryName": _take(lookup.category_label, category),
            "CampaignId": blank,
            "HasOpportunityLineItem": _constant("0", n),
            "Pricebook2Id": blank,
            "OwnerId": owner,
            "CreatedDate": created,
            "CreatedById": owner,
            "LastModifiedDate": modified,
            "LastModifiedById": owner,
            "SystemModstamp": modified,
            "LastActivityDate": blank,
            "LastStageChangeDate": format_timestamps(sim.last_stage_change[part]),
            "FiscalYear": pc.take(fiscal_year, pa.array(close_index)),
            "FiscalQuarter": pc.take(fiscal_quarter, pa.array(close_index)),
            "PrimaryPartnerAccountId": blank,
            "ContractId": blank,
            custom[0]: _constant(CURRENCY, n) if currency is None else currency.slice(part.start, n),
            custom[1]: _take(world.pipelines, pipeline),
            custom[2]: _take(PRODUCTS, product),
            custom[3]: _take(REGIONS, deals["region"][part]),
            custom[4]: _take(SEGMENTS, deals["segment"][part]),
            custom[5]: _take((*LOSS_REASONS, ""), np.where(reason >= 0, reason, len(LOSS_REASONS))),
        }


def _history_order(rows: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The file order of history rows (by time, as Salesforce ids grow) and each row's valid-to
    time (the deal's next change, -1 for its last row), in generation order."""
    by_deal = np.argsort(rows["deal"], kind="stable")  # generation order is chronological per deal
    deal_sorted = rows["deal"][by_deal]
    next_time = np.full(len(by_deal), -1, dtype=np.int64)
    same = deal_sorted[1:] == deal_sorted[:-1]
    following = np.where(same, rows["time"][by_deal][1:], -1)
    next_time[by_deal[:-1]] = following
    file_order = np.argsort(rows["time"], kind="stable")
    return file_order, next_time


def _history_chunks(
    world, deals, rows, order, valid_to, truth, lookup, opportunity_ids, user_ids, truth_out: list
) -> Iterator[dict[str, pa.Array]]:
    """OpportunityHistory rows in file order, chunk by chunk; the matching truth rows go to `truth_out`."""
    for start in range(0, len(order), _CHUNK_ROWS):
        idx = order[start : start + _CHUNK_ROWS]
        n = len(idx)
        deal = rows["deal"][idx]
        pipeline = deals["pipeline"][deal]
        stage = rows["stage"][idx]
        prev_stage = rows["prev_stage"][idx]
        first = prev_stage < 0
        prev_code = np.where(first, 0, prev_stage)
        probability = lookup.probability[pipeline, stage]
        amount = rows["amount"][idx]
        when = format_timestamps(rows["time"][idx])
        opportunity = pc.take(opportunity_ids, pa.array(deal))
        stage_name = _take(lookup.names, lookup.name[pipeline, stage])
        owner = pc.take(user_ids, pa.array(deals["rep"][deal]))
        blank = _constant("", n)
        prev_category = np.where(first, len(lookup.category_api), lookup.category[pipeline, prev_code])
        prev_name = np.where(first, len(lookup.names), lookup.name[pipeline, prev_code])
        truth_out.append(
            {
                "deal_id": opportunity,
                "changed_at": when,
                "stage": stage_name,
                "true_win_probability": pa.array(np.round(truth[idx], 12), pa.float64()),
            }
        )
        yield {
            "Id": salesforce_ids("history", np.arange(start, start + n)),
            "OpportunityId": opportunity,
            "CreatedById": owner,
            "CreatedDate": when,
            "CreatedDateForInsert": when,
            "StageName": stage_name,
            "Amount": _format_integers(amount),
            "ExpectedRevenue": _format_integers(amount * probability // 100),
            "CloseDate": format_dates(rows["close"][idx]),
            "Probability": _format_integers(probability),
            "FromForecastCategory": _take((*lookup.category_api, ""), prev_category),
            "ForecastCategory": _take(lookup.category_api, lookup.category[pipeline, stage]),
            "PrevForecastUpdate": blank,
            "FromOpportunityStageName": _take((*lookup.names, ""), prev_name),
            "PrevOpportunityStageUpdate": blank,
            "ValidThroughDate": format_timestamps(np.maximum(valid_to[idx], 0), blank=valid_to[idx] < 0),
            "SystemModstamp": when,
            "IsDeleted": _constant("0", n),
            "PrevAmount": _format_integers(rows["prev_amount"][idx], blank=first),
            "PrevCloseDate": format_dates(np.maximum(rows["prev_close"][idx], 0), blank=first),
        }


def _account_chunks(world: SampleWorld, accounts: dict[str, np.ndarray], user_ids: pa.Array) -> Iterator[dict[str, pa.Array]]:
    n_accounts = len(accounts["id"])
    cities = accounts["cities"]
    for start in range(0, n_accounts, _CHUNK_ROWS):
        part = slice(start, min(start + _CHUNK_ROWS, n_accounts))
        n = part.stop - part.start
        city = accounts["city"][part]
        owner = pc.take(user_ids, pa.array(accounts["owner"][part]))
        created = format_timestamps(accounts["created"][part])
        chunk = {c: _constant("", n) for c in ACCOUNT_COLUMNS}
        chunk.update(
            {
                "Id": accounts["id"].slice(part.start, n),
                "IsDeleted": _constant("0", n),
                "Name": accounts["name"].slice(part.start, n),
                "Type": _take(_ACCOUNT_TYPES, accounts["type"][part]),
                "BillingCity": pa.array([c[0] for c in cities], pa.string()).take(pa.array(city)),
                "BillingState": pa.array([c[1] for c in cities], pa.string()).take(pa.array(city)),
                "BillingCountry": pa.array([c[2] for c in cities], pa.string()).take(pa.array(city)),
                "Industry": _take(_INDUSTRIES, accounts["industry"][part]),
                "AnnualRevenue": _format_integers(accounts["revenue"][part]),
                "NumberOfEmployees": _format_integers(accounts["employees"][part]),
                "Ownership": _take(("Public", "Private", "Other"), accounts["ownership"][part]),
                "Rating": _take(("Hot", "Warm", "Cold", ""), accounts["rating"][part]),
                "OwnerId": owner,
                "CreatedDate": created,
                "CreatedById": owner,
                "LastModifiedDate": created,
                "LastModifiedById": owner,
                "SystemModstamp": created,
                "CleanStatus": _constant("Pending", n),
                "AccountSource": _take(LEAD_SOURCES, accounts["source"][part]),
            }
        )
        yield chunk


def generate_sample(
    out_dir: Path,
    n_deals: int | None = None,
    seed: int = 7,
    end_date: dt.date | None = None,
    years: float | None = None,
    stages: StageCatalog | None = None,
    profile: str | None = None,
    messy: MessyOptions | None = None,
) -> SampleSummary:
    """Simulate `n_deals` deals created over `years` up to `end_date` (default today, UTC) and
    write the sample CRM export, quotas and the true win probabilities to `out_dir`.

    `profile` "clean" (the default) writes every change as it happens (10,000 deals over 3.5
    years unless given); "messy" (the default when `messy` options are given) records the same
    kind of sales process the way a small, untidy org does, with the shapes `messy` switches on,
    plus the truth files (720 real deals over one year unless given, of which about 460 reach
    the CRM; see the module docstring). `n_deals` counts the simulated deals; the summary's
    `n_deals` those written to Opportunity.csv.
    Same seed and arguments give byte-identical files."""
    started = time.perf_counter()
    profile, options = _resolve_profile(profile, messy)
    default_deals, default_years = PROFILE_DEFAULTS[profile]
    n_deals = default_deals if n_deals is None else n_deals
    years = default_years if years is None else years
    spanish = options is not None and options.spanish_stages and stages is None
    if spanish:
        stages = StageCatalog([SPANISH_PIPELINE])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    world = SampleWorld.build(seed=seed, n_deals=n_deals, end_date=end_date, years=years, stages=stages)
    _, _, fields = _resolve_project(world.stages, world.fiscal_year_start_month)
    if options is not None and options.loss_reason_field:
        fields = replace(fields, lost_reason_field=options.loss_reason_field)
    accounts = _build_accounts(world, np.random.default_rng(np.random.SeedSequence([seed, 1])))
    deals = _draw_deals(world, accounts, np.random.default_rng(np.random.SeedSequence([seed, 2])))
    sim = _simulate(world, deals, np.random.default_rng(np.random.SeedSequence([seed, 3])))
    logger.info(
        "simulated %s deals, %s history rows in %.1fs", f"{n_deals:,}", f"{len(sim.rows['deal']):,}", time.perf_counter() - started
    )
    lookup = _StageLookup(world, SPANISH_SORT_ORDER if spanish else None)
    user_ids = pa.array(world.users["Id"].tolist(), pa.string())
    encoding = options.encoding if options is not None else "utf-8"
    if options is None:
        view, created, currency, recorded = sim, deals["created"], None, None
        opportunity_ids = salesforce_ids("opportunity", np.arange(n_deals))
        rows = sim.rows
        order, valid_to = _history_order(rows)
        truth = _truth(world, deals, rows)
        in_crm = deals
    else:
        recorded = _record_messy(world, deals, sim, options, seed)
        fx = np.random.default_rng(np.random.SeedSequence([seed, 5]))
        rates = _exchange_rates(world, options.currencies, CURRENCY, fx)
        codes, names = _in_deal_currency(recorded, options, CURRENCY, rates, fx)
        # Salesforce ids grow with the moment a record is created in the CRM (deals never entered
        # get ids after them, for the truth files only).
        number = np.empty(n_deals, dtype=np.int64)
        number[np.lexsort((np.arange(n_deals), recorded.created, ~recorded.present))] = np.arange(n_deals)
        all_ids = salesforce_ids("opportunity", number)
        # Only the deals in the CRM are exported, renumbered 0..n-1 in the same order.
        kept = np.flatnonzero(recorded.present)
        renumber = np.full(n_deals, -1, dtype=np.int64)
        renumber[kept] = np.arange(len(kept))
        in_crm = {key: values[kept] for key, values in {**deals, "created": recorded.created}.items()}
        v = recorded.view
        view = _Simulation(
            v.stage[kept], v.status[kept], v.amount[kept], v.close_day[kept], v.loss_reason[kept], v.last_change[kept],
            v.last_stage_change[kept], v.rows,
        )  # fmt: skip
        created, currency, opportunity_ids = in_crm["created"], _take(names, codes[kept]), all_ids.take(pa.array(kept))
        real_deal = v.rows["deal"][recorded.in_history]
        rows = {key: values[recorded.in_history] for key, values in v.rows.items()}
        rows["deal"] = renumber[real_deal]
        order = np.lexsort((recorded.seq[recorded.in_history], rows["time"]))
        valid_to = _valid_to(rows["deal"], rows["time"])
        lives = _RealLives.build(world, deals["class"], sim.rows["deal"], sim.rows["time"], sim.rows["stage"])
        truth = lives.win_probability(real_deal, rows["time"])

    _write_csv(
        out_dir / OPPORTUNITY_FILE,
        (*OPPORTUNITY_COLUMNS, *opportunity_extra_columns(fields)),
        _opportunity_chunks(world, in_crm, view, accounts, lookup, fields, opportunity_ids, user_ids, currency),
        encoding=encoding,
    )
    truth_chunks: list[dict[str, pa.Array]] = []
    _write_csv(
        out_dir / HISTORY_FILE,
        (*HISTORY_COLUMNS, *HISTORY_EXTRA_COLUMNS),
        _history_chunks(world, in_crm, rows, order, valid_to, truth, lookup, opportunity_ids, user_ids, truth_chunks),
        encoding=encoding,
    )
    _write_csv(out_dir / TRUTH_FILE, TRUTH_COLUMNS, iter(truth_chunks), quote_all=False)
    _write_csv(out_dir / ACCOUNT_FILE, ACCOUNT_COLUMNS, _account_chunks(world, accounts, user_ids), encoding=encoding)
    users = world.users
    user_columns = {c: pa.array(users[c].astype(str).tolist(), pa.string()) for c in USER_COLUMNS}
    _write_csv(out_dir / USER_FILE, USER_COLUMNS, iter([user_columns]), encoding=encoding)
    quotas = world.quotas()
    _write_csv(
        out_dir / QUOTA_FILE,
        QUOTA_COLUMNS,
        iter([{c: pa.Array.from_pandas(quotas[c].astype("int64" if c == "amount" else object)) for c in QUOTA_COLUMNS}]),
        quote_all=False,
    )
    shape_counts: dict[str, int] = {}
    if recorded is not None:
        _write_csv(
            out_dir / TRUTH_DEALS_FILE,
            TRUTH_DEAL_COLUMNS,
            _truth_deal_chunks(world, deals, sim, recorded, all_ids, _take(names, codes), user_ids),
            quote_all=False,
        )
        _write_csv(
            out_dir / TRUTH_REAL_HISTORY_FILE,
            TRUTH_REAL_HISTORY_COLUMNS,
            _real_history_chunks(deals, sim, lookup, all_ids),
            quote_all=False,
        )
        if len(rates):
            _write_csv(out_dir / RATES_FILE, ("date", "currency", "rate"), _rates_chunks(rates), quote_all=False)
        shape_counts = {shape: int(recorded.shapes[shape].sum()) for shape in SHAPES}
        _write_manifest(out_dir, world, options, years, recorded, shape_counts)
        partial = out_dir / (PIPELINES_CONFIG_FILE + ".partial")
        partial.write_text(pipelines_toml(world.stages), encoding="utf-8")
        partial.replace(out_dir / PIPELINES_CONFIG_FILE)
        logger.info("messy shapes: %s", ", ".join(f"{name} {count:,}" for name, count in shape_counts.items()))
    summary = SampleSummary(
        out_dir=out_dir,
        n_deals=len(created),
        n_history_rows=int(len(rows["deal"])),
        won=int((view.status == 1).sum()),
        lost=int((view.status == 2).sum()),
        open=int((view.status == 0).sum()),
        start=world.start_date,
        end=world.end_date,
        profile=profile,
        shapes=shape_counts,
    )
    logger.info("wrote the sample CRM to %s in %.1fs", out_dir, time.perf_counter() - started)
    return summary


def _resolve_profile(profile: str | None, messy: MessyOptions | None) -> tuple[str, MessyOptions | None]:
    """(profile, messy options or None for the clean profile); ValueError for an unknown profile
    or messy options with the clean profile."""
    if profile is None:
        profile = PROFILE_CLEAN if messy is None else PROFILE_MESSY
    if profile not in PROFILES:
        raise ValueError(f"sample profile {profile!r}: expected one of {list(PROFILES)}")
    if profile == PROFILE_CLEAN:
        if messy is not None:
            raise ValueError("messy options were given with profile 'clean'; use profile='messy'")
        return profile, None
    return profile, messy if messy is not None else MessyOptions()


def _rates_chunks(rates: pd.DataFrame) -> Iterator[dict[str, pa.Array]]:
    yield {
        "date": _date_text(rates["day"].to_numpy(dtype=np.int64)),
        "currency": pa.array(rates["currency"].tolist(), pa.string()),
        "rate": pa.array(rates["rate"].to_numpy(), pa.float64()),
    }


def _write_manifest(
    out_dir: Path, world: SampleWorld, options: MessyOptions, years: float, recorded: _Recorded, shape_counts: dict[str, int]
) -> None:
    """truth_sample.json: what `SampleTruth.load` needs to rebuild the world, and what was done."""

    def moment(seconds: int) -> str:
        return (dt.datetime(1970, 1, 1) + dt.timedelta(seconds=int(seconds))).isoformat(sep=" ")

    manifest = {
        "profile": PROFILE_MESSY,
        "seed": world.seed,
        "n_deals": world.n_deals,
        "end_date": world.end_date.isoformat(),
        "years": years,
        "start_date": world.start_date.isoformat(),
        "fiscal_year_start_month": world.fiscal_year_start_month,
        "pipelines": [
            {
                "name": p.name, "open_stages": list(p.open_stages), "won_stage": p.won_stage, "lost_stage": p.lost_stage,
                "probabilities": {s: p.probability_of(s) for s in p.open_stages},
            }
            for p in world.stages
        ],  # fmt: skip
        "options": asdict(options),
        "import_at": moment(recorded.import_at) if recorded.import_at is not None else None,
        "purges": [moment(p) for p in recorded.purges],
        "shape_counts": shape_counts,
    }
    partial = out_dir / (TRUTH_MANIFEST_FILE + ".partial")
    partial.write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    partial.replace(out_dir / TRUTH_MANIFEST_FILE)


def pipelines_toml(stages: StageCatalog) -> str:
    """The `[[pipelines]]` blocks of dealcast.toml that configure `stages` (names quoted as TOML
    basic strings)."""
    lines = [
        "# The stage order of this sample's pipelines as dealcast.toml [[pipelines]] blocks. The export",
        "# states it through StageSortOrder, but only for the stages some deal is in when it is taken;",
        "# add these blocks to dealcast.toml to configure the order instead.",
    ]
    for p in stages:
        lines += ["", "[[pipelines]]", f"name = {json.dumps(p.name, ensure_ascii=False)}"]
        lines += [f"won_stage = {json.dumps(p.won_stage, ensure_ascii=False)}", f"lost_stage = {json.dumps(p.lost_stage, ensure_ascii=False)}"]
        lines.append("stages = [")
        for stage in p.open_stages:
            probability = p.probability_of(stage)
            detail = f", probability = {probability:.10g}" if not math.isnan(probability) else ""
            lines.append(f"  {{ name = {json.dumps(stage, ensure_ascii=False)}{detail} }},")
        lines.append("]")
    return "\n".join(lines) + "\n"


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the sample command (`python -m etl.sample_crm` and `dealcast sample`)."""
    parser.add_argument(
        "--profile", choices=PROFILES, default=PROFILE_CLEAN,
        help="clean: every change recorded as it happens; messy: a small untidy org (wins keyed in at close, "
        "stale deals, purges, a bulk import, Spanish stages) with truth files (default clean)",
    )  # fmt: skip
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                        help="a messy-profile option, repeatable, e.g. --option stale_share=0.3; what each does is in "
                        f"the etl.sample_crm docstring (names: {', '.join(f.name for f in dataclass_fields(MessyOptions))})")  # fmt: skip


def messy_options_from(args: argparse.Namespace) -> MessyOptions | None:
    """The messy options the parsed sample arguments ask for (None for the clean profile).
    Raises ValueError naming a bad `--option`, or one given with the clean profile."""
    if args.profile == PROFILE_CLEAN:
        if args.option:
            raise ValueError(f"--option {args.option[0]!r} needs --profile messy")
        return None
    return MessyOptions().with_assignments(args.option)


def summary_line(s: SampleSummary) -> str:
    """One line describing a written sample, for the command line."""
    line = (
        f"wrote {s.n_deals:,} deals and {s.n_history_rows:,} history rows from {s.start} to {s.end} to {s.out_dir} "
        f"({s.won:,} won, {s.lost:,} lost, {s.open:,} open)"
    )
    if s.profile == PROFILE_MESSY:
        line += "; messy shapes: " + ", ".join(f"{name} {count:,}" for name, count in s.shapes.items())
    return line


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write the sample CRM export and print a one-line summary."""
    parser = argparse.ArgumentParser(prog="python -m etl.sample_crm", description="Write the seeded sample CRM export.")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the export files to")
    parser.add_argument("--deals", type=int, default=None, help="number of deals (default 10,000; 720 with --profile messy, of which about 460 reach the CRM)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument(
        "--end-date", type=dt.date.fromisoformat, default=None, help="last day simulated, YYYY-MM-DD (default today, UTC)"
    )
    parser.add_argument("--years", type=float, default=None, help="years of history (default 3.5; 1 with --profile messy)")
    add_sample_arguments(parser)
    args = parser.parse_args(argv)
    try:
        messy = messy_options_from(args)
        s = generate_sample(
            args.out, n_deals=args.deals, seed=args.seed, end_date=args.end_date, years=args.years, profile=args.profile, messy=messy
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(summary_line(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
