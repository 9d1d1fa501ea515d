"""The one-line error both command lines print."""

from etl.cli_arguments import one_line_error
from etl.config import ConfigError


def test_an_os_error_names_its_file():
    error = FileNotFoundError(2, "No such file or directory", "/data/exports/Opportunity.csv")
    assert one_line_error("dealcast summary", error) == "dealcast summary: /data/exports/Opportunity.csv: No such file or directory"


def test_an_os_error_without_a_file_and_a_multi_line_message_stay_on_one_line():
    assert one_line_error("dealcast-sample", PermissionError("denied")) == "dealcast-sample: denied"
    error = ConfigError("dealcast.toml: [validation] max_quarantine_share:\n  expected a share between 0 and 1")
    assert one_line_error("dealcast summary", error) == (
        "dealcast summary: dealcast.toml: [validation] max_quarantine_share: expected a share between 0 and 1"
    )
