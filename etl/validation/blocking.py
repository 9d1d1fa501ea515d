"""The blocking checks a night's ingest reports by name, each gathering the `data_quality_results` rows of
one concern (severity "error"):

- `deals_not_empty`: at least one deal accepted;
- `volume_not_collapsed`: accepted deals at least (1 - `max_volume_drop_share`) x the previous published
  night's accepted count (`[validation] max_volume_drop_share` in dealcast.toml, 0.5 by default);
- `reconciliation_balanced`: for every input file, rows read = accepted + quarantined + excluded;
- `quarantine_share_within_limit`: at most `max_quarantine_share` of the deal rows, and of the history
  rows, quarantined;
- `stage_events_consistent`: the stage events rebuilt from the accepted history pass their suite.

Every blocking result row belongs to exactly one of them, so a new blocking rule cannot go unreported:
`blocking_verdicts` raises when a row matches none.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from etl.validation.canonical import CHECK_DEALS_NOT_EMPTY, CHECK_VOLUME
from etl.validation.outcome import SEVERITY_ERROR
from etl.validation.reconciliation import CHECK_HISTORY_QUARANTINE_SHARE, CHECK_QUARANTINE_SHARE, CHECK_RECONCILIATION
from etl.validation.stage_events import (
    CHECK_EVENTS_DAYS,
    CHECK_EVENTS_DEAL_KNOWN,
    CHECK_EVENTS_EXIT_AFTER_ENTRY,
    CHECK_EVENTS_NOT_FUTURE,
    CHECK_EVENTS_STAGE_KNOWN,
    CHECK_EVENTS_TIME_ORDER,
)


@dataclass(frozen=True)
class BlockingCheck:
    """A named blocking check: the result rows it gathers (exact check names, or name prefixes)."""

    name: str
    description: str
    check_names: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()

    def covers(self, check_name: str) -> bool:
        return check_name in self.check_names or check_name.startswith(self.prefixes)


BLOCKING_CHECKS = (
    BlockingCheck("deals_not_empty", "At least one deal is accepted from the exports.", check_names=(CHECK_DEALS_NOT_EMPTY,)),
    BlockingCheck(
        "volume_not_collapsed",
        "Accepted deals are at least (1 - [validation] max_volume_drop_share) times the previous published night's.",
        check_names=(CHECK_VOLUME,),
    ),
    BlockingCheck(
        "reconciliation_balanced",
        "For every input file, rows read = accepted + quarantined + excluded: no row lost.",
        prefixes=(f"{CHECK_RECONCILIATION}[",),
    ),
    BlockingCheck(
        "quarantine_share_within_limit",
        "At most [validation] max_quarantine_share of the deal rows, and of the history rows, are quarantined.",
        check_names=(CHECK_QUARANTINE_SHARE, CHECK_HISTORY_QUARANTINE_SHARE),
    ),
    BlockingCheck(
        "stage_events_consistent",
        "The stage events rebuilt from the accepted history name known deals and stages, in time order, by as_of.",
        check_names=(
            CHECK_EVENTS_DEAL_KNOWN, CHECK_EVENTS_STAGE_KNOWN, CHECK_EVENTS_TIME_ORDER, CHECK_EVENTS_EXIT_AFTER_ENTRY,
            CHECK_EVENTS_DAYS, CHECK_EVENTS_NOT_FUTURE,
        ),  # fmt: skip
    ),
)


@dataclass(frozen=True)
class CheckVerdict:
    """One named check's outcome over its result rows."""

    name: str
    passed: bool
    results: pd.DataFrame  # its data_quality_results rows (check_name, passed, observed, expected, failing_rows)

    @property
    def failed(self) -> pd.DataFrame:
        return self.results.loc[~self.results["passed"].astype(bool)].reset_index(drop=True)


def blocking_verdicts(results: pd.DataFrame) -> list[CheckVerdict]:
    """Each of `BLOCKING_CHECKS` over the blocking rows of `results` (a `data_quality_results` frame).
    A check with no rows passes (e.g. the volume check runs only when there is a previous night).
    Raises ValueError naming a blocking result row that none of the checks gathers."""
    blocking = results.loc[results["severity"] == SEVERITY_ERROR].reset_index(drop=True)
    names = blocking["check_name"].astype(str)
    owners = [[check.name for check in BLOCKING_CHECKS if check.covers(name)] for name in names]
    stray = [name for name, found in zip(names, owners) if len(found) != 1]
    if stray:
        raise ValueError(
            f"blocking result {stray[0]!r}: expected exactly one named blocking check to gather it "
            f"({', '.join(check.name for check in BLOCKING_CHECKS)}); add it to BLOCKING_CHECKS"
        )
    verdicts = []
    for check in BLOCKING_CHECKS:
        rows = blocking.loc[[found[0] == check.name for found in owners]].reset_index(drop=True)
        verdicts.append(CheckVerdict(check.name, bool(rows["passed"].astype(bool).all()), rows))
    return verdicts
