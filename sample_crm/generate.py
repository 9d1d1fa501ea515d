"""`generate_sample`: simulate an organisation and write its sample CRM export, quotas and truth
files to a folder."""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from etl.stages import StageCatalog
from sample_crm.files import (
    ACCOUNT_COLUMNS,
    ACCOUNT_FILE,
    CURRENCY,
    HISTORY_COLUMNS,
    HISTORY_EXTRA_COLUMNS,
    HISTORY_FILE,
    OPPORTUNITY_COLUMNS,
    OPPORTUNITY_FILE,
    PIPELINES_CONFIG_FILE,
    QUOTA_COLUMNS,
    QUOTA_FILE,
    RATES_FILE,
    SHAPES,
    TRUTH_COLUMNS,
    TRUTH_DEALS_FILE,
    TRUTH_DEAL_COLUMNS,
    TRUTH_FILE,
    TRUTH_REAL_HISTORY_COLUMNS,
    TRUTH_REAL_HISTORY_FILE,
    USER_COLUMNS,
    USER_FILE,
    opportunity_extra_columns,
)
from sample_crm.formatting import salesforce_ids, take_names
from sample_crm.messy import (
    PROFILES,
    PROFILE_CLEAN,
    PROFILE_DEFAULTS,
    PROFILE_MESSY,
    SPANISH_PIPELINE,
    SPANISH_SORT_ORDER,
    MessyOptions,
    RealLives,
    exchange_rates,
    history_valid_to,
    in_deal_currency,
    record_messy,
)
from sample_crm.quotas import quotas
from sample_crm.simulate import Simulation, build_accounts, draw_deals, history_truth, run_simulation
from sample_crm.world import SampleWorld, resolve_project
from sample_crm.writer import (
    StageLookup,
    account_chunks,
    history_chunks,
    history_order,
    opportunity_chunks,
    pipelines_toml,
    rates_chunks,
    real_history_chunks,
    truth_deal_chunks,
    write_csv,
    write_manifest,
)

logger = logging.getLogger(__name__)


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
    the CRM; see the `sample_crm` package docstring). `n_deals` counts the simulated deals; the summary's
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
    _, _, fields = resolve_project(world.stages, world.fiscal_year_start_month)
    if options is not None and options.loss_reason_field:
        fields = replace(fields, lost_reason_field=options.loss_reason_field)
    accounts = build_accounts(world, np.random.default_rng(np.random.SeedSequence([seed, 1])))
    deals = draw_deals(world, accounts, np.random.default_rng(np.random.SeedSequence([seed, 2])))
    sim = run_simulation(world, deals, np.random.default_rng(np.random.SeedSequence([seed, 3])))
    logger.info(
        "simulated %s deals, %s history rows in %.1fs", f"{n_deals:,}", f"{len(sim.rows['deal']):,}", time.perf_counter() - started
    )
    lookup = StageLookup(world, SPANISH_SORT_ORDER if spanish else None)
    user_ids = pa.array(world.users["Id"].tolist(), pa.string())
    encoding = options.encoding if options is not None else "utf-8"
    if options is None:
        view, created, currency, recorded = sim, deals["created"], None, None
        opportunity_ids = salesforce_ids("opportunity", np.arange(n_deals))
        rows = sim.rows
        order, valid_to = history_order(rows)
        truth = history_truth(world, deals, rows)
        in_crm = deals
    else:
        recorded = record_messy(world, deals, sim, options, seed)
        fx = np.random.default_rng(np.random.SeedSequence([seed, 5]))
        rates = exchange_rates(world, options.currencies, CURRENCY, fx)
        codes, names = in_deal_currency(recorded, options, CURRENCY, rates, fx)
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
        view = Simulation(
            v.stage[kept], v.status[kept], v.amount[kept], v.close_day[kept], v.loss_reason[kept], v.last_change[kept],
            v.last_stage_change[kept], v.rows,
        )  # fmt: skip
        created, currency, opportunity_ids = in_crm["created"], take_names(names, codes[kept]), all_ids.take(pa.array(kept))
        real_deal = v.rows["deal"][recorded.in_history]
        rows = {key: values[recorded.in_history] for key, values in v.rows.items()}
        rows["deal"] = renumber[real_deal]
        order = np.lexsort((recorded.seq[recorded.in_history], rows["time"]))
        valid_to = history_valid_to(rows["deal"], rows["time"])
        lives = RealLives.build(world, deals["class"], sim.rows["deal"], sim.rows["time"], sim.rows["stage"])
        truth = lives.win_probability(real_deal, rows["time"])

    write_csv(
        out_dir / OPPORTUNITY_FILE,
        (*OPPORTUNITY_COLUMNS, *opportunity_extra_columns(fields)),
        opportunity_chunks(world, in_crm, view, accounts, lookup, fields, opportunity_ids, user_ids, currency),
        encoding=encoding,
    )
    truth_chunks: list[dict[str, pa.Array]] = []
    write_csv(
        out_dir / HISTORY_FILE,
        (*HISTORY_COLUMNS, *HISTORY_EXTRA_COLUMNS),
        history_chunks(world, in_crm, rows, order, valid_to, truth, lookup, opportunity_ids, user_ids, truth_chunks),
        encoding=encoding,
    )
    write_csv(out_dir / TRUTH_FILE, TRUTH_COLUMNS, iter(truth_chunks), quote_all=False)
    write_csv(out_dir / ACCOUNT_FILE, ACCOUNT_COLUMNS, account_chunks(world, accounts, user_ids), encoding=encoding)
    users = world.users
    user_columns = {c: pa.array(users[c].astype(str).tolist(), pa.string()) for c in USER_COLUMNS}
    write_csv(out_dir / USER_FILE, USER_COLUMNS, iter([user_columns]), encoding=encoding)
    quota_frame = quotas(world)
    write_csv(
        out_dir / QUOTA_FILE,
        QUOTA_COLUMNS,
        iter([{c: pa.Array.from_pandas(quota_frame[c].astype("int64" if c == "amount" else object)) for c in QUOTA_COLUMNS}]),
        quote_all=False,
    )
    shape_counts: dict[str, int] = {}
    if recorded is not None:
        write_csv(
            out_dir / TRUTH_DEALS_FILE,
            TRUTH_DEAL_COLUMNS,
            truth_deal_chunks(world, deals, sim, recorded, all_ids, take_names(names, codes), user_ids),
            quote_all=False,
        )
        write_csv(
            out_dir / TRUTH_REAL_HISTORY_FILE,
            TRUTH_REAL_HISTORY_COLUMNS,
            real_history_chunks(deals, sim, lookup, all_ids),
            quote_all=False,
        )
        if len(rates):
            write_csv(out_dir / RATES_FILE, ("date", "currency", "rate"), rates_chunks(rates), quote_all=False)
        shape_counts = {shape: int(recorded.shapes[shape].sum()) for shape in SHAPES}
        write_manifest(out_dir, world, options, years, recorded, shape_counts)
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
