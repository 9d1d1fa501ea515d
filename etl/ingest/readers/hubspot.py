"""HubSpot deals export (CSV from the HubSpot UI) -> the canonical deals and deal history.

One file format, `hubspot_deals`: one row per deal. Several files are read together (for example
one export per pipeline); a Record ID repeated across them keeps its first row.

Columns are matched by their HubSpot labels, case-insensitively and trimmed, with the aliases in
`COLUMN_ALIASES` (HubSpot renamed some over the years: "Record ID" / "Deal ID", "Currency" /
"Deal currency code", "Associated Company" / "Associated Company (Primary)", ...). Required:
Record ID, Deal Stage and Create Date; every other column may be absent or blank. A blank
Pipeline is `[sources.hubspot] default_pipeline`.

Stage history comes from the stage-timing columns, in both generations HubSpot has exported:
`Date entered "<stage> (<pipeline>)"` (newer) and `Date entered '<stage> (<pipeline>)'` (older).
When a file holds both generations for the same stage, the newer column's value is used where it
is filled, else the older one's. `Date exited ...`, `Time in ...` and `Cumulative time in ...`
columns are ignored. Each deal gets one history row per filled date-entered column of its own
pipeline (columns of other pipelines hold dates from before the deal was moved and are ignored),
in time order; a stage without a date gets no row, and a deal without any date has no history
(`has_history` False). HubSpot exports carry no amount, close-date or probability history: every
history row has the deal's current amount and close date; the row of the deal's current stage has
its current probability and forecast category, earlier rows the stage's default probability and
no forecast category. push_count is therefore always 0.

Stage order: a pipeline configured in dealcast.toml `[[pipelines]]` is used as configured (stage
names matched case-insensitively). Any other pipeline's order is inferred from the export: its won
and lost stages are the stages named in `[sources.hubspot] won_stages` / `lost_stages` (defaults
"Closed won" / "Closed lost", case-insensitive); its open stages are put in the order that the
fewest of the deals' moves contradict (`etl.stages.order_from_moves`: a move is a deal's step from
one dated stage to its next; stages dated at the same instant are not ordered by it). Stages no deal
moved between keep the order of the median time at which deals entered them (stages nobody has a
date for come last, in the file's column order). `order_basis` says how many moves the order rests
on, or that it is a guess when no deal has two dated stages. A stage's default probability is the Deal probability of the deals in it when they all share one
value, else unknown. Stage and pipeline names are matched case-insensitively everywhere; a
configured pipeline keeps its configured spelling, an inferred one the spelling of the Deal Stage
(and Pipeline) column. A deal whose Deal Stage, or a dated stage of its pipeline, is not in the
pipeline's stage order is quarantined (`unknown_stage`).

Money: `amount` is Amount in the deal's currency (Currency / Deal currency code, else the
reporting currency). `amount_reporting` is "Amount in company currency" when that column is there
and the company currency (`[sources.hubspot] company_currency`, default the reporting currency)
is the reporting currency; otherwise the Amount of deals in the reporting currency; otherwise left
empty for the currency conversion step to fill from the rates file.

Every row read ends up either as a canonical deal (with its history rows) or in quarantine with
its reason, using the reason codes of the Salesforce reader.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from etl.config import ConfigError, ProjectConfig
from etl.ingest.readers import ExportFormatError, ExportReader, FileReport, SourceExport
from etl.ingest.csvfiles import (
    MISSING_REQUIRED_VALUE,
    CsvHeader,
    CsvTable,
    Quarantine,
    RowChecks,
    is_blank,
    load_csv,
    parse_numbers,
    parse_timestamps,
    refuse_regional_formats,
)
from etl.ingest.readers.salesforce import (
    UNKNOWN_STAGE,
    UNPARSEABLE_AMOUNT,
    UNPARSEABLE_DATE,
    UNPARSEABLE_NUMBER,
)
from etl.schema import DEAL_COLUMNS, DEAL_HISTORY_COLUMNS, conform, empty_frame
from etl.stages import ORDER_INFERRED, STATUS_OPEN, PipelineStages, StageCatalog, log_inferred_order, order_from_moves, stage_moves
from etl.validation.raw import RawRules

logger = logging.getLogger(__name__)

SOURCE_SYSTEM = "hubspot"
DEALS = "hubspot_deals"
FORMATS = (DEALS,)
LABEL = "HubSpot deals"

# Canonical field -> HubSpot column labels (compared case-insensitively, trimmed), preferred first.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "deal_id": ("Record ID", "Deal ID", "Record ID - Deal", "hs_object_id"),
    "deal_name": ("Deal Name", "dealname"),
    "stage": ("Deal Stage", "dealstage"),
    "pipeline": ("Pipeline",),
    "amount": ("Amount",),
    "amount_company": ("Amount in company currency", "Amount in home currency", "amount_in_home_currency"),
    "currency": ("Deal currency code", "Currency", "deal_currency_code"),
    "close_date": ("Close Date", "closedate"),
    "create_date": ("Create Date", "createdate"),
    "owner": ("Deal owner", "Deal Owner", "hubspot_owner_id"),
    "forecast_category": ("Forecast category", "hs_manual_forecast_category"),
    "probability": ("Deal probability", "hs_deal_stage_probability"),
    "deal_type": ("Deal Type", "dealtype"),
    "lost_reason": ("Closed Lost Reason", "closed_lost_reason"),
    "account": (
        "Associated Company",
        "Associated Company (Primary)",
        "Associated Company Name",
        "Company name",
        "Company",
    ),
    "lead_source": ("Original Source Type", "Original Source", "Lead Source"),
}
REQUIRED_FIELDS = ("deal_id", "stage", "create_date")

# `Date entered "Stage (Pipeline)"` (newer exports) and `Date entered 'Stage (Pipeline)'` (older).
_DATE_ENTERED = re.compile(r"""^date entered\s+(?P<quote>["'])(?P<inner>.+)(?P=quote)$""", re.IGNORECASE)
NEWER = 0
OLDER = 1

_DATE = "a date like 2024-03-01 14:22 or 2024-03-01"
_NUMBER = "a number like 1234.5"


# --------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class HubSpotSourceConfig:
    """`[sources.hubspot]` in dealcast.toml.

    won_stages / lost_stages: stage names (any case) that mean won / lost in pipelines whose order
    is inferred from the export. company_currency: the HubSpot account's company currency, the
    currency of "Amount in company currency" (empty: the reporting currency). default_pipeline:
    the pipeline of deals with a blank Pipeline.
    """

    won_stages: tuple[str, ...] = ("Closed won",)
    lost_stages: tuple[str, ...] = ("Closed lost",)
    company_currency: str = ""
    default_pipeline: str = "Sales Pipeline"


def hubspot_settings(project: ProjectConfig) -> HubSpotSourceConfig:
    """The `[sources.hubspot]` settings, defaults where a setting is left out."""
    raw: dict[str, Any] = dict(project.sources.get("hubspot", {}))
    known = set(HubSpotSourceConfig.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"{project.path}: [sources.hubspot] has unknown setting(s) {unknown}; expected some of {sorted(known)}"
        )
    for name in ("won_stages", "lost_stages"):
        if name in raw:
            value = raw[name]
            names = [value] if isinstance(value, str) else value
            if not isinstance(names, list) or not names or not all(isinstance(v, str) and v.strip() for v in names):
                raise ConfigError(
                    f"{project.path}: [sources.hubspot] {name} must be a stage name or a non-empty list of "
                    f"stage names, got {value!r}"
                )
            raw[name] = tuple(v.strip() for v in names)
    for name in ("company_currency", "default_pipeline"):
        if name in raw and not isinstance(raw[name], str):
            raise ConfigError(f"{project.path}: [sources.hubspot] {name} must be text, got {raw[name]!r}")
    settings = HubSpotSourceConfig(**raw)
    if not settings.default_pipeline.strip():
        raise ConfigError(f"{project.path}: [sources.hubspot] default_pipeline must not be blank")
    return settings


# --------------------------------------------------------------------------------------------
# Columns and format detection


def _key(text: str) -> str:
    return " ".join(str(text).split()).casefold()


def _keys(values: pd.Series) -> pd.Series:
    """`_key` of each value, computed once per distinct value."""
    codes, uniques = pd.factorize(values)
    keys = np.asarray([_key(u) for u in uniques] + [""], dtype=object)
    return pd.Series(keys[codes], index=values.index, dtype="str")


def _resolve_columns(columns: Sequence[str]) -> dict[str, str | None]:
    """Canonical field -> the file's column holding it (None when the file has none)."""
    by_key: dict[str, str] = {}
    for column in columns:
        by_key.setdefault(_key(column), column)
    resolved: dict[str, str | None] = {}
    for field_name, aliases in COLUMN_ALIASES.items():
        resolved[field_name] = next((by_key[_key(a)] for a in aliases if _key(a) in by_key), None)
    return resolved


@dataclass(frozen=True)
class StageColumn:
    """A date-entered column: its header, the stage and pipeline labels it names, its generation
    (NEWER for double quotes, OLDER for single quotes) and its position in the file."""

    column: str
    stage: str
    pipeline: str
    generation: int
    position: int


def _split_stage_pipeline(inner: str, pipelines: set[str]) -> tuple[str, str] | None:
    """"Stage (Pipeline)" -> (stage, pipeline). Stage and pipeline names may hold parentheses: the
    split whose pipeline is one of `pipelines` (keys) wins, else the last " (".
    """
    if not inner.endswith(")"):
        return None
    splits = [m.start() for m in re.finditer(r" \(", inner)]
    candidates = [(inner[:i].strip(), inner[i + 2 : -1].strip()) for i in splits]
    candidates = [(s, p) for s, p in candidates if s and p]
    if not candidates:
        return None
    for stage, pipeline in candidates:
        if _key(pipeline) in pipelines:
            return stage, pipeline
    return candidates[-1]


def stage_columns(columns: Sequence[str], pipelines: Sequence[str] = ()) -> list[StageColumn]:
    """The date-entered columns among `columns` (`pipelines`: pipeline names known from the data,
    used to split names that hold parentheses)."""
    known = {_key(p) for p in pipelines}
    found = []
    for position, column in enumerate(columns):
        match = _DATE_ENTERED.match(column.strip())
        if not match:
            continue
        split = _split_stage_pipeline(match.group("inner").strip(), known)
        if split is None:
            logger.info("column %r names no '<stage> (<pipeline>)'; ignored", column)
            continue
        generation = NEWER if match.group("quote") == '"' else OLDER
        found.append(StageColumn(column, split[0], split[1], generation, position))
    return found


def _is_deals_export(columns: Sequence[str]) -> bool:
    resolved = _resolve_columns(columns)
    if resolved["deal_id"] is None or resolved["stage"] is None:
        return False
    return resolved["pipeline"] is not None or resolved["deal_name"] is not None or bool(stage_columns(columns))


def detect(header: CsvHeader | None, path: Path) -> str | None:
    """`hubspot_deals` when the header names a deal id (Record ID / Deal ID) and a Deal Stage, plus
    a Pipeline, a Deal Name or date-entered columns (also when the header is split on another
    delimiter, so that the read reports the wrong delimiter); else None."""
    if header is None:
        return None
    if _is_deals_export(header.columns):
        return DEALS
    if header.likely_delimiter != "," and _is_deals_export(header.split_on(header.likely_delimiter)):
        return DEALS
    return None


# --------------------------------------------------------------------------------------------
# Row checks


# Canonical column -> the HubSpot field (a key of COLUMN_ALIASES) it is read from.
CANONICAL_FIELDS = {
    "deal_id": "deal_id", "deal_name": "deal_name", "stage": "stage", "status": "stage", "pipeline": "pipeline",
    "amount": "amount", "currency": "currency", "created_at": "create_date", "closed_at": "close_date",
    "expected_close_date": "close_date", "crm_close_date": "close_date", "owner": "owner", "crm_probability": "probability",
    "forecast_category": "forecast_category", "deal_type": "deal_type", "lost_reason": "lost_reason",
    "account": "account", "lead_source": "lead_source",
}  # fmt: skip

# The raw suite: what the deals export's columns must look like as written (etl.validation.raw.RawRules).
RAW_RULES = RawRules.standard(
    not_blank=("deal_id", "stage", "create_date"),
    unique=("deal_id",),
    amounts=("amount", "amount_company"),
    numbers=("probability",),
    dates=("create_date", "close_date"),
)


class _Checks(RowChecks):
    """Row checks of the working frame of deal rows (one row per file record), whose columns are
    canonical field names: quarantine rows name HubSpot's own column label."""

    def column_label(self, column: str) -> str:
        return COLUMN_ALIASES[column][0]


def _blank_to_na(values: pd.Series) -> pd.Series:
    return values.where(values.ne("")).astype("string")


# --------------------------------------------------------------------------------------------
# Reading


@dataclass
class _File:
    key: int
    table: CsvTable
    columns: dict[str, str | None]
    offset: int


def _load(paths: Sequence[Path], quarantine: Quarantine) -> list[_File]:
    files = []
    offset = 0
    for path in paths:
        table = load_csv(path, LABEL, ())
        columns = _resolve_columns(table.columns)
        missing = [COLUMN_ALIASES[f][0] for f in REQUIRED_FIELDS if columns[f] is None]
        if missing:
            expected = ", ".join(COLUMN_ALIASES[f][0] for f in REQUIRED_FIELDS)
            raise ExportFormatError(
                f"{path}: line 1: missing required column(s) {', '.join(missing)}; expected a HubSpot deals "
                f"export with the columns {expected} (Record ID may also be called Deal ID)"
            )
        files.append(_File(quarantine.register(table), table, columns, offset))
        offset += len(table)
    return files


def _working_frame(files: Sequence[_File]) -> pd.DataFrame:
    parts = []
    for f in files:
        part = pd.DataFrame({name: f.table.text(column) for name, column in f.columns.items()})
        part.insert(0, "_file", np.int64(f.key))
        part.insert(1, "_pos", np.arange(len(f.table), dtype=np.int64))
        part["source_file"] = str(f.table.path)
        part["source_row"] = f.table.source_row
        part["_blank"] = f.table.blank_rows()
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def _canonical_names(values: pd.Series, preferred: Sequence[str]) -> pd.Series:
    """Names matched case-insensitively: a `preferred` spelling where one matches, else the most
    common spelling in `values`."""
    keys = _keys(values)
    counts = pd.DataFrame({"key": keys, "name": values}).value_counts(sort=True).reset_index()
    spelling = dict(zip(counts.drop_duplicates("key")["key"], counts.drop_duplicates("key")["name"]))
    spelling.update({_key(p): p for p in preferred})
    return keys.map(spelling).astype("str")


def _stage_events(files: Sequence[_File], frame: pd.DataFrame, checks: _Checks) -> pd.DataFrame:
    """Every filled date-entered value of a deal's own pipeline: row (frame index), stage label,
    entered_at, generation, column and its position. Unparseable dates quarantine the deal."""
    pipeline_keys = _keys(frame["pipeline"]).to_numpy(dtype=object)
    known = sorted(set(frame["pipeline"]))
    parts = []
    for f in files:
        rows = np.arange(f.offset, f.offset + len(f.table))
        for col in stage_columns(f.table.columns, known):
            own = pipeline_keys[rows] == _key(col.pipeline)
            if not own.any():
                continue
            text = f.table.text(col.column)[own]
            filled = ~is_blank(text)
            if not filled.any():
                continue
            at_rows = rows[own][filled]
            values, bad = parse_timestamps(text[filled])
            mask = np.zeros(len(frame), dtype=bool)
            mask[at_rows[bad]] = True
            raw = dict(zip(at_rows[bad], text[filled].to_numpy()[bad]))
            checks.flag(
                mask,
                UNPARSEABLE_DATE,
                col.column,
                lambda r, c=col.column, raw=raw: [f"{c}: expected {_DATE}, got {raw[i]!r}" for i in r.index],
            )
            good = ~bad
            parts.append(
                pd.DataFrame(
                    {
                        "row": at_rows[good],
                        "stage_label": col.stage,
                        "entered_at": values.to_numpy()[good],
                        "generation": col.generation,
                        "column": col.column,
                        "position": col.position,
                    }
                )
            )
    if not parts:
        return pd.DataFrame(
            {
                "row": pd.Series(dtype="int64"),
                "stage_label": pd.Series(dtype="str"),
                "entered_at": pd.Series(dtype="datetime64[us]"),
                "generation": pd.Series(dtype="int64"),
                "column": pd.Series(dtype="str"),
                "position": pd.Series(dtype="int64"),
            }
        )
    events = pd.concat(parts, ignore_index=True)
    # Both generations for the same stage: the newer column's date where it is filled.
    events["stage_key"] = _keys(events["stage_label"])
    events = events.sort_values(["row", "stage_key", "generation", "position"], kind="stable")
    return events.drop_duplicates(["row", "stage_key"]).reset_index(drop=True)


def _infer_pipelines(
    deals: pd.DataFrame,
    events: pd.DataFrame,
    configured: StageCatalog,
    settings: HubSpotSourceConfig,
) -> list[PipelineStages]:
    """Stage order of each pipeline in `deals` that dealcast.toml does not configure (see the
    module docstring for the rule). `deals`: rows that parsed, with pipeline, stage, probability;
    `events`: their date-entered values with the deal's pipeline."""
    won_keys = {_key(s) for s in settings.won_stages}
    lost_keys = {_key(s) for s in settings.lost_stages}
    inferred = []
    for name in sorted(set(deals["pipeline"]) - set(configured.names)):
        in_pipeline = deals.loc[deals["pipeline"] == name]
        its_events = events.loc[events["pipeline"] == name]
        current = pd.DataFrame({"stage": in_pipeline["stage"], "entered_at": pd.NaT, "position": np.iinfo(np.int64).max})
        dated = pd.DataFrame(
            {"stage": its_events["stage_label"], "entered_at": its_events["entered_at"], "position": its_events["position"]}
        )
        stages = pd.concat([dated, current], ignore_index=True)
        stages["stage"] = _canonical_names(stages["stage"], list(in_pipeline["stage"].unique()))
        stats = stages.groupby("stage").agg(
            median=("entered_at", "median"), position=("position", "min"), seen=("entered_at", "size")
        )
        deals_in = in_pipeline["stage"].value_counts()
        stats["deals"] = deals_in.reindex(stats.index).fillna(0)
        stats["key"] = stats.index.map(_key)

        def terminal(keys: set[str], default: str, what: str) -> str:
            matches = stats.loc[stats["key"].isin(keys)].sort_values(["deals", "seen"], ascending=False)
            if len(matches) > 1:
                logger.warning(
                    "pipeline %r: several %s stages %s; %r is used, deals in the others are quarantined",
                    name, what, list(matches.index), matches.index[0],
                )
            return str(matches.index[0]) if len(matches) else default

        won = terminal(won_keys, settings.won_stages[0], "won")
        lost = terminal(lost_keys, settings.lost_stages[0], "lost")
        open_stats = stats.loc[~stats["key"].isin(won_keys | lost_keys)].reset_index()
        if open_stats.empty:
            logger.warning(
                "pipeline %r is not configured and the export shows no open stage for it; its deals are "
                "quarantined (configure it under [[pipelines]])",
                name,
            )
            continue
        open_stats = open_stats.sort_values(["median", "position", "stage"], na_position="last", kind="stable")
        by_median = [str(s) for s in open_stats["stage"]]
        # The order that the fewest dated moves contradict; stages no deal moved between keep the
        # order of the median date deals entered them.
        dated_stage = stages["stage"].iloc[: len(dated)]  # the dated rows come first in `stages`
        moves = stage_moves(its_events["row"], dated_stage, its_events["entered_at"])
        found = order_from_moves(by_median, moves)
        open_stages = found.stages
        if found.moves:
            basis = f"{found.moves:,} stage moves in the date-entered columns"
        else:
            basis = "the median date deals entered each stage; no deal has two dated stages to order them by: a guess"
        in_open = in_pipeline.loc[in_pipeline["stage"].isin(open_stages) & in_pipeline["probability"].notna()]
        spread = in_open.groupby("stage")["probability"].agg(["min", "max"])
        constant = spread.loc[spread["min"] == spread["max"], "min"]
        pipeline = PipelineStages(
            name=str(name),
            open_stages=open_stages,
            won_stage=won,
            lost_stage=lost,
            probabilities={s: float(constant.get(s, np.nan)) for s in open_stages},
            order_source=ORDER_INFERRED,
            order_basis=basis,
        )
        log_inferred_order(pipeline)
        inferred.append(pipeline)
    return inferred


def _stage_lookup(catalog: StageCatalog, pipelines: pd.Series, labels: pd.Series) -> pd.DataFrame:
    """Each (pipeline, stage label) matched case-insensitively to the catalogue: stage (catalogue
    spelling, NA when unknown), stage_order, stage_status, stage_probability."""
    lookup = catalog.lookup_frame()
    lookup["key"] = lookup["stage"].map(_key)
    lookup = lookup.drop_duplicates(["pipeline", "key"])
    query = pd.DataFrame({"pipeline": pipelines.to_numpy(), "key": _keys(labels).to_numpy()})
    out = query.merge(lookup, on=["pipeline", "key"], how="left", validate="many_to_one")
    out.index = labels.index
    return out


def read_hubspot(files: Mapping[str, Sequence[Path]], project: ProjectConfig) -> SourceExport:
    """Read HubSpot deals exports (files grouped by format) into canonical frames."""
    paths = list(files.get(DEALS, ()))
    if not paths:
        raise ExportFormatError("exports: no HubSpot deals export given; expected a CSV exported from HubSpot's deals view")
    settings = hubspot_settings(project)
    reporting = project.reporting_currency
    quarantine = Quarantine()
    loaded = _load(paths, quarantine)
    frame = _working_frame(loaded)
    checks = _Checks(frame, quarantine)
    refuse_regional_formats(
        frame, {f.key: f.table.path for f in loaded}, ("amount", "amount_company"), ("create_date", "close_date"),
        lambda key, column: checks.column_label(column), LABEL,
    )
    quarantine.declare(frame, RAW_RULES, LABEL, lambda key, column: checks.column_label(column))

    checks.ids("deal_id", "Record ID")
    for field_name in ("stage", "create_date"):
        label = checks.column_label(field_name)
        checks.flag(is_blank(frame[field_name]), MISSING_REQUIRED_VALUE, label, f"{label} is blank; expected a value")
    frame["created_at"] = checks.parsed("create_date", parse_timestamps, UNPARSEABLE_DATE, _DATE)
    frame["close_at"] = checks.parsed("close_date", parse_timestamps, UNPARSEABLE_DATE, _DATE).dt.normalize()
    frame["amount_value"] = checks.parsed("amount", parse_numbers, UNPARSEABLE_AMOUNT, _NUMBER)
    frame["amount_company_value"] = checks.parsed("amount_company", parse_numbers, UNPARSEABLE_AMOUNT, _NUMBER)
    probability = checks.parsed("probability", parse_numbers, UNPARSEABLE_NUMBER, "a probability from 0 to 1")
    checks.flag(
        ((probability < 0) | (probability > 1)).to_numpy(),
        UNPARSEABLE_NUMBER,
        "Deal probability",
        lambda rows: [f"Deal probability: expected a probability from 0 to 1, got {v!r}" for v in rows["probability"]],
    )
    frame["probability_value"] = probability

    pipeline = frame["pipeline"].where(frame["pipeline"].ne(""), settings.default_pipeline)
    frame["pipeline"] = _canonical_names(pipeline, project.stages.names)
    events = _stage_events(loaded, frame, checks)
    events["pipeline"] = frame["pipeline"].to_numpy()[events["row"].to_numpy()]

    clean = ~checks.bad
    clean_events = events.loc[clean[events["row"].to_numpy()]]
    inferred = _infer_pipelines(
        pd.DataFrame(
            {
                "pipeline": frame["pipeline"][clean],
                "stage": frame["stage"][clean],
                "probability": frame["probability_value"][clean],
            }
        ),
        clean_events,
        project.stages,
        settings,
    )
    catalog = project.stages
    for p in inferred:
        catalog = catalog.with_pipeline(p)

    described = {p.name: ", ".join([*p.open_stages, p.won_stage, p.lost_stage]) for p in catalog}
    places = _stage_lookup(catalog, frame["pipeline"], frame["stage"])
    checks.flag(
        places["stage"].isna().to_numpy() & ~is_blank(frame["stage"]),
        UNKNOWN_STAGE,
        "Deal Stage",
        lambda rows: [
            f"Deal Stage {s!r} is not a stage of pipeline {p!r} "
            f"({described.get(p, 'the pipeline has no stage order: configure it under [[pipelines]]')})"
            for s, p in zip(rows["stage"], rows["pipeline"])
        ],
    )
    event_places = _stage_lookup(catalog, events["pipeline"], events["stage_label"])
    unknown = events.loc[event_places["stage"].isna().to_numpy() & ~checks.bad[events["row"].to_numpy()]]
    unknown = unknown.drop_duplicates("row")
    if not unknown.empty:
        mask = np.zeros(len(frame), dtype=bool)
        mask[unknown["row"].to_numpy()] = True
        by_row = unknown.set_index("row")
        checks.flag(
            mask,
            UNKNOWN_STAGE,
            None,
            lambda rows: [
                f"{by_row.at[i, 'column']}: stage {by_row.at[i, 'stage_label']!r} is not a stage of pipeline "
                f"{p!r} ({described.get(p, '')})"
                for i, p in zip(rows.index, rows["pipeline"])
            ],
        )
    # A closed deal needs its close time: the date it entered its closed stage, else Close Date.
    dated_current = events.loc[
        event_places["stage"].to_numpy(dtype=object) == places["stage"].to_numpy(dtype=object)[events["row"].to_numpy()],
        "row",
    ]
    closed = places["stage_status"].notna().to_numpy() & places["stage_status"].ne(STATUS_OPEN).to_numpy()
    undated = np.ones(len(frame), dtype=bool)
    undated[dated_current.to_numpy()] = False
    checks.flag(
        closed & undated & frame["close_at"].isna().to_numpy() & ~checks.bad,
        MISSING_REQUIRED_VALUE,
        "Close Date",
        "Close Date is blank and the deal has no date entered its closed stage; expected the close date of a closed deal",
    )
    quarantined = quarantine.frame()

    deals, history = _assemble(frame, places, events, event_places, ~checks.bad, settings, reporting)
    accepted = deals["source_file"].value_counts()
    rejected = quarantined["source_file"].value_counts()
    reports = [
        FileReport(
            path=f.table.path,
            format=DEALS,
            rows_read=f.table.rows_read,
            sha256=f.table.scan.sha256,
            rows_accepted=int(accepted.get(str(f.table.path), 0)),
            rows_quarantined=int(rejected.get(str(f.table.path), 0)),
            columns={
                canonical: f.columns[field_name]
                for canonical, field_name in CANONICAL_FIELDS.items()
                if f.columns.get(field_name)
            },
        )
        for f in loaded
    ]
    logger.info(
        "HubSpot export: %d deals (%d with stage history), %d history rows, %d rows quarantined",
        len(deals), int(deals["has_history"].sum()), len(history), len(quarantined),
    )
    return SourceExport(
        deals=deals, history=history, quarantine=quarantined, files=reports, pipelines=inferred,
        raw_suites=quarantine.raw_suites(),
    )


def _assemble(
    frame: pd.DataFrame,
    places: pd.DataFrame,
    events: pd.DataFrame,
    event_places: pd.DataFrame,
    accepted: np.ndarray,
    settings: HubSpotSourceConfig,
    reporting: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Canonical deals and history of the accepted rows."""
    ok = frame.loc[accepted]
    place = places.loc[accepted]
    currency = ok["currency"].str.upper()
    currency = currency.where(currency.ne(""), reporting)
    amount = ok["amount_value"]
    company = (settings.company_currency.strip().upper() or reporting) == reporting
    in_reporting = amount.where(currency.eq(reporting))
    amount_reporting = ok["amount_company_value"].fillna(in_reporting) if company else in_reporting
    status = place["stage_status"].astype("str")

    # History: the accepted deals' dated stages, in time order (same time: stage order).
    ev = events.assign(
        stage=event_places["stage"].to_numpy(),
        stage_order=event_places["stage_order"].to_numpy(),
        stage_probability=event_places["stage_probability"].to_numpy(),
    )
    ev = ev.loc[accepted[ev["row"].to_numpy()]]
    ev = ev.sort_values(["row", "entered_at", "stage_order"], kind="stable")
    rows = ev["row"].to_numpy()
    deal_stage = place["stage"].reindex(rows).to_numpy(dtype=object)
    is_current = ev["stage"].to_numpy(dtype=object) == deal_stage
    probability = np.where(is_current, ok["probability_value"].reindex(rows).to_numpy(), ev["stage_probability"].to_numpy())
    forecast = _blank_to_na(ok["forecast_category"]).reindex(rows).where(is_current)
    history = pd.DataFrame(
        {
            "deal_id": ok["deal_id"].reindex(rows).to_numpy(),
            "changed_at": ev["entered_at"].to_numpy(),
            "stage": ev["stage"].to_numpy(),
            "amount": amount.reindex(rows).to_numpy(),
            "amount_reporting": amount_reporting.reindex(rows).to_numpy(),
            "expected_close_date": ok["close_at"].reindex(rows).to_numpy(),
            "crm_probability": probability.astype("float64"),
            "forecast_category": forecast.to_numpy(),
            "source_file": ok["source_file"].reindex(rows).to_numpy(),
            "source_row": ok["source_row"].reindex(rows).to_numpy(),
        }
    )
    history = conform(history, DEAL_HISTORY_COLUMNS, "deal_history") if len(history) else empty_frame(DEAL_HISTORY_COLUMNS)

    current = ev.loc[is_current].drop_duplicates("row", keep="last").set_index("row")["entered_at"]
    entered_current = current.reindex(ok.index)
    closed = status.ne(STATUS_OPEN)
    closed_at = entered_current.fillna(ok["close_at"]).where(closed)
    has_history = pd.Series(ok.index.isin(pd.unique(rows)), index=ok.index)
    undated_current = has_history & entered_current.isna()
    if undated_current.any():
        logger.warning(
            "%d HubSpot deal(s) have stage dates but none for their current Deal Stage (first: %s row %s); "
            "their history ends at the last dated stage",
            int(undated_current.sum()), ok.loc[undated_current, "source_file"].iloc[0],
            ok.loc[undated_current, "source_row"].iloc[0],
        )
    deals = pd.DataFrame(
        {
            "deal_id": ok["deal_id"],
            "source_system": SOURCE_SYSTEM,
            "source_file": ok["source_file"],
            "source_row": ok["source_row"],
            "pipeline": ok["pipeline"],
            "deal_name": _blank_to_na(ok["deal_name"]),
            "account": _blank_to_na(ok["account"]),
            "owner": _blank_to_na(ok["owner"]),
            "team": pd.NA,
            "product": pd.NA,
            "region": pd.NA,
            "account_segment": pd.NA,
            "lead_source": _blank_to_na(ok["lead_source"]),
            "deal_type": _blank_to_na(ok["deal_type"]),
            "amount": amount,
            "currency": currency,
            "amount_reporting": amount_reporting,
            "created_at": ok["created_at"],
            "expected_close_date": ok["close_at"],
            "closed_at": closed_at,
            "crm_close_date": ok["close_at"].where(closed),
            "stage": place["stage"],
            "stage_order": place["stage_order"].astype("Int64"),
            "status": status,
            "lost_reason": _blank_to_na(ok["lost_reason"]),
            "forecast_category": _blank_to_na(ok["forecast_category"]),
            "crm_probability": ok["probability_value"],
            "last_stage_change_at": entered_current,
            "push_count": np.int64(0),
            "has_history": has_history,
        }
    )
    return conform(deals, DEAL_COLUMNS, "deals"), history


READER = ExportReader(source_system=SOURCE_SYSTEM, formats=FORMATS, detect=detect, read=read_hubspot)
