"""Argument parsing shared by the command lines (`dealcast`, `dealcast-sample`): a parser whose errors
are one line, and the argument types for dates and numbers with messages that say what was expected."""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block), with exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def iso_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from None


def whole_number(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def one_line_error(prog: str, exc: Exception) -> str:
    """`exc` as one line after `prog`: an OS error with the file it concerns, any other error's message
    with its line breaks collapsed (a database's own message may span several)."""
    if isinstance(exc, OSError):
        where = f" {exc.filename}:" if exc.filename else ""
        return f"{prog}:{where} {exc.strerror or exc}"
    return f"{prog}: {' '.join(str(exc).split())}"
