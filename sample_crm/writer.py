"""Writing the sample's files: the Salesforce export (Opportunity, OpportunityHistory, Account, User)
in its quoting and encoding, the truth files, exchange rates, the manifest and the pipelines block."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from etl.periods import quarter_labels
from etl.stages import STATUS_LOST, STATUS_OPEN, STATUS_WON, StageCatalog
from sample_crm.files import ACCOUNT_COLUMNS, CURRENCY, SHAPES, TRUTH_MANIFEST_FILE, opportunity_extra_columns
from sample_crm.formatting import (
    constant_texts,
    format_dates,
    format_integers,
    format_timestamps,
    salesforce_ids,
    take_names,
)
from sample_crm.messy import PROFILE_MESSY, MessyOptions, Recorded
from sample_crm.parameters import (
    ACCOUNT_TYPES,
    DAY_SECONDS,
    DEAL_TYPES,
    INDUSTRIES,
    LEAD_SOURCES,
    LOSS_REASONS,
    PRODUCTS,
    REGIONS,
    SEGMENTS,
)
from sample_crm.simulate import Simulation
from sample_crm.world import SampleWorld


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


def truth_deal_chunks(
    world: SampleWorld, deals: dict[str, np.ndarray], sim: Simulation, recorded: Recorded, opportunity_ids: pa.Array,
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
        "pipeline": take_names(world.pipelines, deals["pipeline"]),
        "owner_id": pc.take(user_ids, pa.array(deals["rep"])),
        "team": pa.array(team.tolist(), pa.string()),
        "product": take_names(PRODUCTS, deals["product"]),
        "segment": take_names(SEGMENTS, deals["segment"]),
        "skill_level": format_integers(skill),
        "real_outcome": pa.array(real.tolist(), pa.string()),
        "real_created_at": format_timestamps(deals["created"]),
        "real_closed_at": format_timestamps(np.maximum(recorded.real_closed_at, 0), blank=~really_closed),
        "real_close_date": _date_text(np.maximum(recorded.real_closed_at, 0) // DAY_SECONDS, blank=~really_closed),
        "hidden_loss_at": format_timestamps(np.maximum(recorded.real_closed_at, 0), blank=~stale),
        "crm_created_at": format_timestamps(recorded.created, blank=absent),
        "crm_closed_at": format_timestamps(np.maximum(recorded.crm_closed_at, 0), blank=recorded.crm_closed_at < 0),
        "crm_status": pa.array(crm.tolist(), pa.string()),
        "crm_close_date": _date_text(np.maximum(recorded.view.close_day, 0), blank=absent),
        "amount": format_integers(recorded.view.amount, blank=absent),
        "currency": pc.if_else(pa.array(absent), pa.scalar("", pa.string()), currency),
        "amount_reporting": format_integers(sim.amount),
    }
    for shape in SHAPES:
        chunk[shape] = take_names(("0", "1"), recorded.shapes[shape].astype(np.int64))
    yield chunk


def _date_text(days: np.ndarray, blank: np.ndarray | None = None) -> pa.Array:
    """`YYYY-MM-DD` for days since the Unix epoch."""
    return pc.utf8_slice_codeunits(format_dates(days, blank), 0, 10)


def real_history_chunks(
    deals: dict[str, np.ndarray], sim: Simulation, lookup: "StageLookup", opportunity_ids: pa.Array
) -> Iterator[dict[str, pa.Array]]:
    """The rows of truth_real_history.csv: every simulated change, recorded or not, in time order."""
    rows = sim.rows
    order = np.argsort(rows["time"], kind="stable")
    deal = rows["deal"][order]
    yield {
        "deal_id": pc.take(opportunity_ids, pa.array(deal)),
        "changed_at": format_timestamps(rows["time"][order]),
        "stage": take_names(lookup.names, lookup.name[deals["pipeline"][deal], rows["stage"][order]]),
        "amount_reporting": format_integers(rows["amount"][order]),
        "close_date": _date_text(rows["close"][order]),
    }


_CHUNK_ROWS = 400_000


def write_csv(
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


class StageLookup:
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


def opportunity_chunks(
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
        blank = constant_texts("", n)
        yield {
            "Id": opportunity_ids.slice(part.start, n),
            "IsDeleted": constant_texts("0", n),
            "AccountId": pc.take(accounts["id"], pa.array(account)),
            "IsPrivate": constant_texts("0", n),
            "Name": pc.binary_join_element_wise(pc.take(accounts["name"], pa.array(account)), take_names(PRODUCTS, product), " - "),
            "Description": blank,
            "StageName": take_names(lookup.names, lookup.name[pipeline, stage]),
            "StageSortOrder": format_integers(lookup.sort_order[lookup.name[pipeline, stage]]),
            "Amount": format_integers(amount),
            "Probability": format_integers(probability),
            "ExpectedRevenue": format_integers(amount * probability // 100),
            "TotalOpportunityQuantity": blank,
            "CloseDate": format_dates(close),
            "Type": take_names(DEAL_TYPES, deals["deal_type"][part]),
            "NextStep": blank,
            "LeadSource": take_names(LEAD_SOURCES, deals["lead_source"][part]),
            "IsClosed": take_names(("0", "1"), (status > 0).astype(np.int64)),
            "IsWon": take_names(("0", "1"), (status == 1).astype(np.int64)),
            "ForecastCategory": take_names(lookup.category_api, category),
            "ForecastCategoryName": take_names(lookup.category_label, category),
            "CampaignId": blank,
            "HasOpportunityLineItem": constant_texts("0", n),
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
            custom[0]: constant_texts(CURRENCY, n) if currency is None else currency.slice(part.start, n),
            custom[1]: take_names(world.pipelines, pipeline),
            custom[2]: take_names(PRODUCTS, product),
            custom[3]: take_names(REGIONS, deals["region"][part]),
            custom[4]: take_names(SEGMENTS, deals["segment"][part]),
            custom[5]: take_names((*LOSS_REASONS, ""), np.where(reason >= 0, reason, len(LOSS_REASONS))),
        }


def history_order(rows: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
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


def history_chunks(
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
        stage_name = take_names(lookup.names, lookup.name[pipeline, stage])
        owner = pc.take(user_ids, pa.array(deals["rep"][deal]))
        blank = constant_texts("", n)
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
            "Amount": format_integers(amount),
            "ExpectedRevenue": format_integers(amount * probability // 100),
            "CloseDate": format_dates(rows["close"][idx]),
            "Probability": format_integers(probability),
            "FromForecastCategory": take_names((*lookup.category_api, ""), prev_category),
            "ForecastCategory": take_names(lookup.category_api, lookup.category[pipeline, stage]),
            "PrevForecastUpdate": blank,
            "FromOpportunityStageName": take_names((*lookup.names, ""), prev_name),
            "PrevOpportunityStageUpdate": blank,
            "ValidThroughDate": format_timestamps(np.maximum(valid_to[idx], 0), blank=valid_to[idx] < 0),
            "SystemModstamp": when,
            "IsDeleted": constant_texts("0", n),
            "PrevAmount": format_integers(rows["prev_amount"][idx], blank=first),
            "PrevCloseDate": format_dates(np.maximum(rows["prev_close"][idx], 0), blank=first),
        }


def account_chunks(world: SampleWorld, accounts: dict[str, np.ndarray], user_ids: pa.Array) -> Iterator[dict[str, pa.Array]]:
    n_accounts = len(accounts["id"])
    cities = accounts["cities"]
    for start in range(0, n_accounts, _CHUNK_ROWS):
        part = slice(start, min(start + _CHUNK_ROWS, n_accounts))
        n = part.stop - part.start
        city = accounts["city"][part]
        owner = pc.take(user_ids, pa.array(accounts["owner"][part]))
        created = format_timestamps(accounts["created"][part])
        chunk = {c: constant_texts("", n) for c in ACCOUNT_COLUMNS}
        chunk.update(
            {
                "Id": accounts["id"].slice(part.start, n),
                "IsDeleted": constant_texts("0", n),
                "Name": accounts["name"].slice(part.start, n),
                "Type": take_names(ACCOUNT_TYPES, accounts["type"][part]),
                "BillingCity": pa.array([c[0] for c in cities], pa.string()).take(pa.array(city)),
                "BillingState": pa.array([c[1] for c in cities], pa.string()).take(pa.array(city)),
                "BillingCountry": pa.array([c[2] for c in cities], pa.string()).take(pa.array(city)),
                "Industry": take_names(INDUSTRIES, accounts["industry"][part]),
                "AnnualRevenue": format_integers(accounts["revenue"][part]),
                "NumberOfEmployees": format_integers(accounts["employees"][part]),
                "Ownership": take_names(("Public", "Private", "Other"), accounts["ownership"][part]),
                "Rating": take_names(("Hot", "Warm", "Cold", ""), accounts["rating"][part]),
                "OwnerId": owner,
                "CreatedDate": created,
                "CreatedById": owner,
                "LastModifiedDate": created,
                "LastModifiedById": owner,
                "SystemModstamp": created,
                "CleanStatus": constant_texts("Pending", n),
                "AccountSource": take_names(LEAD_SOURCES, accounts["source"][part]),
            }
        )
        yield chunk


def rates_chunks(rates: pd.DataFrame) -> Iterator[dict[str, pa.Array]]:
    yield {
        "date": _date_text(rates["day"].to_numpy(dtype=np.int64)),
        "currency": pa.array(rates["currency"].tolist(), pa.string()),
        "rate": pa.array(rates["rate"].to_numpy(), pa.float64()),
    }


def write_manifest(
    out_dir: Path, world: SampleWorld, options: MessyOptions, years: float, recorded: Recorded, shape_counts: dict[str, int]
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
