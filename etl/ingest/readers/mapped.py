"""Any CSV export -> the canonical deals, through a declarative mapping file (docs/mapping.md).

A mapping file (TOML) says which export file it applies to, how the file writes numbers, dates
and booleans, which source column (or lookup-file column) feeds each canonical deal column, how
stage and status values translate into the pipeline's stages, and the pipeline's stage order.
Mapping files are listed in dealcast.toml `[sources] mappings = [...]`.

Such exports hold each deal's current state only: every deal gets `has_history = False` and no
history rows (`etl.pipeline_state` then uses what is known: creation and, for closed deals, the
close). Lookup files named by a mapping (for example a sales-team or product list) are read as
lookups (format "mapped_lookup"): their rows are counted as lookup entries, not deals.

Every row read ends up either as a canonical deal (or lookup entry) or in quarantine with its reason.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from etl.config import CONFIG_FILE_NAME, ENV_CONFIG, ConfigError, ProjectConfig, load_project_config, project_dir
from etl.ingest.readers import ExportFormatError, ExportReader, FileReport, SourceExport
from etl.ingest.csvfiles import (
    BLANK_ROW,
    BOOLEAN_FALSE,
    BOOLEAN_TRUE,
    DEFAULT_CURRENCY_SYMBOLS,
    CsvHeader,
    CsvTable,
    Quarantine,
    infer_dayfirst,
    is_blank,
    load_csv,
    locale_number_form,
    parse_any_booleans,
    parse_dates,
    parse_locale_numbers,
    sniff_header,
    first_occurrences,
    repeated_ids,
)
from etl.schema import DEAL_COLUMNS, DEAL_HISTORY_COLUMNS, conform, empty_frame
from etl.stages import STATUS_LOST, STATUS_OPEN, STATUS_WON, STATUSES, PipelineStages, StageCatalog
from etl.validation.raw import RawForm, RawRules
from etl.validation.reason_codes import (
    DUPLICATE_ID,
    EXCLUDED_BY_FILTER,
    IMPLAUSIBLE_DATE,
    INVALID_STATUS,
    MISSING_CLOSE_DATE,
    MISSING_ID,
    MISSING_REQUIRED_VALUE,
    STATUS_STAGE_MISMATCH,
    UNKNOWN_PIPELINE,
    UNKNOWN_STAGE,
    UNPARSEABLE_AMOUNT,
    UNPARSEABLE_BOOLEAN,
    UNPARSEABLE_DATE,
    UNPARSEABLE_NUMBER,
)

logger = logging.getLogger(__name__)

SOURCE_SYSTEM = "mapped"
FORMAT = "mapped"
LOOKUP_FORMAT = "mapped_lookup"


# Canonical columns a mapping can fill, by kind.
TEXT_COLUMNS = (
    "deal_name", "account", "owner", "team", "product", "region", "account_segment", "lead_source",
    "deal_type", "currency", "lost_reason", "forecast_category", "pipeline",
)
DATE_COLUMNS = ("created_at", "expected_close_date", "closed_at", "last_stage_change_at")
NUMBER_COLUMNS = ("amount", "crm_probability")
BOOLEAN_COLUMNS = ("is_closed", "is_won")
OTHER_COLUMNS = ("deal_id", "stage", "status")
MAPPABLE_COLUMNS = OTHER_COLUMNS + TEXT_COLUMNS + DATE_COLUMNS + NUMBER_COLUMNS + BOOLEAN_COLUMNS

CREATED_AT_RULES = ("quarantine", "earliest", "latest")
LOST_DATE_RULES = ("quarantine", "created_at", "latest")
ENCODINGS = {"auto": None, "utf-8": "utf-8", "utf8": "utf-8", "windows-1252": "cp1252", "cp1252": "cp1252"}
DELIMITERS = (",", ";", "\t")
_TOP_LEVEL_KEYS = {
    "file", "source_system", "delimiter", "encoding", "decimal", "thousands", "currency_symbols",
    "date_format", "dayfirst", "probability_scale", "created_at_when_blank", "pipeline", "columns",
    "values", "defaults", "normalise", "lookups", "filter", "status_from_lookup", "lost_date_when_blank",
}


# --------------------------------------------------------------------------------------------
# The mapping file


@dataclass(frozen=True)
class LookupSpec:
    """A lookup file joined to the deals: rows of `file` whose `key` column equals the deal's
    `on`: a canonical column mapped under [columns] (its value after normalisation), else a
    column of the export itself (its text as written)."""

    name: str
    file: str
    key: str
    on: str


@dataclass(frozen=True)
class StatusFromLookup:
    """`[status_from_lookup]`: a deal that has a row in the lookup `lookup` gets the status `found`,
    one that has none gets `missing` (a lead that appears in the closed-deals file is won). With
    `lost_after_days` (missing = lost only), a deal missing from the lookup is lost that many days
    after its creation, and still open when that day is after the export's end."""

    lookup: str
    found: str
    missing: str
    lost_after_days: int | None = None


@dataclass(frozen=True)
class MappingSpec:
    """One mapping file, parsed and checked (see docs/mapping.md for every setting).

    `columns` maps a canonical column to its sources in order of preference: the first source
    with a value in a row gives the column's value (one source is the usual case). `filter` maps an
    export column to the values of the rows kept: True / False (a boolean flag; blank is false), or
    texts compared without case."""

    path: Path
    file: str
    source_system: str
    pipeline: PipelineStages
    columns: dict[str, tuple[str, ...]]
    delimiter: str | None = None
    encoding: str | None = None
    decimal: str = "."
    thousands: tuple[str, ...] = ()
    currency_symbols: tuple[str, ...] = DEFAULT_CURRENCY_SYMBOLS
    date_format: str | None = None
    dayfirst: bool | None = None
    probability_scale: float = 100.0
    created_at_when_blank: str = "quarantine"
    stage_values: dict[str, str] = field(default_factory=dict)
    status_values: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, str] = field(default_factory=dict)
    normalise: dict[str, dict[str, str]] = field(default_factory=dict)
    lookups: dict[str, LookupSpec] = field(default_factory=dict)
    filter: dict[str, bool | tuple[str, ...]] = field(default_factory=dict)
    status_from_lookup: StatusFromLookup | None = None
    lost_date_when_blank: str = "quarantine"

    def claims(self, path: Path) -> bool:
        """Whether this mapping reads `path` (its `file` name or glob, compared without case)."""
        return fnmatch.fnmatch(path.name.lower(), self.file.lower())

    def lookup_for(self, path: Path) -> LookupSpec | None:
        for lookup in self.lookups.values():
            if fnmatch.fnmatch(path.name.lower(), lookup.file.lower()):
                return lookup
        return None

    def sources_of(self, column: str) -> list[tuple[str | None, str]]:
        """(lookup name or None, column name) of each source of a canonical column, in order."""
        return [self._split(source) for source in self.columns.get(column, ())]

    def _split(self, source: str) -> tuple[str | None, str]:
        head, dot, rest = source.partition(".")
        if dot and head in self.lookups:
            return head, rest
        return None, source

    def label(self, column: str) -> str:
        """The export's name for a canonical column, as messages show it ("Won time or Lost time")."""
        sources = self.columns.get(column)
        return " or ".join(sources) if sources else f"(default {column})"

    def export_columns(self) -> list[str]:
        """Every export column the mapping reads: sources that are no lookup column, lookup join
        columns that are not canonical columns, and filter columns (each once, in that order)."""
        names = [name for c in self.columns for lookup, name in self.sources_of(c) if lookup is None]
        names += [lookup.on for lookup in self.lookups.values() if lookup.on not in self.columns]
        names += list(self.filter)
        return list(dict.fromkeys(names))


def _fail(path: Path, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}")


def _text_table(raw: Any, path: Path, where: str) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise _fail(path, f"[{where}] must be a table of text values, got {raw!r}")
    return {str(k): v for k, v in raw.items()}


def load_mapping(path: Path) -> MappingSpec:
    """Read and check one mapping file; `ConfigError` naming the file and the setting otherwise."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"mapping file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise _fail(path, f"not valid TOML: {exc}") from exc
    unknown = sorted(set(raw) - _TOP_LEVEL_KEYS)
    if unknown:
        raise _fail(path, f"unknown setting(s) {unknown}; expected some of {sorted(_TOP_LEVEL_KEYS)}")
    if not isinstance(raw.get("file"), str) or not raw["file"].strip():
        raise _fail(path, "`file` is required: the export's file name or a glob such as 'deals_*.csv'")

    pipeline_raw = raw.get("pipeline")
    if not isinstance(pipeline_raw, dict) or "name" not in pipeline_raw or "stages" not in pipeline_raw:
        raise _fail(path, "[pipeline] needs name, stages (open stages in order), won_stage and lost_stage")
    stages: list[tuple[str, float]] = []
    for stage in pipeline_raw["stages"]:
        if isinstance(stage, str):
            stages.append((stage, float("nan")))
        elif isinstance(stage, dict) and "name" in stage:
            stages.append((str(stage["name"]), float(stage.get("probability", float("nan")))))
        else:
            raise _fail(path, f"[pipeline] stages: expected a stage name or {{name, probability}}, got {stage!r}")
    try:
        pipeline = PipelineStages(
            name=str(pipeline_raw["name"]),
            open_stages=tuple(name for name, _ in stages),
            won_stage=str(pipeline_raw.get("won_stage", "Closed Won")),
            lost_stage=str(pipeline_raw.get("lost_stage", "Closed Lost")),
            probabilities={name: p for name, p in stages},
            order_basis=f"[pipeline] stages in the mapping {path.name}",
        )
    except ValueError as exc:
        raise _fail(path, f"[pipeline] {exc}") from exc

    columns = _source_lists(raw.get("columns", {}), path)
    bad_columns = sorted(set(columns) - set(MAPPABLE_COLUMNS))
    if bad_columns:
        raise _fail(path, f"[columns] unknown canonical column(s) {bad_columns}; expected some of {list(MAPPABLE_COLUMNS)}")
    defaults = {str(k): str(v) for k, v in dict(raw.get("defaults", {})).items()}
    if "deal_id" not in columns:
        raise _fail(path, "[columns] deal_id is required (the source column holding the deal's id)")
    if "stage" not in columns and "stage" not in defaults:
        raise _fail(
            path, "[columns] stage is required (the source column holding the deal's stage), unless "
            "[defaults] stage names the stage every deal is in"
        )

    lookups: dict[str, LookupSpec] = {}
    for name, spec in dict(raw.get("lookups", {})).items():
        if not isinstance(spec, dict) or not {"file", "key", "on"} <= set(spec):
            raise _fail(path, f"[lookups.{name}] needs file, key (its key column) and on (the canonical column it joins)")
        lookups[str(name)] = LookupSpec(name=str(name), file=str(spec["file"]), key=str(spec["key"]), on=str(spec["on"]))
    for lookup in lookups.values():
        if any(source.partition(".")[0] in lookups and "." in source for source in columns.get(lookup.on, ())):
            raise _fail(path, f"[lookups.{lookup.name}] joins on {lookup.on!r}, which itself comes from a lookup")

    values = raw.get("values", {})
    stage_values = _text_table(values.get("stage", {}), path, "values.stage")
    status_values = _text_table(values.get("status", {}), path, "values.status")
    bad_status = sorted(v for v in status_values.values() if v not in STATUSES)
    if bad_status:
        raise _fail(path, f"[values.status] maps to {bad_status}; expected one of {list(STATUSES)}")

    delimiter = raw.get("delimiter")
    if delimiter is not None and delimiter not in DELIMITERS:
        raise _fail(path, f"delimiter must be one of ',', ';', '\\t' (or left out to detect it), got {delimiter!r}")
    encoding_name = str(raw.get("encoding", "auto")).lower()
    if encoding_name not in ENCODINGS:
        raise _fail(path, f"encoding must be one of {sorted(ENCODINGS)}, got {encoding_name!r}")
    decimal = str(raw.get("decimal", "."))
    if decimal not in (".", ","):
        raise _fail(path, f"decimal must be '.' or ',', got {decimal!r}")
    thousands_raw = raw.get("thousands", "")
    thousands = tuple(t for t in ([thousands_raw] if isinstance(thousands_raw, str) else thousands_raw) if t)
    if any(t not in (" ", ".", ",", "\u00a0", "'") for t in thousands) or decimal in thousands:
        raise _fail(path, f"thousands must be ' ', '.', ',' or '' (and not the decimal separator), got {thousands_raw!r}")
    rule = str(raw.get("created_at_when_blank", "quarantine"))
    if rule not in CREATED_AT_RULES:
        raise _fail(path, f"created_at_when_blank must be one of {list(CREATED_AT_RULES)}, got {rule!r}")
    normalise = {str(k): _text_table(v, path, f"normalise.{k}") for k, v in dict(raw.get("normalise", {})).items()}
    bad_normalised = sorted(set(normalise) - set(MAPPABLE_COLUMNS))
    if bad_normalised:
        raise _fail(path, f"[normalise] unknown canonical column(s) {bad_normalised}")
    bad_defaults = sorted(set(defaults) - set(MAPPABLE_COLUMNS))
    if bad_defaults:
        raise _fail(path, f"[defaults] unknown canonical column(s) {bad_defaults}")
    dayfirst = raw.get("dayfirst")
    if dayfirst is not None and not isinstance(dayfirst, bool):
        raise _fail(path, f"dayfirst must be true or false, got {dayfirst!r}")
    row_filter = _filter(raw.get("filter", {}), path)
    status_rule = _status_from_lookup(raw.get("status_from_lookup"), lookups, columns, path)
    lost_rule = str(raw.get("lost_date_when_blank", "quarantine"))
    if lost_rule not in LOST_DATE_RULES:
        raise _fail(path, f"lost_date_when_blank must be one of {list(LOST_DATE_RULES)}, got {lost_rule!r}")

    return MappingSpec(
        path=path,
        file=raw["file"].strip(),
        source_system=str(raw.get("source_system", path.stem)),
        pipeline=pipeline,
        columns=columns,
        delimiter=delimiter,
        encoding=ENCODINGS[encoding_name],
        decimal=decimal,
        thousands=thousands,
        currency_symbols=tuple(raw.get("currency_symbols", DEFAULT_CURRENCY_SYMBOLS)),
        date_format=raw.get("date_format"),
        dayfirst=dayfirst,
        probability_scale=float(raw.get("probability_scale", 100)),
        created_at_when_blank=rule,
        stage_values=stage_values,
        status_values=status_values,
        defaults=defaults,
        normalise=normalise,
        lookups=lookups,
        filter=row_filter,
        status_from_lookup=status_rule,
        lost_date_when_blank=lost_rule,
    )


def _source_lists(raw: Any, path: Path) -> dict[str, tuple[str, ...]]:
    """`[columns]`: canonical column = "source" or ["first choice", "second choice", ...]."""
    if not isinstance(raw, dict):
        raise _fail(path, f"[columns] must be a table of canonical column = source column, got {raw!r}")
    out: dict[str, tuple[str, ...]] = {}
    for canonical, sources in raw.items():
        names = [sources] if isinstance(sources, str) else sources
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise _fail(
                path, f"[columns] {canonical}: expected a source column or a non-empty list of source columns "
                f"(the first one filled in a row is used), got {sources!r}"
            )
        out[str(canonical)] = tuple(names)
    return out


def _filter(raw: Any, path: Path) -> dict[str, bool | tuple[str, ...]]:
    """`[filter]`: export column = true / false (a flag the kept rows have; blank is false), a text
    or a list of texts (the values the kept rows have, compared without case)."""
    if not isinstance(raw, dict):
        raise _fail(path, f"[filter] must be a table of column = value(s) to keep, got {raw!r}")
    out: dict[str, bool | tuple[str, ...]] = {}
    for column, kept in raw.items():
        if isinstance(kept, bool):
            out[str(column)] = kept
        elif isinstance(kept, str):
            out[str(column)] = (kept,)
        elif isinstance(kept, list) and kept and all(isinstance(v, str) for v in kept):
            out[str(column)] = tuple(kept)
        else:
            raise _fail(
                path, f"[filter] {column}: expected true or false, a text or a list of texts (the values of the rows "
                f"to keep), got {kept!r}"
            )
    return out


def _status_from_lookup(
    raw: Any, lookups: Mapping[str, LookupSpec], columns: Mapping[str, tuple[str, ...]], path: Path
) -> StatusFromLookup | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"lookup", "found", "missing", "lost_after_days"} or "lookup" not in raw:
        raise _fail(
            path, "[status_from_lookup] needs lookup (a name under [lookups]), and may set found and missing "
            f"(statuses) and lost_after_days; got {raw!r}"
        )
    days = raw.get("lost_after_days")
    if days is not None and (isinstance(days, bool) or not isinstance(days, int) or days <= 0):
        raise _fail(path, f"[status_from_lookup] lost_after_days must be a whole number of days above 0, got {days!r}")
    rule = StatusFromLookup(
        str(raw["lookup"]), str(raw.get("found", STATUS_WON)), str(raw.get("missing", STATUS_LOST)), days
    )
    if days is not None and rule.missing != STATUS_LOST:
        raise _fail(path, f"[status_from_lookup] lost_after_days needs missing = 'lost', got missing = {rule.missing!r}")
    if rule.lookup not in lookups:
        raise _fail(path, f"[status_from_lookup] lookup {rule.lookup!r} is not under [lookups] (known: {sorted(lookups)})")
    if rule.found not in STATUSES or rule.missing not in STATUSES:
        raise _fail(path, f"[status_from_lookup] found and missing must be one of {list(STATUSES)}, got {rule.found!r}, {rule.missing!r}")
    clash = [c for c in ("status", "is_won", "is_closed") if c in columns]
    if clash:
        raise _fail(path, f"[status_from_lookup] and [columns] {clash} both give the status; keep one")
    return rule


def load_mappings(project: ProjectConfig) -> list[MappingSpec]:
    """The mapping files listed in dealcast.toml `[sources] mappings` (paths relative to it)."""
    return [load_mapping(project.resolve_path(name)) for name in project.mappings]


# --------------------------------------------------------------------------------------------
# Format detection


def _detect_with(mappings: Sequence[MappingSpec], path: Path) -> str | None:
    """A lookup file named by a mapping is a lookup even when a broad `file` glob also matches it."""
    if any(m.lookup_for(path) is not None for m in mappings):
        return LOOKUP_FORMAT
    if any(m.claims(path) for m in mappings):
        return FORMAT
    return None


_DEFAULT_CACHE: dict[tuple[tuple[str, float], ...], list[MappingSpec]] = {}


def _modified(path: Path) -> tuple[str, float]:
    return (str(path), path.stat().st_mtime if path.is_file() else -1.0)


def _default_mappings() -> list[MappingSpec]:
    """The mappings of the default project config (DEALCAST_CONFIG, else the project's
    dealcast.toml), read again when the config file or a mapping file changes."""
    env_path = os.environ.get(ENV_CONFIG)
    config = (Path(env_path) if env_path else project_dir() / CONFIG_FILE_NAME).resolve()
    if not config.is_file():
        return []
    for key, mappings in _DEFAULT_CACHE.items():
        if key[0] == _modified(config) and all(_modified(Path(name)) == (name, t) for name, t in key[1:]):
            return mappings
    project = load_project_config(config)
    mappings = load_mappings(project)
    _DEFAULT_CACHE.clear()
    _DEFAULT_CACHE[(_modified(config), *(_modified(m.path) for m in mappings))] = mappings
    return mappings


def detect(header: CsvHeader | None, path: Path) -> str | None:
    """"mapped" for a file a configured mapping claims by name, "mapped_lookup" for one of a
    mapping's lookup files, else None (mappings of the default project configuration)."""
    return _detect_with(_default_mappings(), Path(path))


# --------------------------------------------------------------------------------------------
# Reading


def _casefold_lookup(values: pd.Series, table: Mapping[str, str]) -> tuple[pd.Series, np.ndarray]:
    """Each value translated through `table` (keys compared without case); the mask of hits."""
    if not table:
        return values, np.zeros(len(values), dtype=bool)
    keys = pd.Index([k.strip().casefold() for k in table])
    targets = np.asarray(list(table.values()), dtype=object)
    position = keys.get_indexer(values.str.casefold())
    hit = position >= 0
    out = values.to_numpy(dtype=object).copy()
    out[hit] = targets[position[hit]]
    return pd.Series(out, index=values.index, dtype="str"), hit


def _quoted(values: pd.Series) -> pd.Series:
    return "'" + values.astype("str") + "'"


class _Checks:
    """Quarantine bookkeeping for the rows of one mapping's files."""

    def __init__(self, frame: pd.DataFrame, quarantine: Quarantine) -> None:
        self.frame = frame
        self.quarantine = quarantine
        self.bad = np.zeros(len(frame), dtype=bool)
        self.flag(frame["_blank"].to_numpy(), BLANK_ROW, None, "the row is empty")

    def flag(self, mask: np.ndarray, code: str, column: str | None, reason: str | Callable[[], pd.Series]) -> None:
        """Quarantine the rows of `mask` not already quarantined. `reason` is one text, or a
        function giving each row's text (called only when some row is flagged)."""
        mask = np.asarray(mask, dtype=bool) & ~self.bad
        if not mask.any():
            return
        rows = self.frame.loc[mask]
        if isinstance(reason, str):
            text: Any = reason
        else:
            text = np.asarray(pd.Series(reason(), index=self.frame.index)[mask], dtype=object)
        self.quarantine.add(rows["_file"].to_numpy(), rows["_pos"].to_numpy(), code, column, text)
        self.bad |= mask


def _resolve_delimiter(spec: MappingSpec, path: Path) -> str:
    if spec.delimiter:
        return spec.delimiter
    header = sniff_header(path)
    if header is None:
        raise ExportFormatError(f"{path}: line 1: no header line; expected the column names of the export {spec.file!r}")
    return header.likely_delimiter if header.likely_delimiter in DELIMITERS else ","


class _Files(Quarantine):
    """The quarantine of one read, plus the tables it read (for the per-file reports)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[CsvTable] = []

    def register(self, table: CsvTable) -> int:
        self.tables.append(table)
        return super().register(table)


def _load(path: Path, spec: MappingSpec, label: str, required: Sequence[str], quarantine: Quarantine) -> tuple[int, CsvTable]:
    table = load_csv(path, label, list(dict.fromkeys(required)), _resolve_delimiter(spec, path))
    if spec.encoding == "cp1252" and table.encoding.startswith("utf-8"):
        # ASCII text is valid in both; non-ASCII text that decodes as UTF-8 is UTF-8.
        logger.info("%s: declared windows-1252 in %s, read as %s (the file is valid UTF-8)", path, spec.path, table.encoding)
    elif spec.encoding == "utf-8" and not table.encoding.startswith("utf-8"):
        raise ExportFormatError(
            f"{path}: line 1: the mapping {spec.path} declares encoding {spec.encoding!r} but the file is "
            f"{table.encoding!r}; expected a {spec.encoding} file (or encoding = 'auto' in the mapping)"
        )
    return quarantine.register(table), table


def _read_lookup(
    spec: MappingSpec, lookup: LookupSpec, paths: Sequence[Path], quarantine: Quarantine
) -> tuple[pd.DataFrame, dict[str, int]]:
    """A lookup file's accepted rows indexed by key (text, "" where blank) and rows kept per file.
    Blank rows, blank keys and repeated keys (the first is kept) are quarantined."""
    wanted = sorted({col for canon in spec.columns for name, col in spec.sources_of(canon) if name == lookup.name})
    parts = []
    for path in paths:
        key, table = _load(path, spec, f"{spec.source_system} lookup {lookup.name!r}", [lookup.key, *wanted], quarantine)
        part = pd.DataFrame({c: table.text(c) for c in dict.fromkeys([lookup.key, *wanted])})
        part["_file"], part["_pos"] = np.int64(key), np.arange(len(table), dtype=np.int64)
        part["source_file"], part["_blank"] = str(path), table.blank_rows()
        parts.append(part)
    frame = pd.concat(parts, ignore_index=True)
    checks = _Checks(frame, quarantine)
    checks.flag(is_blank(frame[lookup.key]), MISSING_ID, lookup.key, f"{lookup.key} is blank; expected the lookup key")
    checks.flag(
        repeated_ids(frame[lookup.key], ~checks.bad), DUPLICATE_ID, lookup.key,
        lambda: "the key " + _quoted(frame[lookup.key]) + " appears more than once; the first row is kept",
    )
    kept = frame.loc[~checks.bad]
    return kept.set_index(lookup.key)[wanted], kept["source_file"].value_counts().to_dict()


def _apply_defaults_and_normalise(spec: MappingSpec, frame: pd.DataFrame, column: str) -> None:
    if column in spec.defaults:
        frame[column] = frame[column].where(frame[column].ne(""), spec.defaults[column])
    if column in spec.normalise:
        frame[column] = _casefold_lookup(frame[column], spec.normalise[column])[0]


def _first_filled(candidates: Sequence[pd.Series]) -> pd.Series:
    """Per row, the first of `candidates` that is not blank ("" when all are)."""
    out = candidates[0]
    for more in candidates[1:]:
        out = out.where(out.ne(""), more)
    return out


# Dates as a mapped export may write them (ISO 8601, day-first or month-first with / . or -).
_DATE_LIKE = r"^\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}(?:[T ].*)?$"
_ANY_BOOLEAN = "(?i)^(?:" + "|".join(re.escape(v) for v in (*BOOLEAN_TRUE, *BOOLEAN_FALSE)) + ")$"
# The export's own columns in the working frame of the raw suite (apart from the bookkeeping columns).
_RAW = "x:"


def _raw_rules(spec: MappingSpec) -> RawRules:
    """The raw suite of one mapping's export, one check per export column and kind (a column that
    feeds several canonical columns is checked once): ids present and unique, numbers written in
    the mapping's locale, dates date-like (unless the mapping fixes a date_format), flags spelled
    as booleans."""
    number = locale_number_form(spec.decimal, spec.thousands, spec.currency_symbols)

    def direct(columns: Sequence[str]) -> list[tuple[str, str]]:
        return [(c, name) for c in columns for lookup, name in spec.sources_of(c) if lookup is None]

    forms: dict[tuple[str, str], RawForm] = {}
    for canonical, name in direct(NUMBER_COLUMNS):
        code = UNPARSEABLE_AMOUNT if canonical == "amount" else UNPARSEABLE_NUMBER
        forms.setdefault((name, "number"), RawForm(_RAW + name, "number", number, code))
    if spec.date_format is None:
        for _, name in direct(DATE_COLUMNS):
            forms.setdefault((name, "date"), RawForm(_RAW + name, "date", _DATE_LIKE, UNPARSEABLE_DATE))
    flags = [name for _, name in direct(BOOLEAN_COLUMNS)] + [c for c, kept in spec.filter.items() if isinstance(kept, bool)]
    for name in flags:
        forms.setdefault((name, "boolean"), RawForm(_RAW + name, "boolean", _ANY_BOOLEAN, UNPARSEABLE_BOOLEAN, digit_blind=False))
    ids = [_RAW + name for _, name in direct(["deal_id"])]
    single_id = tuple(ids) if len(ids) == 1 else ()
    return RawRules(not_blank=single_id, unique=single_id, forms=tuple(forms.values()))


def _apply_filter(spec: MappingSpec, raw: pd.DataFrame, checks: "_Checks") -> None:
    """Quarantine the rows `[filter]` leaves out (`excluded_by_filter`), each with the value that
    excluded it; a flag column whose value is not a boolean quarantines the row (it cannot be judged)."""
    for column, kept in spec.filter.items():
        values = raw[_RAW + column]
        if isinstance(kept, bool):
            flags, bad = parse_any_booleans(values)
            checks.flag(
                bad, UNPARSEABLE_BOOLEAN, column,
                lambda: f"{column}: expected yes/no, true/false, 1/0 (the mapping's filter reads it), got " + _quoted(values),
            )
            leave_out = flags.fillna(False).to_numpy(dtype=bool) != kept
            wanted = "true" if kept else "false or blank"
        else:
            leave_out = ~values.str.strip().str.casefold().isin([k.strip().casefold() for k in kept]).to_numpy(dtype=bool)
            wanted = " or ".join(repr(k) for k in kept)
        checks.flag(
            leave_out, EXCLUDED_BY_FILTER, column,
            lambda: f"left out by the mapping's [filter]: {column} is " + _quoted(values) + f"; the filter keeps {wanted}",
        )


@dataclass
class _Places:
    """Each row's stage in its pipeline: the stage (catalogue spelling, "" when unknown), its status
    ("" when unknown), its order and the stage's default probability (NaN when unknown)."""

    stage: pd.Series
    status: pd.Series
    order: pd.Series
    probability: pd.Series


def _place_stages(pipeline: pd.Series, stage: pd.Series, status: pd.Series, catalog: StageCatalog) -> _Places:
    """Stage names compared without case, per pipeline; a won or lost `status` puts the deal in its
    pipeline's won or lost stage whatever the stage column says."""
    places = _Places(
        stage=pd.Series("", index=stage.index, dtype="str"),
        status=pd.Series("", index=stage.index, dtype="str"),
        order=pd.Series(np.nan, index=stage.index),
        probability=pd.Series(np.nan, index=stage.index),
    )
    for name in pd.unique(pipeline):
        if name not in catalog:
            continue
        p = catalog[name]
        rows = pipeline.eq(name).to_numpy()
        names = [*p.open_stages, p.won_stage, p.lost_stage]
        found, hit = _casefold_lookup(stage[rows], {n: n for n in names})
        closed_to = status[rows].map({STATUS_WON: p.won_stage, STATUS_LOST: p.lost_stage}).fillna("")
        found = found.where(closed_to.eq(""), closed_to)
        found = found.where(hit | closed_to.ne("").to_numpy(), "")
        places.stage[rows] = found
        places.status[rows] = found.map({n: p.status_of(n) for n in names}).fillna("")
        places.order[rows] = found.map({n: float(p.order_of(n) or 0) for n in names}).astype("float64")
        places.probability[rows] = found.map({n: p.probability_of(n) for n in names}).astype("float64")
    return places


def _read_mapping(
    spec: MappingSpec,
    deal_paths: Sequence[Path],
    lookup_paths: Mapping[str, list[Path]],
    project: ProjectConfig,
    catalog: StageCatalog,
    quarantine: Quarantine,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The accepted deals of one mapping (canonical columns) and the lookup rows kept per file."""
    exported = spec.export_columns()
    parts = []
    label = f"{spec.source_system} export (mapping {spec.path.name})"
    for path in deal_paths:
        key, table = _load(path, spec, label, exported, quarantine)
        part = pd.DataFrame({_RAW + c: table.text(c) for c in exported})
        part["_file"], part["_pos"] = np.int64(key), np.arange(len(table), dtype=np.int64)
        part["source_file"], part["source_row"] = str(path), table.source_row
        part["_blank"] = table.blank_rows()
        parts.append(part)
    raw = pd.concat(parts, ignore_index=True)
    quarantine.declare(raw, _raw_rules(spec), label, lambda key, column: column.removeprefix(_RAW))
    frame = raw[["_file", "_pos", "source_file", "source_row", "_blank"]].copy()
    checks = _Checks(frame, quarantine)
    _apply_filter(spec, raw, checks)

    # Canonical columns: those read from the export first (normalised, so that a lookup joined on
    # them finds the normalised value), then those with a lookup among their sources.
    blank = pd.Series("", index=frame.index, dtype="str")
    from_lookup = {c for c in spec.columns if any(lookup is not None for lookup, _ in spec.sources_of(c))}
    for column in MAPPABLE_COLUMNS:
        sources = spec.sources_of(column)
        frame[column] = _first_filled([raw[_RAW + name] for _, name in sources]) if sources and column not in from_lookup else blank
        if sources and column not in from_lookup:
            _apply_defaults_and_normalise(spec, frame, column)
    kept_lookups: dict[str, int] = {}
    joined: dict[tuple[str, str], pd.Series] = {}
    found_in: dict[str, np.ndarray] = {}
    for lookup in spec.lookups.values():
        paths = lookup_paths.get(lookup.name, [])
        if not paths:
            raise ExportFormatError(
                f"{deal_paths[0]}: the mapping {spec.path} joins the lookup {lookup.name!r} but no file "
                f"{lookup.file!r} is in the exports directory; expected it beside the export"
            )
        table, kept = _read_lookup(spec, lookup, paths, quarantine)
        for name, count in kept.items():
            kept_lookups[name] = kept_lookups.get(name, 0) + int(count)
        keys = frame[lookup.on] if lookup.on in spec.columns else raw[_RAW + lookup.on]
        position = table.index.get_indexer(keys)
        found_in[lookup.name] = position >= 0
        for column in table.columns:
            values = table[column].to_numpy(dtype=object)
            found = np.where(position >= 0, values[np.where(position >= 0, position, 0)], "") if len(values) else ""
            joined[(lookup.name, column)] = pd.Series(found, index=frame.index, dtype="str")
    for column in sorted(from_lookup):
        frame[column] = _first_filled(
            [raw[_RAW + name] if lookup is None else joined[(lookup, name)] for lookup, name in spec.sources_of(column)]
        )
        _apply_defaults_and_normalise(spec, frame, column)
    for column in MAPPABLE_COLUMNS:
        if column not in spec.columns and column in spec.defaults:
            _apply_defaults_and_normalise(spec, frame, column)

    source = {c: spec.label(c) for c in MAPPABLE_COLUMNS}

    # Ids.
    checks.flag(is_blank(frame["deal_id"]), MISSING_ID, source["deal_id"], f"{source['deal_id']} is blank; expected the deal's id")
    live = ~checks.bad
    checks.flag(
        repeated_ids(frame["deal_id"], live), DUPLICATE_ID, source["deal_id"],
        lambda: source["deal_id"] + " " + _quoted(frame["deal_id"]) + " appears more than once; the first "
        "occurrence (" + first_occurrences(frame, "deal_id", live).reindex(frame["deal_id"]).fillna("").to_numpy() + ") is kept",
    )

    # Values that must parse.
    parsed: dict[str, pd.Series] = {}
    number_text = f"a number with decimal {spec.decimal!r}" + (
        f" and thousands {' or '.join(repr(t) for t in spec.thousands)}" if spec.thousands else ""
    )
    for column in NUMBER_COLUMNS:
        values, bad = parse_locale_numbers(frame[column], spec.decimal, spec.thousands, spec.currency_symbols)
        code = UNPARSEABLE_AMOUNT if column == "amount" else UNPARSEABLE_NUMBER
        checks.flag(bad, code, source[column], lambda: f"{source[column]}: expected {number_text}, got " + _quoted(frame[column]))
        parsed[column] = values
    for column in DATE_COLUMNS:
        dayfirst = spec.dayfirst
        if spec.date_format is None and dayfirst is None:
            dayfirst = infer_dayfirst(frame[column])
        values, bad = parse_dates(frame[column], spec.date_format, dayfirst)
        expected = f"a date like {pd.Timestamp('2024-05-31').strftime(spec.date_format)}" if spec.date_format else (
            "a date (ISO 8601 such as 2024-05-31" + ("; or 31/05/2024)" if dayfirst else "; set date_format or dayfirst in the mapping for other layouts)")
        )
        checks.flag(bad, UNPARSEABLE_DATE, source[column], lambda: f"{source[column]}: expected {expected}, got " + _quoted(frame[column]))
        parsed[column] = values
    booleans: dict[str, pd.Series] = {}
    for column in BOOLEAN_COLUMNS:
        values, bad = parse_any_booleans(frame[column])
        checks.flag(bad, UNPARSEABLE_BOOLEAN, source[column], lambda: f"{source[column]}: expected yes/no, true/false, oui/non, 1/0 or x, got " + _quoted(frame[column]))
        booleans[column] = values

    # Pipeline and status.
    pipeline = frame["pipeline"].where(frame["pipeline"].ne(""), spec.pipeline.name)
    checks.flag(
        ~pipeline.isin(catalog.names).to_numpy(), UNKNOWN_PIPELINE, source["pipeline"],
        lambda: "pipeline " + _quoted(pipeline) + f" is not configured (known: {', '.join(catalog.names)})",
    )
    stage, _ = _casefold_lookup(frame["stage"], spec.stage_values)
    status_text, status_hit = _casefold_lookup(frame["status"], spec.status_values)
    status = status_text.str.lower().where(status_hit | status_text.str.lower().isin(STATUSES), "")
    checks.flag(
        (frame["status"].ne("") & status.eq("")).to_numpy(), INVALID_STATUS, source["status"],
        lambda: source["status"] + " " + _quoted(frame["status"]) + " is not one of open/won/lost and not mapped under [values.status]",
    )
    is_won, is_closed = booleans["is_won"], booleans["is_closed"]
    from_flags = np.where(is_won.fillna(False), STATUS_WON, np.where(is_closed.fillna(False), STATUS_LOST, np.where(is_closed.notna(), STATUS_OPEN, "")))
    status = status.where(status.ne(""), pd.Series(from_flags, index=frame.index, dtype="str"))
    status_source = (
        spec.label("status") if "status" in spec.columns
        else "/".join(spec.label(c) for c in BOOLEAN_COLUMNS if c in spec.columns) or source["stage"]
    )
    rule = spec.status_from_lookup
    if rule is not None:
        status = pd.Series(np.where(found_in[rule.lookup], rule.found, rule.missing), index=frame.index, dtype="str")
        status_source = f"[status_from_lookup] {rule.lookup}"
    places = _place_stages(pipeline, stage, status, catalog)

    # Creation dates, and the export's end: the latest creation date, or close date of a closed
    # deal, among the rows read.
    ok = ~checks.bad
    closed_now = places.status.isin([STATUS_WON, STATUS_LOST]).to_numpy()
    export_end = pd.concat([parsed["created_at"][ok], parsed["closed_at"][ok & closed_now]]).max()
    created_at = parsed["created_at"]
    blank_created = created_at.isna().to_numpy()
    if blank_created.any() and spec.created_at_when_blank != "quarantine":
        fill = created_at[ok].min() if spec.created_at_when_blank == "earliest" else export_end
        logger.info(
            "%s: %d deal(s) with a blank %s get created_at %s (created_at_when_blank = %r in %s)",
            deal_paths[0], int((blank_created & ok).sum()), source["created_at"], fill, spec.created_at_when_blank, spec.path,
        )
        created_at = created_at.fillna(fill)
    lost_after = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[us]")
    if rule is not None and rule.lost_after_days is not None:
        # Missing from the lookup: lost `lost_after_days` after creation, or still open when that
        # day is after the export's end (it may still close).
        missing = ~found_in[rule.lookup]
        due = created_at + pd.Timedelta(days=rule.lost_after_days)
        still_open = missing & (due > export_end).to_numpy(dtype=bool)
        lost_after = due.where(missing & ~still_open)
        if still_open.any():
            status = status.mask(still_open, STATUS_OPEN)
            places = _place_stages(pipeline, stage, status, catalog)

    # A closed status puts the deal in its pipeline's won or lost stage (the open stage it closed
    # from is not kept: no history); other stage names are compared without case.
    canonical_stage = places.stage
    described = {p.name: ", ".join([*p.open_stages, p.won_stage, p.lost_stage]) for p in catalog}
    checks.flag(
        (frame["stage"].eq("") & canonical_stage.eq("")).to_numpy(), MISSING_REQUIRED_VALUE, source["stage"],
        f"{source['stage']} is blank; expected the deal's stage",
    )
    checks.flag(
        canonical_stage.eq("").to_numpy(), UNKNOWN_STAGE, source["stage"],
        lambda: source["stage"] + " " + _quoted(frame["stage"]) + " is not a stage of pipeline " + _quoted(pipeline)
        + " (" + pipeline.map(described).fillna("") + ") and not mapped under [values.stage]",
    )
    checks.flag(
        (status.ne("") & status.ne(places.status)).to_numpy(), STATUS_STAGE_MISMATCH, status_source,
        lambda: f"{status_source} says the deal is " + status + " but its stage " + _quoted(canonical_stage)
        + " is " + places.status + "; expected an open stage for an open deal",
    )
    status = places.status
    stage_order = places.order
    probability_default = places.probability

    # Close dates: closed_at, else expected_close_date; a lost deal missing from a status lookup is
    # lost `lost_after_days` after creation; other lost deals without a date follow
    # lost_date_when_blank.
    closed = status.isin([STATUS_WON, STATUS_LOST]).to_numpy()
    closed_at = parsed["closed_at"].where(parsed["closed_at"].notna(), parsed["expected_close_date"]).where(closed)
    closed_at = closed_at.fillna(lost_after.where(closed))
    undated_lost = status.eq(STATUS_LOST).to_numpy() & closed_at.isna().to_numpy()
    if undated_lost.any() and spec.lost_date_when_blank != "quarantine":
        fill = created_at if spec.lost_date_when_blank == "created_at" else pd.Series(export_end, index=frame.index)
        closed_at = closed_at.mask(undated_lost, fill)
        logger.info(
            "%s: %d lost deal(s) without a lost date are dated at %s (lost_date_when_blank in %s)",
            deal_paths[0], int((undated_lost & ~checks.bad).sum()),
            "their creation" if spec.lost_date_when_blank == "created_at" else f"the export's end, {export_end}", spec.path,
        )
    expected_close = parsed["expected_close_date"].where(parsed["expected_close_date"].notna(), closed_at)
    checks.flag(
        closed & closed_at.isna().to_numpy(), MISSING_CLOSE_DATE, source["closed_at"],
        lambda: "the deal is " + status + f" but {source['closed_at']} is blank; expected its close date"
        + (" (or lost_date_when_blank in the mapping)" if spec.lost_date_when_blank == "quarantine" else ""),
    )
    checks.flag(
        created_at.isna().to_numpy(), IMPLAUSIBLE_DATE, source["created_at"],
        f"{source['created_at']} is blank; expected the date the deal was created "
        "(or created_at_when_blank = 'earliest' / 'latest' in the mapping)",
    )

    ok = ~checks.bad
    text = {c: frame[c].where(frame[c].ne("")).astype("string") for c in TEXT_COLUMNS}
    currency = text["currency"].fillna(project.reporting_currency).str.upper()
    amount = parsed["amount"]
    probability = (parsed["crm_probability"] / spec.probability_scale).where(parsed["crm_probability"].notna(), probability_default)
    last_change = parsed["last_stage_change_at"].fillna(closed_at).fillna(created_at)
    deals = pd.DataFrame(
        {
            "deal_id": frame["deal_id"],
            "source_system": spec.source_system,
            "source_file": frame["source_file"],
            "source_row": frame["source_row"],
            "pipeline": pipeline,
            **{c: text[c] for c in TEXT_COLUMNS if c not in ("pipeline", "currency")},
            "amount": amount,
            "currency": currency,
            "amount_reporting": amount.where(currency.eq(project.reporting_currency)),
            "created_at": created_at,
            "expected_close_date": expected_close.dt.normalize(),
            "closed_at": closed_at,
            "crm_close_date": closed_at.dt.normalize(),
            "stage": canonical_stage,
            "stage_order": stage_order.astype("Int64"),
            "status": status,
            "crm_probability": probability,
            "last_stage_change_at": last_change,
            "push_count": np.int64(0),
            "has_history": False,
        }
    ).loc[ok]
    foreign = deals["currency"].ne(project.reporting_currency)
    if foreign.any():
        logger.warning(
            "%s: %d deal(s) are not in the reporting currency %s; amount_reporting is left blank for them "
            "until they are converted", deal_paths[0], int(foreign.sum()), project.reporting_currency,
        )
    return conform(deals, DEAL_COLUMNS, "deals"), kept_lookups


def read_with(
    mappings: Sequence[MappingSpec], files: Mapping[str, Sequence[Path]], project: ProjectConfig
) -> SourceExport:
    """Read the files of `mappings` ("mapped" deal files and "mapped_lookup" lookup files)."""
    deal_files = [Path(p) for p in files.get(FORMAT, ())]
    lookup_files = [Path(p) for p in files.get(LOOKUP_FORMAT, ())]
    quarantine = _Files()
    catalog = project.stages
    deals_parts: list[pd.DataFrame] = []
    kept: dict[str, int] = {}
    used: set[Path] = set()
    headers: dict[Path, dict[str, str]] = {}
    for spec in mappings:
        mine = [p for p in deal_files if spec.claims(p) and p not in used]
        if not mine:
            continue
        used.update(mine)
        for path in mine:
            headers[path] = {c: spec.label(c) for c in spec.columns}
        catalog = catalog.with_pipeline(spec.pipeline)
        lookup_paths: dict[str, list[Path]] = {}
        for path in lookup_files:
            lookup = spec.lookup_for(path)
            if lookup is not None:
                lookup_paths.setdefault(lookup.name, []).append(path)
        frame, kept_lookups = _read_mapping(spec, mine, lookup_paths, project, catalog, quarantine)
        deals_parts.append(frame)
        for name, count in kept_lookups.items():
            kept[name] = kept.get(name, 0) + count
    unread = [p for p in lookup_files if not any(t.path == p for t in quarantine.tables)]
    if unread:
        logger.warning(
            "lookup file(s) %s are not read: no export of the mapping that names them is in the exports folder",
            [str(p) for p in unread],
        )
    unclaimed = [p for p in deal_files if p not in used]
    if unclaimed:
        raise ExportFormatError(f"{unclaimed[0]}: no configured mapping file claims this export; expected it listed in a mapping's `file`")

    deals = pd.concat(deals_parts, ignore_index=True) if deals_parts else empty_frame(DEAL_COLUMNS)
    quarantined = quarantine.frame()
    accepted = deals["source_file"].value_counts().to_dict()
    in_quarantine = quarantined["source_file"].value_counts().to_dict()
    reports = []
    for table in quarantine.tables:
        name = str(table.path)
        fmt = FORMAT if table.path in used else LOOKUP_FORMAT
        if any(r.path == table.path for r in reports):
            continue
        reports.append(
            FileReport(
                path=table.path, format=fmt, rows_read=table.rows_read, sha256=table.scan.sha256,
                rows_accepted=int(accepted.get(name, 0)) + int(kept.get(name, 0)),
                rows_quarantined=int(in_quarantine.get(name, 0)),
                columns=headers.get(table.path, {}),
            )
        )
    pipelines = [spec.pipeline for spec in mappings if spec.pipeline.name not in project.stages and any(spec.claims(p) for p in used)]
    logger.info("mapped exports: %d deal(s) accepted, %d row(s) quarantined", len(deals), len(quarantined))
    return SourceExport(
        deals=conform(deals, DEAL_COLUMNS, "deals"),
        history=empty_frame(DEAL_HISTORY_COLUMNS),
        quarantine=quarantined,
        files=reports,
        pipelines=pipelines,
        raw_suites=quarantine.raw_suites(),
    )


def read_mapped(files: Mapping[str, Sequence[Path]], project: ProjectConfig) -> SourceExport:
    """Read mapped CSV exports with the mappings listed in `project` (dealcast.toml)."""
    return read_with(load_mappings(project), files, project)


def reader_for(project: ProjectConfig) -> ExportReader:
    """An `ExportReader` whose detection uses `project`'s mappings (rather than the default config)."""
    mappings = load_mappings(project)
    return ExportReader(
        source_system=SOURCE_SYSTEM,
        formats=(FORMAT, LOOKUP_FORMAT),
        detect=lambda header, path: _detect_with(mappings, Path(path)),
        read=lambda files, proj: read_with(mappings, files, proj),
        lookup_formats=(LOOKUP_FORMAT,),
    )


READER = ExportReader(
    source_system=SOURCE_SYSTEM,
    formats=(FORMAT, LOOKUP_FORMAT),
    detect=detect,
    read=read_mapped,
    lookup_formats=(LOOKUP_FORMAT,),
)
