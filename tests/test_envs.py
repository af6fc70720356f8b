"""Every conda env in envs/ pins the same versions as requirements.txt."""
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def pins(lines):
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"'{line}' is not pinned with =="
            out[name.strip().lower()] = version.strip()
    return out


REQUIREMENTS = pins((ROOT / "requirements.txt").read_text().splitlines())
ENV_FILES = sorted((ROOT / "envs").glob("*.yaml"))


def test_there_is_an_env_per_method_family():
    methods = {p.parent.name for p in (ROOT / "stages").glob("*/params.schema.yaml")}
    assert methods and methods <= {p.stem for p in ENV_FILES}


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_match_requirements(env_file):
    deps = yaml.safe_load(env_file.read_text())["dependencies"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    env_pins = pins(pip)
    assert env_pins, f"{env_file.name} pins nothing"
    for name, version in env_pins.items():
        assert REQUIREMENTS.get(name) == version, (
            f"{env_file.name}: {name}=={version} but requirements.txt has {REQUIREMENTS.get(name)}")
    assert "torch" in env_pins


NODEPS = pins((ROOT / "requirements-nodeps.txt").read_text().splitlines())


@pytest.mark.parametrize("script", sorted((ROOT / "envs").glob("*.post-deploy.sh")), ids=lambda p: p.name)
def test_post_deploy_installs_match_nodeps_requirements(script):
    installs = [line.split("--no-deps", 1)[1].split() for line in script.read_text().splitlines()
                if "pip install" in line and not line.lstrip().startswith("#")]
    assert installs, f"{script.name} installs nothing"
    for args in installs:
        for name, version in pins(args).items():
            assert NODEPS.get(name) == version, (
                f"{script.name}: {name}=={version} but requirements-nodeps.txt has {NODEPS.get(name)}")
    assert (ROOT / "envs" / script.name.replace(".post-deploy.sh", ".yaml")).exists()
