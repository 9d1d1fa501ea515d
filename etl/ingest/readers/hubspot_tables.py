"""HubSpot's deal tables as Fivetran lands them (the source tables of fivetran/dbt_hubspot) -> the
canonical deals and deal history.

Four tables, recognised by their header (or, damaged, by their usual file name):
- `deal` (required): one row per deal: `deal_id`, `deal_pipeline_id`, `deal_pipeline_stage_id`,
  `owner_id`, `property_dealname`, `property_amount`, `property_closedate`, `property_createdate`,
  `property_deal_currency_code`, `property_closed_lost_reason`, `property_hs_forecast_category`,
  `is_deleted`, `_fivetran_deleted`;
- `deal_stage`: the deal's stage history, one row per stage entered: `deal_id`, `date_entered`,
  `value` (the stage id). `_fivetran_active` marks the stage a deal is in now; earlier rows are
  history, not superseded versions, so they are all read;
- `deal_pipeline`: `pipeline_id`, `label` (the pipeline's name);
- `deal_pipeline_stage`: `stage_id`, `pipeline_id`, `label`, `display_order`, `probability`,
  `closed_won` (and `is_closed` in newer connectors).

Stage order: a pipeline configured in dealcast.toml `[[pipelines]]` (by its label) is used as
configured. Any other comes from `deal_pipeline_stage` (`order_source` crm): open stages in
`display_order`, won = the `closed_won` stage, lost = the closed stage that is not won (`is_closed`,
else probability 0), each stage's default probability its `probability`. Without that table the
reader cannot tell stages apart and says so.

Rows deleted in HubSpot (`is_deleted`, `_fivetran_deleted`) are left out and counted
(`deleted_in_crm`), with the stage history of such a deal. A history row naming a stage that is not
in its deal's pipeline (the deal moved pipelines since) is quarantined on its own (`unknown_stage`);
a deal whose current stage is unknown is quarantined with its history. HubSpot keeps no amount or
close-date history here: every history row carries the deal's current amount and close date.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from etl.config import ProjectConfig
from etl.ingest.readers import ExportFormatError, ExportReader, FileReport, SourceExport
from etl.ingest.csvfiles import (
    CsvHeader,
    CsvTable,
    Quarantine,
    RowChecks,
    is_blank,
    load_csv,
    parse_booleans,
    parse_numbers,
    parse_timestamps,
    repeated_ids,
)
from etl.schema import DEAL_COLUMNS, DEAL_HISTORY_COLUMNS, conform, empty_frame
from etl.stages import ORDER_CRM, STATUS_LOST, STATUS_OPEN, PipelineStages, StageCatalog
from etl.validation.reason_codes import (
    DEAL_QUARANTINED,
    DELETED_IN_CRM,
    DUPLICATE_ID,
    MISSING_ID,
    ORPHAN_HISTORY,
    UNKNOWN_STAGE,
    UNPARSEABLE_AMOUNT,
    UNPARSEABLE_BOOLEAN,
    UNPARSEABLE_DATE,
)

logger = logging.getLogger(__name__)

SOURCE_SYSTEM = "hubspot"
DEAL = "hubspot_deal_table"
DEAL_STAGE = "hubspot_deal_stage_table"
PIPELINE = "hubspot_deal_pipeline_table"
PIPELINE_STAGE = "hubspot_deal_pipeline_stage_table"
FORMATS = (DEAL, DEAL_STAGE, PIPELINE, PIPELINE_STAGE)
LABELS = {DEAL: "HubSpot deal table", DEAL_STAGE: "HubSpot deal_stage table",
          PIPELINE: "HubSpot deal_pipeline table", PIPELINE_STAGE: "HubSpot deal_pipeline_stage table"}  # fmt: skip
REQUIRED = {
    DEAL: ("deal_id", "deal_pipeline_stage_id"),
    DEAL_STAGE: ("deal_id", "date_entered", "value"),
    PIPELINE: ("pipeline_id", "label"),
    PIPELINE_STAGE: ("stage_id", "pipeline_id", "label", "display_order"),
}
FILE_NAMES = {"deal.csv": DEAL, "deal_stage.csv": DEAL_STAGE, "deal_pipeline.csv": PIPELINE,
              "deal_pipeline_stage.csv": PIPELINE_STAGE}  # fmt: skip

_DATE = "a date-time like 2024-05-31 14:03:00 (or ISO 8601)"


def _format_of(columns: Sequence[str]) -> str | None:
    names = {c.strip().casefold() for c in columns}
    if {"stage_id", "pipeline_id", "label"} <= names:
        return PIPELINE_STAGE
    if {"pipeline_id", "label"} <= names:
        return PIPELINE
    if {"deal_id", "date_entered", "value"} <= names:
        return DEAL_STAGE
    if "deal_id" in names and "deal_pipeline_stage_id" in names:
        return DEAL
    return None


def detect(header: CsvHeader | None, path: Path) -> str | None:
    """The table a file is: from its header, else from its usual file name (so that the read says
    what is missing); None when it is none of HubSpot's deal tables."""
    found = _format_of(header.columns) if header is not None else None
    return found or FILE_NAMES.get(path.name.lower())


def _frame(tables: Sequence[tuple[int, CsvTable]], columns: Sequence[str]) -> pd.DataFrame:
    parts = []
    for key, table in tables:
        part = pd.DataFrame({c: table.text(c) for c in columns})
        part["_file"], part["_pos"] = np.int64(key), np.arange(len(table), dtype=np.int64)
        part["source_file"], part["source_row"] = str(table.path), table.source_row
        part["_blank"] = table.blank_rows()
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def _load(paths: Sequence[Path], fmt: str, quarantine: Quarantine) -> list[tuple[int, CsvTable]]:
    loaded = []
    for path in paths:
        table = load_csv(path, LABELS[fmt], REQUIRED[fmt])
        loaded.append((quarantine.register(table), table))
    return loaded


def _deleted(checks: RowChecks, what: str) -> None:
    """Rows deleted in HubSpot, left out on purpose before any other check."""
    for column in ("is_deleted", "_fivetran_deleted"):
        flags, bad = parse_booleans(checks.frame[column])
        checks.flag(flags.fillna(False).to_numpy(dtype=bool), DELETED_IN_CRM, column,
                    f"the {what} is deleted in HubSpot ({column} = true); left out")
        checks.flag(bad, UNPARSEABLE_BOOLEAN, column,
                    lambda rows, column=column: [f"{column}: expected true or false, got {v!r}" for v in rows[column]])


def _ids(checks: RowChecks, column: str, what: str) -> None:
    frame = checks.frame
    checks.flag(is_blank(frame[column]), MISSING_ID, column, f"{column} is blank; expected the {what}'s id")
    checks.flag(repeated_ids(frame[column], ~checks.bad), DUPLICATE_ID, column,
                lambda rows: [f"{column} {i!r} appears more than once; the first occurrence is kept" for i in rows[column]])


def _lookup(tables, quarantine, columns, key, what) -> tuple[pd.DataFrame, dict[str, int]]:
    if not tables:
        return pd.DataFrame(columns=[key, *columns]), {}
    frame = _frame(tables, [key, *columns, "_fivetran_deleted", "is_deleted"])
    checks = RowChecks(frame, quarantine)
    _deleted(checks, what)
    _ids(checks, key, what)
    kept = frame.loc[~checks.bad]
    return kept, kept["source_file"].value_counts().to_dict()


def _pipelines(stages: pd.DataFrame, names: dict[str, str], configured: StageCatalog, table: str) -> list[PipelineStages]:
    """Each pipeline of `deal_pipeline_stage` not configured in dealcast.toml, in `display_order`."""
    out = []
    closed_flag = parse_booleans(stages["is_closed"])[0]
    stages = stages.assign(
        order=parse_numbers(stages["display_order"])[0],
        probability_value=parse_numbers(stages["probability"])[0],
        won=parse_booleans(stages["closed_won"])[0].fillna(False).to_numpy(dtype=bool),
        closed=closed_flag.fillna(False).to_numpy(dtype=bool),
        closed_given=closed_flag.notna().to_numpy(dtype=bool),
    )
    for pipeline_id, rows in stages.groupby("pipeline_id", sort=True):
        name = names.get(str(pipeline_id), str(pipeline_id))
        if name in configured:
            continue
        rows = rows.sort_values(["order", "label"], kind="stable")
        won_rows = rows["won"].to_numpy(dtype=bool)
        # Closed and not won is lost; connectors without is_closed: probability 0 and not won.
        closed = rows["closed"].to_numpy(dtype=bool) if rows["closed_given"].any() else rows["probability_value"].eq(0).to_numpy()
        lost_rows = closed & ~won_rows
        won = rows.loc[won_rows, "label"].tolist()
        lost = rows.loc[lost_rows, "label"].tolist()
        open_rows = rows.loc[~won_rows & ~lost_rows]
        if open_rows.empty:
            logger.warning("HubSpot pipeline %r has no open stage in %s; its deals are quarantined", name, table)
            continue
        if len(won) > 1 or len(lost) > 1:
            logger.warning(
                "HubSpot pipeline %r: closed stages %s besides the first won and lost are not read", name, won[1:] + lost[1:]
            )
        out.append(
            PipelineStages(
                name=name,
                open_stages=tuple(open_rows["label"]),
                won_stage=won[0] if won else "Closed won",
                lost_stage=lost[0] if lost else "Closed lost",
                probabilities=dict(zip(open_rows["label"], open_rows["probability_value"].astype(float))),
                order_source=ORDER_CRM,
                order_basis=f"display_order in {table}",
            )
        )
    return out


def read_hubspot_tables(files: Mapping[str, Sequence[Path]], project: ProjectConfig) -> SourceExport:
    """Read HubSpot's deal tables (grouped by format) into canonical frames."""
    if not files.get(DEAL):
        others = [str(p) for fmt in FORMATS for p in files.get(fmt, ())]
        raise ExportFormatError(f"{others[0]}: HubSpot table(s) {others} found but no deal table; expected deal.csv beside them")
    if not files.get(PIPELINE_STAGE):
        raise ExportFormatError(
            f"{files[DEAL][0]}: no deal_pipeline_stage table beside the deal table; expected it, to name the stages "
            "and tell won, lost and open stages apart"
        )
    quarantine = Quarantine()
    deal_tables = _load(files[DEAL], DEAL, quarantine)
    history_tables = _load(files.get(DEAL_STAGE, ()), DEAL_STAGE, quarantine)
    pipeline_tables = _load(files.get(PIPELINE, ()), PIPELINE, quarantine)
    stage_tables = _load(files[PIPELINE_STAGE], PIPELINE_STAGE, quarantine)

    pipes, pipes_kept = _lookup(pipeline_tables, quarantine, ["label"], "pipeline_id", "pipeline")
    stages, stages_kept = _lookup(
        stage_tables, quarantine, ["pipeline_id", "label", "display_order", "probability", "closed_won", "is_closed"],
        "stage_id", "pipeline stage",
    )
    pipeline_names = dict(zip(pipes["pipeline_id"], pipes["label"]))
    inferred = _pipelines(stages, pipeline_names, project.stages, Path(files[PIPELINE_STAGE][0]).name)
    catalog = project.stages
    for p in inferred:
        catalog = catalog.with_pipeline(p)
    stage_label = dict(zip(stages["stage_id"], stages["label"]))
    stage_pipeline = dict(zip(stages["stage_id"], stages["pipeline_id"]))
    stage_probability = dict(zip(stages["stage_id"], parse_numbers(stages["probability"])[0]))

    # Deals.
    deal_columns = [
        "deal_id", "deal_pipeline_id", "deal_pipeline_stage_id", "owner_id", "property_dealname", "property_amount",
        "property_closedate", "property_createdate", "property_deal_currency_code", "property_closed_lost_reason",
        "property_hs_forecast_category", "is_deleted", "_fivetran_deleted",
    ]  # fmt: skip
    deals = _frame(deal_tables, deal_columns)
    checks = RowChecks(deals, quarantine)
    _deleted(checks, "deal")
    _ids(checks, "deal_id", "deal")
    checks.blank_required(["property_createdate"])
    deals["created_at"] = checks.parsed("property_createdate", parse_timestamps, UNPARSEABLE_DATE, _DATE)
    deals["close_at"] = checks.parsed("property_closedate", parse_timestamps, UNPARSEABLE_DATE, _DATE).dt.normalize()
    deals["amount"] = checks.parsed("property_amount", parse_numbers, UNPARSEABLE_AMOUNT, "a number like 1234.5")
    # A blank deal_pipeline_id: the pipeline of the deal's stage.
    of_stage = deals["deal_pipeline_stage_id"].map(stage_pipeline)
    pipeline_id = deals["deal_pipeline_id"].where(deals["deal_pipeline_id"].ne(""), of_stage)
    deals["pipeline"] = pipeline_id.map(lambda i: pipeline_names.get(i, i) if isinstance(i, str) and i else "")
    deals["stage"] = deals["deal_pipeline_stage_id"].map(stage_label).fillna("")
    place = [catalog[p] if p in catalog else None for p in deals["pipeline"]]
    deals["stage_order"] = [p.order_of(s) if p is not None else None for p, s in zip(place, deals["stage"])]
    deals["status"] = [
        p.status_of(s) if p is not None and p.order_of(s) is not None else None for p, s in zip(place, deals["stage"])
    ]
    checks.flag(
        deals["status"].isna().to_numpy(dtype=bool),
        UNKNOWN_STAGE,
        "deal_pipeline_stage_id",
        lambda rows: [f"deal_pipeline_stage_id {s!r} is not a stage of pipeline {p!r} in the deal_pipeline_stage table"
                      for s, p in zip(rows["deal_pipeline_stage_id"], rows["pipeline"])],
    )
    accepted = ~checks.bad

    # Stage history.
    history = None
    history_checks = None
    if history_tables:
        history = _frame(history_tables, ["deal_id", "date_entered", "value", "_fivetran_deleted", "is_deleted"])
        history_checks = RowChecks(history, quarantine)
        _deleted(history_checks, "stage history row")
        first = deals.drop_duplicates("deal_id").set_index("deal_id")
        in_export = history["deal_id"].isin(first.index).to_numpy()
        history_checks.flag(
            ~in_export, ORPHAN_HISTORY, "deal_id",
            lambda rows: [
                f"deal_id {i!r} is not in the deal table; expected the history of an exported deal" for i in rows["deal_id"]
            ],
        )
        accepted_ids = pd.Index(deals.loc[accepted, "deal_id"])
        follows = in_export & ~history["deal_id"].isin(accepted_ids).to_numpy()
        codes = quarantine.first_reason_codes(first["_file"].to_numpy(), first["_pos"].to_numpy())
        code_of = pd.Series(codes, index=first.index)
        deleted_deal = follows & history["deal_id"].map(code_of).eq(DELETED_IN_CRM).to_numpy(dtype=bool)
        history_checks.flag(deleted_deal, DELETED_IN_CRM, "deal_id", "its deal is deleted in HubSpot; left out with it")
        history_checks.flag(
            follows & ~deleted_deal, DEAL_QUARANTINED, "deal_id",
            lambda rows: [f"its deal {i!r} is quarantined ({code_of[i]})" for i in rows["deal_id"]],
        )
        history["changed_at"] = history_checks.parsed("date_entered", parse_timestamps, UNPARSEABLE_DATE, _DATE)
        deal_pipeline = deals.loc[accepted].drop_duplicates("deal_id").set_index("deal_id")["pipeline"]
        history["pipeline"] = history["deal_id"].map(deal_pipeline)
        history["stage"] = history["value"].map(stage_label)
        known = [
            isinstance(p, str) and p in catalog and isinstance(s, str) and catalog[p].order_of(s) is not None
            for p, s in zip(history["pipeline"], history["stage"])
        ]
        history_checks.flag(
            ~np.asarray(known, dtype=bool) & ~history_checks.bad, UNKNOWN_STAGE, "value",
            lambda rows: [
                f"stage {v!r} is not a stage of the deal's pipeline {p!r}" for v, p in zip(rows["value"], rows["pipeline"])
            ],
        )

    canonical_deals, canonical_history = _assemble(deals.loc[accepted], history, history_checks, stage_probability, project)
    quarantined = quarantine.frame()
    by_file = quarantined["source_file"].value_counts().to_dict()
    accepted_by_file: dict[str, int] = {}
    for counts in (canonical_deals["source_file"].value_counts().to_dict(), pipes_kept, stages_kept):
        for name, count in counts.items():
            accepted_by_file[str(name)] = accepted_by_file.get(str(name), 0) + int(count)
    if history is not None:
        for name, count in history.loc[~history_checks.bad, "source_file"].value_counts().items():
            accepted_by_file[str(name)] = accepted_by_file.get(str(name), 0) + int(count)
    reports = [
        FileReport(path=table.path, format=fmt, rows_read=table.rows_read, sha256=table.scan.sha256,
                   rows_accepted=accepted_by_file.get(str(table.path), 0), rows_quarantined=int(by_file.get(str(table.path), 0)))
        for fmt, tables in (
            (DEAL, deal_tables), (DEAL_STAGE, history_tables), (PIPELINE, pipeline_tables), (PIPELINE_STAGE, stage_tables)
        )
        for _, table in tables
    ]  # fmt: skip
    notes = []
    owners = canonical_deals["owner"].dropna()
    if not owners.empty:
        notes.append(
            f"owners: the HubSpot deal table gives owner ids only, so the {len(owners):,} deal(s) with an owner "
            f"show its id (e.g. {owners.iloc[0]})"
        )
    logger.info(
        "HubSpot tables: %d deals, %d history rows, %d rows quarantined",
        len(canonical_deals), len(canonical_history), len(quarantined),
    )
    return SourceExport(
        deals=canonical_deals, history=canonical_history, quarantine=quarantined, files=reports,
        pipelines=inferred, raw_suites=quarantine.raw_suites(), notes=notes,
    )


def _blank_to_na(values: pd.Series) -> pd.Series:
    return values.where(values.ne("")).astype("string")


def _assemble(
    ok: pd.DataFrame,
    history: pd.DataFrame | None,
    history_checks: RowChecks | None,
    stage_probability: dict[str, float],
    project: ProjectConfig,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    reporting = project.reporting_currency
    currency = ok["property_deal_currency_code"].str.upper()
    currency = currency.where(currency.ne(""), reporting)
    amount = ok["amount"]
    amount_reporting = amount.where(currency.eq(reporting))
    closed = ok["status"].ne(STATUS_OPEN)
    by_id = ok.set_index("deal_id")
    if history is not None and history_checks is not None:
        rows = history.loc[~history_checks.bad].sort_values(["deal_id", "changed_at"], kind="stable")
    else:
        rows = pd.DataFrame(columns=["deal_id", "changed_at", "stage", "value", "source_file", "source_row"])
    deal_rows = by_id.reindex(rows["deal_id"])
    canonical_history = pd.DataFrame(
        {
            "deal_id": rows["deal_id"].to_numpy(),
            "changed_at": rows["changed_at"].to_numpy(),
            "stage": rows["stage"].to_numpy(),
            "amount": deal_rows["amount"].to_numpy(),
            "amount_reporting": amount_reporting.set_axis(ok["deal_id"].to_numpy()).reindex(rows["deal_id"]).to_numpy(),
            "expected_close_date": deal_rows["close_at"].to_numpy(),
            "crm_probability": rows["value"].map(stage_probability).astype("float64").to_numpy(),
            "forecast_category": pd.NA,
            "source_file": rows["source_file"].to_numpy(),
            "source_row": rows["source_row"].to_numpy(),
        }
    )
    canonical_history = (
        conform(canonical_history, DEAL_HISTORY_COLUMNS, "deal_history") if len(rows) else empty_frame(DEAL_HISTORY_COLUMNS)
    )
    # The deal's own stage as last entered: when it closed, and its last stage change.
    current = rows.loc[rows["stage"].to_numpy() == by_id["stage"].reindex(rows["deal_id"]).to_numpy()]
    last_entry = current.drop_duplicates("deal_id", keep="last").set_index("deal_id")["changed_at"]
    entered = last_entry.reindex(ok["deal_id"]).set_axis(ok.index)
    has_history = ok["deal_id"].isin(set(rows["deal_id"]))
    deals = pd.DataFrame(
        {
            "deal_id": ok["deal_id"], "source_system": SOURCE_SYSTEM, "source_file": ok["source_file"],
            "source_row": ok["source_row"], "pipeline": ok["pipeline"], "deal_name": _blank_to_na(ok["property_dealname"]),
            "account": pd.NA, "owner": _blank_to_na(ok["owner_id"]), "team": pd.NA, "product": pd.NA, "region": pd.NA,
            "account_segment": pd.NA, "lead_source": pd.NA, "deal_type": pd.NA, "amount": amount, "currency": currency,
            "amount_reporting": amount_reporting, "created_at": ok["created_at"], "expected_close_date": ok["close_at"],
            "closed_at": entered.fillna(ok["close_at"]).where(closed), "crm_close_date": ok["close_at"].where(closed),
            "stage": ok["stage"], "stage_order": ok["stage_order"].astype("Int64"), "status": ok["status"],
            "lost_reason": _blank_to_na(ok["property_closed_lost_reason"]).where(ok["status"].eq(STATUS_LOST)),
            "forecast_category": _blank_to_na(ok["property_hs_forecast_category"]),
            "crm_probability": ok["deal_pipeline_stage_id"].map(stage_probability).astype("float64"),
            "last_stage_change_at": entered, "push_count": np.int64(0), "has_history": has_history,
        }
    )  # fmt: skip
    return conform(deals, DEAL_COLUMNS, "deals"), canonical_history


READER = ExportReader(
    source_system=SOURCE_SYSTEM,
    formats=FORMATS,
    detect=detect,
    read=read_hubspot_tables,
    lookup_formats=(PIPELINE, PIPELINE_STAGE),
    history_formats=(DEAL_STAGE,),
)
