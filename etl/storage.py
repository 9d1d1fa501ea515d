"""Files kept through a filesystem abstraction, so one setting moves them from a local folder to
object storage: a plain path (`/data/dealcast`, `store`) or an fsspec URL (`s3://bucket/dealcast`,
`gs://bucket/dealcast`, `file:///mnt/shared/dealcast`, `memory://dealcast` in tests).

Object-storage URLs need the fsspec driver of that store installed beside Dealcast (`s3fs` for
s3://, `gcsfs` for gs://; the `s3` and `gcs` extras of the package); credentials come from the
driver's usual environment (AWS_* variables, an instance role, GOOGLE_APPLICATION_CREDENTIALS).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from upath import UPath

LOCAL_PROTOCOLS = ("", "file", "local")


def is_url(value: str | os.PathLike) -> bool:
    """True for `scheme://...` values (an object store or an explicit `file://` URL)."""
    return "://" in str(value)


def location(value: str | os.PathLike, base: Path | None = None) -> Path:
    """The path `value` names: a URL as a UPath of its filesystem; a local path as a `Path`,
    relative ones taken from `base` (else the current directory)."""
    if isinstance(value, UPath) and not is_local(value):
        return value
    if is_url(value):
        path = UPath(str(value))
        return Path(path.path) if is_local(path) else path
    path = Path(value)
    if not path.is_absolute():
        path = (base if base is not None else Path.cwd()) / path
    return path.resolve()


def is_local(path: str | os.PathLike) -> bool:
    """True when `path` is on this machine's disk (a plain path or a file:// URL)."""
    if isinstance(path, UPath):
        return path.protocol in LOCAL_PROTOCOLS
    if isinstance(path, Path):
        return True
    return not is_url(path) or str(path).startswith(("file://", "local://"))


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write `path` through `write(handle)` so that a reader sees the old file or the whole new one,
    never a half-written one. Locally: a temporary file beside it, then an atomic rename. On an
    object store a single upload is already all-or-nothing, so the object is written directly."""
    if is_local(path):
        folder = Path(str(path)).parent
        folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=Path(str(path)).suffix, dir=folder)
        try:
            with os.fdopen(handle, "wb") as out:
                write(out)
            os.replace(temporary, Path(str(path)))
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        write(out)

