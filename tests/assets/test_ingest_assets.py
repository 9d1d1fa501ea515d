"""The `crm_exports` asset called as a function: it lists the export files it finds and never writes
any; with no files it fails saying where it looked and how to get a sample."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

from assets.ingest import crm_exports
from assets.resources import DealcastSettings

ROOT = Path(__file__).resolve().parents[2]
NIGHT = "2026-11-15"
FIXTURES = ROOT / "tests" / "fixtures" / "salesforce" / "small"


@pytest.fixture(autouse=True)
def _environment(tmp_path, monkeypatch):
    monkeypatch.delenv("DEALCAST_EXPORTS_DIR", raising=False)
    monkeypatch.delenv("DEALCAST_AS_OF", raising=False)
    monkeypatch.setenv("DEALCAST_PROJECT_DIR", str(tmp_path))


def _settings(exports: Path | None) -> DealcastSettings:
    return DealcastSettings(exports_dir=str(exports) if exports else None, config_file=str(ROOT / "dealcast.toml"))


def _failure(settings: DealcastSettings) -> str:
    with pytest.raises(dg.Failure) as failure:
        crm_exports(dg.build_asset_context(partition_key=NIGHT), settings=settings)
    return failure.value.description


def test_an_empty_exports_folder_fails_naming_it_and_the_sample_commands(tmp_path):
    exports = tmp_path / "exports"
    exports.mkdir()
    message = _failure(_settings(exports))
    assert f"the exports folder {exports} holds no files" in message
    assert "`make demo`" in message and f"dealcast-sample --out {exports}" in message
    assert list(exports.iterdir()) == []


def test_the_default_folder_missing_fails_and_no_sample_is_generated(tmp_path):
    message = _failure(_settings(None))
    default = tmp_path / "sample_exports"
    assert f"the default exports folder {default} (no DEALCAST_EXPORTS_DIR and no exports_dir setting) does not exist" in message
    assert not default.exists()


def test_export_files_are_listed_one_row_each(tmp_path):
    exports = tmp_path / "exports"
    shutil.copytree(FIXTURES, exports)
    expected = sorted(p.name for p in exports.iterdir() if p.is_file())
    output = crm_exports(dg.build_asset_context(partition_key=NIGHT), settings=_settings(exports))
    assert sorted(output.value["file"]) == expected
    assert output.metadata["dagster/row_count"].value == len(expected)
    assert sorted(p.name for p in exports.iterdir()) == expected  # nothing written into the folder
