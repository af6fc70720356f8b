import json
import os
import signal
import subprocess
import sys

import pyarrow as pa
import pytest
import torch

from stages.common import artifacts
from stages.common.artifacts import ArtifactError

SCHEMA = pa.schema([("step", pa.int32()), ("mse", pa.float64())])
PROV = {"stage": "test.stage", "seed": 0}


def table(n=10):
    return pa.table({"step": list(range(n)), "mse": [0.5 * i for i in range(n)]})


def test_table_roundtrip_keeps_schema_and_provenance(tmp_path):
    path = artifacts.write_table(tmp_path / "t.parquet", table(), SCHEMA, PROV)
    got = artifacts.read_table(path, SCHEMA)
    assert got.schema.field("step").type == pa.int32()
    assert got.column("mse").to_pylist()[3] == 1.5
    assert artifacts.read_provenance(path) == PROV


def test_table_bytes_are_deterministic(tmp_path):
    a = artifacts.write_table(tmp_path / "a.parquet", table(), SCHEMA, PROV)
    b = artifacts.write_table(tmp_path / "b.parquet", table(), SCHEMA, PROV)
    assert artifacts.file_sha256(a) == artifacts.file_sha256(b)


@pytest.mark.parametrize("expected, message", [
    (pa.schema([("step", pa.int32()), ("loss", pa.float64())]), "missing column 'loss'"),
    (pa.schema([("step", pa.int64())]), "column 'step' has type int32, expected int64"),
])
def test_reader_names_file_and_column(tmp_path, expected, message):
    path = artifacts.write_table(tmp_path / "t.parquet", table(), SCHEMA, PROV)
    with pytest.raises(ArtifactError, match=message) as err:
        artifacts.read_table(path, expected)
    assert str(path) in str(err.value)


def test_corrupt_parquet_is_a_clear_error(tmp_path):
    path = artifacts.write_table(tmp_path / "t.parquet", table(), SCHEMA, PROV)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ArtifactError, match="not a readable Parquet file"):
        artifacts.read_table(path, SCHEMA)


def test_writer_refuses_table_missing_a_schema_column(tmp_path):
    with pytest.raises(ArtifactError, match=r"lacks column\(s\) \['mse'\]"):
        artifacts.write_table(tmp_path / "t.parquet", pa.table({"step": [1]}), SCHEMA, PROV)


def test_checkpoint_roundtrip_and_tamper_detection(tmp_path):
    path = artifacts.save_checkpoint(tmp_path / "m.safetensors", {"w": torch.ones(3, 2)}, PROV)
    assert torch.equal(artifacts.load_checkpoint(path, ["w"])["w"], torch.ones(3, 2))
    assert artifacts.read_provenance(path) == PROV
    with pytest.raises(ArtifactError, match=r"lacks tensor\(s\) \['b'\]"):
        artifacts.load_checkpoint(path, ["w", "b"])
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="do not match the hash"):
        artifacts.load_checkpoint(path)
    artifacts.sidecar_path(path).unlink()
    with pytest.raises(ArtifactError, match="has no sidecar"):
        artifacts.load_checkpoint(path)


KILLED_WRITER = """
import sys, time, pyarrow as pa, pyarrow.parquet as pq
from stages.common import artifacts
real = pq.write_table
def slow_write(table, where, **kw):
    with open(where, "wb") as fh:
        fh.write(b"PAR1 half a file")
        fh.flush()
    print("writing", flush=True)
    time.sleep(60)
pq.write_table = slow_write
artifacts.write_table(sys.argv[1], pa.table({"step": [7], "mse": [7.0]}),
                      pa.schema([("step", pa.int32()), ("mse", pa.float64())]), {"stage": "new"})
"""


@pytest.mark.parametrize("had_old_version", [False, True])
def test_sigkill_mid_write_leaves_old_artifact_or_none(tmp_path, env, had_old_version):
    path = tmp_path / "t.parquet"
    if had_old_version:
        artifacts.write_table(path, table(), SCHEMA, PROV)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if had_old_version:
        assert artifacts.read_table(path, SCHEMA).num_rows == 10
        assert artifacts.read_provenance(path) == PROV
    else:
        assert not path.exists()
        with pytest.raises(ArtifactError, match="does not exist"):
            artifacts.read_table(path, SCHEMA)


def test_killed_checkpoint_write_between_renames_is_rejected(tmp_path):
    path = artifacts.save_checkpoint(tmp_path / "m.safetensors", {"w": torch.zeros(2)}, PROV)
    # The state a kill leaves after the new checkpoint is renamed in but before its sidecar is:
    side = artifacts.sidecar_path(path)
    old_sidecar = json.loads(side.read_text())
    side.unlink()
    with pytest.raises(ArtifactError, match="has no sidecar"):
        artifacts.load_checkpoint(path)
    side.write_text(json.dumps({**old_sidecar, "sha256": "0" * 64}))
    with pytest.raises(ArtifactError, match="do not match the hash"):
        artifacts.load_checkpoint(path)
