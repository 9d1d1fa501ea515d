"""Salesforce Data Export (and Data Loader) files -> the canonical deals and deal history.

Files, recognised by their header line (or, for a damaged header, by their usual file name):
- `Opportunity.csv`: one row per deal (required);
- `OpportunityHistory.csv`: one row per change of stage, amount, close date, probability or
  forecast category (the deal's stage history);
- `User.csv` (optional): the owner's Name, team (Department) and region fallback (Division);
- `Account.csv` (optional): the account's Name.

Headers are Salesforce field names as Data Export writes them (`StageName`) or in any other case,
as Data Loader writes them (`STAGENAME`).

Custom fields for pipeline, product, region, segment and loss reason are named in dealcast.toml
`[sources.salesforce]`. Orgs name their loss-reason field in many ways (`Loss_Reason__c`,
`LossReason__c`, `Lost_Reason__c`, ...): the configured field is used when it is filled on some
lost deal; otherwise the filled field among the usual spellings (`LOSS_REASON_FIELDS`, or any
custom field whose name reads "loss reason" / "lost reason" / "reason lost"), and the run says
which. Without User.csv (or Account.csv) owners (accounts) keep their Salesforce ids, and the run
says so once. A pipeline not configured in dealcast.toml gets its stage order from the
export (StageSortOrder, IsClosed, IsWon, with each stage's usual Probability as its default);
without a StageSortOrder column, from the moves deals made in OpportunityHistory (`_infer_pipelines`).

`CurrencyIsoCode` is the deal's currency (blank: the reporting currency). Amounts in another
currency are kept as exported with `amount_reporting` left empty, in the deal and its history;
`etl.ingest.exports` converts them from the rates file.

Every row read ends up either as a canonical row (or lookup entry) or in quarantine with its reason.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from etl.config import ProjectConfig, SalesforceSourceConfig
from etl.deal_ids import index_in, is_in
from etl.ingest.readers import HISTORY_GAP_COLUMNS, ExportFormatError, ExportReader, FileReport, SourceExport
from etl.ingest.csvfiles import (
    CsvHeader,
    squashed,
    CsvTable,
    Quarantine,
    RowChecks,
    is_blank,
    load_csv,
    parse_booleans,
    parse_numbers,
    parse_timestamps,
    refuse_regional_formats,
    repeated_ids,
)
from etl.schema import DEAL_COLUMNS, DEAL_HISTORY_COLUMNS, conform, empty_frame
from etl.threads import map_in_threads
from etl.stages import (
    ORDER_CRM,
    ORDER_INFERRED,
    STATUS_LOST,
    STATUS_OPEN,
    STATUS_WON,
    PipelineStages,
    StageCatalog,
    insert_by_moves,
    log_inferred_order,
    order_from_moves,
    stage_moves,
)
from etl.validation.raw import RawRules
from etl.validation.reason_codes import (
    DEAL_QUARANTINED,
    DELETED_IN_CRM,
    DUPLICATE_ID,
    INACTIVE_VERSION,
    MISSING_ID,
    ORPHAN_HISTORY,
    UNKNOWN_STAGE,
    UNPARSEABLE_AMOUNT,
    UNPARSEABLE_BOOLEAN,
    UNPARSEABLE_DATE,
    UNPARSEABLE_NUMBER,
)

logger = logging.getLogger(__name__)

SOURCE_SYSTEM = "salesforce"

OPPORTUNITY = "salesforce_opportunity"
HISTORY = "salesforce_history"
USER = "salesforce_user"
ACCOUNT = "salesforce_account"
FORMATS = (OPPORTUNITY, HISTORY, USER, ACCOUNT)

LABELS = {
    OPPORTUNITY: "Salesforce Opportunity",
    HISTORY: "Salesforce OpportunityHistory",
    USER: "Salesforce User",
    ACCOUNT: "Salesforce Account",
}

REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    OPPORTUNITY: ("Id", "Name", "StageName", "Amount", "CloseDate", "CreatedDate", "IsClosed", "IsWon"),
    HISTORY: ("OpportunityId", "CreatedDate", "StageName"),
    USER: ("Id",),
    ACCOUNT: ("Id", "Name"),
}

# A warehouse loader's bookkeeping flags: Fivetran marks a record deleted in the CRM with
# `_fivetran_deleted` (beside Salesforce's own IsDeleted, landed as `is_deleted`), and keeps the
# earlier versions of a record in a history-mode table with `_fivetran_active` false.
FIVETRAN_DELETED = "_fivetran_deleted"
FIVETRAN_ACTIVE = "_fivetran_active"
LOADER_FLAGS = (FIVETRAN_DELETED, FIVETRAN_ACTIVE)

# The raw suites: what each file's columns must look like as written (etl.validation.raw.RawRules).
RAW_RULES: dict[str, RawRules] = {
    OPPORTUNITY: RawRules.standard(
        not_blank=("Id", "StageName", "CreatedDate", "CloseDate"),
        unique=("Id",),
        amounts=("Amount",),
        numbers=("Probability", "StageSortOrder"),
        dates=("CreatedDate", "CloseDate", "LastStageChangeDate"),
        booleans=("IsClosed", "IsWon", "IsDeleted", *LOADER_FLAGS),
    ),
    HISTORY: RawRules.standard(
        not_blank=("OpportunityId", "CreatedDate", "StageName"),
        unique=("Id",),
        amounts=("Amount", "PrevAmount"),
        numbers=("Probability",),
        dates=("CreatedDate", "CloseDate", "PrevCloseDate"),
        booleans=("IsDeleted", *LOADER_FLAGS),
    ),
    USER: RawRules.standard(not_blank=("Id",), unique=("Id",), booleans=("IsDeleted", *LOADER_FLAGS)),
    ACCOUNT: RawRules.standard(not_blank=("Id",), unique=("Id",), booleans=("IsDeleted", *LOADER_FLAGS)),
}

# The usual Data Export file names, used to recognise a file whose header is damaged so that the
# reader can say what is wrong with it instead of skipping it.
FILE_NAMES = {
    "opportunity.csv": OPPORTUNITY,
    "opportunityhistory.csv": HISTORY,
    "opportunity_history.csv": HISTORY,
    "user.csv": USER,
    "account.csv": ACCOUNT,
}

# Salesforce's ForecastCategory API values and the labels users see (ForecastCategoryName).
FORECAST_CATEGORY_LABELS = {
    "Omitted": "Omitted",
    "Pipeline": "Pipeline",
    "BestCase": "Best Case",
    "Forecast": "Commit",
    "Closed": "Closed",
}

DEFAULT_WON_STAGE = "Closed Won"
DEFAULT_LOST_STAGE = "Closed Lost"

# Custom fields orgs keep the loss reason in, in order of preference after the configured one
# (compared without case); any other custom field whose name, without underscores, contains one of
# `_LOSS_REASON_WORDS` is a candidate too.
LOSS_REASON_FIELDS = (
    "Loss_Reason__c", "LossReason__c", "Lost_Reason__c", "LostReason__c", "Closed_Lost_Reason__c",
    "ClosedLostReason__c", "Reason_Lost__c", "ReasonLost__c", "Reason_for_Loss__c", "Loss_Reason_Code__c",
)  # fmt: skip
_LOSS_REASON_WORDS = ("lossreason", "lostreason", "reasonlost", "reasonforloss")


# --------------------------------------------------------------------------------------------
# Format detection


def _format_of_columns(header: set[str]) -> str | None:
    """The format a header shows. Field names are compared without case and underscores: Data
    Export writes `StageName`, Data Loader `STAGENAME`, Fivetran `stage_name`."""
    columns = {squashed(c) for c in header}
    if {"opportunityid", "stagename"} <= columns:
        return HISTORY
    if {"id", "stagename", "closedate"} <= columns and "opportunityid" not in columns:
        return OPPORTUNITY
    if {"id", "username"} <= columns:
        return USER
    account_fields = {"accountnumber", "billingcity", "billingcountry", "parentid"}
    if {"id", "name"} <= columns and columns & account_fields and "accountid" not in columns:
        return ACCOUNT
    return None


# Salesforce fields as a warehouse loader (Fivetran, Airbyte) names them: snake_case. A file with two
# of these is such a table, not a Data Export, whatever its name.
SNAKE_CASE_FIELDS = frozenset(
    {"stage_name", "close_date", "is_won", "is_closed", "opportunity_id", "owner_id", "forecast_category", "created_date"}
)
LOADER_COLUMN_PREFIXES = ("_fivetran_", "_airbyte_")


def is_loader_table(columns: Sequence[str]) -> bool:
    """Whether a header is a table as Fivetran or Airbyte land it (bookkeeping columns, or
    Salesforce's fields in snake_case) rather than a CRM's own export."""
    folded = {c.strip().casefold() for c in columns}
    return any(c.startswith(LOADER_COLUMN_PREFIXES) for c in folded) or len(folded & SNAKE_CASE_FIELDS) >= 2


def detect(header: CsvHeader | None, path: Path) -> str | None:
    """The Salesforce format of a file: from its comma-separated header (Data Export, Data Loader
    or a warehouse loader's snake_case), else from its usual file name (Opportunity.csv,
    opportunity_history.csv, ...), so that the read says what is missing, else from a header split
    on another delimiter (the read then reports the wrong delimiter). None when the file is not a
    Salesforce export."""
    if header is not None:
        found = _format_of_columns(set(header.columns))
        if found:
            return found
    by_name = FILE_NAMES.get(path.name.lower())
    if by_name:
        return by_name
    if header is not None and header.likely_delimiter != ",":
        return _format_of_columns(set(header.split_on(header.likely_delimiter)))
    return None


# --------------------------------------------------------------------------------------------
# Row checks


_DATE = "a date-time like 2024-05-31 14:03:00 (or ISO 8601)"
_NUMBER = "a number like 1234.5"
_BOOLEAN = "0, 1, true or false"
# How a column is parsed: (parser, reason code of a value it cannot parse, what was expected).
_AS_DATE = (parse_timestamps, UNPARSEABLE_DATE, _DATE)
_AS_AMOUNT = (parse_numbers, UNPARSEABLE_AMOUNT, _NUMBER)
_AS_NUMBER = (parse_numbers, UNPARSEABLE_NUMBER, _NUMBER)
_AS_BOOLEAN = (parse_booleans, UNPARSEABLE_BOOLEAN, _BOOLEAN)


def _parsed(checks: RowChecks, **columns) -> dict[str, pd.Series]:
    """Each column parsed as given (`_AS_DATE`, ...), all at once (`RowChecks.parsed_all`): bad values
    are flagged in the order the columns are named."""
    return dict(zip(columns, checks.parsed_all([(column, *how) for column, how in columns.items()])))


def _working_frame(tables: Sequence[tuple[int, CsvTable]], columns: Mapping[str, str | None]) -> pd.DataFrame:
    """The given columns of every table as stripped text ("" where blank or absent), plus the
    file key, record position and source file/row of each row. `columns` maps working names to
    export column names."""
    parts = []
    for key, table in tables:
        part = pd.DataFrame(dict(zip(columns, map_in_threads(table.text, columns.values()))))
        part.insert(0, "_file", np.int64(key))
        part.insert(1, "_pos", np.arange(len(table), dtype=np.int64))
        part["source_file"] = str(table.path)
        part["source_row"] = table.source_row
        part["_blank"] = table.blank_rows()
        parts.append(part)
    frame = pd.concat(parts, ignore_index=True)
    return frame


def _members(values: pd.Series, pool: pd.Series | pd.Index) -> np.ndarray:
    """Whether each value is in `pool` (a hash lookup: fast for millions of ids)."""
    return is_in(values, pool)


def _blank_to_na(values: pd.Series) -> pd.Series:
    return values.where(values.ne("")).astype("string")


def _load(paths: Sequence[Path], fmt: str, quarantine: Quarantine) -> list[tuple[int, CsvTable]]:
    loaded = []
    for path in paths:
        table = load_csv(path, LABELS[fmt], REQUIRED_COLUMNS[fmt], snake_case=True)
        loaded.append((quarantine.register(table), table))
    return loaded


def _left_out(checks: RowChecks, what: str) -> None:
    """Rows deleted in Salesforce (IsDeleted, or a loader's `_fivetran_deleted`) and earlier versions
    of a record (`_fivetran_active` false), left out on purpose before any other check."""
    frame = checks.frame
    for column, shown in (("IsDeleted", "IsDeleted"), (FIVETRAN_DELETED, FIVETRAN_DELETED)):
        deleted, _ = parse_booleans(frame[column])
        checks.flag(
            deleted.fillna(False).to_numpy(dtype=bool),
            DELETED_IN_CRM,
            shown,
            lambda rows, column=column, shown=shown: [
                f"the {what} is deleted in Salesforce ({shown} = {v}); left out" for v in rows[column]
            ],
        )
    active, _ = parse_booleans(frame[FIVETRAN_ACTIVE])
    checks.flag(
        (~active.fillna(True)).to_numpy(dtype=bool),
        INACTIVE_VERSION,
        FIVETRAN_ACTIVE,
        f"an earlier version of the {what} ({FIVETRAN_ACTIVE} = false in a history-mode table); the active one is read",
    )
    for column in (FIVETRAN_DELETED, FIVETRAN_ACTIVE):
        checks.parsed(column, *_AS_BOOLEAN)


def _deleted_and_ids(checks: RowChecks, what: str) -> None:
    """Rows left out (`_left_out`), blank Ids and repeated Ids (the first live occurrence is kept)."""
    _left_out(checks, what)
    checks.ids("Id", "Id", what)


# --------------------------------------------------------------------------------------------
# Lookups: users and accounts


def _read_lookup(
    tables: Sequence[tuple[int, CsvTable]],
    quarantine: Quarantine,
    columns: Mapping[str, str | None],
    what: str,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The accepted rows of a lookup file, indexed by Id, and how many rows each file kept."""
    if not tables:
        return pd.DataFrame(columns=list(columns)).set_index(pd.Index([], dtype="str", name="Id")), {}
    frame = _working_frame(tables, {"Id": "Id", "IsDeleted": "IsDeleted", **dict(zip(LOADER_FLAGS, LOADER_FLAGS)), **columns})
    fmt = USER if what == "user" else ACCOUNT
    quarantine.declare(frame, RAW_RULES[fmt], LABELS[fmt])
    checks = RowChecks(frame, quarantine)
    _deleted_and_ids(checks, what)
    checks.flag(
        parse_booleans(frame["IsDeleted"])[1],
        UNPARSEABLE_BOOLEAN,
        "IsDeleted",
        lambda rows: [f"IsDeleted: expected {_BOOLEAN}, got {v!r}" for v in rows["IsDeleted"]],
    )
    kept = frame.loc[~checks.bad]
    accepted = kept["source_file"].value_counts().to_dict()
    return kept.set_index("Id")[list(columns)], accepted


def _user_names(tables: Sequence[tuple[int, CsvTable]]) -> dict[str, str | None]:
    """Which User columns give the owner's name: Name, else FirstName + LastName."""
    has_name = all(t.has("Name") for _, t in tables)
    if has_name:
        return {"Name": "Name"}
    if all(t.has("LastName") for _, t in tables):
        return {"FirstName": "FirstName", "LastName": "LastName"}
    path = next(t.path for _, t in tables if not t.has("Name"))
    raise ExportFormatError(
        f"{path}: line 1: missing required column Name (or LastName); expected a Salesforce User "
        "export with the columns Id, Name (or FirstName, LastName), Department, Division"
    )


# --------------------------------------------------------------------------------------------
# Stage catalogue


def _history_moves(tables: Sequence[tuple[int, CsvTable]], deals: pd.DataFrame) -> pd.DataFrame:
    """The moves between stages in OpportunityHistory, per pipeline of the deal (columns pipeline,
    from_stage, to_stage, moves): what a stage order is inferred from when the export does not state
    it. Rows that do not parse are skipped here (the history checks quarantine them later)."""
    parts = []
    for _, table in tables:
        at, _ = parse_timestamps(table.text("CreatedDate"))
        parts.append(pd.DataFrame({"deal": table.text("OpportunityId"), "stage": table.text("StageName"), "at": at}))
    history = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["deal", "stage", "at"])
    history = history.loc[history["stage"].ne("") & history["at"].notna()]
    pipeline_of = deals.drop_duplicates("Id").set_index("Id")["pipeline"]
    history["pipeline"] = pipeline_of.reindex(history["deal"]).to_numpy()
    moves = [
        stage_moves(part["deal"], part["stage"], part["at"]).assign(pipeline=name)
        for name, part in history.loc[history["pipeline"].notna()].groupby("pipeline", sort=True)
    ]
    columns = ["pipeline", "from_stage", "to_stage", "moves"]
    return pd.concat(moves, ignore_index=True)[columns] if moves else pd.DataFrame(columns=columns)


def _infer_pipelines(
    deals: pd.DataFrame,
    configured: StageCatalog,
    opportunity_paths: Sequence[Path],
    project: ProjectConfig,
    history_moves: pd.DataFrame | None = None,
) -> list[PipelineStages]:
    """Stage order of every pipeline in `deals` that dealcast.toml does not configure.

    Open stages (IsClosed 0) in StageSortOrder order (`order_source` crm); won = the IsWon stage;
    lost = the stage closed and not won (named "Closed Lost" when no deal is in it); default
    probability = the stage's most common Probability. Open stages that only the history shows
    (renamed or retired: no deal holds them, so no StageSortOrder names them) are inserted into that
    order where the fewest of the history's moves go backward (`order_source` inferred, the
    `order_basis` naming them). Without a StageSortOrder column the open
    stages (those of open deals, and the stages only the history shows) are put in the order the
    fewest of the history's moves contradict (`history_moves`, `order_source` inferred); stages
    no deal moved between keep the order of their usual Probability.
    """
    unconfigured = deals.loc[~deals["pipeline"].isin(configured.names)]
    if unconfigured.empty:
        return []
    stated = bool(unconfigured["has_sort_order_column"].all())
    if not stated and history_moves is None:
        names = sorted(unconfigured["pipeline"].unique())
        raise ExportFormatError(
            f"{opportunity_paths[0]}: line 1: pipeline(s) {names} are not configured in {project.path} "
            "and the export has neither a StageSortOrder column nor an OpportunityHistory.csv to take their "
            "stage order from; expected the StageSortOrder column, OpportunityHistory.csv, or the pipeline "
            "configured under [[pipelines]]"
        )
    if not stated:
        return _pipelines_from_moves(unconfigured, history_moves, opportunity_paths, project)
    known = unconfigured.loc[unconfigured["sort_order"].notna()]
    stats = known.groupby(["pipeline", "stage"], sort=False).agg(
        sort_order=("sort_order", "min"),
        closed_share=("is_closed", "mean"),
        won_share=("is_won", "mean"),
    )
    counts = (
        known.groupby(["pipeline", "stage", "probability"], sort=False).size().rename("deals").reset_index()
    )
    probabilities = (
        counts.sort_values(["deals", "probability"], ascending=[False, True], kind="stable")
        .drop_duplicates(["pipeline", "stage"])
        .set_index(["pipeline", "stage"])["probability"]
    )
    stats["probability"] = probabilities.reindex(stats.index) / 100.0
    stats = stats.reset_index().sort_values(["pipeline", "sort_order", "stage"], kind="stable")

    inferred = []
    for name, stages in stats.groupby("pipeline", sort=True):
        closed = stages["closed_share"] >= 0.5
        won = closed & (stages["won_share"] >= 0.5)
        lost = closed & ~won
        open_stages = stages.loc[~closed, "stage"].tolist()
        if not open_stages:
            logger.warning(
                "pipeline %r is not configured and has no deal in an open stage, so its stage order "
                "cannot be taken from %s; its deals are quarantined (configure it under [[pipelines]] in %s)",
                name, opportunity_paths[0], project.path,
            )
            continue
        won_stage = stages.loc[won, "stage"].iloc[0] if won.any() else DEFAULT_WON_STAGE
        lost_stage = stages.loc[lost, "stage"].iloc[0] if lost.any() else DEFAULT_LOST_STAGE
        extra = stages.loc[closed & ~stages["stage"].isin([won_stage, lost_stage]), "stage"].tolist()
        if extra:
            logger.warning(
                "pipeline %r: closed stage(s) %s besides %r and %r are not part of the inferred stage "
                "order; their deals are quarantined (configure the pipeline in %s to map them)",
                name, extra, won_stage, lost_stage, project.path,
            )
        probabilities_by_stage = dict(zip(stages["stage"], stages["probability"]))
        source, basis = ORDER_CRM, f"StageSortOrder in {opportunity_paths[0].name}"
        if history_moves is not None:
            mine = history_moves.loc[history_moves["pipeline"] == name]
            seen = pd.unique(pd.concat([mine["from_stage"], mine["to_stage"]]))
            history_only = [str(st) for st in seen if st not in set(stages["stage"]) and st not in (won_stage, lost_stage)]
            if history_only:
                # Stages only the history shows (renamed or retired, so no deal holds them now and the
                # export gives them no StageSortOrder): placed where the fewest of the moves go backward.
                found = insert_by_moves(open_stages, history_only, mine)
                open_stages = list(found.stages)
                source = ORDER_INFERRED
                basis += (
                    f", with {', '.join(repr(st) for st in history_only)} (only in the stage history) placed by "
                    f"{found.moves:,} stage moves"
                )
        pipeline = PipelineStages(
            name=str(name),
            open_stages=tuple(open_stages),
            won_stage=str(won_stage),
            lost_stage=str(lost_stage),
            probabilities={s: float(probabilities_by_stage.get(s, np.nan)) for s in open_stages},
            order_source=source,
            order_basis=basis,
        )
        logger.info(
            "pipeline %r is not configured; stage order from %s: %s, won %r, lost %r",
            pipeline.name, pipeline.order_basis, list(pipeline.open_stages), pipeline.won_stage, pipeline.lost_stage,
        )
        inferred.append(pipeline)
    return inferred


@dataclass(frozen=True)
class _StagePlaces:
    """Each row's stage looked up in its pipeline: order (NaN when unknown) and status (None)."""

    order: np.ndarray
    status: np.ndarray

    @property
    def known(self) -> np.ndarray:
        return ~np.isnan(self.order)


def _pipelines_from_moves(
    deals: pd.DataFrame, moves: pd.DataFrame, opportunity_paths: Sequence[Path], project: ProjectConfig
) -> list[PipelineStages]:
    """`_infer_pipelines` for an export without StageSortOrder: open stages ordered by the moves in
    the history (see there)."""
    inferred = []
    for name, rows in deals.groupby("pipeline", sort=True):
        stats = rows.groupby("stage", sort=False).agg(
            closed_share=("is_closed", "mean"), won_share=("is_won", "mean"), probability=("probability", "median")
        )
        closed = stats["closed_share"] >= 0.5
        won = closed & (stats["won_share"] >= 0.5)
        won_stage = str(stats.index[won][0]) if won.any() else DEFAULT_WON_STAGE
        lost_stage = str(stats.index[closed & ~won][0]) if (closed & ~won).any() else DEFAULT_LOST_STAGE
        mine = moves.loc[moves["pipeline"] == name]
        seen = pd.unique(pd.concat([mine["from_stage"], mine["to_stage"]]))
        history_only = [str(st) for st in seen if st not in stats.index and st not in (won_stage, lost_stage)]
        by_probability = stats.loc[~closed].sort_values("probability", kind="stable", na_position="last")
        fallback = [str(st) for st in by_probability.index] + history_only
        if not fallback:
            logger.warning(
                "pipeline %r is not configured and neither its deals nor its history show an open stage in %s; "
                "its deals are quarantined (configure it under [[pipelines]] in %s)",
                name, opportunity_paths[0], project.path,
            )
            continue
        found = order_from_moves(fallback, mine)
        basis = (
            f"{found.moves:,} stage moves in OpportunityHistory (no StageSortOrder column)" if found.moves else
            "each stage's usual Probability; no StageSortOrder column and no stage moves in the history: a guess"
        )
        pipeline = PipelineStages(
            name=str(name),
            open_stages=found.stages,
            won_stage=won_stage,
            lost_stage=lost_stage,
            probabilities={st: float(stats["probability"].get(st, np.nan)) / 100.0 for st in found.stages},
            order_source=ORDER_INFERRED,
            order_basis=basis,
        )
        log_inferred_order(pipeline)
        inferred.append(pipeline)
    return inferred


def _stage_places(
    pipeline_codes: np.ndarray, pipeline_names: Sequence[str], stages: pd.Series, catalog: StageCatalog
) -> _StagePlaces:
    """Look stages up per (pipeline, stage) pair of distinct values, then spread to the rows
    (`pipeline_codes` index `pipeline_names`; -1 = no pipeline)."""
    stage_codes, stage_names = pd.factorize(stages)
    order = np.full((len(pipeline_names) + 1, len(stage_names) + 1), np.nan)
    status = np.full(order.shape, None, dtype=object)
    for i, name in enumerate(pipeline_names):
        if name not in catalog:
            continue
        pipeline = catalog[name]
        for j, stage in enumerate(stage_names):
            place = pipeline.order_of(stage)
            if place is not None:
                order[i, j] = place
                status[i, j] = pipeline.status_of(stage)
    rows = np.asarray(pipeline_codes, dtype=np.int64)
    return _StagePlaces(order=order[rows, stage_codes], status=status[rows, stage_codes])


_UNORDERED_PIPELINE = (
    "the pipeline is not configured in dealcast.toml and the export gives no stage order for it "
    "(no open deal with a StageSortOrder); configure it under [[pipelines]]"
)


def _describe_pipelines(catalog: StageCatalog, configured: StageCatalog) -> dict[str, str]:
    described = {}
    for p in catalog:
        origin = "configured in dealcast.toml" if p.name in configured else f"{p.order_source}: {p.order_basis}"
        described[p.name] = f"{origin}: {', '.join([*p.open_stages, p.won_stage, p.lost_stage])}"
    return described


# --------------------------------------------------------------------------------------------
# The reader

# Working columns `_assemble` turns into canonical deals and history.
_DEAL_WORKING_COLUMNS = [
    "Id", "source_file", "source_row", "pipeline", "Name", "AccountId", "OwnerId", "product_field",
    "region_field", "segment_field", "LeadSource", "Type", "amount", "currency", "created_at",
    "close_date", "stage", "stage_order", "status", "lost_reason_field", "ForecastCategory",
    "ForecastCategoryName", "probability", "last_stage_change_at", "is_closed", "is_won",
]  # fmt: skip
_HISTORY_WORKING_COLUMNS = [
    "OpportunityId", "changed_at", "StageName", "amount", "close_date", "probability", "ForecastCategory",
    "source_file", "source_row", "prev_amount", "prev_close_date", "PrevAmount", "PrevCloseDate",
]  # fmt: skip


def _canonical_headers(settings: SalesforceSourceConfig, lost_reason_field: str) -> dict[str, dict[str, str]]:
    """Per file format, the Salesforce column each canonical column is read from."""
    opportunity = {
        "deal_id": "Id", "deal_name": "Name", "amount": "Amount", "currency": "CurrencyIsoCode",
        "created_at": "CreatedDate", "expected_close_date": "CloseDate", "closed_at": "CloseDate", "crm_close_date": "CloseDate",
        "stage": "StageName", "status": "StageName", "crm_probability": "Probability",
        "forecast_category": "ForecastCategory", "last_stage_change_at": "LastStageChangeDate",
        "lead_source": "LeadSource", "deal_type": "Type",
    }  # fmt: skip
    if settings.pipeline_field:
        opportunity["pipeline"] = settings.pipeline_field
    if lost_reason_field:
        opportunity["lost_reason"] = lost_reason_field
    history = {
        "deal_id": "OpportunityId", "changed_at": "CreatedDate", "stage": "StageName", "amount": "Amount",
        "expected_close_date": "CloseDate", "crm_probability": "Probability", "forecast_category": "ForecastCategory",
    }  # fmt: skip
    return {OPPORTUNITY: opportunity, HISTORY: history}


def read_salesforce(files: Mapping[str, Sequence[Path]], project: ProjectConfig) -> SourceExport:
    """Read a Salesforce export (files grouped by format) into canonical frames."""
    opportunity_paths = list(files.get(OPPORTUNITY, ()))
    if not opportunity_paths:
        others = [str(p) for fmt in FORMATS for p in files.get(fmt, ())]
        raise ExportFormatError(
            f"{others[0] if others else 'exports'}: Salesforce export file(s) {others} found but no "
            "Opportunity.csv; expected Opportunity.csv (and OpportunityHistory.csv) in the same directory"
        )
    settings = project.salesforce
    quarantine = Quarantine()
    opp_tables = _load(opportunity_paths, OPPORTUNITY, quarantine)
    hist_tables = _load(files.get(HISTORY, ()), HISTORY, quarantine)
    user_tables = _load(files.get(USER, ()), USER, quarantine)
    account_tables = _load(files.get(ACCOUNT, ()), ACCOUNT, quarantine)
    if not hist_tables:
        logger.warning(
            "no OpportunityHistory.csv beside %s: deals have no stage history (only their current stage)",
            opportunity_paths[0],
        )

    user_columns: dict[str, str | None] = (
        {**_user_names(user_tables), "Department": "Department", "Division": "Division"} if user_tables else {}
    )
    users, users_kept = _read_lookup(user_tables, quarantine, user_columns, "user")
    accounts, accounts_kept = _read_lookup(account_tables, quarantine, {"Name": "Name"}, "account")

    notes: list[str] = []
    lost_reason_field = _loss_reason_field(opp_tables, settings.lost_reason_field, notes)
    deals, deal_checks, catalog, inferred = _read_opportunities(
        opp_tables, quarantine, project, settings, lost_reason_field, hist_tables
    )
    history, hist_checks = _read_history(hist_tables, quarantine, project, deals, deal_checks, catalog)
    quarantined = quarantine.frame()
    raw_suites = quarantine.raw_suites()
    headers = _canonical_headers(settings, lost_reason_field)
    files_read = [
        (
            fmt, table.path, table.rows_read, table.scan.sha256,
            {c: table.column_for(field) or field for c, field in headers.get(fmt, {}).items()},
        )
        for fmt, tables in ((OPPORTUNITY, opp_tables), (HISTORY, hist_tables), (USER, user_tables), (ACCOUNT, account_tables))
        for _, table in tables
    ]
    accepted_deals = deals.loc[~deal_checks.bad, _DEAL_WORKING_COLUMNS]
    notes += _lookup_notes(accepted_deals["OwnerId"], users, bool(user_tables), "owner", "User.csv", "user ids")
    notes += _lookup_notes(accepted_deals["AccountId"], accounts, bool(account_tables), "account", "Account.csv", "account ids")
    accepted_history = (
        history.loc[~hist_checks.bad, _HISTORY_WORKING_COLUMNS] if history is not None and hist_checks is not None else None
    )
    # The files' text is no longer needed: free it before the canonical frames are built.
    del opp_tables, hist_tables, user_tables, account_tables, quarantine, deal_checks, hist_checks, deals, history

    canonical_deals, canonical_history, gaps = _assemble(accepted_deals, accepted_history, users, accounts, project)
    quarantined_by_file = quarantined["source_file"].value_counts().to_dict()
    accepted_by_file: dict[str, int] = {}
    for counts in (
        canonical_deals["source_file"].value_counts().to_dict(),
        canonical_history["source_file"].value_counts().to_dict(),
        users_kept,
        accounts_kept,
    ):
        for name, count in counts.items():
            accepted_by_file[str(name)] = accepted_by_file.get(str(name), 0) + int(count)
    reports = [
        FileReport(
            path=path,
            format=fmt,
            rows_read=rows_read,
            sha256=sha256,
            rows_accepted=accepted_by_file.get(str(path), 0),
            rows_quarantined=int(quarantined_by_file.get(str(path), 0)),
            columns=columns,
        )
        for fmt, path, rows_read, sha256, columns in files_read
    ]
    logger.info(
        "Salesforce export: %d deals, %d history rows, %d rows quarantined",
        len(canonical_deals), len(canonical_history), len(quarantined),
    )
    return SourceExport(
        deals=canonical_deals,
        history=canonical_history,
        quarantine=quarantined,
        files=reports,
        pipelines=inferred,
        history_gaps=gaps,
        raw_suites=raw_suites,
        notes=notes,
        completed_from_history=True,
    )


def _lookup_notes(ids: pd.Series, lookup: pd.DataFrame, has_file: bool, what: str, file_name: str, kept: str) -> list[str]:
    """One sentence when deals show a Salesforce id instead of a name: no lookup file at all, or ids
    the lookup file lacks (logged once, not once per deal)."""
    given = ids.loc[ids.ne("")]
    if given.empty:
        return []
    if not has_file:
        note = (
            f"{what}s: no {file_name} among the exports, so the {len(given):,} deal(s) with an {what} show its "
            f"Salesforce id (e.g. {given.iloc[0]}); add {file_name} from the same export to show names"
        )
    else:
        missing = given.loc[~_members(given, lookup.index)]
        if missing.empty:
            return []
        note = (
            f"{what}s: {missing.nunique():,} {kept} of {len(missing):,} deal(s) are not in {file_name} "
            f"(e.g. {missing.iloc[0]}); those deals show the id"
        )
    logger.warning("%s", note)
    return [note]


def _loss_reason_field(tables: Sequence[tuple[int, CsvTable]], configured: str, notes: list[str]) -> str:
    """The Opportunity field the loss reason is read from: `configured` when some lost deal (IsClosed
    and not IsWon) has it filled, else the candidate field filled on the most lost deals (see
    `LOSS_REASON_FIELDS`); `configured` when none is filled. A switch is added to `notes`."""
    headers = list(dict.fromkeys(c for _, t in tables for c in t.columns))
    folded = {c.casefold(): c for c in headers}
    names = [configured, *LOSS_REASON_FIELDS] if configured else list(LOSS_REASON_FIELDS)
    names += [
        c for c in headers
        if c.casefold().endswith("__c") and any(w in c.casefold().replace("_", "") for w in _LOSS_REASON_WORDS)
    ]
    candidates = list(dict.fromkeys(folded[n.casefold()] for n in names if n and n.casefold() in folded))
    if not candidates:
        return configured
    filled: dict[str, int] = dict.fromkeys(candidates, 0)
    lost_deals = 0
    for _, table in tables:
        is_closed, _ = parse_booleans(table.text("IsClosed"))
        is_won, _ = parse_booleans(table.text("IsWon"))
        lost = (is_closed.fillna(False) & ~is_won.fillna(False)).to_numpy(dtype=bool)
        lost_deals += int(lost.sum())
        for name in candidates:
            filled[name] += int((table.text(name).ne("").to_numpy() & lost).sum())
    own = next((c for c in candidates if configured and c.casefold() == configured.casefold()), None)
    if own is not None and filled[own] > 0:
        return own
    best = max(candidates, key=lambda c: filled[c])  # the first of the most filled
    if filled[best] == 0:
        return own or configured
    was = f"the configured field {configured} is {'empty on every lost deal' if own else 'not in the export'}"
    notes.append(
        f"loss reason: {was}; {best} is filled on {filled[best]:,} of {lost_deals:,} lost deal(s) and is used "
        "(set [sources.salesforce] lost_reason_field to choose another)"
    )
    logger.warning("%s", notes[-1])
    return best


def _read_opportunities(
    tables: Sequence[tuple[int, CsvTable]],
    quarantine: Quarantine,
    project: ProjectConfig,
    settings: SalesforceSourceConfig,
    lost_reason_field: str,
    history_tables: Sequence[tuple[int, CsvTable]] = (),
) -> tuple[pd.DataFrame, RowChecks, StageCatalog, list[PipelineStages]]:
    standard = (
        "Id", "IsDeleted", "Name", "StageName", "StageSortOrder", "Amount", "Probability", "CloseDate",
        "CreatedDate", "IsClosed", "IsWon", "LastStageChangeDate", "CurrencyIsoCode", "AccountId", "OwnerId",
        "Type", "LeadSource", "ForecastCategory", "ForecastCategoryName", *LOADER_FLAGS,
    )  # fmt: skip
    columns: dict[str, str | None] = {
        **{c: c for c in standard},
        "pipeline_field": settings.pipeline_field,
        "product_field": settings.product_field,
        "region_field": settings.region_field,
        "segment_field": settings.segment_field,
        "lost_reason_field": lost_reason_field,
    }
    frame = _working_frame(tables, columns)
    frame["has_sort_order_column"] = np.concatenate(
        [np.full(len(t), t.has("StageSortOrder")) for _, t in tables]
    )
    refuse_regional_formats(
        frame, {key: t.path for key, t in tables}, ("Amount",), ("CreatedDate", "CloseDate"),
        lambda key, column: column, LABELS[OPPORTUNITY],
    )
    quarantine.declare(frame, RAW_RULES[OPPORTUNITY], LABELS[OPPORTUNITY])
    checks = RowChecks(frame, quarantine)
    _deleted_and_ids(checks, "opportunity")
    checks.blank_required(["StageName", "CreatedDate", "CloseDate"])
    parsed = _parsed(
        checks, CreatedDate=_AS_DATE, CloseDate=_AS_DATE, LastStageChangeDate=_AS_DATE, Amount=_AS_AMOUNT,
        Probability=_AS_NUMBER, StageSortOrder=_AS_NUMBER, IsClosed=_AS_BOOLEAN, IsWon=_AS_BOOLEAN,
        IsDeleted=_AS_BOOLEAN,
    )
    frame["created_at"] = parsed["CreatedDate"]
    frame["close_date"] = parsed["CloseDate"].dt.normalize()
    frame["last_stage_change_at"] = parsed["LastStageChangeDate"]
    frame["amount"] = parsed["Amount"]
    frame["probability"] = parsed["Probability"]
    frame["sort_order"] = parsed["StageSortOrder"]
    frame["is_closed"] = parsed["IsClosed"]
    frame["is_won"] = parsed["IsWon"]

    pipeline = frame["pipeline_field"]
    frame["pipeline"] = pipeline.where(pipeline.ne(""), settings.default_pipeline)
    frame["stage"] = frame["StageName"]

    # Stage order: configured pipelines as they are, others from the rows that parsed.
    inference_columns = ["pipeline", "stage", "sort_order", "is_closed", "is_won", "probability", "has_sort_order_column"]
    clean = frame.loc[~checks.bad, inference_columns]
    # The history's stage moves only matter for a pipeline dealcast.toml does not configure.
    unconfigured = history_tables and not bool(clean["pipeline"].isin(project.stages.names).all())
    moves = _history_moves(history_tables, frame.loc[~checks.bad, ["Id", "pipeline"]]) if unconfigured else None
    inferred = _infer_pipelines(clean, project.stages, [t.path for _, t in tables], project, moves)
    catalog = project.stages
    for p in inferred:
        catalog = catalog.with_pipeline(p)

    # A blank CurrencyIsoCode (a single-currency org) is the reporting currency. Amounts in other
    # currencies are converted by etl.ingest.exports from the rates file (amount_reporting left NaN here).
    reporting = project.reporting_currency
    currency = frame["CurrencyIsoCode"].str.upper()
    frame["currency"] = currency.where(currency.ne(""), reporting)
    pipeline_codes, pipeline_names = pd.factorize(frame["pipeline"])
    places = _stage_places(pipeline_codes, list(pipeline_names), frame["stage"], catalog)
    described = _describe_pipelines(catalog, project.stages)
    checks.flag(
        ~places.known & ~is_blank(frame["stage"]),
        UNKNOWN_STAGE,
        "StageName",
        lambda rows: [
            f"StageName {s!r} is not a stage of pipeline {p!r} "
            f"({described.get(p, _UNORDERED_PIPELINE)})"
            for s, p in zip(rows["stage"], rows["pipeline"])
        ],
    )
    frame["stage_order"] = pd.array(places.order, dtype="Float64").astype("Int64")
    frame["status"] = places.status
    return frame, checks, catalog, inferred


def _read_history(
    tables: Sequence[tuple[int, CsvTable]],
    quarantine: Quarantine,
    project: ProjectConfig,
    deals: pd.DataFrame,
    deal_checks: RowChecks,
    catalog: StageCatalog,
) -> tuple[pd.DataFrame | None, RowChecks | None]:
    if not tables:
        return None, None
    standard = (
        "Id", "OpportunityId", "IsDeleted", "CreatedDate", "StageName", "Amount", "CloseDate", "Probability",
        "ForecastCategory", "PrevAmount", "PrevCloseDate", *LOADER_FLAGS,
    )  # fmt: skip
    columns: dict[str, str | None] = {c: c for c in standard}
    frame = _working_frame(tables, columns)
    quarantine.declare(frame, RAW_RULES[HISTORY], LABELS[HISTORY])
    checks = RowChecks(frame, quarantine)
    _left_out(checks, "history row")
    checks.flag(
        is_blank(frame["OpportunityId"]),
        MISSING_ID,
        "OpportunityId",
        "OpportunityId is blank; expected the id of the opportunity this history row belongs to",
    )
    checks.flag(
        repeated_ids(frame["Id"], ~checks.bad & ~is_blank(frame["Id"])),
        DUPLICATE_ID,
        "Id",
        lambda rows: [f"history row Id {i!r} appears more than once; the first occurrence is kept" for i in rows["Id"]],
    )
    checks.blank_required(["CreatedDate", "StageName"])
    parsed = _parsed(
        checks, CreatedDate=_AS_DATE, CloseDate=_AS_DATE, PrevCloseDate=_AS_DATE, Amount=_AS_AMOUNT,
        PrevAmount=_AS_AMOUNT, Probability=_AS_NUMBER, IsDeleted=_AS_BOOLEAN,
    )
    frame["changed_at"] = parsed["CreatedDate"]
    frame["close_date"] = parsed["CloseDate"].dt.normalize()
    frame["prev_close_date"] = parsed["PrevCloseDate"].dt.normalize()
    frame["amount"] = parsed["Amount"]
    frame["prev_amount"] = parsed["PrevAmount"]
    frame["probability"] = parsed["Probability"]

    # The deal each row belongs to: `position` indexes the distinct Opportunity ids (-1: not in
    # the export); `accepted_rows()` gives each history row its accepted Opportunity row (-1: none).
    with_id = deals.loc[~is_blank(deals["Id"]), ["Id", "_file", "_pos", "source_file", "source_row"]]
    first_rows = with_id.loc[~with_id["Id"].duplicated(keep="first").to_numpy()]
    ids = pd.Index(first_rows["Id"])
    position = index_in(frame["OpportunityId"], ids)
    in_export = position >= 0

    def accepted_rows() -> np.ndarray:
        rows = np.flatnonzero(~deal_checks.bad)
        by_id = np.full(len(ids) + 1, -1, dtype=np.int64)
        by_id[index_in(deals["Id"].iloc[rows], ids)] = rows
        by_id[-1] = -1
        return by_id[position]

    checks.flag(
        ~in_export & ~is_blank(frame["OpportunityId"]),
        ORPHAN_HISTORY,
        "OpportunityId",
        lambda rows: [
            f"OpportunityId {i!r} is not in the Opportunity export; expected the history of an exported opportunity"
            for i in rows["OpportunityId"]
        ],
    )
    # Stages must belong to the deal's pipeline; an unknown stage quarantines the whole deal.
    deal_row = accepted_rows()
    has_deal = deal_row >= 0
    deal_pipeline_codes, names = pd.factorize(deals["pipeline"])
    pipeline_names = list(names)
    pipeline_codes = np.where(has_deal, deal_pipeline_codes[np.where(has_deal, deal_row, 0)], -1)
    places = _stage_places(pipeline_codes, pipeline_names, frame["StageName"], catalog)
    unknown = has_deal & ~places.known & ~is_blank(frame["StageName"]) & ~checks.bad
    if unknown.any():
        described = _describe_pipelines(catalog, project.stages)
        frame["pipeline"] = pd.Series(
            np.asarray(pipeline_names + [None], dtype=object)[pipeline_codes], index=frame.index, dtype="str"
        )
        checks.flag(
            unknown,
            UNKNOWN_STAGE,
            "StageName",
            lambda rows: [
                f"StageName {s!r} is not a stage of pipeline {p!r} ({described[p]})"
                for s, p in zip(rows["StageName"], rows["pipeline"])
            ],
        )
        first_unknown = frame.loc[unknown].drop_duplicates("OpportunityId").set_index("OpportunityId")
        deal_rows = np.zeros(len(deals), dtype=bool)
        deal_rows[deal_row[unknown]] = True
        deal_checks.flag(
            deal_rows,
            UNKNOWN_STAGE,
            "StageName",
            lambda rows: [
                f"its history ({first_unknown.at[i, 'source_file']} row {first_unknown.at[i, 'source_row']}) "
                f"has stage {first_unknown.at[i, 'StageName']!r}, which is not a stage of pipeline {p!r} "
                f"({described[p]})"
                for i, p in zip(rows["Id"], rows["pipeline"])
            ],
        )
        deal_row = accepted_rows()

    # History of a deal that is in the export but quarantined follows its deal.
    follows = in_export & (deal_row < 0) & ~checks.bad
    if follows.any():
        codes = quarantine.first_reason_codes(first_rows["_file"].to_numpy(), first_rows["_pos"].to_numpy())
        where = pd.DataFrame(
            {
                "code": codes,
                "at": (first_rows["source_file"] + " row " + first_rows["source_row"].astype(str)).to_numpy(),
            },
            index=first_rows["Id"].to_numpy(),
        )
        # History of a deal deleted in Salesforce is left out with it, not quarantined as a defect.
        deal_code = where["code"].reindex(frame["OpportunityId"]).to_numpy(dtype=object)
        of_deleted = follows & (deal_code == DELETED_IN_CRM)
        checks.flag(
            of_deleted,
            DELETED_IN_CRM,
            "OpportunityId",
            lambda rows: [
                f"its opportunity {i!r} is deleted in Salesforce ({where.at[i, 'at']}); left out with it"
                for i in rows["OpportunityId"]
            ],
        )
        checks.flag(
            follows & ~of_deleted,
            DEAL_QUARANTINED,
            "OpportunityId",
            lambda rows: [
                f"its opportunity {i!r} is quarantined ({where.at[i, 'code']}, {where.at[i, 'at']})"
                for i in rows["OpportunityId"]
            ],
        )
    return frame, checks


def _deal_in_reporting_currency(deal_ids: pd.Series, opp: pd.DataFrame, reporting: str) -> np.ndarray:
    """Whether the deal of each history row is in the reporting currency."""
    position = index_in(deal_ids, opp["Id"])
    in_reporting = opp["currency"].eq(reporting).to_numpy(dtype=bool)
    return (position >= 0) & in_reporting[np.where(position >= 0, position, 0)]


def _forecast_labels(values: pd.Series) -> pd.Series:
    return values.replace(FORECAST_CATEGORY_LABELS)


def _lookup(ids: pd.Series, table: pd.DataFrame, column: str) -> pd.Series:
    """`table[column]` for each id ("" where the id is not in the table)."""
    if column not in table.columns or table.empty:
        return pd.Series("", index=ids.index, dtype="str")
    position = index_in(ids, table.index)
    values = table[column].to_numpy(dtype=object)
    found = np.where(position >= 0, values[np.where(position >= 0, position, 0)], "")
    return pd.Series(found, index=ids.index, dtype="str")


def _assemble(
    opp: pd.DataFrame,
    hist: pd.DataFrame | None,
    users: pd.DataFrame,
    accounts: pd.DataFrame,
    project: ProjectConfig,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Canonical deals and history from the accepted working rows, plus the history gaps.

    Owner, team and region come from User.csv, account names from Account.csv (the ids where
    a lookup has no row). closed_at is a closed deal's CloseDate, last_stage_change_at the
    LastStageChangeDate as exported, push_count 0: the load step completes them from the rebuilt
    history (`SourceExport.completed_from_history`).
    """
    reporting = project.reporting_currency
    owner_ids = opp["OwnerId"]
    if "Name" in users.columns:
        user_name = _lookup(owner_ids, users, "Name")
    else:
        first = _lookup(owner_ids, users, "FirstName")
        user_name = (first + " " + _lookup(owner_ids, users, "LastName")).str.strip()
    owner = user_name.where(user_name.ne(""), owner_ids)
    account_name = _lookup(opp["AccountId"], accounts, "Name")
    account = account_name.where(account_name.ne(""), opp["AccountId"])
    region = opp["region_field"].where(opp["region_field"].ne(""), _lookup(owner_ids, users, "Division"))
    forecast = opp["ForecastCategoryName"].where(
        opp["ForecastCategoryName"].ne(""), _forecast_labels(opp["ForecastCategory"])
    )
    status = opp["status"].astype("str")
    closed = status.ne(STATUS_OPEN).to_numpy()

    deals = pd.DataFrame(
        {
            "deal_id": opp["Id"],
            "source_system": SOURCE_SYSTEM,
            "source_file": opp["source_file"],
            "source_row": opp["source_row"],
            "pipeline": opp["pipeline"],
            "deal_name": _blank_to_na(opp["Name"]),
            "account": _blank_to_na(account),
            "owner": _blank_to_na(owner),
            "team": _blank_to_na(_lookup(owner_ids, users, "Department")),
            "product": _blank_to_na(opp["product_field"]),
            "region": _blank_to_na(region),
            "account_segment": _blank_to_na(opp["segment_field"]),
            "lead_source": _blank_to_na(opp["LeadSource"]),
            "deal_type": _blank_to_na(opp["Type"]),
            "amount": opp["amount"],
            "currency": opp["currency"],
            "amount_reporting": opp["amount"].where(opp["currency"].eq(reporting)),
            "created_at": opp["created_at"],
            "expected_close_date": opp["close_date"],
            "closed_at": opp["close_date"].where(closed),
            "crm_close_date": opp["close_date"].where(closed),
            "stage": opp["stage"],
            "stage_order": opp["stage_order"],
            "status": status,
            "lost_reason": _blank_to_na(opp["lost_reason_field"]),
            "forecast_category": _blank_to_na(forecast),
            "crm_probability": opp["probability"] / 100.0,
            "last_stage_change_at": opp["last_stage_change_at"],
            "push_count": np.int64(0),
            "has_history": False,
        }
    ).reset_index(drop=True)
    _warn_status_disagreements(opp, status)

    if hist is None or hist.empty:
        history = empty_frame(DEAL_HISTORY_COLUMNS)
        gaps = pd.DataFrame(columns=HISTORY_GAP_COLUMNS)
    else:
        history = pd.DataFrame(
            {
                "deal_id": hist["OpportunityId"],
                "changed_at": hist["changed_at"],
                "stage": hist["StageName"],
                "amount": hist["amount"],
                # In the deal's currency (the Opportunity's CurrencyIsoCode): left NaN for another
                # currency than the reporting one, converted by etl.ingest.exports with the deal's rate.
                "amount_reporting": hist["amount"].where(_deal_in_reporting_currency(hist["OpportunityId"], opp, reporting)),
                "expected_close_date": hist["close_date"],
                "crm_probability": hist["probability"] / 100.0,
                "forecast_category": _blank_to_na(_forecast_labels(hist["ForecastCategory"])),
                "source_file": hist["source_file"],
                "source_row": hist["source_row"],
            }
        ).reset_index(drop=True)
        gaps = _history_gaps(hist)
    history = conform(history, DEAL_HISTORY_COLUMNS, "deal_history")
    deals["has_history"] = _members(deals["deal_id"], history["deal_id"])
    return conform(deals, DEAL_COLUMNS, "deals"), history, gaps


def _warn_status_disagreements(opp: pd.DataFrame, status: pd.Series) -> None:
    """Log deals whose stage status (from the stage catalogue) disagrees with IsClosed/IsWon."""
    is_closed = opp["is_closed"].astype("boolean")
    is_won = opp["is_won"].astype("boolean")
    crm_status = pd.Series(
        np.where(is_won.fillna(False), STATUS_WON, np.where(is_closed.fillna(False), STATUS_LOST, STATUS_OPEN)),
        index=opp.index,
    )
    known = is_closed.notna().to_numpy()
    disagree = known & status.ne(crm_status).to_numpy()
    if disagree.any():
        sample = opp.loc[disagree, ["source_file", "source_row", "stage"]].head(3).to_dict("records")
        logger.warning(
            "%d deal(s) have a status from the stage order that disagrees with IsClosed/IsWon; the "
            "stage order is used (first: %s)",
            int(disagree.sum()), sample,
        )


def _history_gaps(hist: pd.DataFrame) -> pd.DataFrame:
    """History rows whose PrevAmount/PrevCloseDate (where filled) differ from the row before them."""
    # Order on integer codes (sorting millions of id strings is slow): each deal's rows together,
    # in time order, same-time rows in file order.
    deal_codes = pd.factorize(hist["OpportunityId"])[0]
    changed = hist["changed_at"].to_numpy(dtype="datetime64[us]").astype(np.int64)
    order = np.lexsort((hist["source_row"].to_numpy(), changed, deal_codes))
    codes = deal_codes[order]
    same_deal = np.concatenate([[False], codes[1:] == codes[:-1]])
    parts = []
    for column, prev_col, value_col in (
        ("PrevAmount", "prev_amount", "amount"),
        ("PrevCloseDate", "prev_close_date", "close_date"),
    ):
        stated = hist[prev_col].to_numpy()[order]
        values = hist[value_col].to_numpy()[order]
        previous = np.concatenate([values[:1], values[:-1]])
        if value_col == "amount":
            filled = ~np.isnan(stated)
            differs = ~np.isclose(stated, previous, rtol=0, atol=0.005)
        else:
            filled = ~np.isnat(stated)
            differs = stated != previous
        mask = same_deal & filled & differs
        if mask.any():
            rows = hist.iloc[order[mask]]
            parts.append(
                pd.DataFrame(
                    {
                        "deal_id": rows["OpportunityId"].to_numpy(),
                        "source_file": rows["source_file"].to_numpy(),
                        "source_row": rows["source_row"].to_numpy(),
                        "column": column,
                        "expected": pd.Series(previous[mask]).astype(str).to_numpy(),
                        "found": rows[column].to_numpy(),
                    }
                )
            )
    if not parts:
        return pd.DataFrame(columns=HISTORY_GAP_COLUMNS)
    gaps = pd.concat(parts, ignore_index=True)
    logger.warning(
        "%d history row(s) of %d deal(s) do not continue from the row before them (PrevAmount/PrevCloseDate "
        "differ): rows are missing from the history export (first: %s row %s)",
        len(gaps), gaps["deal_id"].nunique(), gaps.at[0, "source_file"], gaps.at[0, "source_row"],
    )
    return gaps


READER = ExportReader(
    source_system=SOURCE_SYSTEM,
    formats=FORMATS,
    detect=detect,
    read=read_salesforce,
    lookup_formats=(USER, ACCOUNT),
    history_formats=(HISTORY,),
)
