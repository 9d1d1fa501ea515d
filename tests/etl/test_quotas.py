import pytest

from etl.quotas import QuotaFileError, load_quotas


def test_quota_file_is_read(tmp_path):
    path = tmp_path / "quotas.csv"
    path.write_text("quarter,segment_type,segment,amount\n2026-Q4,all,all,\"1,250,000\"\n2026-Q4,team,East,400000.50\n")
    quotas = load_quotas(path)
    assert quotas["amount"].tolist() == [1_250_000.0, 400_000.5]
    assert quotas["segment"].tolist() == ["all", "East"]


def test_no_file_means_no_quotas():
    assert load_quotas(None).empty


@pytest.mark.parametrize(
    "line, message",
    [
        ("Q4-2026,all,all,5", r"row 2, column quarter: expected YYYY-Qn"),
        ("2026-Q4,country,FR,5", r"row 2, column segment_type"),
        ("2026-Q4,all,all,lots", r"row 2, column amount: expected a number"),
        ("2026-Q4,all,all,-1", r"non-negative"),
    ],
)
def test_bad_rows_are_named(tmp_path, line, message):
    path = tmp_path / "quotas.csv"
    path.write_text("quarter,segment_type,segment,amount\n" + line + "\n")
    with pytest.raises(QuotaFileError, match=message):
        load_quotas(path)


def test_duplicates_rejected(tmp_path):
    path = tmp_path / "quotas.csv"
    path.write_text("quarter,segment_type,segment,amount\n2026-Q4,all,all,5\n2026-Q4,all,all,6\n")
    with pytest.raises(QuotaFileError, match="more than once"):
        load_quotas(path)
