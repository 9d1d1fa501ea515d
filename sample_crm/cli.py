"""The `dealcast-sample` command line (also `python -m sample_crm`): write the sample CRM export and
print a one-line summary. Errors are one line on stderr: exit status 2 for bad arguments, 1 when the
project configuration or the output folder cannot be used."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import fields as dataclass_fields
from pathlib import Path

from etl.cli_arguments import OneLineParser, iso_date, one_line_error, positive_number, whole_number
from etl.config import ConfigError
from sample_crm.generate import SampleSummary, generate_sample
from sample_crm.messy import PROFILE_CLEAN, PROFILE_MESSY, PROFILES, MessyOptions

PROG = "dealcast-sample"


def parser() -> OneLineParser:
    """The arguments of `dealcast-sample`."""
    sample = OneLineParser(
        prog=PROG,
        description="Write a simulated Salesforce export with quotas and the true win probabilities (sample_crm).",
    )
    sample.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write the export files to (created if missing)")
    sample.add_argument(
        "--deals", type=whole_number(1), default=None, metavar="N",
        help="number of deals to simulate (default 10,000; 720 with --profile messy, of which about 460 reach the CRM)",
    )  # fmt: skip
    sample.add_argument("--seed", type=whole_number(0), default=7, metavar="N", help="random seed; the same seed gives the same files (default 7)")
    sample.add_argument(
        "--end-date", type=iso_date, default=None, metavar="YYYY-MM-DD",
        help="the export's date: the last day anything happens (default: today, UTC)",
    )  # fmt: skip
    sample.add_argument(
        "--years", type=positive_number, default=None, metavar="YEARS", help="years of history (default 3.5; 1 with --profile messy)"
    )
    sample.add_argument(
        "--profile", choices=PROFILES, default=PROFILE_CLEAN,
        help="clean: every change recorded as it happens; messy: a small untidy org (wins keyed in at close, "
        "stale deals, purges, a bulk import, Spanish stages) with truth files (default clean)",
    )  # fmt: skip
    sample.add_argument(
        "--option", action="append", default=[], metavar="NAME=VALUE",
        help="a messy-profile option, repeatable, e.g. --option stale_share=0.3; what each does is in the sample_crm "
        f"package docstring (names: {', '.join(f.name for f in dataclass_fields(MessyOptions))})",
    )  # fmt: skip
    return sample


def messy_options_from(args: argparse.Namespace) -> MessyOptions | None:
    """The messy options the parsed arguments ask for (None for the clean profile).
    Raises ValueError naming a bad `--option`, or one given with the clean profile."""
    if args.profile == PROFILE_CLEAN:
        if args.option:
            raise ValueError(f"--option {args.option[0]!r} needs --profile messy")
        return None
    return MessyOptions().with_assignments(args.option)


def summary_line(s: SampleSummary) -> str:
    """One line describing a written sample."""
    line = (
        f"wrote {s.n_deals:,} deals and {s.n_history_rows:,} history rows from {s.start} to {s.end} to {s.out_dir} "
        f"({s.won:,} won, {s.lost:,} lost, {s.open:,} open)"
    )
    if s.profile == PROFILE_MESSY:
        line += "; messy shapes: " + ", ".join(f"{name} {count:,}" for name, count in s.shapes.items())
    return line


def main(argv: Sequence[str] | None = None) -> int:
    """Write the sample CRM export and print a one-line summary; the exit status."""
    args = parser().parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        print(f"{PROG}: --out {args.out} is a file; expected a folder", file=sys.stderr)
        return 2
    try:
        written = generate_sample(
            args.out, n_deals=args.deals, seed=args.seed, end_date=args.end_date, years=args.years,
            profile=args.profile, messy=messy_options_from(args),
        )  # fmt: skip
    except (ConfigError, OSError) as exc:
        print(one_line_error(PROG, exc), file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"{PROG}: error: {exc} (see {PROG} --help)", file=sys.stderr)
        return 2
    print(summary_line(written))
    return 0
