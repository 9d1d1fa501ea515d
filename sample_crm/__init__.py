"""The sample CRM: a seeded simulation of a B2B sales organisation, written as Salesforce Data
Export files, together with the true win probability of every deal at every point of its history.

`make demo` and the end-to-end tests run the whole pipeline on it, and the deal-scoring model is
checked against its ground truth: on the sample, the log loss of the true probabilities is the best
any model can reach, so a model's log loss can be compared with it.

Files written to `out_dir` (the file names and columns are the contract the Salesforce reader reads)
------------------------------------------------------------------------------------------------
- `Opportunity.csv`, `OpportunityHistory.csv`, `Account.csv`, `User.csv`: Salesforce Data Export
  format: UTF-8, every value double-quoted (the header too), `\n` line ends, timestamps
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

`SampleWorld.true_win_within_probability(frame, horizon_days)` is the chance of the event a scorer's
labels record: won before t + horizon_days. The same induction from boundary b runs over the weeks
whose change window closes (Friday 20:00) before that instant, and over the week that holds the
instant, whose win counts with the probability that its change falls before it: the change's day is
uniform over the week's business days and its time uniform over 06:00-20:00
(`SampleWorld.change_share_before`). From Monday 00:00, a horizon of 137 days ends on a Friday 00:00,
so a win of the twentieth week counts on four of its five days.

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
- `sample_crm.quotas.expected_won_revenue(world)`: the won revenue the parameters expect per quarter and
  segment (the quotas are 1.1 times it, rounded to the thousand).
- `sample_crm.quotas.expected_new_deal_wins(world, start, end)` and `expected_new_deal_revenue(...)`: the
  deals (per effect class) and the revenue the parameters expect from deals created on or after
  `start` and won before `end`: what a forecast made at a quarter's start should expect from the
  deals not yet created (`bench/forecast_bench.py backtest --truth` adds it to the open deals' true
  chances to give the truth's own forecast).
"""
