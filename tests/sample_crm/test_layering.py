"""The production packages never import the simulator: `sample_crm` may use `etl`, not the other way."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# `import sample_crm...` or `from sample_crm... import`, at any indentation (imports inside functions too).
SAMPLE_IMPORT = re.compile(r"^\s*(?:import|from)\s+sample_crm\b", re.MULTILINE)


def _sample_imports(path: Path, root: Path = ROOT) -> list[str]:
    """`file:line` of every import of sample_crm in `path`."""
    text = path.read_text(encoding="utf-8")
    return [f"{path.relative_to(root)}:{text.count(chr(10), 0, m.start()) + 1}" for m in SAMPLE_IMPORT.finditer(text)]


def test_no_production_module_imports_the_sample():
    offenders = [
        where for package in ("etl", "models", "assets") for path in sorted((ROOT / package).rglob("*.py"))
        for where in _sample_imports(path)
    ]  # fmt: skip
    assert offenders == []


def test_the_check_finds_an_import_inside_a_function(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import os\n\ndef f():\n    from sample_crm.generate import generate_sample\n    return generate_sample\n")
    assert _sample_imports(probe, tmp_path) == ["probe.py:4"]
