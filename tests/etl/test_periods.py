import pandas as pd
import pytest

from etl.periods import period_bounds, period_labels, quarter_end, quarter_label, quarter_start


@pytest.mark.parametrize(
    "day, fiscal_start, label, start, end",
    [
        ("2026-11-23", 1, "2026-Q4", "2026-10-01", "2027-01-01"),
        ("2026-01-01", 1, "2026-Q1", "2026-01-01", "2026-04-01"),
        # Fiscal year starting in February is named by the year it ends in: Feb 2026 - Jan 2027 is FY2027.
        ("2026-02-01", 2, "2027-Q1", "2026-02-01", "2026-05-01"),
        ("2026-01-15", 2, "2026-Q4", "2025-11-01", "2026-02-01"),
        ("2026-11-23", 11, "2027-Q1", "2026-11-01", "2027-02-01"),
    ],
)
def test_quarters(day, fiscal_start, label, start, end):
    assert quarter_label(day, fiscal_start) == label
    assert quarter_start(day, fiscal_start) == pd.Timestamp(start)
    assert quarter_end(day, fiscal_start) == pd.Timestamp(end)
    assert period_bounds(label, fiscal_start) == (pd.Timestamp(start), pd.Timestamp(end))


def test_vectorised_labels_keep_missing_values():
    values = pd.Series(pd.to_datetime(["2025-03-31 23:00", None, "2025-04-01 00:00"]))
    assert period_labels(values, "quarter").tolist()[0::2] == ["2025-Q1", "2025-Q2"]
    assert period_labels(values, "month").tolist()[0::2] == ["2025-03", "2025-04"]
    assert pd.isna(period_labels(values, "month")[1])
    assert period_bounds("2025-03") == (pd.Timestamp("2025-03-01"), pd.Timestamp("2025-04-01"))
