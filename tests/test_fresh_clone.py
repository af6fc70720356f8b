"""A fresh clone with nothing beside it: the whole graph plans and the first stage of every method runs
at the tiny profile, and no Python process opens a file outside the clone (its venv excepted).

Long check (`./workbench test-long`): it clones the committed HEAD, so it tests what is committed."""
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.long

FIRST_STAGES = """
import json
from stages.common.dvcgen import snakemake_jobs
jobs = [j for j in snakemake_jobs() if "stage" in j.rule.params.keys()]
first = [j for j in jobs if all(str(p).startswith("stages/") for p in j.input)]
print(json.dumps(sorted({str(o) for j in first for o in j.output})))
"""


def test_fresh_clone_plans_and_runs_first_stages_without_reading_outside(tmp_path, env):
    if subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                      text=True).stdout.strip():
        pytest.skip("uncommitted changes: the clone would not test them")
    clone = tmp_path / "fresh" / "workbench"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    assert not (clone.parent.parent / "shared").exists() and not (clone.parent / "shared").exists()
    log = tmp_path / "opened_outside.log"
    log.touch()
    import sys

    venv = os.path.realpath(sys.prefix)
    e = dict(env, PYTHONPATH=f"{clone}{os.pathsep}{ROOT / 'tests' / 'support'}",
             WORKBENCH_FORBIDDEN=os.pathsep.join([os.path.realpath(ROOT.parent), str(clone.parent)]),
             WORKBENCH_ALLOWED=os.pathsep.join([str(clone), venv, str(ROOT / "tests" / "support")]),
             WORKBENCH_OPEN_LOG=str(log))

    def sh(*args):
        proc = subprocess.run(args, cwd=clone, env=e, capture_output=True, text=True, timeout=1500)
        assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    sh("git", "init", "-q")
    sh("python", "-m", "stages", "profile", "tiny")
    assert "total" in sh("snakemake", "-n", "--cores", "2")  # the whole graph plans
    targets = json.loads(sh("python", "-c", FIRST_STAGES))
    methods = {t.split("/")[1] for t in targets}
    assert methods >= {"koopman", "demp", "motif", "lambdazero"}, methods
    sh("snakemake", "--cores", "2", *targets)
    assert all((clone / t).exists() for t in targets)
    opened = log.read_text()
    assert opened == "", f"files opened outside the clone:\n{opened[:3000]}"
