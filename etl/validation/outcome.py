"""What a validation run returns: the accepted frames, the quarantine, one `data_quality_results`
row per check (`check_result`) and a sample of each check's failing rows, with the report shown to
the people fixing the export."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

import pandas as pd


ASSET_DEALS = "deals"
ASSET_HISTORY = "deal_history"
ASSET_EXPORTS = "crm_exports"

SEVERITY_ERROR = "error"
SEVERITY_ROW = "row"
SEVERITY_WARNING = "warning"


CHECK_NAME_MAX = 255  # data_quality_results.check_name is VARCHAR(255)


SAMPLE_ROWS_KEPT = 100  # failing rows kept per check for `sample_rows`


@dataclass
class ValidationOutcome:
    """What validation accepted, what it quarantined and why, and every check's result."""

    deals: pd.DataFrame
    history: pd.DataFrame
    quarantine: pd.DataFrame
    results: pd.DataFrame
    reconciliation: pd.DataFrame
    as_of: dt.date | None = None  # the run's date, shown in the report
    # Per check, its first failing rows (up to SAMPLE_ROWS_KEPT), served by `sample_rows`.
    failures: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    @property
    def blocking_failures(self) -> pd.DataFrame:
        """Result rows that must stop the run: severity "error" and not passed."""
        failed = (self.results["severity"] == SEVERITY_ERROR) & ~self.results["passed"]
        return self.results.loc[failed].reset_index(drop=True)

    def sample_rows(self, check_name: str, n: int = 5) -> list[dict]:
        """Up to `n` rows that failed `check_name` (source file and row, deal id, the offending
        value and why), as plain values for run metadata. Checks without rows give []."""
        if check_name not in set(self.results["check_name"]):
            raise KeyError(f"no check named {check_name!r}; known checks: {sorted(self.results['check_name'])}")
        rows = self.failures.get(check_name)
        if rows is None or rows.empty or n <= 0:
            return []
        return json.loads(rows.head(n).to_json(orient="records", date_format="iso", date_unit="s"))

    def add_results(self, results: pd.DataFrame, failures: dict[str, pd.DataFrame]) -> None:
        """Append the results (and failing-row samples) of a suite run after `validate_crm`."""
        self.results = pd.concat([self.results, results], ignore_index=True)
        self.failures.update({name: sample_frame(frame) for name, frame in failures.items()})

    def report_markdown(self) -> str:
        """A readable summary: blocking failures, every check, quarantined rows per reason and the
        per-file reconciliation."""
        results = self.results
        blocking = self.blocking_failures
        title = "## CRM data validation" + (f" (as of {self.as_of.isoformat()})" if self.as_of else "")
        lines = [title, ""]
        if blocking.empty:
            lines.append("All blocking checks passed.")
        else:
            names = ", ".join(f"`{name}`" for name in blocking["check_name"])
            lines.append(f"**{len(blocking)} blocking check(s) failed:** {names}.")
        lines += [
            "",
            f"Accepted {len(self.deals):,} deals and {len(self.history):,} history rows; "
            f"quarantined {len(self.quarantine):,} source rows.",
            "",
            "### Checks",
            "",
            "| check | asset | severity | result | observed | expected |",
            "|---|---|---|---|---|---|",
        ]
        for row in results.itertuples(index=False):
            verdict = "passed" if row.passed else "FAILED"
            lines.append(
                f"| {_md(row.check_name)} | {row.asset} | {row.severity} | {verdict} | "
                f"{_md(row.observed)} | {_md(row.expected)} |"
            )
        lines += ["", "### Quarantined rows by reason", ""]
        if self.quarantine.empty:
            lines.append("No rows quarantined.")
        else:
            counts = self.quarantine["reason_code"].fillna("(none)").value_counts().sort_index()
            lines += ["| reason_code | rows |", "|---|---:|"]
            lines += [f"| {_md(code)} | {count:,} |" for code, count in counts.items()]
        lines += [
            "",
            "### Reconciliation (rows read = accepted + quarantined)",
            "",
            "| file | read | accepted | quarantined | balanced |",
            "|---|---:|---:|---:|---|",
        ]
        for rec in self.reconciliation.itertuples(index=False):
            lines.append(
                f"| {_md(rec.source_file)} | {rec.rows_read:,} | {rec.accepted:,} | "
                f"{rec.quarantined:,} | {'yes' if rec.balanced else 'NO'} |"
            )
        return "\n".join(lines) + "\n"


def _md(text: object) -> str:
    """A value safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def count_text(count: int, total: int, unit: str = "rows") -> str:
    return f"{count:,} of {total:,} {unit}"


def check_result(check: str, asset: str, passed: bool, severity: str, observed: str, expected: str, failing: int) -> dict:
    return {
        "check_name": check,
        "asset": asset,
        "passed": bool(passed),
        "severity": severity,
        "observed": observed,
        "expected": expected,
        "failing_rows": int(failing),
    }


def sample_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The columns of failing rows worth showing in run metadata (no raw record, no position)."""
    return frame.drop(columns=[c for c in ("position", "raw_record") if c in frame.columns])
