"""Export text columns built fast from numbers: Salesforce ids, timestamps, dates and integers as
Arrow string arrays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sample_crm.parameters import DAY_SECONDS, civil_from_days


# Salesforce id key prefixes.
_ID_PREFIX = {"account": "001", "user": "005", "opportunity": "006", "history": "008", "role": "00E"}
_ID_START = {"account": 3_100_000, "user": 41_000, "opportunity": 7_400_000, "history": 52_000_000, "role": 900}


def _strings_from_bytes(matrix: np.ndarray, blank: np.ndarray | None = None) -> pa.Array:
    """A string array from a (rows, width) ASCII byte matrix; rows flagged in `blank` become ""."""
    n, width = matrix.shape
    lengths = np.full(n, width, dtype=np.int64)
    data = matrix
    if blank is not None and blank.any():
        lengths[blank] = 0
        data = matrix[~blank]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return pa.LargeStringArray.from_buffers(
        n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data).tobytes())
    ).cast(pa.string())


def _put_digits(out: np.ndarray, start: int, value: np.ndarray, width: int) -> None:
    for i in range(width):
        out[:, start + width - 1 - i] = 48 + (value // 10**i) % 10


def format_timestamps(seconds: np.ndarray, blank: np.ndarray | None = None) -> pa.Array:
    """`YYYY-MM-DD HH:MM:SS` for seconds since the Unix epoch (UTC)."""
    seconds = np.asarray(seconds, dtype=np.int64)
    days, sod = np.divmod(seconds, DAY_SECONDS)
    year, month, day = civil_from_days(days)
    out = np.empty((len(seconds), 19), dtype=np.uint8)
    _put_digits(out, 0, year, 4)
    _put_digits(out, 5, month, 2)
    _put_digits(out, 8, day, 2)
    _put_digits(out, 11, sod // 3600, 2)
    _put_digits(out, 14, (sod // 60) % 60, 2)
    _put_digits(out, 17, sod % 60, 2)
    out[:, [4, 7]] = ord("-")
    out[:, 10] = ord(" ")
    out[:, [13, 16]] = ord(":")
    return _strings_from_bytes(out, blank)


def format_dates(days: np.ndarray, blank: np.ndarray | None = None) -> pa.Array:
    """`YYYY-MM-DD 00:00:00` (a Salesforce date in a Data Export) for days since the Unix epoch."""
    return format_timestamps(np.asarray(days, dtype=np.int64) * DAY_SECONDS, blank)


def format_integers(values: np.ndarray, blank: np.ndarray | None = None) -> pa.Array:
    text = pc.cast(pa.array(np.asarray(values, dtype=np.int64)), pa.string())
    if blank is None or not blank.any():
        return text
    return pc.if_else(pa.array(blank), pa.scalar("", pa.string()), text)


def take_names(names: Sequence[str], codes: np.ndarray) -> pa.Array:
    return pc.take(pa.array(list(names), type=pa.string()), pa.array(np.asarray(codes, dtype=np.int64)))


def constant_texts(value: str, n: int) -> pa.Array:
    return pa.repeat(pa.scalar(value, pa.string()), n)


_BASE62 = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
_ID_SUFFIX = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345", dtype=np.uint8)


def salesforce_ids(kind: str, numbers: np.ndarray) -> pa.Array:
    """18-character Salesforce-style ids: key prefix, pod `5g`, `0`, nine base-62 digits of the
    record number, and the three-character case-safe suffix Salesforce computes from the
    upper-case letters of the first 15 characters."""
    numbers = np.asarray(numbers, dtype=np.int64) + _ID_START[kind]
    n = len(numbers)
    out = np.empty((n, 18), dtype=np.uint8)
    out[:, :6] = np.frombuffer((_ID_PREFIX[kind] + "5g0").encode(), dtype=np.uint8)
    rest = numbers.copy()
    for i in range(9):
        out[:, 14 - i] = _BASE62[rest % 62]
        rest //= 62
    upper = (out[:, :15] >= ord("A")) & (out[:, :15] <= ord("Z"))
    bits = upper.reshape(n, 3, 5).astype(np.int64) @ (1 << np.arange(5))
    out[:, 15:] = _ID_SUFFIX[bits]
    return _strings_from_bytes(out)
