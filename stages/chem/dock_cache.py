"""The docking cache: one Parquet file of docking results, keyed by molecule and by the hash of
(receptor, box, docking settings, package versions), so a score is only ever reused for the exact setup
that produced it.

The key holds the InChIKey and the canonical SMILES: the InChIKey is what the rest of the workbench
joins on, and the canonical SMILES keeps tautomers and protonation states apart (the standard InChIKey
merges tautomers, which dock differently). Every flush rewrites the file atomically under a lock file,
merging rows another process wrote meanwhile, so a killed run keeps everything flushed before and two
runs sharing one cache do not drop each other's rows. A file that cannot be read is never deleted: the
error names it and says how to recover.
"""
from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from stages.common.artifacts import ArtifactError, read_table, write_table

log = logging.getLogger(__name__)

CACHE_SCHEMA = pa.schema([
    ("inchikey", pa.string()),
    ("canonical_smiles", pa.string()),
    ("config_hash", pa.string()),  # receptor + box + docking settings + package versions
    ("target", pa.string()),
    ("status", pa.string()),
    ("score", pa.float64()),  # kcal/mol, best pose; null unless status == "ok"
    ("pose_sdf", pa.string()),
    ("seconds", pa.float64()),  # what the docking cost when it ran
    ("error", pa.string()),
    ("docked_at", pa.timestamp("ms", tz="UTC")),
])
Key = tuple[str, str, str]  # (inchikey, canonical_smiles, config_hash)


class DockingCacheError(ArtifactError):
    """The cache file is unreadable or has the wrong schema."""


def _key(row: dict) -> Key:
    return row["inchikey"], row["canonical_smiles"], row["config_hash"]


class DockingCache:
    """In-memory view of the cache file plus the rows not yet flushed; `path=None` keeps it in memory."""

    def __init__(self, path: str | os.PathLike | None, *, recover: bool = False):
        self.path = Path(path) if path is not None else None
        self.rows: dict[Key, dict] = {}
        self.pending: list[dict] = []
        self._stamp = None
        if self.path is not None and self.path.exists():
            try:
                self._load()
            except DockingCacheError:
                if not recover:
                    raise
                aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
                os.replace(self.path, aside)
                log.warning("%s: unreadable docking cache kept aside as %s; starting an empty cache",
                            self.path, aside)

    def _load(self) -> None:
        try:
            table = read_table(self.path, CACHE_SCHEMA)
        except ArtifactError as exc:
            raise DockingCacheError(
                f"{self.path}: docking cache is unreadable ({exc}). Nothing was deleted. To recover, move "
                f"or delete that file to start an empty cache, or pass recover=True to keep it aside as "
                f"{self.path.name}.corrupt-<timestamp> and start empty.") from exc
        self._stamp = self._file_stamp()
        for row in table.select(CACHE_SCHEMA.names).to_pylist():
            self.rows.setdefault(_key(row), row)

    def _file_stamp(self):
        st = self.path.stat()
        return st.st_ino, st.st_size, st.st_mtime_ns

    def get(self, inchikey: str, canonical_smiles: str, config_hash: str) -> dict | None:
        return self.rows.get((inchikey, canonical_smiles, config_hash))

    def put(self, row: dict) -> None:
        row = {name: row.get(name) for name in CACHE_SCHEMA.names}
        row["docked_at"] = row["docked_at"] or datetime.now(UTC)
        self.rows[_key(row)] = row
        self.pending.append(row)

    def __len__(self) -> int:
        return len(self.rows)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self.path.with_name(self.path.name + ".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def flush(self) -> None:
        """Write all rows to the file atomically (merging rows others flushed since we read it)."""
        if self.path is None or not self.pending:
            self.pending.clear()
            return
        with self._locked():
            if self.path.exists() and self._file_stamp() != self._stamp:
                self._load()  # rows we already hold win for equal keys (setdefault)
            table = pa.Table.from_pylist(list(self.rows.values()), schema=CACHE_SCHEMA)
            write_table(self.path, table, CACHE_SCHEMA, provenance={"artifact": "docking_cache"})
            self._stamp = self._file_stamp()
        self.pending.clear()
