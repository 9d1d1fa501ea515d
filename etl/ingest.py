"""Ingest: every CRM export file in an exports directory -> canonical deals, history, quarantine.

`read_exports` looks at each file's header line to decide its format, hands each CRM reader the
files it recognises (`READERS`), and checks that every row of every file was either accepted or
quarantined. Files that are no known export (a quota file, notes) are listed as skipped.

A new CRM reader plugs in by adding its `etl.readers.ExportReader` to `READERS`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from etl.config import ProjectConfig
from etl.readers import HISTORY_GAP_COLUMNS, ExportFormatError, ExportReader, FileReport, SourceExport
from etl.readers import salesforce
from etl.readers.csvfiles import sniff_header
from etl.schema import DEAL_COLUMNS, DEAL_HISTORY_COLUMNS, QUARANTINE_COLUMNS, empty_frame
from etl.stages import StageCatalog

logger = logging.getLogger(__name__)

__all__ = [
    "READERS",
    "ExportFormatError",
    "FileReport",
    "IngestResult",
    "detect_format",
    "read_exports",
]

# The CRM readers, asked in this order which format a file is.
READERS: tuple[ExportReader, ...] = (salesforce.READER,)
# Export formats whose rows are lookups (names of owners and accounts), not deals or history rows.
LOOKUP_FORMATS: frozenset[str] = frozenset(fmt for reader in READERS for fmt in reader.lookup_formats)


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


def _reader_for(path: Path) -> tuple[ExportReader, str] | None:
    header = sniff_header(path)
    for reader in READERS:
        found = reader.detect(header, path)
        if found is not None:
            return reader, found
    return None


def detect_format(path: Path) -> str | None:
    """The export format of `path` from its header line (e.g. "salesforce_opportunity",
    "salesforce_history", "salesforce_user", "salesforce_account"), or None when it is no known
    export. A file with a damaged header but a CRM's usual file name (Opportunity.csv) still gets
    that format, so that reading it explains what is wrong."""
    found = _reader_for(Path(path))
    return found[1] if found else None


def _export_files(exports_dir: Path) -> list[Path]:
    return sorted(
        (p for p in exports_dir.iterdir() if p.is_file() and not p.name.startswith((".", "~$"))),
        key=lambda p: p.name.lower(),
    )


def read_exports(exports_dir: Path, project: ProjectConfig) -> IngestResult:
    """Read every CRM export in `exports_dir` (not its subfolders) into canonical frames.

    Raises `ExportFormatError` when a recognised file cannot be read at all, or when the
    directory holds no CRM export; FileNotFoundError when the directory does not exist.
    """
    exports_dir = Path(exports_dir)
    if not exports_dir.is_dir():
        raise FileNotFoundError(f"exports directory not found: {exports_dir}")
    by_reader: dict[str, dict[str, list[Path]]] = {}
    readers: dict[str, ExportReader] = {}
    skipped: list[Path] = []
    for path in _export_files(exports_dir):
        found = _reader_for(path)
        if found is None:
            logger.info("%s: not a known CRM export; skipped", path)
            skipped.append(path)
            continue
        reader, fmt = found
        readers[reader.source_system] = reader
        by_reader.setdefault(reader.source_system, {}).setdefault(fmt, []).append(path)
    if not by_reader:
        raise ExportFormatError(
            f"{exports_dir}: no CRM export found among {len(skipped)} file(s); expected for example "
            "Opportunity.csv and OpportunityHistory.csv from a Salesforce Data Export"
        )

    exports: list[SourceExport] = [readers[system].read(files, project) for system, files in by_reader.items()]
    stages = project.stages
    for export in exports:
        for pipeline in export.pipelines:
            stages = stages.with_pipeline(pipeline)

    deals = _concat([e.deals for e in exports], DEAL_COLUMNS)
    history = _concat([e.history for e in exports], DEAL_HISTORY_COLUMNS)
    quarantine = _concat([e.quarantine for e in exports], QUARANTINE_COLUMNS)
    gaps = [e.history_gaps for e in exports if e.history_gaps is not None and not e.history_gaps.empty]
    files = [report for e in exports for report in e.files]
    _check_reconciliation(files, deals, history, quarantine)
    _check_unique_deals(deals)
    return IngestResult(
        deals=deals,
        history=history,
        quarantine=quarantine,
        files=files,
        skipped_files=skipped,
        stages=stages,
        history_gaps=pd.concat(gaps, ignore_index=True) if gaps else pd.DataFrame(columns=HISTORY_GAP_COLUMNS),
    )


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
    the counts agree with the frames (a reader that lost rows is a bug, reported loudly)."""
    canonical = pd.concat([deals["source_file"], history["source_file"]]).value_counts()
    quarantined = quarantine["source_file"].value_counts()
    problems = []
    for report in files:
        name = str(report.path)
        in_quarantine = int(quarantined.get(name, 0))
        in_frames = int(canonical.get(name, 0))
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


def _check_unique_deals(deals: pd.DataFrame) -> None:
    repeated = deals["deal_id"].duplicated(keep=False)
    if repeated.any():
        sample = deals.loc[repeated, ["deal_id", "source_file", "source_row"]].head(4).to_dict("records")
        raise ExportFormatError(
            f"the same deal id comes from more than one export: {sample}; expected each deal in one CRM export"
        )
