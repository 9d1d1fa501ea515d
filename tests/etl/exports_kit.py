"""Small tools to corrupt a generated Salesforce export one way at a time (the adversarial tests
and the regression tests of the safety promises in docs/data-quality.md share them)."""

from __future__ import annotations

import csv
import datetime as dt
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from etl.config import resolve_settings
from etl.ingest.crm_load import CrmLoad, load_crm

AS_OF = dt.date(2026, 6, 30)


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def write_rows(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows([header, *rows])


def copy_exports(clean: Path, target: Path) -> Path:
    shutil.copytree(clean, target)
    return target


def edit(path: Path, change: Callable[[dict[str, int], list[list[str]]], None]) -> None:
    """Rewrite a CSV export after `change(column_index, rows)` edited its data rows in place."""
    header, rows = read_rows(path)
    change({name: i for i, name in enumerate(header)}, rows)
    write_rows(path, header, rows)


def set_value(path: Path, position: int, column: str, value: str) -> int:
    """Set one value of data row `position` (0-based); returns its spreadsheet row (header = 1)."""

    def change(col: dict[str, int], rows: list[list[str]]) -> None:
        rows[position][col[column]] = value

    edit(path, change)
    return position + 2


def load(exports: Path, config: Path | None = None) -> CrmLoad:
    return load_crm(resolve_settings(exports_dir=exports, as_of=AS_OF, config_file=config))


def load_copy(fixture: Path, workdir: Path) -> CrmLoad:
    """The nightly load of a copy of the export folder `fixture` (in `workdir`), reporting in USD."""
    exports = workdir / "exports"
    shutil.copytree(fixture, exports)
    config = workdir / "dealcast.toml"
    config.write_text('[reporting]\ncurrency = "USD"\n', encoding="utf-8")
    return load(exports, config)


def quarantined_at(crm: CrmLoad, file_name: str, row: int) -> dict | None:
    """The quarantine row of `file_name` at spreadsheet row `row`, or None."""
    q = crm.validation.quarantine
    hit = q[(q["source_file"].str.endswith("/" + file_name)) & (q["source_row"] == row)]
    return None if hit.empty else hit.iloc[0].to_dict()


def quarantine_codes(crm: CrmLoad) -> dict[tuple[str, int], str]:
    """Every quarantined row as (file name, spreadsheet row) -> reason_code."""
    q = crm.validation.quarantine
    return {(Path(f).name, int(r)): code for f, r, code in zip(q["source_file"], q["source_row"], q["reason_code"])}


def reconciliation_by_file(crm: CrmLoad) -> pd.DataFrame:
    """The per-file reconciliation, indexed by file name."""
    recon = crm.validation.reconciliation
    return recon.assign(name=recon["source_file"].map(lambda s: Path(s).name)).set_index("name")
