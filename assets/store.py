"""The intermediate-data store: how one step hands its output to the next.

Every asset value a later step reads goes through this IO manager, so steps can run in separate
processes, on separate machines or in separate Kubernetes pods, and share nothing but the store:

- DataFrames are Parquet files (zstd-compressed, pandas dtypes kept), one per asset, or per asset
  partition for a partitioned asset: `<base>/<asset>.parquet`, `<base>/<asset>/<partition>.parquet`;
- other values (the trained scorer, close timing) are joblib files beside them (`.joblib`);
- the base is a local folder by default (`$DAGSTER_HOME/storage/dealcast_store`, else the
  instance's storage folder) or the URL in DEALCAST_STORE_URL / the resource's `base_url`
  (`s3://bucket/dealcast`, `gs://bucket/dealcast`; the fsspec driver comes from an extra, see
  docs/deployment.md).

Assets whose result is only written to the warehouse return a MaterializeResult and store nothing.
A step may make its frames' Parquet files beforehand, on a thread while it writes the warehouse
(`encoded`, as crm_tables does): the store then writes those files as they are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg
import joblib
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field
from upath import UPath

from etl.config import ENV_STORE_URL
from etl.storage import is_local, location, write_atomic

PARQUET = ".parquet"
JOBLIB = ".joblib"
STORE_FOLDER = "dealcast_store"


class StoreError(RuntimeError):
    """A value cannot be written to or read from the store; the message names the asset and file."""


def parquet_file(frame: pd.DataFrame) -> pa.Buffer:
    """`frame` as the store writes it: a zstd-compressed Parquet file with pandas' dtypes kept, in
    memory. Raises pyarrow's error for a frame Parquet cannot hold."""
    table = pa.Table.from_pandas(frame, preserve_index=None)
    out = pa.BufferOutputStream()
    pq.write_table(table, out, compression="zstd")
    return out.getvalue()


class EncodedFrame(pd.DataFrame):
    """A DataFrame handed to the store with its Parquet file already made (`encoded`), so that a
    step can encode its outputs on a thread while it does other work, such as writing the
    warehouse: the store writes that file instead of encoding the frame again.

    Anything pandas derives from it is a plain DataFrame without the bytes; the frame itself must
    not be changed in place once encoded."""

    _metadata = ["parquet"]

    @property
    def _constructor(self):
        return pd.DataFrame


def encoded(frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Each frame (its data shared, not copied) with its Parquet file (`parquet_file`) attached; a
    frame Parquet cannot hold is left as it is, for the store to report with its asset and file."""
    out: dict[str, pd.DataFrame] = {}
    for name, frame in frames.items():
        try:
            data = parquet_file(frame)
        except (pa.ArrowException, ValueError, TypeError):
            out[name] = frame
            continue
        out[name] = EncodedFrame(frame)
        out[name].parquet = data
    return out


class ParquetJoblibStore(dg.UPathIOManager):
    """DataFrames as Parquet, anything else as joblib, through a UPath (local folder or object store)."""

    # The suffix depends on the value (Parquet or joblib), so paths are handled without one here.
    extension = None

    def _files(self, path: UPath) -> tuple[UPath, UPath]:
        return path.with_name(path.name + PARQUET), path.with_name(path.name + JOBLIB)

    def path_exists(self, path: UPath) -> bool:
        return any(file.exists() for file in self._files(path))

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        parquet, pickled = self._files(path)
        if isinstance(obj, pd.DataFrame):
            target, stale = parquet, pickled
            try:
                data = obj.parquet if isinstance(obj, EncodedFrame) else parquet_file(obj)
            except (pa.ArrowException, ValueError, TypeError) as exc:
                raise StoreError(
                    f"asset {context.asset_key.to_user_string() if context.has_asset_key else context.step_key}: "
                    f"its DataFrame cannot be written as Parquet to {parquet}: {exc}"
                ) from exc
            write_atomic(target, lambda out: out.write(memoryview(data)))
        else:
            target, stale = pickled, parquet
            write_atomic(target, lambda out: joblib.dump(obj, out, compress=3))
        # A value whose type changed since the last run must not leave its old file behind.
        if stale.exists():
            stale.unlink()

    def load_from_path(self, context: dg.InputContext, path: UPath) -> Any:
        parquet, pickled = self._files(path)
        if parquet.exists():
            with parquet.open("rb") as handle:
                return pd.read_parquet(handle, engine="pyarrow")
        if pickled.exists():
            with pickled.open("rb") as handle:
                return joblib.load(handle)
        raise FileNotFoundError(
            f"no stored value for {context.asset_key.to_user_string() if context.has_asset_key else context.name}: "
            f"neither {parquet} nor {pickled} exists; materialise the upstream asset first "
            f"(and check that every process of the run uses the same store, {self._base_path})"
        )

    def get_metadata(self, context: dg.OutputContext, obj: Any) -> dict[str, dg.RawMetadataValue]:
        parquet, pickled = self._files(self._output_path(context))
        target = parquet if isinstance(obj, pd.DataFrame) else pickled
        metadata: dict[str, dg.RawMetadataValue] = {"stored_as": target.suffix.lstrip(".")}
        try:
            metadata["stored_bytes"] = dg.MetadataValue.int(int(target.stat().st_size))
        except (OSError, NotImplementedError):
            # Some object stores cannot report a size right after a write; the value is stored
            # either way, only this figure is left out of the metadata.
            metadata["stored_bytes_note"] = "size not reported by the store's filesystem"
        return metadata

    def _output_path(self, context: dg.OutputContext) -> UPath:
        if context.has_asset_partitions:
            return next(iter(self._get_paths_for_partitions(context).values()))
        return self._get_path(context)


def default_store_location(instance: dg.DagsterInstance | None) -> Path:
    """$DAGSTER_HOME/storage/dealcast_store, else the instance's storage folder (a temporary one for
    an ephemeral instance), else ./dealcast_store."""
    home = os.environ.get("DAGSTER_HOME")
    if home:
        return Path(home).resolve() / "storage" / STORE_FOLDER
    if instance is not None:
        return Path(instance.storage_directory()) / STORE_FOLDER
    return Path.cwd() / STORE_FOLDER


class DealcastStore(dg.ConfigurableIOManagerFactory):
    """Where steps hand values to each other: a local folder by default, object storage by URL.

    Unset, the location comes from DEALCAST_STORE_URL, else $DAGSTER_HOME/storage/dealcast_store.
    A run whose steps execute on more than one machine (Celery workers, Kubernetes pods) needs a
    location every one of them reaches: an object-store URL or a shared mount.
    """

    base_url: str | None = Field(
        default=None,
        description="Folder or URL of the store (s3://bucket/dealcast, gs://bucket/dealcast); "
        "unset: DEALCAST_STORE_URL, else $DAGSTER_HOME/storage/dealcast_store.",
    )

    def location(self, instance: dg.DagsterInstance | None = None) -> Path:
        configured = self.base_url or os.environ.get(ENV_STORE_URL)
        return location(configured) if configured else default_store_location(instance)

    def create_io_manager(self, context: dg.InitResourceContext) -> ParquetJoblibStore:
        base = self.location(context.instance)
        return ParquetJoblibStore(base_path=UPath(base) if is_local(base) else base)
