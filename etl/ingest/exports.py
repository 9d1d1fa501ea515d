"""Ingest: every CRM export file in an exports directory -> canonical deals, history, quarantine.

`read_exports` decides each file's format (from `[sources] format_overrides` in dealcast.toml,
else from its header line), hands each CRM reader the files it recognises (`READERS`), then
applies the rules that hold across readers, and checks that every row of every file was either
accepted or quarantined. Files that are no known export (a quota file, the rates file, notes) are
listed as skipped.

Rules across files and readers, in this order:
1. Source systems. Every deal carries the `source_system` of the reader that read it. When the
   directory holds exports of more than one CRM (a migration), every deal id is prefixed with its
   system, `salesforce:006A`, `hubspot:123`, in deals and history alike, so ids of two systems
   never collide. With one CRM, ids are kept as the CRM wrote them.
2. Duplicates. Within one system, a deal id read more than once keeps its first copy, files taken
   in name order (case-insensitive, the order `read_exports` lists them) and rows in file order;
   every later copy is quarantined as `duplicate_id`, naming the copy kept. History rows of the
   quarantined copy that come from its own file go with it (`deal_quarantined`); history from
   other files (a separate history export) stays with the deal kept.
3. Currency. `amount_reporting` is filled by `etl.ingest.currency.convert_to_reporting` from the
   `[currency] rates_file`; deals that cannot be valued are quarantined (`unknown_currency`,
   `no_rate_for_date`) and their history rows with them (`deal_quarantined`).
4. Identifying text (ids, pipeline, stage, owner, team, segments, account, currency) is put in
   one Unicode form here, the one place every reader's rows go through: NFC (so "Jose\u0301" and
   "José" are one owner), zero-width characters (U+200B, U+2060, U+FEFF) removed, and blanks at
   the edges (spaces, NBSP U+00A0 and U+202F, zero-width joiners) stripped. Free text (deal
   names, loss reasons) is kept as written. `IngestResult.normalised` keeps every value that
   changed with its source row, so a quarantined row shows the value as written.
Rows quarantined by these rules count as quarantined rows of their file, so each file keeps
rows_read = rows_accepted + rows_quarantined.

A new CRM reader plugs in by adding its `etl.ingest.readers.ExportReader` to `READERS`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from etl.config import ConfigError, ProjectConfig
from etl.ingest.currency import convert_to_reporting, find_rates_file, load_rates
from etl.ingest.readers import HISTORY_GAP_COLUMNS, ExportFormatError, ExportReader, FileReport, SourceExport
from etl.ingest.readers import hubspot, hubspot_tables, mapped, pipedrive, salesforce
from etl.ingest.csvfiles import repeated_ids, sniff_header, unreadable
from etl.schema import DEAL_COLUMNS, DEAL_HISTORY_COLUMNS, DQ_RESULT_COLUMNS, QUARANTINE_COLUMNS, empty_frame
from etl.pipeline_state import completed_from_history
from etl.stages import StageCatalog
from etl.validation.raw import run_raw_suites
from etl.validation.reason_codes import DEAL_QUARANTINED, DUPLICATE_ID

logger = logging.getLogger(__name__)

__all__ = [
    "READERS",
    "ExportFormatError",
    "FileReport",
    "IngestResult",
    "detect_format",
    "known_formats",
    "read_exports",
    "unrecognised_reason",
]

# Separates the source system from the CRM's id when several systems are read together.
SYSTEM_SEPARATOR = ":"
# Text that identifies a deal or groups deals, normalised to one Unicode form (rule 4).
IDENTIFYING_COLUMNS = (
    "deal_id", "source_system", "pipeline", "stage", "owner", "team", "product", "region", "account_segment",
    "lead_source", "deal_type", "account", "currency", "forecast_category",
)
NORMALISED_COLUMNS = ["source_file", "source_row", "column", "as_written"]
# Removed wherever they are; other zero-width characters (joiners, which some scripts need inside
# words) and every kind of blank only at the edges.
_INVISIBLE = "[\u200b\u2060\ufeff]"
_EDGE_BLANKS = "[\\s\u00a0\u202f\u200c\u200d]"
# The ASCII characters Python's `\\s` matches: tab to carriage return, the four separators, space.
_ASCII_BLANK = "[\\t-\\r\\x1c-\\x20]"

# The CRM readers, asked in this order which format a file is. A generic CSV mapping claims its
# files by name, so it is asked first; the CRM readers recognise their exports by their headers.
READERS: tuple[ExportReader, ...] = (
    mapped.READER, salesforce.READER, hubspot.READER, hubspot_tables.READER, pipedrive.READER,
)
# Export formats whose rows are lookups (names of owners and accounts), not deals or history rows.
LOOKUP_FORMATS: frozenset[str] = frozenset(fmt for reader in READERS for fmt in reader.lookup_formats)
# Export formats whose rows are only stage history of deals read from other files.
HISTORY_FORMATS: frozenset[str] = frozenset(fmt for reader in READERS for fmt in reader.history_formats)


@dataclass
class IngestResult:
    """Everything read from one exports directory.

    deals: `etl.schema.DEAL_COLUMNS`; history: `etl.schema.DEAL_HISTORY_COLUMNS`;
    quarantine: `etl.schema.QUARANTINE_COLUMNS` (rows not accepted, with their reasons);
    files: every input file read; skipped_files: files that are no known export;
    stages: the configured pipelines plus those inferred from the export;
    history_gaps: history rows whose "previous value" columns do not match the row before them
    (deal_id, source_file, source_row, column, expected, found): history missing from the export.
    """

    deals: pd.DataFrame
    history: pd.DataFrame
    quarantine: pd.DataFrame
    files: list[FileReport]
    skipped_files: list[Path]
    stages: StageCatalog
    history_gaps: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=HISTORY_GAP_COLUMNS))
    # The currencies an amount may be in: the reporting currency and those of the rates file.
    currencies: list[str] = field(default_factory=list)
    # data_quality_results rows of the raw suites the readers declared on their files as written.
    raw_checks: pd.DataFrame = field(default_factory=lambda: empty_frame(DQ_RESULT_COLUMNS))
    # Identifying values that Unicode normalisation changed: source_file, source_row, column, as_written.
    normalised: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=NORMALISED_COLUMNS))
    # The readers' notes (`SourceExport.notes`): decisions a person should know about, once each.
    notes: list[str] = field(default_factory=list)


def known_formats() -> dict[str, ExportReader]:
    """Every export format the registered readers know, with the reader that reads it."""
    return {fmt: reader for reader in READERS for fmt in reader.formats}


def _format_overrides(project: ProjectConfig | None) -> dict[str, tuple[ExportReader, str]]:
    """`[sources] format_overrides` by lower-case file name, each with its reader. An override
    naming a format no reader knows is a `ConfigError`."""
    if project is None or not project.format_overrides:
        return {}
    formats = known_formats()
    overrides = {}
    for name, fmt in project.format_overrides.items():
        if fmt not in formats:
            raise ConfigError(
                f"{project.path}: [sources] format_overrides: file {name!r} is given the format {fmt!r}, "
                f"which no reader knows; expected one of {', '.join(sorted(formats))}"
            )
        overrides[Path(name).name.lower()] = (formats[fmt], fmt)
    return overrides


def _readers(project: ProjectConfig | None) -> tuple[ExportReader, ...]:
    """The registered readers, with the generic-CSV reader using `project`'s mapping files."""
    if project is None:
        return READERS
    return tuple(mapped.reader_for(project) if reader is mapped.READER else reader for reader in READERS)


def _reader_for(
    path: Path,
    overrides: dict[str, tuple[ExportReader, str]] | None = None,
    readers: tuple[ExportReader, ...] | None = None,
) -> tuple[ExportReader, str] | None:
    if overrides:
        forced = overrides.get(path.name.lower())
        if forced is not None:
            logger.info("%s: format %s, as [sources] format_overrides says", path, forced[1])
            return forced
    header = sniff_header(path)
    for reader in READERS if readers is None else readers:
        found = reader.detect(header, path)
        if found is not None:
            return reader, found
    return None


def detect_format(path: Path, project: ProjectConfig | None = None) -> str | None:
    """The export format of `path`: the one `project`'s `[sources] format_overrides` gives its
    file name, else the one its header line shows (e.g. "salesforce_opportunity",
    "salesforce_history", "salesforce_user", "salesforce_account"), else None when it is no known
    export. A file with a damaged header but a CRM's usual file name (Opportunity.csv) still gets
    that format, so that reading it explains what is wrong."""
    found = _reader_for(Path(path), _format_overrides(project), _readers(project))
    return found[1] if found else None


# What the readers recognise, for the message when no file is recognised.
RECOGNISED_EXPORTS = (
    "Salesforce Data Export or Data Loader files (Opportunity: Id, StageName, CloseDate; OpportunityHistory: "
    "OpportunityId, StageName; User: Id, Username; Account: Id, Name and an address or account number field), "
    "also in snake_case as Fivetran or Airbyte land them (opportunity: id, stage_name, close_date; "
    "opportunity_history: opportunity_id, stage_name)",
    "HubSpot deals exports (Record ID or Deal ID, Deal Stage, and Pipeline, Deal Name or Date entered columns)",
    "HubSpot's deal, deal_stage, deal_pipeline and deal_pipeline_stage tables as Fivetran lands them",
    "Pipedrive deals exports (Deal - Stage and Deal - Status among 'Deal - ' headers)",
)


def unrecognised_reason(path: Path, project: ProjectConfig | None = None) -> str:
    """Why no reader recognises `path`, in words a person fixing the export understands: what its
    header looks like, which export it comes close to and what that one needs."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    if size == 0:
        return "the file is empty"
    header = sniff_header(path)
    if header is None:
        return "no header line could be read (a binary file such as a spreadsheet saved as .xlsx, or a blank first line)"
    columns = header.split_on(header.likely_delimiter)
    folded = {c.strip().casefold() for c in columns}
    shown = ", ".join(columns[:6]) + (", ..." if len(columns) > 6 else "")
    if any(c.startswith(salesforce.LOADER_COLUMN_PREFIXES) for c in folded):
        return (
            f"its header ({shown}) is a table landed by Fivetran or Airbyte (_fivetran_/_airbyte_ bookkeeping "
            "columns) but none Dealcast reads: Dealcast reads Salesforce's opportunity, opportunity_history, user "
            "and account tables and HubSpot's deal, deal_stage, deal_pipeline and deal_pipeline_stage tables as the "
            "loaders land them (docs/sources.md); for another table write a mapping"
        )
    if salesforce.is_loader_table(columns):
        return (
            f"its header ({shown}) has Salesforce fields in snake_case (stage_name, close_date), as a warehouse "
            "loader lands them, but an opportunity table needs id, stage_name, close_date and an "
            "opportunity_history table opportunity_id, stage_name"
        )
    if "stagename" in folded:
        missing = [c for c in ("Id", "CloseDate") if c.casefold() not in folded]
        return f"it has Salesforce fields (StageName) but no {' or '.join(missing)}, which an Opportunity export needs"
    if folded & {"deal stage", "dealstage"}:
        if not folded & {"record id", "deal id", "hs_object_id"}:
            return "it has a HubSpot Deal Stage column but no Record ID (or Deal ID), which a HubSpot deals export needs"
        return "it has HubSpot's Record ID and Deal Stage but no Pipeline, Deal Name or Date entered column"
    if sum(c.startswith("deal - ") for c in folded) >= 2:
        return "it has Pipedrive 'Deal - ' headers but not both Deal - Stage and Deal - Status"
    claimed = ""
    if project is not None:
        mappings = mapped.load_mappings(project)
        claimed = "; no mapping file's `file` matches its name" + (
            f" (mappings read: {', '.join(repr(m.file) for m in mappings)})" if mappings else " (no mapping file is configured)"
        )
    return f"its header ({shown}) is no Salesforce, HubSpot or Pipedrive export{claimed}"


def _nothing_recognised(exports_dir: Path, skipped: list[Path], project: ProjectConfig) -> ExportFormatError:
    if not skipped:
        return ExportFormatError(
            f"{exports_dir}: the exports folder holds no file; expected CRM export files, for example "
            "Opportunity.csv and OpportunityHistory.csv from a Salesforce Data Export"
        )
    lines = [f"  - {p.name}: {unrecognised_reason(p, project)}" for p in skipped]
    return ExportFormatError(
        f"{exports_dir}: no CRM export recognised among {len(skipped)} file(s):\n" + "\n".join(lines) + "\n"
        f"Dealcast reads {'; '.join(RECOGNISED_EXPORTS)}. For any other CSV, write a mapping file and list it "
        f"under [sources] mappings (docs/mapping.md); for a CRM export whose header was changed, name its format "
        f"under [sources.format_overrides] (formats: {', '.join(sorted(known_formats()))}); both in {project.path}."
    )


def _export_files(exports_dir: Path) -> list[Path]:
    return sorted(
        (p for p in exports_dir.iterdir() if p.is_file() and not p.name.startswith((".", "~$"))),
        key=lambda p: p.name.lower(),
    )


def _unreadable(path: Path) -> ExportFormatError | None:
    """The error for a file the operating system will not let us read, or None when it opens."""
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        return unreadable(path, exc)
    return None


def read_exports(exports_dir: Path, project: ProjectConfig, *, as_of: dt.date | None = None) -> IngestResult:
    """Read every CRM export in `exports_dir` (not its subfolders) into canonical frames.

    `as_of` (default: today, UTC) is the day whose exchange rate values open deals.
    Raises `ExportFormatError` when a recognised file cannot be read at all (an unreadable lookup
    file, such as Salesforce's User.csv, is skipped with a warning instead), or when the
    directory holds no CRM export; `ConfigError` for a format override naming no known format;
    `etl.ingest.currency.ExchangeRatesError` for a configured rates file that is missing or unusable;
    FileNotFoundError when the directory does not exist.
    """
    exports_dir = Path(exports_dir)
    if not exports_dir.is_dir():
        raise FileNotFoundError(f"exports directory not found: {exports_dir}")
    if as_of is None:
        as_of = dt.datetime.now(dt.timezone.utc).date()
    overrides = _format_overrides(project)
    by_reader: dict[str, dict[str, list[Path]]] = {}
    readers: dict[str, ExportReader] = {}
    skipped: list[Path] = []
    listed = _export_files(exports_dir)
    unused = sorted(set(overrides) - {p.name.lower() for p in listed})
    if unused:
        logger.warning("[sources] format_overrides names file(s) not in %s: %s", exports_dir, unused)
    candidates = _readers(project)
    for path in listed:
        found = _reader_for(path, overrides, candidates)
        if found is None:
            logger.info("%s: not a known CRM export, skipped: %s", path, unrecognised_reason(path, project))
            skipped.append(path)
            continue
        reader, fmt = found
        problem = _unreadable(path)
        if problem is not None:
            if fmt not in LOOKUP_FORMATS:
                raise problem
            # A lookup file (owner or account names) only adds names: the run goes on without it.
            logger.warning("%s (%s) skipped: %s; its names are missing from this run", path, fmt, problem)
            skipped.append(path)
            continue
        other = readers.get(reader.source_system)
        if other is not None and other is not reader:
            raise ExportFormatError(
                f"{path}: a {reader.source_system} file of another kind ({fmt}) than the {reader.source_system} "
                f"files already read ({', '.join(sorted(by_reader[reader.source_system]))}); expected one kind of "
                f"{reader.source_system} export in the folder (an export, or the tables a loader lands, not both)"
            )
        readers[reader.source_system] = reader
        by_reader.setdefault(reader.source_system, {}).setdefault(fmt, []).append(path)
    if not by_reader:
        raise _nothing_recognised(exports_dir, skipped, project)
    rates_path = find_rates_file(project, exports_dir)
    rates = load_rates(rates_path, project.reporting_currency) if rates_path is not None else None

    exports: list[SourceExport] = [readers[system].read(files, project) for system, files in by_reader.items()]
    # Every reader's raw suites, checked together (the readers declare them and run none), and then
    # let go of before any deal is completed from its history.
    raw_checks = run_raw_suites([suite for e in exports for suite in e.raw_suites])
    exports = [_completed(dataclasses.replace(e, raw_suites=[]), project) for e in exports]
    stages = project.stages
    for export in exports:
        for pipeline in export.pipelines:
            stages = stages.with_pipeline(pipeline)
    if len(exports) > 1:
        logger.info("exports of %d CRMs read together (%s): deal ids are prefixed with their system", len(exports), ", ".join(by_reader))
        exports = [_namespaced(export, system) for export, system in zip(exports, by_reader)]

    deals = _concat([e.deals for e in exports], DEAL_COLUMNS)
    history = _concat([e.history for e in exports], DEAL_HISTORY_COLUMNS)
    quarantine = _concat([e.quarantine for e in exports], QUARANTINE_COLUMNS)
    gaps = [e.history_gaps for e in exports if e.history_gaps is not None and not e.history_gaps.empty]
    files = [report for e in exports for report in e.files]

    deals, deal_changes = normalise_identifying_text(deals)
    history, history_changes = normalise_identifying_text(history)
    file_rank = {str(p): i for i, p in enumerate(listed)}
    deals, history, duplicates = _quarantine_duplicates(deals, history, file_rank)
    conversion = convert_to_reporting(
        deals,
        history,
        rates,
        project.reporting_currency,
        as_of,
        no_rates_hint=f"no exchange-rate file is configured ([currency] rates_file in {project.path})",
    )
    deals, history, unvalued = _quarantine_deals(
        conversion.deals, conversion.history, conversion.rejected, conversion.problem_code, conversion.problem_reason, "currency"
    )
    quarantine, files = _add_quarantine(quarantine, [duplicates, unvalued], files)
    _check_reconciliation(files, deals, history, quarantine)
    return IngestResult(
        deals=deals,
        history=history,
        quarantine=quarantine,
        files=files,
        skipped_files=skipped,
        stages=stages,
        history_gaps=pd.concat(gaps, ignore_index=True) if gaps else pd.DataFrame(columns=HISTORY_GAP_COLUMNS),
        raw_checks=raw_checks,
        currencies=sorted({project.reporting_currency, *(rates.currencies if rates is not None else [])}),
        normalised=pd.concat([deal_changes, history_changes], ignore_index=True),
        notes=[note for export in exports for note in export.notes],
    )


def _completed(export: SourceExport, project: ProjectConfig) -> SourceExport:
    """`export` with its deals completed from their history when its reader leaves that to the load
    (`SourceExport.completed_from_history`), under the stage orders it was read with; before the
    deals are valued in the reporting currency or validated, both of which read closed_at."""
    if not export.completed_from_history:
        return export
    stages = project.stages
    for pipeline in export.pipelines:
        stages = stages.with_pipeline(pipeline)
    deals = completed_from_history(export.deals, export.history, stages)
    return dataclasses.replace(export, deals=deals)


def normalise_identifying_text(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`frame` with its `IDENTIFYING_COLUMNS` in one Unicode form (rule 4 of the module docstring),
    and the values that changed (`NORMALISED_COLUMNS`). A value left blank by it becomes NA."""
    out = frame
    changes = []
    for column in IDENTIFYING_COLUMNS:
        if column not in frame.columns or frame[column].dropna().empty:
            continue
        codes, uniques = pd.factorize(frame[column], use_na_sentinel=True)
        text = pd.Series(uniques, dtype="string")
        fixed = _one_unicode_form(text)
        differs = (fixed.ne(text) | fixed.isna()).to_numpy(dtype=bool, na_value=True) & text.notna().to_numpy()
        if not differs.any():
            continue
        changed = (codes >= 0) & np.append(differs, False)[codes]
        if out is frame:
            out = frame.copy()
        out[column] = pd.Series(np.append(fixed.to_numpy(dtype=object), pd.NA)[codes], index=frame.index).astype(
            frame[column].dtype
        )
        changes.append(
            pd.DataFrame(
                {
                    "source_file": frame.loc[changed, "source_file"].astype("str").to_numpy(),
                    "source_row": frame.loc[changed, "source_row"].to_numpy(dtype=np.int64),
                    "column": column,
                    "as_written": frame.loc[changed, column].astype("str").to_numpy(),
                }
            )
        )
    if changes:
        logger.info("%d identifying value(s) put in one Unicode form (NFC, no zero-width or edge blanks)",
                    sum(len(c) for c in changes))
    return out, pd.concat(changes, ignore_index=True) if changes else pd.DataFrame(columns=NORMALISED_COLUMNS)


def _one_unicode_form(text: pd.Series) -> pd.Series:
    """`text` (distinct values) in NFC, without zero-width characters or blanks at either end;
    NA where nothing is left. Only the values that can change go through Python's `re` (which
    knows every Unicode blank): those with a character beyond ASCII, or an ASCII blank or
    separator first or last. A pure-ASCII value has one Unicode form already."""
    arrow = pa.array(text.array, type=pa.large_string(), from_pandas=True)
    edge = pc.match_substring_regex(arrow, f"^{_ASCII_BLANK}|{_ASCII_BLANK}$")
    maybe = pc.or_kleene(pc.invert(pc.string_is_ascii(arrow)), edge).fill_null(False)
    candidates = maybe.to_numpy(zero_copy_only=False)
    fixed = text.copy()
    if candidates.any():
        fixed[candidates] = (
            text[candidates]
            .str.normalize("NFC")
            .str.replace(_INVISIBLE, "", regex=True)
            .str.replace(f"^{_EDGE_BLANKS}+|{_EDGE_BLANKS}+$", "", regex=True)
        )
    return fixed.mask(fixed.eq(""))


def with_values_as_written(quarantine: pd.DataFrame, normalised: pd.DataFrame) -> pd.DataFrame:
    """`quarantine` whose rows had a value changed by Unicode normalisation carry it as written:
    their `raw_record` JSON gains `"_as_written": {column: value}`."""
    if quarantine.empty or normalised.empty:
        return quarantine
    written = (
        normalised.groupby(["source_file", "source_row"], sort=False)[["column", "as_written"]]
        .apply(lambda rows: dict(zip(rows["column"], rows["as_written"])))
    )
    keys = pd.MultiIndex.from_arrays(
        [quarantine["source_file"].astype("str"), quarantine["source_row"].astype(np.int64)]
    )
    found = written.reindex(keys).to_numpy(dtype=object)
    hit = pd.notna(found)
    if not hit.any():
        return quarantine
    out = quarantine.copy()
    raw = out["raw_record"].to_numpy(dtype=object)
    for i in np.flatnonzero(hit):
        record = json.loads(raw[i]) if raw[i] else {}
        record["_as_written"] = found[i]
        raw[i] = json.dumps(record, ensure_ascii=False)
    out["raw_record"] = pd.Series(raw, index=out.index).astype(quarantine["raw_record"].dtype)
    return out


def _namespaced(export: SourceExport, system: str) -> SourceExport:
    """`export` with every deal id prefixed by its source system (`hubspot:123`)."""
    prefix = system + SYSTEM_SEPARATOR
    deals = export.deals.assign(deal_id=(prefix + export.deals["deal_id"].astype("str")).astype(DEAL_COLUMNS["deal_id"]))
    history = export.history.assign(
        deal_id=(prefix + export.history["deal_id"].astype("str")).astype(DEAL_HISTORY_COLUMNS["deal_id"])
    )
    gaps = export.history_gaps
    if gaps is not None and not gaps.empty:
        gaps = gaps.assign(deal_id=prefix + gaps["deal_id"].astype("str"))
    return dataclasses.replace(export, deals=deals, history=history, history_gaps=gaps)


def _records_as_json(frame: pd.DataFrame) -> list[str]:
    """Each row of a canonical frame as a JSON object (the record the reader made of the source row)."""
    if frame.empty:
        return []
    text = frame.to_json(orient="records", lines=True, date_format="iso", force_ascii=False)
    return text.rstrip("\n").split("\n")


def _where(frame: pd.DataFrame) -> pd.Series:
    return frame["source_file"].astype("str") + " row " + frame["source_row"].astype("str")


def _quarantine_duplicates(
    deals: pd.DataFrame, history: pd.DataFrame, file_rank: dict[str, int]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Rule 2 of the module docstring: the first copy of a repeated deal id is kept (files in name
    order, rows in file order), later copies are quarantined as `duplicate_id`, and history rows
    from a quarantined copy's own file go with it. Returns the kept deals and history and the new
    quarantine rows."""
    if not deals["deal_id"].duplicated().any():
        return deals, history, empty_frame(QUARANTINE_COLUMNS)
    rank = deals["source_file"].map(file_rank).fillna(len(file_rank)).to_numpy(dtype=np.int64)
    order = np.lexsort((deals["source_row"].to_numpy(), rank))
    in_order = deals.iloc[order]
    later = repeated_ids(in_order["deal_id"], np.ones(len(in_order), dtype=bool))
    dropped = in_order.loc[later]
    kept_where = _where(in_order.loc[~later]).set_axis(in_order.loc[~later, "deal_id"].to_numpy())
    reasons = [
        f"deal id {i!r} is read more than once; the first copy ({kept_where[i]}) is kept (files are read "
        "in name order, rows in file order)"
        for i in dropped["deal_id"]
    ]
    rejected = np.zeros(len(deals), dtype=bool)
    rejected[order[later]] = True
    deal_part = _deal_quarantine_rows(deals.loc[rejected], DUPLICATE_ID, "deal_id", reasons)
    logger.warning(
        "%d deal row(s) repeat a deal id already read and are quarantined as %s (first: %s)",
        len(dropped), DUPLICATE_ID, reasons[0],
    )
    # History rows from a quarantined copy's own file, unless the kept copy comes from that file too.
    kept_files = in_order.loc[~later].set_index("deal_id")["source_file"]
    history_key = history["deal_id"].astype("str") + "\x1f" + history["source_file"].astype("str")
    dropped_keys = pd.Index(pd.unique(dropped["deal_id"].astype("str") + "\x1f" + dropped["source_file"].astype("str")))
    same_file_as_kept = history["source_file"].to_numpy(dtype=object) == kept_files.reindex(history["deal_id"]).to_numpy(dtype=object)
    follows = (dropped_keys.get_indexer(history_key) >= 0) & ~same_file_as_kept
    dropped_where = _where(dropped).set_axis(dropped["deal_id"].astype("str") + "\x1f" + dropped["source_file"].astype("str"))
    dropped_where = dropped_where[~dropped_where.index.duplicated()]
    history_part = _history_quarantine_rows(
        history.loc[follows],
        [f"its deal {i!r} ({dropped_where[k]}) is quarantined ({DUPLICATE_ID})"
         for i, k in zip(history.loc[follows, "deal_id"], history_key[follows])],
    )
    return (
        deals.loc[~rejected].reset_index(drop=True),
        history.loc[~follows].reset_index(drop=True),
        _concat([deal_part, history_part], QUARANTINE_COLUMNS),
    )


def _quarantine_deals(
    deals: pd.DataFrame,
    history: pd.DataFrame,
    rejected: np.ndarray,
    codes: np.ndarray,
    reasons: np.ndarray,
    column: str,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Deals flagged in `rejected` (one reason code and reason each) and all their history rows
    (`deal_quarantined`) moved to quarantine. Returns kept deals, kept history, quarantine rows."""
    if not rejected.any():
        return deals, history, empty_frame(QUARANTINE_COLUMNS)
    bad = deals.loc[rejected]
    parts = [
        _deal_quarantine_rows(bad.loc[codes[rejected] == code], str(code), column, list(reasons[rejected][codes[rejected] == code]))
        for code in pd.unique(codes[rejected])
    ]
    logger.warning("%d deal(s) cannot be valued in the reporting currency and are quarantined (first: %s)", len(bad), reasons[rejected][0])
    follows = pd.Index(bad["deal_id"]).get_indexer(history["deal_id"]) >= 0
    where = _where(bad).set_axis(bad["deal_id"].to_numpy())
    code_of = pd.Series(codes[rejected], index=bad["deal_id"].to_numpy())
    parts.append(
        _history_quarantine_rows(
            history.loc[follows],
            [f"its deal {i!r} ({where[i]}) is quarantined ({code_of[i]})" for i in history.loc[follows, "deal_id"]],
        )
    )
    return (
        deals.loc[~rejected].reset_index(drop=True),
        history.loc[~follows].reset_index(drop=True),
        _concat(parts, QUARANTINE_COLUMNS),
    )


def _deal_quarantine_rows(deals: pd.DataFrame, code: str, column: str, reasons: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source_file": deals["source_file"].to_numpy(),
            "source_row": deals["source_row"].to_numpy(dtype=np.int64),
            "reason_code": code,
            "reason": np.asarray(reasons, dtype=object),
            "column": column,
            "raw_record": np.asarray(_records_as_json(deals), dtype=object),
        }
    ).astype(QUARANTINE_COLUMNS)


def _history_quarantine_rows(history: pd.DataFrame, reasons: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source_file": history["source_file"].to_numpy(),
            "source_row": history["source_row"].to_numpy(dtype=np.int64),
            "reason_code": DEAL_QUARANTINED,
            "reason": np.asarray(reasons, dtype=object),
            "column": "deal_id",
            "raw_record": np.asarray(_records_as_json(history), dtype=object),
        }
    ).astype(QUARANTINE_COLUMNS)


def _row_keys(frame: pd.DataFrame, codes: dict[str, int]) -> np.ndarray:
    """(source_file, source_row) as one int64 per row (file codes from `codes`)."""
    found, names = pd.factorize(frame["source_file"])
    per_name = np.array([codes.get(str(n), -1) for n in names] + [-1], dtype=np.int64)
    return (per_name[found] << 40) + frame["source_row"].to_numpy(dtype=np.int64)


def _add_quarantine(
    quarantine: pd.DataFrame, additions: list[pd.DataFrame], files: list[FileReport]
) -> tuple[pd.DataFrame, list[FileReport]]:
    """The readers' quarantine plus the rows quarantined by the rules across files (one row per
    source row: a source row already quarantined keeps its first reason), and the file reports
    with those rows moved from accepted to quarantined."""
    added = _concat(additions, QUARANTINE_COLUMNS)
    if added.empty:
        return quarantine, files
    codes = {str(r.path): i for i, r in enumerate(files)}
    for name in pd.unique(pd.concat([quarantine["source_file"], added["source_file"]]).astype("str")):
        codes.setdefault(str(name), len(codes))
    keys = _row_keys(added, codes)
    new = ~pd.Series(keys).duplicated().to_numpy() & ~np.isin(keys, _row_keys(quarantine, codes))
    added = added.loc[new]
    moved = added["source_file"].value_counts()
    files = [
        dataclasses.replace(
            r,
            rows_accepted=r.rows_accepted - int(moved.get(str(r.path), 0)),
            rows_quarantined=r.rows_quarantined + int(moved.get(str(r.path), 0)),
        )
        for r in files
    ]
    merged = pd.concat([quarantine, added], ignore_index=True).astype(QUARANTINE_COLUMNS)
    return merged.sort_values(["source_file", "source_row"], kind="stable").reset_index(drop=True), files


def _concat(frames: list[pd.DataFrame], columns: dict[str, str]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    if not frames:
        return empty_frame(columns)
    if len(frames) == 1:
        return frames[0]
    return pd.concat(frames, ignore_index=True).astype(columns)


def _check_reconciliation(
    files: list[FileReport], deals: pd.DataFrame, history: pd.DataFrame, quarantine: pd.DataFrame
) -> None:
    """Every row read is accepted or quarantined: rows_read = rows_accepted + rows_quarantined, and
    the counts agree with the frames (a reader that lost rows is a bug, reported loudly). A source
    row counts once however many canonical records it feeds (a deals export that also carries
    stage history), as quarantined when it is in quarantine."""
    codes = {str(r.path): i for i, r in enumerate(files)}
    quarantined_keys = _row_keys(quarantine, codes)
    canonical_keys = pd.unique(np.concatenate([_row_keys(deals, codes), _row_keys(history, codes)]))
    canonical_keys = canonical_keys[~np.isin(canonical_keys, quarantined_keys)]
    canonical = pd.Series(canonical_keys >> 40).value_counts()
    quarantined = pd.Series(pd.unique(quarantined_keys) >> 40).value_counts()
    problems = []
    for code, report in enumerate(files):
        name = str(report.path)
        in_quarantine = int(quarantined.get(code, 0))
        in_frames = int(canonical.get(code, 0))
        if report.rows_read != report.rows_accepted + report.rows_quarantined:
            problems.append(
                f"{name}: {report.rows_read} rows read but {report.rows_accepted} accepted + "
                f"{report.rows_quarantined} quarantined"
            )
        if in_quarantine != report.rows_quarantined:
            problems.append(f"{name}: {report.rows_quarantined} rows reported quarantined, {in_quarantine} in quarantine")
        if in_frames and in_frames != report.rows_accepted:
            problems.append(f"{name}: {report.rows_accepted} rows reported accepted, {in_frames} canonical rows")
    if problems:
        raise RuntimeError("ingest reconciliation failed (rows lost or counted twice): " + "; ".join(problems))
    for report in files:
        logger.info(
            "%s (%s): %d rows read = %d accepted + %d quarantined",
            report.path, report.format, report.rows_read, report.rows_accepted, report.rows_quarantined,
        )
