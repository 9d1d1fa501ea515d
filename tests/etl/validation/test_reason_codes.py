"""The quarantine reason codes are defined once, in `etl.validation.reason_codes`, and every other
module of `etl` imports them from there instead of writing the code again."""

from __future__ import annotations

import ast
from pathlib import Path

from etl.validation import reason_codes

ETL = Path(__file__).resolve().parents[3] / "etl"


def _codes() -> dict[str, str]:
    return {name: value for name, value in vars(reason_codes).items() if name.isupper() and isinstance(value, str)}


def test_each_reason_code_has_one_name_and_one_value():
    codes = _codes()
    # The values are the stored `quarantine.reason_code` contract: stable, never renamed.
    assert codes["MISSING_ID"] == "missing_id"
    assert codes["DUPLICATE_ID"] == "duplicate_id"
    assert codes["NO_RATE_FOR_DATE"] == "no_rate_for_date"
    assert reason_codes.EXCLUDED_CODES == ("excluded_by_filter", "deleted_in_crm", "inactive_version")
    assert len(set(codes.values())) == len(codes), "two names for the same reason code"


def test_no_other_etl_module_defines_a_reason_code_again():
    codes = _codes()
    home = ETL / "validation" / "reason_codes.py"
    redefined = []
    for path in sorted(ETL.rglob("*.py")):
        if path == home:
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if not isinstance(node, ast.Assign):
                continue
            value = node.value
            for target in node.targets:
                if not isinstance(target, ast.Name) or target.id not in codes:
                    continue
                literal = isinstance(value, ast.Constant) and value.value == codes[target.id]
                alias = isinstance(value, ast.Attribute) and value.attr == target.id
                if literal or alias:
                    redefined.append(f"{path.relative_to(ETL.parent)}:{node.lineno} {target.id}")
    assert redefined == []
