"""Pipedrive deals export (Deals > Export, or a file laid out like the deals import template) ->
canonical deals.

Headers are matched tolerantly: case-insensitively, trimmed, with runs of blanks and the blanks
around " - " evened out, with or without the `Deal - ` prefix, in the export's and the import
template's spellings. `HEADER_ALIASES` is the table (spellings shown without the prefix):

    field               export header                 other accepted spellings
    id                  Deal - ID                     Deal ID
    title               Deal - Title
    value               Deal - Value
    currency            Deal - Currency of Value      Deal - Currency (import template)
    stage               Deal - Stage
    pipeline            Deal - Pipeline
    status              Deal - Status                 (values open / won / lost, any case)
    won_time            Deal - Won time
    lost_time           Deal - Lost time
    lost_reason         Deal - Lost reason
    expected_close      Deal - Expected close date
    created             Deal - Deal created           Deal - Created, Deal - Add time (template)
    owner               Deal - Owner
    probability         Deal - Probability            (0-100)
    organization        Deal - Organization           Organization - Name (template)
    close_time          Deal - Close time
    last_stage_change   Deal - Last stage change

ID, Stage, Status and the creation time are required columns; the others may be left out.
`Deal - Label` and the person/organisation detail columns have no canonical column and are not
read.

What the canonical deals say:
- status from Deal - Status. A "deleted" status is quarantined (`deleted_in_crm`), any other
  value than open/won/lost is quarantined (`invalid_status`).
- Pipedrive has no won or lost *stages* (won/lost is a status; Deal - Stage keeps the last open
  stage). Closed deals get the pipeline's won or lost stage as their stage: "Won" / "Lost" for
  pipelines the reader builds (`[sources.pipedrive]` won_stage / lost_stage), the configured
  won_stage / lost_stage for pipelines in dealcast.toml. The last open stage of a closed deal is
  not kept.
- closed_at = Won time (won) / Lost time (lost), else Close time; a closed deal with neither is
  kept with closed_at blank (validation quarantines it as `missing_close_date`).
- crm_close_date = the day of closed_at: Pipedrive reports won and lost deals by their Won time /
  Lost time, so its close date and the moment a deal was closed are the same.
- crm_probability = Probability / 100, or the stage's default probability when blank (won 1,
  lost 0). lost_reason only on lost deals.
- amount in the deal's own currency (blank currency: `[sources.pipedrive]` default_currency, else
  the reporting currency); amount_reporting = amount when that is the reporting currency, else
  blank (the currency step converts it). Currency never quarantines a deal.
- last_stage_change_at: the Last stage change column where exported; the close time for closed
  deals without it; blank for open deals without it (not invented).
- pipeline: Deal - Pipeline, or `[sources.pipedrive]` default_pipeline when blank or absent.

History: the export knows when a deal was created (not in which stage), its current stage and
when it closed. Every deal has has_history False and the reader returns no history rows:
`etl.pipeline_state.prepare_history` gives such deals what is known (a creation row with the
stage unknown for closed deals or the current stage for open ones, and a closing row at closed_at
in the won/lost stage). A history row from the reader would stop that creation row being
synthesised and would count the export row twice.

Stage order per pipeline, first rule that applies:
1. the pipeline is configured in dealcast.toml `[[pipelines]]`: that order;
2. `[sources.pipedrive] stage_order = { "<pipeline>" = ["<stage>", ...] }`: those open stages in
   that order, then won_stage and lost_stage;
3. inferred from the stage names in the export (`order_source` inferred). Each stage's typical
   probability is the most common Deal - Probability of its deals (the smallest on a tie). When
   every stage has one and no two stages share it, stages are ordered by it (lowest first);
   otherwise they keep the order in which they first appear in the files (a warning says so;
   nothing is quarantined for it). Without stage history either order is a guess, and
   `order_basis` says so (the run reports it: `etl.ingest.crm_load.stage_order_warnings`).
In rules 2 and 3 a stage's default probability is its typical probability (blank if none). Under
rules 1 and 2 an open deal whose stage is not one of the pipeline's open stages is quarantined
(`unknown_stage`).

Several deals files are read together; a Deal - ID seen in an earlier file (or row) keeps the
first occurrence, later ones are quarantined (`duplicate_id`). Every row read becomes a deal or a
quarantine row: rows_read = rows_accepted + rows_quarantined for each file.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from etl.config import ConfigError, ProjectConfig
from etl.ingest.readers import ExportFormatError, ExportReader, FileReport, SourceExport
from etl.ingest.csvfiles import (
    BLANK_ROW,
    CsvHeader,
    CsvTable,
    Quarantine,
    is_blank,
    load_csv,
    parse_numbers,
    parse_timestamps,
    refuse_regional_formats,
    sniff_header,
    first_occurrences,
    repeated_ids,
)
from etl.schema import DEAL_COLUMNS, DEAL_HISTORY_COLUMNS, conform, empty_frame
from etl.stages import (
    ORDER_CONFIGURED,
    ORDER_INFERRED,
    STATUS_LOST,
    STATUS_OPEN,
    STATUS_WON,
    STATUSES,
    PipelineStages,
    StageCatalog,
)
from etl.validation.raw import RawRules
from etl.validation.reason_codes import (
    DELETED_IN_CRM,
    DUPLICATE_ID,
    INVALID_STATUS,
    MISSING_ID,
    MISSING_REQUIRED_VALUE,
    PROBABILITY_OUT_OF_RANGE,
    UNKNOWN_STAGE,
    UNPARSEABLE_AMOUNT,
    UNPARSEABLE_DATE,
    UNPARSEABLE_NUMBER,
)

logger = logging.getLogger(__name__)

SOURCE_SYSTEM = "pipedrive"
DEALS = "pipedrive_deals"
FORMATS = (DEALS,)
LABEL = "Pipedrive deals"

# Canonical field -> accepted header spellings after `normalise_header` (the `Deal - ` prefix
# removed). The first spelling is the export's; earlier spellings win when a file has several.
HEADER_ALIASES: dict[str, tuple[str, ...]] = {
    "id": ("id", "deal id"),
    "title": ("title",),
    "value": ("value",),
    "currency": ("currency of value", "currency"),
    "stage": ("stage",),
    "pipeline": ("pipeline",),
    "status": ("status",),
    "won_time": ("won time",),
    "lost_time": ("lost time",),
    "lost_reason": ("lost reason",),
    "expected_close": ("expected close date",),
    "created": ("deal created", "created", "add time"),
    "owner": ("owner",),
    "probability": ("probability",),
    "organization": ("organization", "organization - name"),
    "close_time": ("close time",),
    "last_stage_change": ("last stage change",),
}
REQUIRED_FIELDS = ("id", "stage", "status", "created")
# The export's own header for each field (used in messages and when a column is absent).
EXPORT_HEADERS: dict[str, str] = {
    "id": "Deal - ID",
    "title": "Deal - Title",
    "value": "Deal - Value",
    "currency": "Deal - Currency of Value",
    "stage": "Deal - Stage",
    "pipeline": "Deal - Pipeline",
    "status": "Deal - Status",
    "won_time": "Deal - Won time",
    "lost_time": "Deal - Lost time",
    "lost_reason": "Deal - Lost reason",
    "expected_close": "Deal - Expected close date",
    "created": "Deal - Deal created",
    "owner": "Deal - Owner",
    "probability": "Deal - Probability",
    "organization": "Deal - Organization",
    "close_time": "Deal - Close time",
    "last_stage_change": "Deal - Last stage change",
}

# Unprefixed headers no other CRM export uses: with one of them, a file whose headers lack the
# `Deal - ` prefix is still recognised as a Pipedrive deals export.
_PIPEDRIVE_ONLY = frozenset({"won time", "lost time", "currency of value", "deal created", "add time"})
_PREFIX = re.compile(r"^deal - ")
_DASH = re.compile(r"\s*-\s*")
_BLANKS = re.compile(r"\s+")

STATUS_DELETED = "deleted"


_DATE = "a date-time like 2024-05-31 14:03:00 (or a date, or ISO 8601)"
_NUMBER = "a number like 1234.5"


# --------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class PipedriveSourceConfig:
    """`[sources.pipedrive]` in dealcast.toml; every setting is optional.

    stage_order: pipeline name -> its open stages in order, for pipelines not in [[pipelines]].
    default_pipeline: pipeline of deals whose Deal - Pipeline is blank or absent.
    default_currency: currency of deals whose currency is blank ("" = the reporting currency).
    won_stage / lost_stage: the closed stages of pipelines the reader builds.
    """

    stage_order: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    default_pipeline: str = "Default"
    default_currency: str = ""
    won_stage: str = "Won"
    lost_stage: str = "Lost"

    @classmethod
    def from_project(cls, project: ProjectConfig) -> "PipedriveSourceConfig":
        raw: dict[str, Any] = dict(project.sources.get(SOURCE_SYSTEM, {}))
        where = f"{project.path}: [sources.{SOURCE_SYSTEM}]"
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{where} has unknown setting(s) {unknown}; expected some of {sorted(known)}")
        order = raw.get("stage_order", {})
        if not isinstance(order, dict) or not all(
            isinstance(v, list) and v and all(isinstance(s, str) for s in v) for v in order.values()
        ):
            raise ConfigError(
                f"{where} stage_order must be a table of pipeline name = [\"stage\", ...] (non-empty lists "
                f"of stage names), got {order!r}"
            )
        raw["stage_order"] = {str(k): tuple(v) for k, v in order.items()}
        for name in ("default_pipeline", "default_currency", "won_stage", "lost_stage"):
            if name in raw and not isinstance(raw[name], str):
                raise ConfigError(f"{where} {name} must be text, got {raw[name]!r}")
        settings = cls(**raw)
        if not settings.won_stage or not settings.lost_stage or settings.won_stage == settings.lost_stage:
            raise ConfigError(f"{where} won_stage and lost_stage must be two different non-blank names")
        return settings


# --------------------------------------------------------------------------------------------
# Headers and format detection


def normalise_header(name: str) -> str:
    """A header as compared with `HEADER_ALIASES`: trimmed, lower case, blanks evened out, the
    `Deal - ` prefix removed ("  DEAL -  Won Time " -> "won time")."""
    text = _BLANKS.sub(" ", name.replace("\ufeff", "").strip().lower())
    text = _DASH.sub(" - ", text)
    return _PREFIX.sub("", text)


def resolve_headers(columns: Sequence[str]) -> dict[str, str]:
    """Field -> the file's header for it, for every field the header has (see `HEADER_ALIASES`)."""
    normalised = [normalise_header(c) for c in columns]
    found: dict[str, str] = {}
    for name, aliases in HEADER_ALIASES.items():
        for alias in aliases:
            if alias in normalised:
                found[name] = columns[normalised.index(alias)]
                break
    return found


def _looks_like_pipedrive(columns: Sequence[str]) -> bool:
    resolved = resolve_headers(columns)
    if not {"stage", "status"} <= resolved.keys():
        return False
    prefixed = sum(1 for c in columns if _PREFIX.match(_DASH.sub(" - ", c.strip().lower())))
    distinctive = any(normalise_header(c) in _PIPEDRIVE_ONLY for c in columns)
    return prefixed >= 2 or distinctive


def detect(header: CsvHeader | None, path: Path) -> str | None:
    """`DEALS` when the header is a Pipedrive deals export's (a Stage and a Status column, and
    either `Deal - ` prefixed headers or a header only Pipedrive uses, such as Won time), split on
    commas or on the delimiter that splits it best; else None."""
    if header is None:
        return None
    if _looks_like_pipedrive(header.columns):
        return DEALS
    if header.likely_delimiter != "," and _looks_like_pipedrive(header.split_on(header.likely_delimiter)):
        return DEALS
    return None


def _expected_columns() -> str:
    return ", ".join(EXPORT_HEADERS[f] for f in REQUIRED_FIELDS)


def _load(path: Path) -> tuple[CsvTable, dict[str, str]]:
    """The file read as text plus its headers by field; `ExportFormatError` when a required
    column is missing."""
    header = sniff_header(path)
    delimiter = ","
    if header is not None and header.likely_delimiter != ",":
        if not _looks_like_pipedrive(header.columns) and _looks_like_pipedrive(header.split_on(header.likely_delimiter)):
            delimiter = header.likely_delimiter
    columns = header.split_on(delimiter) if header is not None else ()
    resolved = resolve_headers(columns)
    missing = [f for f in REQUIRED_FIELDS if f not in resolved]
    if header is not None and missing:
        spelled = "; ".join(
            f"{EXPORT_HEADERS[f]} (or {', '.join(a for a in HEADER_ALIASES[f])}, with or without 'Deal - ')"
            for f in missing
        )
        raise ExportFormatError(
            f"{path}: line 1: missing required column(s) {spelled}; expected a {LABEL} export with the "
            f"columns {_expected_columns()} (header found: {header.line[:200]!r})"
        )
    table = load_csv(path, LABEL, [resolved[f] for f in REQUIRED_FIELDS if f in resolved], delimiter)
    return table, resolve_headers(table.columns)


# --------------------------------------------------------------------------------------------
# Row checks


class _Checks:
    """Quarantine bookkeeping for the working frame of all files; column names in quarantine rows
    are each file's own header for the field."""

    def __init__(self, frame: pd.DataFrame, quarantine: Quarantine, headers: Mapping[int, Mapping[str, str]]) -> None:
        self.frame = frame
        self.quarantine = quarantine
        self.headers = headers
        self.bad = np.zeros(len(frame), dtype=bool)
        self.flag(frame["_blank"].to_numpy(), BLANK_ROW, None, lambda rows, col: ["the row is empty"] * len(rows))

    def header(self, key: int, name: str | None) -> str | None:
        if name is None:
            return None
        return self.headers[key].get(name, EXPORT_HEADERS[name])

    def flag(
        self,
        mask: np.ndarray,
        reason_code: str,
        name: str | None,
        reason: Callable[[pd.DataFrame, str | None], Sequence[str]],
    ) -> None:
        """Quarantine the rows in `mask` not quarantined yet; `reason(rows, header)` words each."""
        mask = np.asarray(mask, dtype=bool) & ~self.bad
        if not mask.any():
            return
        rows = self.frame.loc[mask]
        for key, part in rows.groupby("_file", sort=True):
            column = self.header(int(key), name)
            texts = np.asarray(list(reason(part, column)), dtype=object)
            self.quarantine.add(int(key), part["_pos"].to_numpy(), reason_code, column, texts)
        self.bad |= mask

    def parsed(
        self,
        name: str,
        parser: Callable[[pd.Series], tuple[pd.Series, np.ndarray]],
        reason_code: str,
        expected: str,
    ) -> pd.Series:
        values, bad = parser(self.frame[name])
        self.flag(bad, reason_code, name, lambda rows, col: [f"{col}: expected {expected}, got {v!r}" for v in rows[name]])
        return values


# Canonical column -> the Pipedrive field (a key of HEADER_ALIASES) it is read from.
CANONICAL_FIELDS = {
    "deal_id": "id", "deal_name": "title", "amount": "value", "currency": "currency", "stage": "stage",
    "pipeline": "pipeline", "status": "status", "lost_reason": "lost_reason", "expected_close_date": "expected_close",
    "created_at": "created", "owner": "owner", "crm_probability": "probability", "account": "organization",
    "closed_at": "close_time", "crm_close_date": "close_time", "last_stage_change_at": "last_stage_change",
}  # fmt: skip

# The raw suite: what the deals export's columns must look like as written (etl.validation.raw.RawRules).
RAW_RULES = RawRules.standard(
    not_blank=("id", "status", "created"),
    unique=("id",),
    amounts=("value",),
    numbers=("probability",),
    dates=("created", "won_time", "lost_time", "close_time", "last_stage_change", "expected_close"),
)


def _working_frame(tables: Sequence[tuple[int, CsvTable, dict[str, str]]]) -> pd.DataFrame:
    parts = []
    for key, table, headers in tables:
        part = pd.DataFrame({name: table.text(headers.get(name)) for name in HEADER_ALIASES})
        part.insert(0, "_file", np.int64(key))
        part.insert(1, "_pos", np.arange(len(table), dtype=np.int64))
        part["source_file"] = str(table.path)
        part["source_row"] = table.source_row
        part["_blank"] = table.blank_rows()
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def _check_rows(checks: _Checks, settings: PipedriveSourceConfig, reporting: str) -> None:
    """Per-row checks and parsing, in the order that decides a quarantined row's reason code."""
    frame = checks.frame
    checks.flag(is_blank(frame["id"]), MISSING_ID, "id", lambda rows, col: [f"{col} is blank; expected the deal's id"] * len(rows))
    live = ~checks.bad
    checks.flag(
        repeated_ids(frame["id"], live),
        DUPLICATE_ID,
        "id",
        lambda rows, col: [
            f"{col} {i!r} appears more than once; the first occurrence ({first[i]}) is kept"
            for first in [first_occurrences(frame, "id", live)]
            for i in rows["id"]
        ],
    )
    status = frame["status"].str.lower()
    frame["status_value"] = status
    checks.flag(is_blank(status), MISSING_REQUIRED_VALUE, "status",
                lambda rows, col: [f"{col} is blank; expected open, won or lost"] * len(rows))
    checks.flag(status.eq(STATUS_DELETED).to_numpy(), DELETED_IN_CRM, "status",
                lambda rows, col: ["the deal is deleted in Pipedrive (status deleted)"] * len(rows))
    checks.flag(~status.isin(STATUSES).to_numpy(), INVALID_STATUS, "status",
                lambda rows, col: [f"{col}: expected open, won or lost, got {v!r}" for v in rows["status"]])
    checks.flag(is_blank(frame["created"]), MISSING_REQUIRED_VALUE, "created",
                lambda rows, col: [f"{col} is blank; expected when the deal was created"] * len(rows))
    checks.flag(is_blank(frame["stage"]) & status.eq(STATUS_OPEN).to_numpy(), MISSING_REQUIRED_VALUE, "stage",
                lambda rows, col: [f"{col} is blank; expected the open deal's stage"] * len(rows))

    for name in ("created", "won_time", "lost_time", "close_time", "last_stage_change"):
        frame[f"{name}_at"] = checks.parsed(name, parse_timestamps, UNPARSEABLE_DATE, _DATE)
    frame["expected_close_at"] = checks.parsed("expected_close", parse_timestamps, UNPARSEABLE_DATE, _DATE).dt.normalize()
    frame["amount"] = checks.parsed("value", parse_numbers, UNPARSEABLE_AMOUNT, _NUMBER)
    probability = checks.parsed("probability", parse_numbers, UNPARSEABLE_NUMBER, "a number from 0 to 100")
    outside = (probability < 0) | (probability > 100)
    checks.flag(outside.to_numpy(), PROBABILITY_OUT_OF_RANGE, "probability",
                lambda rows, col: [f"{col}: expected a number from 0 to 100, got {v!r}" for v in rows["probability"]])
    frame["probability_value"] = probability

    pipeline = frame["pipeline"]
    frame["pipeline_name"] = pipeline.where(pipeline.ne(""), settings.default_pipeline)
    currency = frame["currency"].str.upper()
    frame["currency_code"] = currency.where(currency.ne(""), settings.default_currency.upper() or reporting)


# --------------------------------------------------------------------------------------------
# Stage catalogue


def _typical_probabilities(frame: pd.DataFrame) -> dict[tuple[str, str], float]:
    """(pipeline, stage) -> the most common Deal - Probability of its deals (smallest on a tie)."""
    known = frame.loc[frame["probability_value"].notna() & frame["stage"].ne("")]
    if known.empty:
        return {}
    counts = known.groupby(["pipeline_name", "stage", "probability_value"], sort=False).size().rename("n").reset_index()
    best = counts.sort_values(["n", "probability_value"], ascending=[False, True], kind="stable").drop_duplicates(
        ["pipeline_name", "stage"]
    )
    return {
        (p, s): float(v) / 100.0 for p, s, v in zip(best["pipeline_name"], best["stage"], best["probability_value"])
    }


def _build_pipelines(
    frame: pd.DataFrame, project: ProjectConfig, settings: PipedriveSourceConfig, first_path: Path
) -> list[PipelineStages]:
    """Stage order of every pipeline in `frame` that dealcast.toml does not configure (rules 2 and
    3 of the module docstring)."""
    typical = _typical_probabilities(frame)
    built = []
    for name in pd.unique(frame["pipeline_name"]):
        name = str(name)
        if name in project.stages:
            continue
        present = [str(s) for s in pd.unique(frame.loc[frame["pipeline_name"].eq(name) & frame["stage"].ne(""), "stage"])]
        source = ORDER_INFERRED
        if name in settings.stage_order:
            stages = list(settings.stage_order[name])
            origin = f"[sources.{SOURCE_SYSTEM}] stage_order"
            source = ORDER_CONFIGURED
        else:
            stages = present
            origin = "first appearance in the export; no stage history or probabilities to order by: a guess"
            probs = [typical.get((name, s)) for s in stages]
            if len(stages) > 1:
                if all(p is not None for p in probs) and len(set(probs)) == len(probs):
                    stages = [s for _, s in sorted(zip(probs, stages), key=lambda pair: pair[0])]
                    origin = "each stage's usual Deal - Probability, lowest first; no stage history: a guess"
                else:
                    logger.warning(
                        "pipeline %r (%s) is not configured and its stages' probabilities do not tell "
                        "them apart; the stages keep the order they first appear in: %s (configure the "
                        "order in [sources.%s] stage_order or [[pipelines]] in %s)",
                        name, first_path, stages, SOURCE_SYSTEM, project.path,
                    )
            else:
                origin = "the export, the pipeline's only stage"
        if not stages:
            # Only closed deals with a blank stage: the pipeline still needs one open stage to be
            # a pipeline; its deals are all closed, so no deal is in it.
            raise ExportFormatError(
                f"{first_path}: pipeline {name!r} has no stage name in the export and is not configured; "
                f"expected its stages under [sources.{SOURCE_SYSTEM}] stage_order or [[pipelines]] in {project.path}"
            )
        clash = [s for s in stages if s in (settings.won_stage, settings.lost_stage)]
        if clash:
            raise ExportFormatError(
                f"{first_path}: pipeline {name!r} has an open stage named {clash[0]!r}, the name used for the "
                f"won or lost stage; expected other names in [sources.{SOURCE_SYSTEM}] won_stage / lost_stage"
            )
        pipeline = PipelineStages(
            name=name,
            open_stages=tuple(stages),
            won_stage=settings.won_stage,
            lost_stage=settings.lost_stage,
            probabilities={s: typical.get((name, s), float("nan")) for s in stages},
            order_source=source,
            order_basis=origin,
        )
        logger.info("pipeline %r: stage order from %s: %s", name, origin, list(pipeline.open_stages))
        built.append(pipeline)
    return built


def _check_stages(checks: _Checks, catalog: StageCatalog) -> None:
    """Open deals of configured or stage_order pipelines must be in one of its open stages."""
    frame = checks.frame
    open_stage = pd.DataFrame(
        [(p.name, s) for p in catalog for s in p.open_stages], columns=["pipeline_name", "stage"]
    )
    known = pd.MultiIndex.from_frame(open_stage).get_indexer(
        pd.MultiIndex.from_arrays([frame["pipeline_name"], frame["stage"]])
    ) >= 0
    unknown = frame["status_value"].eq(STATUS_OPEN).to_numpy() & ~known

    def describe(rows: pd.DataFrame, col: str | None) -> list[str]:
        return [
            f"{col} {s!r} is not an open stage of pipeline {p!r} ({', '.join(catalog[p].open_stages)})"
            for s, p in zip(rows["stage"], rows["pipeline_name"])
        ]

    checks.flag(unknown, UNKNOWN_STAGE, "stage", describe)


# --------------------------------------------------------------------------------------------
# The reader


def _blank_to_na(values: pd.Series) -> pd.Series:
    return values.where(values.ne("")).astype("string")


def _assemble(rows: pd.DataFrame, catalog: StageCatalog, reporting: str) -> pd.DataFrame:
    status = rows["status_value"]
    won = status.eq(STATUS_WON)
    lost = status.eq(STATUS_LOST)
    closed = won | lost
    won_stage = rows["pipeline_name"].map({p.name: p.won_stage for p in catalog})
    lost_stage = rows["pipeline_name"].map({p.name: p.lost_stage for p in catalog})
    stage = rows["stage"].where(~won, won_stage).where(~lost, lost_stage)
    places = catalog.annotate(pd.DataFrame({"pipeline": rows["pipeline_name"].to_numpy(), "stage": stage.to_numpy()}))
    closed_at = (
        rows["won_time_at"].where(won, rows["lost_time_at"].where(lost)).fillna(rows["close_time_at"]).where(closed)
    )
    probability = (rows["probability_value"] / 100.0).fillna(
        pd.Series(places["stage_probability"].to_numpy(dtype="float64"), index=rows.index)
    )
    last_change = rows["last_stage_change_at"].where(~closed, rows["last_stage_change_at"].fillna(closed_at))
    deals = pd.DataFrame(
        {
            "deal_id": rows["id"],
            "source_system": SOURCE_SYSTEM,
            "source_file": rows["source_file"],
            "source_row": rows["source_row"],
            "pipeline": rows["pipeline_name"],
            "deal_name": _blank_to_na(rows["title"]),
            "account": _blank_to_na(rows["organization"]),
            "owner": _blank_to_na(rows["owner"]),
            "team": pd.NA,
            "product": pd.NA,
            "region": pd.NA,
            "account_segment": pd.NA,
            "lead_source": pd.NA,
            "deal_type": pd.NA,
            "amount": rows["amount"],
            "currency": rows["currency_code"],
            "amount_reporting": rows["amount"].where(rows["currency_code"].eq(reporting)),
            "created_at": rows["created_at"],
            "expected_close_date": rows["expected_close_at"],
            "closed_at": closed_at,
            # Pipedrive reports a deal by its won or lost time: the moment it was closed.
            "crm_close_date": closed_at.dt.normalize(),
            "stage": stage,
            "stage_order": places["stage_order"].to_numpy(),
            "status": status,
            "lost_reason": _blank_to_na(rows["lost_reason"].where(lost, "")),
            "forecast_category": pd.NA,
            "crm_probability": probability,
            "last_stage_change_at": last_change,
            "push_count": np.int64(0),
            "has_history": False,
        }
    )
    return conform(deals, DEAL_COLUMNS, "deals")


def read_pipedrive(files: Mapping[str, Sequence[Path]], project: ProjectConfig) -> SourceExport:
    """Read Pipedrive deals exports (files grouped by format) into canonical deals (no history rows;
    see the module docstring)."""
    paths = list(files.get(DEALS, ()))
    if not paths:
        raise ExportFormatError(f"{LABEL}: no {DEALS} file given; expected at least one Pipedrive deals export")
    settings = PipedriveSourceConfig.from_project(project)
    reporting = project.reporting_currency
    quarantine = Quarantine()
    tables = []
    for path in paths:
        table, headers = _load(path)
        tables.append((quarantine.register(table), table, headers))
    frame = _working_frame(tables)
    checks = _Checks(frame, quarantine, {key: headers for key, _, headers in tables})
    refuse_regional_formats(
        frame, {key: table.path for key, table, _ in tables}, ("value", "probability"),
        ("created", "won_time", "lost_time", "close_time", "expected_close"), checks.header, LABEL,
    )
    quarantine.declare(frame, RAW_RULES, LABEL, checks.header)
    _check_rows(checks, settings, reporting)

    inferred = _build_pipelines(frame.loc[~checks.bad], project, settings, paths[0])
    catalog = project.stages
    for pipeline in inferred:
        catalog = catalog.with_pipeline(pipeline)
    _check_stages(checks, catalog)

    deals = _assemble(frame.loc[~checks.bad], catalog, reporting)
    quarantined = quarantine.frame()
    accepted = deals["source_file"].value_counts().to_dict()
    rejected = quarantined["source_file"].value_counts().to_dict()
    reports = [
        FileReport(
            path=table.path,
            format=DEALS,
            rows_read=table.rows_read,
            sha256=table.scan.sha256,
            rows_accepted=int(accepted.get(str(table.path), 0)),
            rows_quarantined=int(rejected.get(str(table.path), 0)),
            columns={c: headers[f] for c, f in CANONICAL_FIELDS.items() if headers.get(f)},
        )
        for _, table, headers in tables
    ]
    logger.info("Pipedrive export: %d deals, %d rows quarantined (no stage history)", len(deals), len(quarantined))
    return SourceExport(
        deals=deals,
        history=empty_frame(DEAL_HISTORY_COLUMNS),
        quarantine=quarantined,
        files=reports,
        pipelines=inferred,
        raw_suites=quarantine.raw_suites(),
    )


READER = ExportReader(source_system=SOURCE_SYSTEM, formats=FORMATS, detect=detect, read=read_pipedrive)
