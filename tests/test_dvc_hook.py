"""The DVC hook (stages/common/site/workbench_dvc_hook.py) answers exactly what DVC's own
`read_param_file` and `strictyaml.load` answer, re-reads a changed file, hands out copies, keeps
nothing that failed, and is active in the venv."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc.dependency import param as dvc_param
from dvc.dvcfile import Lockfile, ProjectFile
from dvc.utils import strictyaml
from dvc_objects.fs.local import LocalFileSystem

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages" / "common" / "site"))
import workbench_dvc_hook as hook  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ORIGINAL = getattr(dvc_param.read_param_file, "__wrapped__", dvc_param.read_param_file)
DVC_LOAD = getattr(strictyaml.load, "__wrapped__", strictyaml.load)
FS = LocalFileSystem()


@pytest.fixture
def cached():
    hook._parsed.clear()
    return hook.cached_read_param_file(ORIGINAL)


def stage_key_lists() -> list[list[str]]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    keys = ([k for k in s.get("params", []) if isinstance(k, str)] for s in stages.values())
    return [k for k in keys if k]


def outcome(read, *args):
    """The value, or the type of the error, so two implementations can be compared on bad input too."""
    try:
        return read(FS, *args)
    except Exception as exc:  # noqa: BLE001 - the comparison is the point
        return type(exc)


def test_every_stage_reads_what_dvc_reads(cached):
    path = str(ROOT / "params.yaml")
    keys = stage_key_lists()
    assert len(keys) > 100
    every_key = sorted({k for stage in keys for k in stage})
    expected = ORIGINAL(FS, path, every_key, True)  # DVC's answer, read once for all stages
    for key_paths in keys:
        assert cached(FS, path, key_paths, True) == {k: expected[k] for k in key_paths}, key_paths
    for key_paths in (every_key, *keys[::40]):  # the nested form DVC uses for `params diff`
        assert cached(FS, path, key_paths, False) == ORIGINAL(FS, path, key_paths, False)
    assert cached(FS, path) == ORIGINAL(FS, path)
    assert len(hook._parsed) == 1  # parsed once for all stages


@pytest.mark.parametrize("keys", [["a.*"], ["a.b", "missing.key"], ["a.list.0"], ["a.b", "a.b"]])
def test_globs_missing_keys_and_list_indices_match_dvc(cached, tmp_path, keys):
    path = tmp_path / "params.yaml"
    path.write_text("a:\n  b: 1\n  c: {d: no}\n  list: [x, y]\n")
    for flatten in (True, False):
        assert outcome(cached, str(path), keys, flatten) == outcome(ORIGINAL, str(path), keys, flatten)


def test_a_changed_file_is_read_again_and_results_are_copies(cached, tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("m:\n  lr: 0.1\n  layers: [8, 8]\n")
    first = cached(FS, str(path), ["m.layers"], True)
    first["m.layers"].append(99)
    assert cached(FS, str(path), ["m.layers"], True) == {"m.layers": [8, 8]}
    path.write_text("m:\n  lr: 0.2\n  layers: [8, 8]\n")
    os.utime(path, ns=(1, 1))  # same size; a different mtime alone must invalidate
    assert cached(FS, str(path), ["m.lr"], True) == {"m.lr": 0.2}


def test_a_broken_params_file_still_fails_as_in_dvc(cached, tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("a: [unclosed\n")
    error = outcome(ORIGINAL, str(path), ["a"], True)
    assert isinstance(error, type) and outcome(cached, str(path), ["a"], True) is error


def lock_for(pipeline: dict) -> dict:
    """A dvc.lock for the pipeline as `dvc commit` writes one (dvc.lock itself is not in git)."""
    def entry(path, i):
        return {"path": path, "hash": "md5", "md5": f"ab{i:030x}", "size": i}

    stages = {}
    for i, (name, stage) in enumerate(pipeline["stages"].items()):
        stages[name] = {"cmd": stage["cmd"],
                        "deps": [entry(d, i) for d in stage.get("deps", [])],
                        "params": {"params.yaml": {k: i for k in stage.get("params", []) if isinstance(k, str)}},
                        "outs": [entry(o if isinstance(o, str) else next(iter(o)), i)
                                 for o in stage.get("outs", [])]}
    return {"schema": "2.0", "stages": stages}


@pytest.fixture
def dvc_files(tmp_path):
    """A repository folder holding this project's dvc.yaml and dvc.lock, and a load that counts DVC's calls."""
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "dvc.yaml").write_bytes((ROOT / "dvc.yaml").read_bytes())
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock_for(yaml.safe_load((ROOT / "dvc.yaml").read_text()))))
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[0])
        return DVC_LOAD(*args, **kwargs)

    return tmp_path, hook.remembered_load(counted), calls


@pytest.mark.parametrize("name, schema", [("dvc.yaml", ProjectFile.SCHEMA), ("dvc.lock", Lockfile.SCHEMA)])
def test_dvc_files_load_as_dvc_loads_them_and_once_per_content(dvc_files, name, schema):
    folder, load, calls = dvc_files
    path = str(folder / name)
    expected = DVC_LOAD(path, schema, FS)
    assert load(path, schema, FS) == expected and load(path, schema, FS) == expected
    assert calls == [path]  # the second load read what the first kept
    first = load(path, schema, FS)[0]
    first.clear()
    assert load(path, schema, FS) == expected  # every load hands out its own objects
    with open(path, "a") as fh:
        fh.write("\n# edited\n")
    changed = DVC_LOAD(path, schema, FS)
    assert load(path, schema, FS) == changed and len(calls) == 2
    assert len(list((folder / ".dvc" / "tmp" / "workbench-yaml").glob(f"{name}.*"))) == 1  # stale entry gone


def test_a_damaged_entry_or_a_bad_file_goes_through_dvc(dvc_files):
    folder, load, calls = dvc_files
    path = str(folder / "dvc.yaml")
    expected = load(path, ProjectFile.SCHEMA, FS)
    for entry in (folder / ".dvc" / "tmp" / "workbench-yaml").iterdir():
        entry.write_bytes(b"\x00 not marshal")
    assert load(path, ProjectFile.SCHEMA, FS) == expected and len(calls) == 2
    (folder / "dvc.yaml").write_text("stages:\n  s:\n    cmd: [unclosed\n")
    with pytest.raises(Exception) as dvc_error:
        DVC_LOAD(path, ProjectFile.SCHEMA, FS)
    for _ in range(2):  # nothing kept: DVC's error again, from DVC's own code
        with pytest.raises(dvc_error.type):
            load(path, ProjectFile.SCHEMA, FS)
    (folder / "dvc.yaml").write_text("stages:\n  s:\n    cmd: echo\n    unknown_field: 1\n")
    for _ in range(2):
        with pytest.raises(strictyaml.YAMLValidationError):
            load(path, ProjectFile.SCHEMA, FS)
    assert len(calls) == 6


def test_the_kept_text_is_the_text_dvc_reads(dvc_files):
    folder, load, _ = dvc_files
    path = folder / "dvc.yaml"
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))  # a file saved on Windows
    expected = DVC_LOAD(str(path), ProjectFile.SCHEMA, FS)
    assert load(str(path), ProjectFile.SCHEMA, FS) == expected == load(str(path), ProjectFile.SCHEMA, FS)


def test_round_trip_loads_always_run_dvc(dvc_files):
    folder, load, calls = dvc_files
    path = str(folder / "dvc.lock")
    data, _ = load(path, Lockfile.SCHEMA, FS, round_trip=True)
    load(path, Lockfile.SCHEMA, FS, round_trip=True)
    assert len(calls) == 2 and type(data).__name__ == "CommentedMap"


@pytest.mark.parametrize("switch, active", [("1", True), ("0", False)])
def test_the_venv_loads_the_hook_unless_switched_off(switch, active):
    """`./workbench` writes the .pth file that installs the hook at interpreter start."""
    code = ("import dvc.dependency.param as p, dvc.utils.strictyaml as s; "
            "print(hasattr(p.read_param_file, '__wrapped__') and hasattr(s.load, '__wrapped__'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "WORKBENCH_DVC_HOOK": switch}).stdout.strip()
    assert out == str(active), "run ./workbench once: it installs the hook's .pth into .venv"
