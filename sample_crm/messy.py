"""The messy profile: the same sales process, recorded the way a small, untidy org records it
(`MessyOptions` and its shapes), plus deal currencies and exchange rates."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from dataclasses import fields as dataclass_fields

import numpy as np
import pandas as pd

from etl.stages import PipelineStages
from sample_crm.files import OPPORTUNITY_COLUMNS
from sample_crm.parameters import DAY_SECONDS, EPOCH_MONDAY_DAY, WEEKS_IN_STAGE_CAP, WEEK_SECONDS, WINDOW_END_SECONDS
from sample_crm.simulate import Simulation
from sample_crm.world import SampleWorld


PROFILE_CLEAN = "clean"
PROFILE_MESSY = "messy"
PROFILES = (PROFILE_CLEAN, PROFILE_MESSY)
PROFILE_DEFAULTS = {PROFILE_CLEAN: (10_000, 3.5), PROFILE_MESSY: (720, 1.0)}  # (real deals, years)

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
    """The knobs of the messy profile (the `sample_crm` package docstring says who is eligible for each); every
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
class RealLives:
    """Every deal's real life (the simulated history, before any of it is recorded or hidden),
    sorted by deal and time; answers the true win probability of a deal at any moment."""

    world: SampleWorld
    deal_class: np.ndarray  # per deal
    deal: np.ndarray  # per real row
    time: np.ndarray  # seconds since the Unix epoch
    stage: np.ndarray  # stage code (n_open won, n_open + 1 lost)
    entered: np.ndarray  # when the row's stage was entered

    @classmethod
    def build(cls, world: SampleWorld, deal_class: np.ndarray, deal: np.ndarray, time: np.ndarray, stage: np.ndarray) -> "RealLives":
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
class Recorded:
    """What the CRM shows of the real simulation: the deals' final recorded state and every
    recorded history row (per deal, in time order), with the shapes and truth behind them."""

    view: Simulation  # final CRM state per deal; rows = the recorded rows (no-history deals included)
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
    def of(cls, world: SampleWorld, deals: dict[str, np.ndarray], sim: Simulation) -> "_RealDeals":
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
    """Decide every deal's shapes (see the `sample_crm` package docstring). Each knob draws from its own random
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


def record_messy(world: SampleWorld, deals: dict[str, np.ndarray], sim: Simulation, options: MessyOptions, seed: int) -> Recorded:
    """Record the simulated deals the way the messy org does (see the `sample_crm` package docstring)."""
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
    view = Simulation(
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
    return Recorded(
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


def history_valid_to(deal: np.ndarray, time: np.ndarray) -> np.ndarray:
    """Each row's next row time of the same deal (-1 for a deal's last row); rows sorted by deal."""
    following = np.full(len(deal), -1, dtype=np.int64)
    same = deal[1:] == deal[:-1]
    following[:-1] = np.where(same, time[1:], -1)
    return following


def exchange_rates(world: SampleWorld, currencies: Sequence[str], reporting: str, rng: np.random.Generator) -> pd.DataFrame:
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


def in_deal_currency(
    recorded: Recorded, options: MessyOptions, reporting: str, rates: pd.DataFrame, rng: np.random.Generator
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
