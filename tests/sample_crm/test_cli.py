"""`dealcast-sample`: arguments checked with one-line errors, a refused output file, and the console
script installed next to `dealcast`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sample_crm.cli import main, parser


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--out", "x", "--deals", "0"], "dealcast-sample: error: argument --deals: must be at least 1, got 0"),
        (["--out", "x", "--deals", "many"], "dealcast-sample: error: argument --deals: expected a whole number, got 'many'"),
        (["--out", "x", "--seed", "-1"], "dealcast-sample: error: argument --seed: must be at least 0, got -1"),
        (["--out", "x", "--years", "0"], "dealcast-sample: error: argument --years: must be above 0, got 0"),
        (["--out", "x", "--end-date", "31/12/2024"], "dealcast-sample: error: argument --end-date: expected a date as YYYY-MM-DD, got '31/12/2024'"),
        ([], "dealcast-sample: error: the following arguments are required: --out"),
    ],
)
def test_bad_arguments_get_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and err.startswith(message)


def test_sample_into_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("not a folder")
    assert main(["--out", str(target)]) == 2
    assert capsys.readouterr().err == f"dealcast-sample: --out {target} is a file; expected a folder\n"
    assert target.read_text() == "not a folder"


def test_a_messy_option_with_the_clean_profile_gets_one_line(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "out"), "--option", "stale_share=0.3"]) == 2
    assert capsys.readouterr().err == (
        "dealcast-sample: error: --option 'stale_share=0.3' needs --profile messy (see dealcast-sample --help)\n"
    )
    assert not (tmp_path / "out").exists()


def test_every_option_has_help_text():
    for action in parser()._actions:
        assert action.help, f"dealcast-sample: option {action.option_strings or action.dest} has no help text"


def test_console_script_and_module_write_the_same_sample(tmp_path):
    """The installed `dealcast-sample` script and `python -m sample_crm` run the same command."""
    script = shutil.which("dealcast-sample", path=str(Path(sys.executable).parent))
    assert script is not None, "dealcast-sample is not installed next to the interpreter (pip install -e .)"
    argv = ["--deals", "40", "--years", "0.5", "--seed", "3", "--end-date", "2026-06-30"]
    by_script = subprocess.run([script, "--out", str(tmp_path / "a"), *argv], capture_output=True, text=True, check=True)
    by_module = subprocess.run(
        [sys.executable, "-m", "sample_crm", "--out", str(tmp_path / "b"), *argv], capture_output=True, text=True, check=True
    )
    assert by_script.stdout.startswith("wrote 40 deals") and by_module.stdout.startswith("wrote 40 deals")
    for name in ("Opportunity.csv", "OpportunityHistory.csv", "quotas.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_an_output_folder_that_cannot_be_made_gets_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["--out", str(blocker / "sample"), "--deals", "10"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"dealcast-sample: {blocker / 'sample'}:")
