"""The clean simulation: accounts, deals, and the week-by-week steps of every deal, with the true win
probability of each history row."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sample_crm.formatting import format_integers, salesforce_ids, take_names
from sample_crm.parameters import (
    ACCOUNT_NOUNS,
    ACCOUNT_SUFFIXES,
    ACCOUNT_WORDS,
    ADVANCE,
    AMOUNT_CHANGE_RATE,
    AMOUNT_CHANGE_SIGMA,
    AMOUNT_SIGMA,
    DAY_SECONDS,
    EPOCH_MONDAY_DAY,
    EVENT_HOURS,
    INDUSTRIES,
    KIND_AMOUNT,
    KIND_CLOSE_WEEKS,
    KIND_DEAL_TYPES,
    KIND_DYNAMICS,
    KIND_LEAD_SOURCES,
    LOSS_REASON_MIX,
    LOST,
    PRODUCTS,
    PRODUCT_AMOUNT,
    PULL_IN_RATE,
    REGIONS,
    REGION_CITIES,
    REVISION_SHARE,
    REVISION_SIGMA,
    SEGMENTS,
    SEGMENT_ACCOUNT_SHARE,
    SEGMENT_AMOUNT,
    SEGMENT_CLOSE_FACTOR,
    SEGMENT_EMPLOYEES,
    SKIP,
    STALE_LOSS_WEEKS,
    STAY,
    WON,
    cumulative_weights,
    draw_categories,
)
from sample_crm.world import SampleWorld


def build_accounts(world: SampleWorld, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Accounts, grouped in pools by (region, segment) so deals find an account of their segment
    in their rep's region. Arrays sorted by pool; `pool_start`/`pool_size` index the pools."""
    n_accounts = max(40, world.n_deals // 4)
    region_of_team = np.array([REGIONS.index(r) for r in world.teams["region"]])
    region_of_rep = region_of_team[world.users["team_code"].to_numpy()]
    region_share = np.bincount(region_of_rep, weights=world.users["deal_share"].to_numpy(), minlength=len(REGIONS))
    pool_share = (region_share[:, None] * SEGMENT_ACCOUNT_SHARE[None, :]).ravel()
    needed = np.flatnonzero(np.repeat(region_share > 0, len(SEGMENTS)))
    drawn = draw_categories(rng.random(n_accounts - len(needed)), cumulative_weights(pool_share))
    pool = np.sort(np.concatenate([needed, drawn]).astype(np.int64), kind="stable")
    n_pools = len(REGIONS) * len(SEGMENTS)
    pool_size = np.bincount(pool, minlength=n_pools)
    pool_start = np.concatenate([[0], np.cumsum(pool_size)[:-1]])
    region, segment = np.divmod(pool, len(SEGMENTS))

    n_combos = len(ACCOUNT_WORDS) * len(ACCOUNT_NOUNS) * len(ACCOUNT_SUFFIXES)
    combo = rng.permutation(n_combos)[np.arange(n_accounts) % n_combos]
    word, rest = np.divmod(combo, len(ACCOUNT_NOUNS) * len(ACCOUNT_SUFFIXES))
    noun, suffix = np.divmod(rest, len(ACCOUNT_SUFFIXES))
    name = pc.binary_join_element_wise(
        take_names(ACCOUNT_WORDS, word), take_names(ACCOUNT_NOUNS, noun), take_names(ACCOUNT_SUFFIXES, suffix), " "
    )
    repeat = np.arange(n_accounts) // n_combos
    if repeat.max() > 0:
        numbered = pc.binary_join_element_wise(name, format_integers(repeat + 1), " ")
        name = pc.if_else(pa.array(repeat > 0), numbered, name)

    low = np.array([lo for lo, _ in SEGMENT_EMPLOYEES])[segment]
    high = np.array([hi for _, hi in SEGMENT_EMPLOYEES])[segment]
    employees = np.exp(rng.uniform(np.log(low), np.log(high))).round().astype(np.int64)
    revenue = (employees * rng.uniform(120_000, 260_000, n_accounts) / 1e5).round().astype(np.int64) * 100_000
    city_tables = [REGION_CITIES[r] for r in REGIONS]
    city_index = (rng.random(n_accounts) * np.array([len(city_tables[r]) for r in region])).astype(np.int64)
    cities = np.array([c for r in REGIONS for c in REGION_CITIES[r]], dtype=object)
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
        "type": draw_categories(rng.random(n_accounts), cumulative_weights(np.array([0.6, 0.15, 0.25]))),
        "industry": (rng.random(n_accounts) * len(INDUSTRIES)).astype(np.int64),
        "employees": employees,
        "revenue": revenue,
        "city": city,
        "cities": cities,
        "ownership": draw_categories(rng.random(n_accounts), cumulative_weights(np.array([0.35, 0.55, 0.1]))),
        "rating": draw_categories(rng.random(n_accounts), cumulative_weights(np.array([0.2, 0.35, 0.25, 0.2]))),
        "source": draw_categories(rng.random(n_accounts), cumulative_weights(np.array(KIND_LEAD_SOURCES["new_business"]))),
        "owner": owner,
        "created": created,
    }


def draw_deals(world: SampleWorld, accounts: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every deal's creation time and fixed attributes, sorted by creation time."""
    n = world.n_deals
    weeks = np.arange(world.first_week, world.last_week + 1)
    weights = world.creation_weights(weeks)
    week = weeks[draw_categories(rng.random(n), cumulative_weights(weights)).astype(np.int64)]
    first, last = world.business_days(week)
    day = first + (rng.random(n) * (last - first + 1)).astype(np.int64)
    second = rng.integers(EVENT_HOURS[0] * 3600, EVENT_HOURS[1] * 3600, n)
    created = (week * 7 + EPOCH_MONDAY_DAY + day) * DAY_SECONDS + second
    order = np.argsort(created, kind="stable")
    created, week = created[order], week[order]

    mixes = world._mixes()
    rep = draw_categories(rng.random(n), cumulative_weights(mixes["rep_share"])).astype(np.int64)
    focus = mixes["focus_of_rep"][rep]
    pipeline = draw_categories(rng.random(n), cumulative_weights(mixes["pipeline_by_focus"]), focus).astype(np.int64)
    segment = draw_categories(rng.random(n), cumulative_weights(mixes["segment_by_focus"]), focus).astype(np.int64)
    product_table = cumulative_weights(mixes["product"].reshape(-1, len(PRODUCTS)))
    product = draw_categories(rng.random(n), product_table, pipeline * len(SEGMENTS) + segment).astype(np.int64)
    skill = world.users["skill_level"].to_numpy()[rep]
    deal_class = world.class_index(pipeline, skill, product, segment)

    kind_code = np.array([list(KIND_DYNAMICS).index(k) for k in world.pipeline_kinds])[pipeline]
    kinds = list(KIND_DYNAMICS)
    lead_source = draw_categories(rng.random(n), cumulative_weights(np.array([KIND_LEAD_SOURCES[k] for k in kinds])), kind_code)
    deal_type = draw_categories(rng.random(n), cumulative_weights(np.array([KIND_DEAL_TYPES[k] for k in kinds])), kind_code)

    region_of_team = np.array([REGIONS.index(r) for r in world.teams["region"]])
    region = region_of_team[world.users["team_code"].to_numpy()[rep]]
    pool = region * len(SEGMENTS) + segment
    account = accounts["pool_start"][pool] + (rng.random(n) * accounts["pool_size"][pool]).astype(np.int64)

    kind_amount = np.array([KIND_AMOUNT[k] for k in world.pipeline_kinds])[pipeline]
    median = SEGMENT_AMOUNT[segment] * PRODUCT_AMOUNT[product] * kind_amount
    amount = np.maximum(np.round(median * rng.lognormal(0.0, AMOUNT_SIGMA, n) / 100.0), 1).astype(np.int64) * 100

    close_low = np.array([KIND_CLOSE_WEEKS[k][0] for k in kinds])[kind_code]
    close_high = np.array([KIND_CLOSE_WEEKS[k][1] for k in kinds])[kind_code]
    close_weeks = rng.uniform(close_low, close_high) * SEGMENT_CLOSE_FACTOR[segment]
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
class Simulation:
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


def run_simulation(world: SampleWorld, deals: dict[str, np.ndarray], rng: np.random.Generator) -> Simulation:
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
    reason_table = cumulative_weights(LOSS_REASON_MIX)

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
            revise = still_open & entered_forward & (new_stage == revision[d]) & (u_revise < REVISION_SHARE)
            change = still_open & ~revise & (u_change < AMOUNT_CHANGE_RATE)
            new_amount = np.where(revise, _revised(old_amount, z_revise, REVISION_SIGMA), old_amount)
            new_amount = np.where(change, _revised(old_amount, z_change, AMOUNT_CHANGE_SIGMA), new_amount)

            old_close = close[d]
            next_monday = (week + 1) * 7 + EPOCH_MONDAY_DAY
            push = still_open & (old_close < next_monday)
            pull = still_open & ~push & (old_close >= next_monday + 35) & (u_pull < PULL_IN_RATE)
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
                group = np.where(in_stage[d[lost]] >= STALE_LOSS_WEEKS, 2, late.astype(np.int64))
                loss_reason[d[lost]] = draw_categories(u_reason[lost], reason_table, group)
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
    return Simulation(stage, status, amount, close, loss_reason, last_change, last_stage_change, rows)


def history_truth(world: SampleWorld, deals: dict[str, np.ndarray], rows: dict[str, np.ndarray]) -> np.ndarray:
    """The true win probability after each history row (see the `sample_crm` package docstring)."""
    deal_class = deals["class"][rows["deal"]]
    n_open = world.n_open_stages(deal_class)
    truth = np.where(rows["stage"] == n_open, 1.0, 0.0)
    is_open = rows["stage"] < n_open
    truth[is_open] = world.win_probability(
        deal_class[is_open], rows["stage"][is_open], rows["in_stage"][is_open], rows["boundary"][is_open]
    )
    return truth
