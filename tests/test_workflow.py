"""End to end in a temporary copy: Snakemake builds the tiny Koopman chain, a rebuild does nothing,
`dvc repro` reproduces the same bytes, and a changed param or source file re-runs exactly its stages
and their dependents."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from stages.common.artifacts import file_sha256

ROOT = Path(__file__).resolve().parents[1]
COPIED = ["Snakefile", "params.yaml", "dvc.yaml", ".dvcignore", ".gitignore", "config", "stages",
          "envs", "report", "profiles", ".dvc/config"]


def sh(args, cwd, env, check=True):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def hashes(root: Path) -> dict[str, str]:
    """Artifacts (DVC's code fingerprints under data/code are bookkeeping that only DVC writes)."""
    return {str(p.relative_to(root)): file_sha256(p)
            for d in ("data", "results") for p in sorted((root / d).rglob("*"))
            if p.is_file() and not p.relative_to(root).as_posix().startswith("data/code/")}


# The chain under test; every other method has its own tiny-chain test.
SNAKE_TARGET, DVC_TARGET = "koopman_all", "koopman_aggregate"


def snakemake_planned(proj, env) -> set[str]:
    """Jobs a dry run would run, as rule names with their wildcards ('koopman_train_duffing_0')."""
    out = sh(["snakemake", "-n", "--cores", "1", SNAKE_TARGET], proj, env).stdout
    jobs = set()
    for block in re.findall(r"rule (\w+):\n((?:    .*\n)+)", out):
        wildcards = re.search(r"wildcards: (.*)", block[1])
        values = [kv.split("=")[1] for kv in wildcards.group(1).split(", ")] if wildcards else []
        jobs.add("_".join([block[0], *values]))
    return jobs - {"all", "koopman_all"}


def dvc_changed(proj, env) -> set[str]:
    return set(json.loads(sh(["dvc", "status", "--with-deps", "--json", DVC_TARGET], proj, env).stdout))


def dvc_repro_ran(proj, env) -> set[str]:
    """Stages `dvc repro` executed or restored from its run cache (i.e. did not skip as unchanged)."""
    out = sh(["dvc", "repro", DVC_TARGET], proj, env).stdout
    return set(re.findall(r"Running stage '(\w+)'", out)) | set(re.findall(r"Stage '(\w+)' is cached", out))


def set_param(proj, dotted, value):
    path = proj / "params.yaml"
    params = yaml.safe_load(path.read_text())
    node = params
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def copy_project(proj: Path) -> Path:
    """The files a build needs (no venv, data, results) copied into `proj`."""
    for name in COPIED:
        src, dst = ROOT / name, proj / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dst)
    return proj


@pytest.fixture(scope="module")
def project(tmp_path_factory, request):
    return copy_project(tmp_path_factory.mktemp("proj"))


@pytest.fixture(scope="module")
def penv(project):
    import os
    import sys

    e = dict(os.environ, PYTHONPATH=str(project), OMP_NUM_THREADS="1")
    e["PATH"] = f"{Path(sys.executable).parent}:{e['PATH']}"
    sh(["git", "init", "-q"], project, e)
    sh(["python", "-m", "stages", "profile", "tiny"], project, e)
    return e


def test_snakemake_then_dvc_reproduce_the_same_artifacts(project, penv):
    sh(["snakemake", "--cores", "2", SNAKE_TARGET], project, penv)
    built = hashes(project)
    assert any(k.endswith("model.safetensors") for k in built)
    assert "results/koopman/summary.parquet" in built

    second = sh(["snakemake", "--cores", "2", SNAKE_TARGET], project, penv)
    assert "Nothing to be done" in second.stdout + second.stderr
    assert hashes(project) == built

    sh(["dvc", "repro", "--quiet", DVC_TARGET], project, penv)
    assert hashes(project) == built, "dvc repro wrote different bytes than Snakemake"
    assert dvc_changed(project, penv) == set()
    assert sh(["dvc", "repro", DVC_TARGET], project, penv).stdout.count("didn't change, skipping") >= 7


@pytest.mark.parametrize("dotted, value, expected", [
    ("koopman.evaluate.report_step", 3, {"koopman_evaluate_duffing_0", "koopman_evaluate_pendulum_0",
                                         "koopman_aggregate"}),
    ("koopman.systems.pendulum.delta", 0.123, {"koopman_simulate_pendulum", "koopman_train_pendulum_0",
                                               "koopman_evaluate_pendulum_0", "koopman_aggregate"}),
])
def test_changed_param_reruns_exactly_its_stages_in_both_engines(project, penv, dotted, value, expected):
    original = (project / "params.yaml").read_text()
    try:
        set_param(project, dotted, value)
        assert snakemake_planned(project, penv) == expected
        # DVC re-runs downstream stages only when upstream bytes change, so run it for real
        assert dvc_repro_ran(project, penv) == expected
    finally:
        (project / "params.yaml").write_text(original)
    assert dvc_repro_ran(project, penv) == expected  # back to the old values, from the run cache
    assert dvc_changed(project, penv) == set()
    assert snakemake_planned(project, penv) == set()


def test_snakemake_lint_is_clean(env):
    out = sh(["snakemake", "--lint"], ROOT, env, check=False)
    assert out.returncode == 0 and "Congratulations" in out.stdout + out.stderr, out.stdout + out.stderr


def test_slurm_profile_parses_in_a_dry_run(env):
    out = sh(["snakemake", "--profile", "profiles/slurm", "-n"], ROOT, env, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "koopman_train" in out.stdout


def test_changed_source_file_reruns_exactly_the_stages_that_import_it(project, penv):
    """Snakemake sees the file itself, DVC its stages' code fingerprints (stages/common/fingerprint.py)."""
    source = project / "stages" / "koopman" / "evaluate.py"
    unrelated = project / "stages" / "maxent_gfn" / "train.py"
    original, unrelated_original = source.read_text(), unrelated.read_text()
    expected = {"koopman_evaluate_duffing_0", "koopman_evaluate_pendulum_0", "koopman_aggregate"}
    try:
        unrelated.write_text(unrelated_original + "\n# an edit no Koopman stage imports\n")
        assert snakemake_planned(project, penv) == set()
        assert dvc_repro_ran(project, penv) == {"code_fingerprints"}  # bookkeeping only
        source.write_text(original + "\n# an edit\n")
        assert snakemake_planned(project, penv) == expected
        assert dvc_repro_ran(project, penv) == expected | {"code_fingerprints"}
    finally:
        source.write_text(original)
        unrelated.write_text(unrelated_original)
    assert dvc_repro_ran(project, penv) == expected | {"code_fingerprints"}  # the run cache restores
    assert dvc_changed(project, penv) == set()
