"""Params are validated before any work; every error names the key."""
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.common.params import ParamsError, deep_merge, load_params, validate, validate_selected

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((ROOT / "params.yaml").read_text())


def mutated(dotted, value):
    params = copy.deepcopy(DEFAULT)
    node = params
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return params


DELETE = object()


@pytest.mark.parametrize("profile", ["tiny", "paper"])
def test_profiles_overlay_the_default_and_validate(profile):
    merged = load_params(ROOT / "params.yaml", ROOT / "config" / f"{profile}.yaml")
    assert merged != DEFAULT
    assert set(merged) == set(DEFAULT)


@pytest.mark.parametrize("dotted, value, message", [
    ("koopman.train.stpes", 10, "unknown key 'koopman.train.stpes'"),
    ("koopman.train.steps", "many", "key 'koopman.train.steps': 'many' is not of type 'integer'"),
    ("koopman.train.steps", 0, "key 'koopman.train.steps': 0 is less than the minimum"),
    ("koopman.model.latent_dim", 2.5, "key 'koopman.model.latent_dim'"),
    ("koopman.seeds", [], "key 'koopman.seeds'"),
    ("koopman.systems.duffing.kind", "lorenz", "key 'koopman.systems.duffing.kind'"),
    ("koopman.train.lr", DELETE, "'lr' is a required property"),
])
def test_bad_params_name_the_key(dotted, value, message):
    with pytest.raises(ParamsError, match=message.replace("(", r"\(").replace(".", r"\.")):
        validate(mutated(dotted, value))


def test_selected_values_are_validated_with_their_dotted_key():
    with pytest.raises(ParamsError, match=r"key 'koopman\.train\.steps'"):
        validate_selected({"koopman.train": {**DEFAULT["koopman"]["train"], "steps": -1}}, "test")


def test_deep_merge_keeps_sibling_keys():
    merged = deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}})
    assert merged == {"a": {"b": 1, "c": 3}}


def test_unknown_key_stops_snakemake_before_any_job(tmp_path, env):
    bad = tmp_path / "bad.yaml"
    bad.write_text("koopman:\n  train:\n    stpes: 5\n")
    out = subprocess.run(["snakemake", "-n", "--configfile", "params.yaml", str(bad)], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert "unknown key 'koopman.train.stpes'" in out.stdout + out.stderr


def test_stage_runner_rejects_a_wrong_type_from_the_params_file(tmp_path, env):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(mutated("koopman.systems.duffing.n_train", "lots")))
    out = subprocess.run([sys.executable, "-m", "stages", "run", "koopman.simulate",
                          "--keys", "system=koopman.systems.duffing", "--params-file", str(bad),
                          "--out", f"trajectories={tmp_path / 't.parquet'}"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 2
    assert "key 'koopman.systems.duffing.n_train': 'lots' is not of type 'integer'" in out.stderr
    assert not (tmp_path / "t.parquet").exists()
