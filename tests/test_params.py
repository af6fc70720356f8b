"""Params are validated before any work; every error names the key."""
import copy
import json
import shlex
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


def test_remembered_validation_skips_only_a_config_that_passed(tmp_path, monkeypatch):
    import stages.common.params as P

    monkeypatch.setattr(P, "VALID_CACHE", tmp_path / "valid.json")
    calls = []
    real = P.validate
    monkeypatch.setattr(P, "validate", lambda params, source: calls.append(source) or real(params, source))
    P.validate_remembered(DEFAULT, "first")
    P.validate_remembered(copy.deepcopy(DEFAULT), "second")
    assert calls == ["first"]  # the same config is not validated again
    with pytest.raises(ParamsError, match=r"key 'koopman\.train\.steps'"):
        P.validate_remembered(mutated("koopman.train.steps", 0), "changed")
    assert calls == ["first", "changed"]
    P.VALID_CACHE.write_text("{corrupt")
    P.validate_remembered(DEFAULT, "after corruption")
    assert calls[-1] == "after corruption"


KOOPMAN_TRAIN = DEFAULT["koopman"]["train"]


@pytest.mark.parametrize("cli, expected", [
    ([], {"train_steps": KOOPMAN_TRAIN["steps"], "lr": KOOPMAN_TRAIN["lr"]}),  # params.yaml alone
    (["--configfile", "config/tiny.yaml"], {"train_steps": 30, "lr": KOOPMAN_TRAIN["lr"]}),  # keeps siblings
    (["--configfile", "params.yaml", "config/tiny.yaml"], {"train_steps": 30, "lr": KOOPMAN_TRAIN["lr"]}),
])
def test_snakefile_config_is_params_yaml_under_the_command_line(cli, expected, env):
    """The Snakefile reads params.yaml itself (libyaml) and puts what the command line gave on top, as
    Snakemake's `configfile:` directive would: the values reach the stage command."""
    out = subprocess.run(["snakemake", "-n", "-p", "-F", "--cores", "1", "koopman_all", *cli], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    command = next(ln for ln in out.stdout.splitlines() if "python -m stages run koopman.train" in ln)
    args = shlex.split(command[command.index("python"):])
    train = json.loads(args[args.index("--params-json") + 1])["koopman.train"]
    assert {"train_steps": train["steps"], "lr": train["lr"]} == expected
