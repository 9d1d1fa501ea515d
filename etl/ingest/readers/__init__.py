"""CRM export readers: each turns one CRM's export files into the canonical frames of `etl.schema`.

A reader is an `ExportReader`: the CRM it reads, the file formats it recognises from a file's header
line, and a `read` function that takes the recognised files grouped by format. `etl.ingest.exports` finds
the files in an exports directory, asks every registered reader which format each file is, and
hands each reader its files. A new CRM plugs in by adding its `ExportReader` to
`etl.ingest.exports.READERS`; nothing else changes.

Every reader keeps the reconciliation identity for each file it reads:
rows_read = rows that became canonical rows (or lookup entries) + rows put in quarantine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from etl.stages import PipelineStages

if TYPE_CHECKING:
    from etl.config import ProjectConfig
    from etl.validation.raw import RawSuite
    from etl.ingest.csvfiles import CsvHeader


# `SourceExport.history_gaps`: a history row whose "previous value" column (`column`) does not
# match the row before it: `expected` is the previous row's value, `found` the row's own text.
HISTORY_GAP_COLUMNS = ["deal_id", "source_file", "source_row", "column", "expected", "found"]


class ExportFormatError(ValueError):
    """An export file that cannot be read at all (empty, binary, truncated, wrong delimiter,
    missing columns). The message names the file, the line and what was expected."""


@dataclass(frozen=True)
class FileReport:
    """One input file as it was read.

    `rows_read` counts the data rows (records after the header); `rows_accepted` the rows that
    became canonical rows (deals, history rows) or lookup entries (owners, accounts);
    `rows_quarantined` the rows put in quarantine. rows_read = rows_accepted + rows_quarantined.
    """

    path: Path
    format: str
    rows_read: int
    sha256: str
    rows_accepted: int = 0
    rows_quarantined: int = 0
    # Canonical column -> the file's own header for it, so that a problem found in a canonical
    # column (etl.validation.canonical) names the column the person fixing the export knows.
    columns: dict[str, str] = field(default_factory=dict)


@dataclass
class SourceExport:
    """What one reader produced from its files (see `etl.ingest.exports.IngestResult` for the columns).

    `pipelines` are the pipelines the reader inferred from the export because dealcast.toml does
    not configure them; `history_gaps` lists history rows whose "previous value" columns do not
    match the row before them (history rows missing from the export).
    """

    deals: pd.DataFrame
    history: pd.DataFrame
    quarantine: pd.DataFrame
    files: list[FileReport]
    pipelines: list[PipelineStages] = field(default_factory=list)
    history_gaps: pd.DataFrame | None = None
    # The raw suites the reader declared on its files as written (etl.validation.raw.RawSuite); the
    # reader runs none of them: etl.ingest.exports has etl.validation.raw run them all at once.
    raw_suites: list[RawSuite] = field(default_factory=list)
    # What the reader decided that a person should know, one sentence each, said once (for example
    # which field the loss reason was read from, or that owners are shown by their ids).
    notes: list[str] = field(default_factory=list)
    # True when the deal records leave closed_at, a blank last stage change and the push count to
    # the stage history (Salesforce's Opportunity): `deals` hold them as recorded, and the load step
    # (etl.ingest.exports) completes them with etl.pipeline_state.completed_from_history.
    completed_from_history: bool = False


@dataclass(frozen=True)
class ExportReader:
    """A CRM's export reader as `etl.ingest.exports` sees it.

    `detect(header, path)` returns one of `formats` when the file is one of this CRM's exports
    (from its header, or from its file name when the header is damaged, so that the reader can
    then explain what is wrong), else None. `read(files_by_format, project)` reads them all.
    """

    source_system: str
    formats: tuple[str, ...]
    detect: Callable[["CsvHeader | None", Path], str | None]
    read: Callable[[Mapping[str, Sequence[Path]], "ProjectConfig"], SourceExport]
    # Formats whose rows become lookup entries (owner names, account names), not deals or history.
    lookup_formats: tuple[str, ...] = ()
    # Formats whose rows are only stage history of deals read from other files (Salesforce's
    # OpportunityHistory.csv): their rows are judged apart from the deals' in the quarantine share.
    history_formats: tuple[str, ...] = ()
