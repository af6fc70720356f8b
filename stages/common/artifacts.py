"""Versioned artifacts: Parquet tables with an explicit schema, checkpoints with a sidecar.

Every artifact carries the same provenance (see `provenance.py`): in the Parquet schema metadata under
one namespaced key, and in a `<checkpoint>.json` sidecar for checkpoints. Writes are atomic (temp file in
the same folder, fsync, rename), so a process killed at any moment leaves the old artifact or none.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from stages.common.files import atomic_path, file_sha256  # noqa: F401 (part of the artifact API)

PROVENANCE_KEY = b"workbench.provenance"


class ArtifactError(RuntimeError):
    """An artifact is missing, corrupt, or does not have the schema its reader expects."""


def write_table(path: str | os.PathLike, table: pa.Table, schema: pa.Schema,
                provenance: Mapping | None = None) -> Path:
    """Write `table` (cast to `schema`) to Parquet atomically, with provenance in the schema metadata."""
    path = Path(path)
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise ArtifactError(f"{path}: table to write lacks column(s) {missing} of its schema")
    table = table.select(schema.names).cast(schema)
    if provenance is not None:
        meta = dict(table.schema.metadata or {})
        meta[PROVENANCE_KEY] = json.dumps(provenance, sort_keys=True).encode()
        table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def read_table(path: str | os.PathLike, schema: pa.Schema | None = None) -> pa.Table:
    """Read a Parquet artifact; when `schema` is given, check every column's presence and type."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: artifact does not exist")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for truncated/garbage files
        raise ArtifactError(f"{path}: not a readable Parquet file ({exc})") from exc
    if schema is not None:
        check_schema(path, table.schema, schema)
    return table


def check_schema(path: str | os.PathLike, actual: pa.Schema, expected: pa.Schema) -> None:
    for field in expected:
        idx = actual.get_field_index(field.name)
        if idx < 0:
            raise ArtifactError(f"{path}: missing column '{field.name}' (expected {field.type})")
        if not actual.field(idx).type.equals(field.type):
            raise ArtifactError(
                f"{path}: column '{field.name}' has type {actual.field(idx).type}, expected {field.type}")


def read_provenance(path: str | os.PathLike) -> dict:
    """Provenance of a Parquet artifact (schema metadata) or a checkpoint (its sidecar)."""
    path = Path(path)
    if path.suffix == ".parquet":
        try:
            meta = pq.read_schema(path).metadata or {}
        except Exception as exc:
            raise ArtifactError(f"{path}: not a readable Parquet file ({exc})") from exc
        raw = meta.get(PROVENANCE_KEY)
        return json.loads(raw) if raw else {}
    return _read_sidecar(path)


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(f"{path}.json")


def save_checkpoint(path: str | os.PathLike, tensors: Mapping, provenance: Mapping) -> Path:
    """Save a dict of tensors as safetensors plus a JSON sidecar holding provenance and the file hash.

    The checkpoint is renamed into place first and the sidecar last; readers demand a sidecar whose
    recorded hash matches, so a kill between the two renames leaves nothing a reader accepts.
    """
    from safetensors.torch import save_file

    path = Path(path)
    sidecar_path(path).unlink(missing_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    sidecar = {"provenance": dict(provenance), "sha256": file_sha256(path)}
    with atomic_path(sidecar_path(path)) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return path


def _read_sidecar(path: Path) -> dict:
    side = sidecar_path(path)
    if not side.exists():
        raise ArtifactError(f"{path}: checkpoint has no sidecar {side.name} (incomplete write?)")
    try:
        return json.loads(side.read_text())["provenance"]
    except (ValueError, KeyError) as exc:
        raise ArtifactError(f"{side}: corrupt checkpoint sidecar ({exc})") from exc


def load_checkpoint(path: str | os.PathLike, expected_keys: list[str] | None = None) -> dict:
    """Load a safetensors checkpoint after checking it against its sidecar's hash."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: checkpoint does not exist")
    _read_sidecar(path)
    recorded = json.loads(sidecar_path(path).read_text()).get("sha256")
    if recorded != file_sha256(path):
        raise ArtifactError(f"{path}: checkpoint bytes do not match the hash in its sidecar (corrupt?)")
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise ArtifactError(f"{path}: not a readable safetensors file ({exc})") from exc
    if expected_keys is not None:
        missing = sorted(set(expected_keys) - set(tensors))
        if missing:
            raise ArtifactError(f"{path}: checkpoint lacks tensor(s) {missing}")
    return tensors


def write_csv(path: str | os.PathLike, table: pa.Table) -> Path:
    """A human-readable copy of a table (for reports and spreadsheets); the Parquet file is the artifact."""
    import pyarrow.csv as pacsv

    with atomic_path(path) as tmp:
        pacsv.write_csv(table, tmp)
    return Path(path)


def write_json(path: str | os.PathLike, data: Mapping) -> Path:
    """Metrics files for `dvc metrics show`: plain JSON, atomically written, no provenance inside."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return Path(path)


def _curve_cell(value) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int) or getattr(getattr(value, "dtype", None), "kind", None) in ("i", "u"):
        return str(int(value))
    if isinstance(value, str):
        if any(c in value for c in ',"\n'):
            return '"' + value.replace('"', '""') + '"'
        return value
    return format(float(value), ".7g")  # float32 precision; 'nan' and 'inf' stay readable


def write_curve(path: str | os.PathLike, rows, columns=None) -> Path:
    """A curve CSV, atomically: header of `columns` (default: the first row's keys), integers as
    integers, floats with 7 significant digits, every row holding every column."""
    rows = list(rows)
    columns = list(columns) if columns is not None else (list(rows[0]) if rows else [])
    if not columns:
        raise ArtifactError(f"{path}: a curve needs at least one column")
    lines = [",".join(columns)]
    for i, row in enumerate(rows):
        missing = [c for c in columns if c not in row]
        if missing:
            raise ArtifactError(f"{path}: curve row {i} lacks column(s) {missing}")
        lines.append(",".join(_curve_cell(row[c]) for c in columns))
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    return Path(path)
